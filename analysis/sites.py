"""Sites (where we intervene) and the grids that the command line and the Setup screen describe."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harmmed_tui.analysis.errors import SiteError

MODULES = ("resid", "attn", "mlp", "neuron")
ALL_POSITIONS = -1  # the position `*`: the module at every position at once
NO_NEURON = -1


@dataclass(frozen=True, order=True, slots=True)
class Site:
    layer: int
    module: str  # resid | attn | mlp | neuron
    position: int  # token index, or ALL_POSITIONS
    neuron: int = NO_NEURON  # first MLP unit of the site (neuron module only)
    width: int = 1  # units patched together from `neuron` on (block method)


def parse_modules(text: str) -> list[str]:
    mods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in mods if m not in MODULES]
    if bad or not mods:
        raise SiteError(f"unknown module(s) {', '.join(bad) or '(none)'} (use {', '.join(MODULES)})")
    return mods


def parse_layers(text: str, n_layers: int) -> list[int]:
    """`all`, or a comma list of 0-based indices (negative counts from the end) and inclusive ranges `a-b`."""
    if text.strip() == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d+)-(\d+)", part):
            if int(m[1]) > int(m[2]):
                raise SiteError(f"layer range '{part}' is empty (write the lower layer first: {m[2]}-{m[1]})")
            out += range(int(m[1]), int(m[2]) + 1)
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part) % n_layers if -n_layers <= int(part) < 0 else int(part))
        else:
            raise SiteError(f"bad layer '{part}' in '{text}' (use all, 3, -1, 2-5 or a comma list)")
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise SiteError(f"layer {bad[0]} is out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    return sorted(set(out))


def parse_positions(text: str, seq_len: int) -> list[int]:
    """`all`, `last`, `last:N`, `*`, or a comma list of token indices (negative counts from the end)."""
    out: list[int] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if part == "all":
            out += range(seq_len)
        elif part == "last":
            out.append(seq_len - 1)
        elif m := re.fullmatch(r"last:(\d+)", part):
            out += range(max(0, seq_len - int(m[1])), seq_len)
        elif part == "*":
            out.append(ALL_POSITIONS)
        elif re.fullmatch(r"-?\d+", part):
            i = int(part)
            if not -seq_len <= i < seq_len:
                raise SiteError(f"position {i} is out of range for a {seq_len}-token prompt")
            out.append(i % seq_len)
        else:
            raise SiteError(f"bad position '{part}' (use all, last, last:N, *, or indices like 0,-1)")
    if not out:
        raise SiteError("no positions given")
    return sorted(set(out), key=lambda p: (p == ALL_POSITIONS, p))


def site_grid(
    layers: list[int], modules: list[str], positions: list[int], d_mlp: int, block: int = 1
) -> list[Site]:
    """All sites of a layer x module x position grid; `neuron` expands to every unit (or block of units)."""
    sites = []
    for layer in layers:
        for module in modules:
            for pos in positions:
                if module == "neuron":
                    sites += [
                        Site(layer, module, pos, n, min(block, d_mlp - n)) for n in range(0, d_mlp, block)
                    ]
                else:
                    sites.append(Site(layer, module, pos))
    return sites
