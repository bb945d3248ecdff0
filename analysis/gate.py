"""The gate check: do a run's top neurons gate the behaviour on pairs it never saw?

Ablate the top-K MLP neurons on each held-out treatment prompt (hold them at the control prompt's values,
at their mean, or at zero, at every position) and measure how far the metric moves, against K random
neurons drawn from the same layers under several seeds. Greedy generations before and after show what the
shift means in text.
"""

from __future__ import annotations

import random
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from harmmed_tui.analysis.behaviour import greedy_continuation
from harmmed_tui.analysis.errors import GateError
from harmmed_tui.analysis.metrics import Metric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair
from harmmed_tui.analysis.patching import ActivationRecorder, prompt_metric

ABLATIONS = ("control", "mean", "zero")
Neuron = tuple[int, int]  # (layer, unit)


@dataclass(frozen=True)
class GateSpec:
    top: int = 20
    ablate: str = "control"
    seeds: int = 5  # random neuron sets to compare against
    generate: int = 3  # held-out prompts generated from, before and after ablation
    max_new_tokens: int = 24


class Ablation:
    """Context manager holding chosen MLP units at given values: `values[layer]` is (units, V) with V of
    shape (positions, len(units)); positions past V's last row (generated tokens) repeat the last row."""

    def __init__(self, lm: LoadedModel, values: dict[int, tuple[list[int], torch.Tensor]]):
        self.lm, self.values = lm, values

    def __enter__(self):
        self._stack = ExitStack()
        for layer, (units, v) in self.values.items():
            self._stack.callback(self._hold(layer, torch.tensor(units, device=v.device), v).remove)
        return self

    def _hold(self, layer: int, units: torch.Tensor, v: torch.Tensor):
        seen = [0]  # positions this layer has processed so far (generation feeds one token at a time)

        def hook(module, args):
            x = args[0]
            rows = torch.arange(seen[0], seen[0] + x.shape[1], device=v.device).clamp(max=v.shape[0] - 1)
            x[..., units] = v[rows].to(x.dtype)
            seen[0] += x.shape[1]

        return self.lm.anatomy.down(layer).register_forward_pre_hook(hook)

    def __exit__(self, *exc):
        self._stack.close()


def random_like(neurons: list[Neuron], d_mlp: int, seed: int) -> list[Neuron]:
    """As many random units per layer as `neurons` has, never one of `neurons` itself."""
    rng = random.Random(seed)
    per_layer: dict[int, set[int]] = defaultdict(set)
    for layer, unit in neurons:
        per_layer[layer].add(unit)
    out = []
    for layer, units in sorted(per_layer.items()):
        pool = [u for u in range(d_mlp) if u not in units]
        out += [(layer, u) for u in sorted(rng.sample(pool, min(len(units), len(pool))))]
    return out


def _by_layer(neurons: list[Neuron]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for layer, unit in neurons:
        out[layer].append(unit)
    return out


def check(
    lm: LoadedModel, metric: Metric, pairs: list[TokenizedPair], neurons: list[Neuron], spec: GateSpec
) -> list[dict]:
    """One row per (held-out pair, arm): arm `top` (seed -1) or `random` (seed 0..S-1), the treatment
    metric before and after ablation, its shift, the pair's TE, and greedy texts for the first pairs."""
    if spec.ablate not in ABLATIONS:
        raise GateError(f"unknown ablation '{spec.ablate}' (use {', '.join(ABLATIONS)})")
    if not neurons:
        raise GateError("no neurons to ablate: the run has no neuron rows")
    if not pairs:
        raise GateError("no held-out pairs to test on")
    arms = [("top", -1, neurons)] + [
        ("random", s, random_like(neurons, lm.anatomy.d_mlp, s)) for s in range(spec.seeds)
    ]
    layers = sorted({layer for layer, _ in neurons})
    keys = [(layer, "neuron") for layer in layers]
    mean = mean_activations(lm, pairs, keys) if spec.ablate == "mean" else None
    rows = []
    for i, tp in enumerate(pairs):
        bound = metric.bind(tp)

        def run(ids: list[int], bound=bound) -> float:
            return prompt_metric(lm, bound, input_ids=torch.tensor([ids], device=lm.device)).item()

        with torch.inference_mode():
            with ActivationRecorder(lm, keys) as control:
                m_control = run(tp.control_ids)
            m_before = run(tp.treatment_ids)
            before = _generate(lm, tp, spec) if i < spec.generate else None
            for arm, seed, chosen in arms:
                values = {}
                for layer, units in _by_layer(chosen).items():
                    if spec.ablate == "control":
                        v = control[(layer, "neuron")][:, units]
                    elif spec.ablate == "mean":
                        v = mean[layer][None, units]
                    else:
                        v = torch.zeros(1, len(units), device=lm.device)
                    values[layer] = (units, v)
                with Ablation(lm, values):
                    m_after = run(tp.treatment_ids)
                after = None
                if before is not None and seed <= 0:  # texts for the top set and one random set
                    with Ablation(lm, values):
                        after = _generate(lm, tp, spec)
                rows.append(
                    dict(
                        pair=tp.index,
                        pair_id=tp.pair.id,
                        arm=arm,
                        seed=seed,
                        m_before=m_before,
                        m_after=m_after,
                        shift=m_after - m_before,
                        te=m_before - m_control,
                        text_before=before if after is not None else None,
                        text_after=after,
                    )
                )
    return rows


def mean_activations(lm: LoadedModel, pairs: list[TokenizedPair], keys) -> dict[int, torch.Tensor]:
    """Each layer's mean MLP activation over every token of every held-out prompt (both sides)."""
    sums, count = {}, 0
    with torch.inference_mode():
        for tp in pairs:
            for ids in (tp.treatment_ids, tp.control_ids):
                with ActivationRecorder(lm, keys) as acts:
                    lm.model(torch.tensor([ids], device=lm.device), use_cache=False, logits_to_keep=1)
                for (layer, _), a in acts.items():
                    sums[layer] = sums.get(layer, 0) + a.float().sum(0)
                count += len(ids)
    return {layer: s / count for layer, s in sums.items()}


def _generate(lm: LoadedModel, tp: TokenizedPair, spec: GateSpec) -> str:
    """Greedy continuation of the treatment prompt (its target, if any, left out)."""
    return greedy_continuation(lm, tp.treatment_ids[: tp.treatment_prompt_len], spec.max_new_tokens)


def summary(rows: list[dict]) -> dict:
    """Mean metric shift of the top neurons vs the random sets (mean and sd over seeds), and the share of
    the mean total effect that each removes."""
    top = [r["shift"] for r in rows if r["arm"] == "top"]
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["arm"] == "random":
            by_seed[r["seed"]].append(r["shift"])
    seed_means = torch.tensor([sum(v) / len(v) for v in by_seed.values()] or [float("nan")])
    te = sum(r["te"] for r in rows if r["arm"] == "top") / len(top)
    top_shift = sum(top) / len(top)
    random_shift = seed_means.mean().item()
    return dict(
        pairs=len(top),
        mean_te=te,
        top_shift=top_shift,
        random_shift=random_shift,
        random_sd=seed_means.std().item() if len(seed_means) > 1 else 0.0,
        seeds=len(by_seed),
        top_removed=-top_shift / te if te else None,
        random_removed=-random_shift / te if te else None,
    )
