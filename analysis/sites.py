"""Sites (where we intervene) and the grids that the command line and the Setup screen describe."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from harmmed_tui.analysis.errors import SiteError

MODULES = ("resid", "attn", "mlp", "neuron", "head", "direction")
# sites of one row per layer and position: the layer table and grid's modules
LAYER_MODULES = ("resid", "attn", "mlp", "direction")
# sites that read one part of a module's input: an MLP unit (the down projection's input), or one query head's
# slice of the attention output projection's input
UNIT_MODULES = ("neuron", "head")
ALL_POSITIONS = -1  # the position `*`: the module at every position at once (equal lengths only)
SUFFIX = -2  # the position `suffix`: the module at every position of the pair's shared final tokens at once
POSITION_NAMES = {ALL_POSITIONS: "*", SUFFIX: "suffix"}
NO_NEURON = -1


@dataclass(frozen=True, order=True, slots=True)
class Site:
    layer: int
    module: str  # resid | attn | mlp | neuron | head | direction
    position: int  # token index, or ALL_POSITIONS
    neuron: int = NO_NEURON  # first MLP unit of a neuron site; the query head of a head site
    width: int = 1  # units patched together from `neuron` on (block method)

    def shifted(self, shift: int) -> Site:
        """The site `shift` positions later (on an end-aligned pair's treatment prompt); `*`/`suffix` stay."""
        return self if self.position < 0 or not shift else replace(self, position=self.position + shift)


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


def parse_positions(text: str, seq_len: int, aligned: int | None = None, suffix_len: int = 0) -> list[int]:
    """Control-prompt token indices (and the module-level `*`/`suffix`) from `all`, `last`, `last:N`, `*`,
    `suffix` or a comma list of indices (negative counts from the end).

    `aligned`: the pair is aligned from the end (its prompts may differ in length) over its last `aligned`
    tokens; positions must then count from the end, and `*` (every position) does not exist."""
    end = aligned is not None
    span = aligned if end else seq_len  # positions before it have no counterpart in the other prompt
    out: list[int] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if part == "all":
            out += range(seq_len - span, seq_len)
        elif part == "last":
            out.append(seq_len - 1)
        elif m := re.fullmatch(r"last:(\d+)", part):
            out += range(max(seq_len - span, seq_len - int(m[1])), seq_len)
        elif part == "*":
            if end:
                raise SiteError(
                    "'*' patches every position, which needs equal token lengths: with end alignment use 'suffix'"
                )
            out.append(ALL_POSITIONS)
        elif part == "suffix":
            if not suffix_len:
                raise SiteError("'suffix': the treatment and control prompts share no final tokens")
            out.append(SUFFIX)
        elif re.fullmatch(r"-?\d+", part):
            i = int(part)
            if end and i >= 0:
                raise SiteError(
                    f"position {i}: with end alignment, positions count from the end (-1, -2, ... or last:N)"
                )
            if not -span <= i < seq_len:
                what = (
                    f"the last {span} tokens that the two prompts align"
                    if end
                    else f"a {seq_len}-token prompt"
                )
                raise SiteError(f"position {i} is out of range for {what}")
            out.append(i % seq_len)
        else:
            raise SiteError(f"bad position '{part}' (use all, last, last:N, *, suffix, or indices like 0,-1)")
    if not out:
        raise SiteError("no positions given")
    if ALL_POSITIONS in out and SUFFIX in out:
        raise SiteError("give '*' or 'suffix', not both: either is the run's module-level site")
    return sorted(set(out), key=lambda p: (p < 0, -p if p < 0 else p))


def covered_positions(position: int, n: int, suffix_len: int) -> range:
    """The token positions (of an n-token control prompt) a site's position patches: `*` all of them,
    `suffix` the final tokens both prompts share, an index itself."""
    if position == ALL_POSITIONS:
        return range(n)
    if position == SUFFIX:
        return range(n - suffix_len, n)
    return range(position, position + 1)


def position_label(position: int) -> str | int:
    """How a stored position reads: a token index, `*` or `suffix`."""
    return POSITION_NAMES.get(position, position)


def site_grid(
    layers: list[int], modules: list[str], positions: list[int], d_mlp: int, block: int = 1, n_heads: int = 0
) -> list[Site]:
    """All sites of a layer x module x position grid; `neuron` expands to every unit (or block of units),
    `head` to every query head."""
    sites = []
    for layer in layers:
        for module in modules:
            for pos in positions:
                if module == "head":
                    sites += [Site(layer, module, pos, h) for h in range(n_heads)]
                elif module == "neuron":
                    sites += [
                        Site(layer, module, pos, n, min(block, d_mlp - n)) for n in range(0, d_mlp, block)
                    ]
                else:
                    sites.append(Site(layer, module, pos))
    return sites


# byte-level BPE (GPT-2: Ġ space, Ċ newline, ĉ tab) and SentencePiece (▁ space) markers, and byte tokens
_MARKERS = str.maketrans({"Ġ": "·", "▁": "·", "Ċ": "⏎", "ĉ": "⇥", "\n": "⏎", "\t": "⇥", " ": "·"})
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def readable(token: str) -> str:
    """A token as a person reads it: spaces ·, newlines ⏎, tabs ⇥, byte tokens \\x.."""
    return _BYTE.sub(lambda m: f"\\x{m.group(1).lower()}", token).translate(_MARKERS)
