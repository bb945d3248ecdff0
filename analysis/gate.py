"""The gate check: do a run's top neurons gate the behaviour on pairs it never saw?

For each layer group and each K, ablate the run's top-K MLP neurons of that group on each held-out treatment
prompt (hold them at the control prompt's values, at their mean, or at zero, at every position), against K
random neurons of the same layers under several seeds. Each arm is scored twice: the metric's shift, and the
judged verdict of the greedy answer generated under the ablation. Every arm of one pair runs in one batch
(one forward for the metric, one `generate` for the answers): each batch row holds its own units.
The curve over K is `analysis.gate_curve`.

Held-out pairs may differ in length, aligned from the end as runs are: the treatment's position p takes the
control's value at p - shift; positions the control lacks (a longer treatment's first tokens) are held at
the mean over the held-out prompts. `zero` and `mean` need no alignment.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria

from harmmed_tui.analysis.behaviour import decode_answer, greedy_batch, greedy_ids
from harmmed_tui.analysis.direction import DirectionAblation, random_directions
from harmmed_tui.analysis.errors import GateError
from harmmed_tui.analysis.gate_curve import GROUPS, SIGNS, group_layers
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import BoundMetric, Metric
from harmmed_tui.analysis.model_judge import ModelJudge
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair
from harmmed_tui.analysis.patching import ActivationRecorder, rows_metric

ABLATIONS = ("control", "mean", "zero")
Neuron = tuple[int, int]  # (layer, unit)
ROWS_PER_BATCH = 32  # arms evaluated per batched forward / generate


@dataclass(frozen=True)
class GateSpec:
    tops: tuple[int, ...] = (1, 5, 20, 100, 1000)
    sign: str = "positive"  # neurons that promote the treatment's behaviour (positive IE), oppose it, or |IE|
    groups: tuple[str, ...] = GROUPS
    ablate: str = "control"
    seeds: int = 5  # random neuron sets per point
    max_new_tokens: int = 24

    def check(self) -> None:
        if self.ablate not in ABLATIONS:
            raise GateError(f"unknown ablation '{self.ablate}' (use {', '.join(ABLATIONS)})")
        if self.sign not in SIGNS:
            raise GateError(f"unknown sign '{self.sign}' (use {', '.join(SIGNS)})")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise GateError(f"unknown layer group '{','.join(unknown)}' (use {', '.join(GROUPS)})")
        if not self.tops or min(self.tops) < 1:
            raise GateError("--top takes neuron counts of at least 1, e.g. 1,5,20,100")


@dataclass(frozen=True)
class Arm:
    group: str
    k: int
    seed: int  # -1: the top set; 0..S-1: a random set matched by layer
    neurons: tuple[Neuron, ...]


class Ablation:
    """Context manager holding MLP units at given values, each batch row its own units: `masks[layer]` is a
    (rows, d_mlp) bool mask, `values[layer]` a (positions, d_mlp) tensor of the values to hold them at;
    positions past its last row (generated tokens) repeat the last row. Re-entered for each forward or
    generate call, whose positions it counts."""

    def __init__(self, lm: LoadedModel, masks: dict[int, torch.Tensor], values: dict[int, torch.Tensor]):
        self.lm, self.masks, self.values = lm, masks, values

    def __enter__(self):
        self._handles = [self._hold(layer) for layer in self.masks]
        return self

    def _hold(self, layer: int):
        mask, v, seen = self.masks[layer][:, None, :], self.values[layer], [0]

        def hook(module, args):
            x = args[0]
            rows = torch.arange(seen[0], seen[0] + x.shape[1], device=v.device).clamp(max=v.shape[0] - 1)
            seen[0] += x.shape[1]
            return (torch.where(mask[: x.shape[0]], v[rows].to(x.dtype), x), *args[1:])

        return self.lm.anatomy.down(layer).register_forward_pre_hook(hook)

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def random_like(neurons: tuple[Neuron, ...], d_mlp: int, seed: int) -> tuple[Neuron, ...]:
    """As many random units per layer as `neurons` has, never one of `neurons` itself."""
    rng = random.Random(seed)
    per_layer: dict[int, set[int]] = defaultdict(set)
    for layer, unit in neurons:
        per_layer[layer].add(unit)
    out = []
    for layer, units in sorted(per_layer.items()):
        pool = [u for u in range(d_mlp) if u not in units]
        out += [(layer, u) for u in sorted(rng.sample(pool, min(len(units), len(pool))))]
    return tuple(out)


def arms(ranked: dict[str, list[Neuron]], spec: GateSpec, d_mlp: int) -> list[Arm]:
    """For each group and K: the group's top K neurons (fewer when it ranked fewer; a K that would repeat
    the previous set is left out) and `seeds` random sets matched to them by layer."""
    out = []
    for group in spec.groups:
        seen = set()
        for k in sorted(set(spec.tops)):
            top = tuple(ranked.get(group, [])[:k])
            if not top or len(top) in seen:
                continue
            seen.add(len(top))
            out.append(Arm(group, k, -1, top))
            out += [Arm(group, k, s, random_like(top, d_mlp, s)) for s in range(spec.seeds)]
    return out


def check(
    lm: LoadedModel,
    metric: Metric,
    judge: PhraseJudge | ModelJudge,
    pairs: list[TokenizedPair],
    ranked: dict[str, list[Neuron]],
    spec: GateSpec,
    progress=None,
    exhaustive: bool = False,
    direction: torch.Tensor | None = None,
) -> list[dict]:
    """One row per (held-out pair, arm): the treatment metric before and after ablation and its shift, the
    pair's TE, and the greedy answer before and after with the judge's verdicts. `progress(done, total)`
    hears of each pair's arms as they end. With `direction` (a unit vector of the residual stream), arms of
    layer group `direction` too: it ablated at every layer (analysis.direction), against `seeds` random
    unit directions.

    What cannot change a number or a verdict of the curve is not computed (`exhaustive` computes it all, the
    reference the tests and bench/gate_cost.py hold this to): arms that ablate the same units (the final
    layer and the last quarter of a small model) run once; an ablated answer is generated only for a pair
    refused before ablation (the only answers a flip is counted on; the others' rows keep no answer); and
    with the phrase judge a row stops generating once its answer holds a refusal phrase (it stays refused),
    random sets batched before top sets, so that batches of answers that stay refused end early."""
    spec.check()
    todo = arms(ranked, spec, lm.anatomy.d_mlp)
    if not todo:
        raise GateError(f"no {spec.sign} neurons in the run's rows to ablate")
    if not pairs:
        raise GateError("no held-out pairs to test on")
    if exhaustive:
        chunks = _chunked([a.neurons for a in todo])
    else:  # random sets and top sets in batches of their own: a batch of answers that stay refused ends early;
        # and batches by layer group (the sets of the final layer, of the last quarter, of all layers), so that
        # a batch's rows share the layers below their ablations (computed once: rows_metric's `below`)
        floors = sorted({group_layers(g, lm.anatomy.n_layers)[0] for g in spec.groups} | {0}, reverse=True)
        unique = list(dict.fromkeys(a.neurons for a in todo))
        tops = {a.neurons for a in todo if a.seed < 0}
        chunks = [
            chunk
            for top in (False, True)
            for floor in floors
            for chunk in _chunked(
                [
                    u
                    for u in unique
                    if (u in tops) == top and max(f for f in floors if f <= _lowest(u)) == floor
                ]
            )
        ]
    total = sum(map(len, chunks))
    if direction is not None:  # its arms: the direction and `seeds` random unit directions, one batch
        directions = torch.cat([direction[None].float(), random_directions(len(direction), spec.seeds)])
        total += len(directions)
    layers = sorted({layer for a in todo for layer, _ in a.neurons})
    keys = [(layer, "neuron") for layer in layers]
    unaligned = spec.ablate == "control" and any(tp.shift > 0 for tp in pairs)
    mean = mean_activations(lm, pairs, keys) if spec.ablate == "mean" or unaligned else None
    rows = []
    if progress:
        progress(0, len(pairs) * total)
    for i, tp in enumerate(pairs):
        bound = metric.bind(tp)
        with torch.inference_mode():
            with ActivationRecorder(lm, keys) as control:
                m_control = rows_metric(lm, bound, tp.control_ids, 1).item()
            m_before = rows_metric(lm, bound.shifted(tp.shift), tp.treatment_ids, 1).item()
        prompt = tp.treatment_ids[: tp.treatment_prompt_len]  # its target, if any, left out
        before = decode_answer(lm, greedy_ids(lm, prompt, spec.max_new_tokens))
        refused_before = judge.refuses(before, tp.pair.treatment)
        judged = _Before(judge, m_before, m_control, refused_before, before)
        if spec.ablate == "control":
            values = {layer: _end_aligned(control[(layer, "neuron")], tp, mean, layer) for layer in layers}
        elif spec.ablate == "mean":
            values = {layer: mean[layer][None] for layer in layers}
        else:
            values = {layer: torch.zeros(1, lm.anatomy.d_mlp, device=lm.device) for layer in layers}
        after: dict[tuple[Neuron, ...], tuple[float, str | None]] = {}
        generate = exhaustive or refused_before
        stop = None if exhaustive or not hasattr(judge, "settled") else [_Settled(lm, judge, len(prompt))]
        answering = (spec.max_new_tokens, stop) if generate else None
        scored = (bound.shifted(tp.shift), tp.treatment_ids, prompt, answering)
        done = 0
        for chunk in chunks:
            ablation = Ablation(lm, _masks(chunk, layers, lm), values)
            shared = 0 if exhaustive else min(map(_lowest, chunk))  # (the layers below it: computed once)
            after.update(zip(chunk, _under(lm, ablation, len(chunk), *scored, below=shared), strict=True))
            done += len(chunk)
            if progress:
                progress(i * total + done, len(pairs) * total)
        for arm in todo:  # (in exhaustive mode a repeated set ran again: its result is the same)
            m_after, text = after[arm.neurons]
            rows.append(_row(tp, arm.group, arm.k, len(arm.neurons), arm.seed, m_after, text, judged))
        if direction is not None:  # the direction, then the random ones: the rows of one batch
            found = _under(lm, DirectionAblation(lm, directions), len(directions), *scored)
            for seed, (m_after, text) in zip(range(-1, spec.seeds), found, strict=True):
                rows.append(_row(tp, DIRECTION, 1, 1, seed, m_after, text, judged))
            if progress:
                progress((i + 1) * total, len(pairs) * total)
    return rows


def _under(lm: LoadedModel, ablation, rows: int, metric: BoundMetric, ids, prompt, answering, below: int = 0):
    """Each batch row's metric of `ids` under `ablation` (which touches decoder layers `below` and up only),
    and its greedy answer to `prompt` where it counts (`answering`: (max new tokens, stopping criteria), else
    None)."""
    with torch.inference_mode(), ablation:
        scores = rows_metric(lm, metric, ids, rows, below).tolist()
    texts: list[str | None] = [None] * rows
    if answering:
        with ablation:
            texts = [decode_answer(lm, a) for a in greedy_batch(lm, prompt, answering[0], rows, answering[1])]
    return list(zip(scores, texts, strict=True))


DIRECTION = "direction"  # the layer group of a check's direction arms (K = 1: one direction)


@dataclass(frozen=True)
class _Before:
    """A held-out pair before any ablation: what every arm's row compares with."""

    judge: PhraseJudge | ModelJudge
    m_before: float
    m_control: float
    refused: bool
    text: str


def _row(tp: TokenizedPair, group: str, k: int, units: int, seed: int, m_after: float, text, b: _Before):
    return dict(
        pair=tp.index,
        pair_id=tp.pair.id,
        grp=group,
        k=k,
        units=units,
        arm="top" if seed < 0 else "random",
        seed=seed,
        m_before=b.m_before,
        m_after=m_after,
        shift=m_after - b.m_before,
        te=b.m_before - b.m_control,
        refused_before=b.refused,
        refused_after=None if text is None else b.judge.refuses(text, tp.pair.treatment),
        text_before=b.text,
        text_after=text,
    )


def _lowest(units: tuple[Neuron, ...]) -> int:
    """The lowest decoder layer a set of units sits in (the ablation changes nothing below it)."""
    return min(layer for layer, _ in units)


def _chunked(sets: list) -> list[list]:
    return [sets[i : i + ROWS_PER_BATCH] for i in range(0, len(sets), ROWS_PER_BATCH)]


class _Settled(StoppingCriteria):
    """Ends each row of a batched generate once the judge's verdict on its answer so far cannot change."""

    def __init__(self, lm: LoadedModel, judge: PhraseJudge, prompt_len: int):
        self.lm, self.judge, self.prompt_len = lm, judge, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        answers = [decode_answer(self.lm, row[self.prompt_len :].tolist()) for row in input_ids]
        return torch.tensor([self.judge.settled(a) for a in answers], device=input_ids.device)


def _end_aligned(control: torch.Tensor, tp: TokenizedPair, mean, layer: int) -> torch.Tensor:
    """The control's activations (control positions, d_mlp) placed at the treatment's positions, aligned from
    the end; the treatment's positions with no control counterpart take the mean activation."""
    n = len(tp.treatment_ids)
    if tp.shift == 0:
        return control
    if tp.shift < 0:  # a longer control: its first tokens have no treatment counterpart
        return control[-tp.shift :]
    head = mean[layer][None].to(control.dtype).expand(tp.shift, -1)
    return torch.cat([head, control])[:n]


def _masks(chunk: list[tuple[Neuron, ...]], layers: list[int], lm: LoadedModel) -> dict[int, torch.Tensor]:
    masks = {layer: torch.zeros(len(chunk), lm.anatomy.d_mlp, dtype=torch.bool) for layer in layers}
    for row, units in enumerate(chunk):
        for layer, unit in units:
            masks[layer][row, unit] = True
    return {layer: m.to(lm.device) for layer, m in masks.items()}


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
