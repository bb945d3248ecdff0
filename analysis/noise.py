"""Noise contrasts for a single prompt: causal tracing (Meng et al. 2022, ROME).

The treatment is the clean prompt; the control run is the same prompt with Gaussian noise added to the
embeddings of some of its tokens (the subject of the request: `--corrupt "a bomb"`, or `tokens:3,5-7`).
IE(site) is then the effect of restoring that site's clean activation in the corrupted run, averaged over
noise samples; TE = m(clean) - m(corrupted). The noise's standard deviation is `scale` (3 by default, as
in ROME) times the standard deviation of the model's token embedding matrix.
"""

from __future__ import annotations

import re

import torch

from harmmed_tui.analysis.errors import PairsError
from harmmed_tui.analysis.metrics import BoundMetric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair, encode_prompt
from harmmed_tui.analysis.patching import PairPatcher


def corrupted_positions(
    tokenizer, text: str, chat_template: str, corrupt: str, allow_special: bool = False
) -> tuple[int, ...]:
    """The token indices to corrupt in `text` as the model reads it: `tokens:LIST` (indices and ranges,
    negative from the end), or the tokens that overlap the first occurrence of a substring of `text`."""
    prompt, ids, offsets = encode_prompt(tokenizer, text, chat_template, allow_special, offsets=True)
    n = len(ids)
    if corrupt.startswith("tokens:"):
        out = []
        for part in corrupt.removeprefix("tokens:").split(","):
            if m := re.fullmatch(r"\s*(-?\d+)(?:-(\d+))?\s*", part):
                first, last = int(m[1]), int(m[2] if m[2] else m[1])
                if m[2] and last < first:
                    raise PairsError(
                        f"token range '{part.strip()}' in '{corrupt}' is empty (write FIRST-LAST, FIRST <= LAST)"
                    )
                out += range(first % n if -n <= first < 0 else first, last + 1 if m[2] else (first % n) + 1)
            else:
                raise PairsError(f"bad token list '{corrupt}' (use tokens:3,5-7 or tokens:-2)")
        if not out or not all(0 <= i < n for i in out):
            raise PairsError(f"'{corrupt}': a {n}-token prompt has no such tokens")
        return tuple(sorted(set(out)))
    start = prompt.find(text)
    at = prompt.find(corrupt, max(start, 0))
    if not corrupt or at < 0:
        raise PairsError(f"'{corrupt}' does not occur in the prompt {text!r}")
    end = at + len(corrupt)
    out = tuple(i for i, (a, b) in enumerate(offsets) if a < end and b > at and b > a)
    if not out:
        raise PairsError(f"no token of {text!r} covers '{corrupt}'")
    return out


def corruption_noise(
    lm: LoadedModel, n: int, positions: tuple[int, ...], scale: float, seed: int
) -> torch.Tensor:
    """n x d_model noise, zero outside `positions`: N(0, (scale * std of the embedding matrix)^2)."""
    weight = lm.model.get_input_embeddings().weight
    std = weight.float().std().item()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.zeros(n, weight.shape[1])
    noise[list(positions)] = torch.randn(len(positions), weight.shape[1], generator=generator) * scale * std
    return noise


class NoisedPatcher:
    """PairPatcher's interface for a noise contrast: totals and IEs averaged over `samples` noise draws
    (seeds seed, seed + 1, ...). The clean prompt is both the treatment and, noised, the control."""

    def __init__(
        self,
        lm: LoadedModel,
        pair: TokenizedPair,
        metric: BoundMetric,
        keys,
        engine: str,
        samples: int,
        scale: float,
        seed: int,
    ):
        n = len(pair.control_ids)
        self.patchers = [
            PairPatcher(
                lm, pair, metric, keys, engine, corruption_noise(lm, n, pair.corrupt, scale, seed + k)
            )
            for k in range(samples)
        ]
        self.m_treatment = self.patchers[0].m_treatment
        self.m_control = torch.stack([p.m_control for p in self.patchers]).mean(0)
        self.te = self.m_treatment - self.m_control

    def effects(self, sites, batch_tokens: int):
        # every patcher orders and batches the same sites alike (by layer and position)
        for batches in zip(*(p.effects(sites, batch_tokens) for p in self.patchers), strict=True):
            yield batches[0][0], torch.stack([ie for _, ie in batches]).mean(0)
