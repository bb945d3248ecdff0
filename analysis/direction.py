"""The refusal direction (Arditi et al. 2024) beside the neuron gate.

Per layer l, r_l is the difference of the mean residual-stream activations (layer l's output) of a run's
treatment and control prompts at each prompt's last position (where the metric reads the decision), as a
unit vector: from the run's own pairs only, so that held-out pairs test it. A `direction` site patches only
the component of layer l's output along r_l (analysis.patching); ablating a direction removes it from the
residual stream, x <- x - r r^T x, at the embeddings and at every layer's output, at every position, so that
no layer reads it (Arditi et al.'s directional ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harmmed_tui.analysis.errors import PairsError
from harmmed_tui.analysis.metrics import Metric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair
from harmmed_tui.analysis.patching import ActivationRecorder, rows_metric


@dataclass(frozen=True)
class Directions:
    """A run's direction of each layer: unit rows (n_layers x d_model, float32 on the CPU), the norm of each
    layer's mean difference, and how many pairs it was taken over."""

    units: torch.Tensor
    norms: torch.Tensor
    pairs: int


def mean_difference(lm: LoadedModel, pairs: list[TokenizedPair], progress=None) -> Directions:
    """The difference of the mean layer outputs of the pairs' treatment and control prompts at their last
    prompt position, per layer, normalised. `progress(done, total)` hears of each pair."""
    a = lm.anatomy
    keys = [(layer, "resid") for layer in range(a.n_layers)]
    total = torch.zeros(a.n_layers, a.d_model, dtype=torch.float64)
    with torch.inference_mode():
        for i, tp in enumerate(pairs, 1):
            sides = (
                (tp.treatment_ids, tp.treatment_prompt_len - 1, 1),
                (tp.control_ids, tp.prompt_len - 1, -1),
            )
            for ids, last, sign in sides:
                with ActivationRecorder(lm, keys) as acts:
                    lm.model(torch.tensor([ids], device=lm.device), use_cache=False, logits_to_keep=1)
                for (layer, _), act in acts.items():
                    total[layer] += sign * act[last].double().cpu()
            if progress:
                progress(i, len(pairs))
    diff = total / max(1, len(pairs))
    norms = diff.norm(dim=-1)
    if not len(pairs) or not bool((norms > 0).all()):
        raise PairsError(
            "the refusal direction is the difference of the treatment and control prompts' activations: "
            "these pairs' prompts do not differ"
        )
    return Directions((diff / norms[:, None]).float(), norms.float(), len(pairs))


def random_directions(d_model: int, seeds: int) -> torch.Tensor:
    """`seeds` unit directions drawn uniformly (seeded 0.. seeds-1): the baseline a direction is compared to."""
    rows = [torch.randn(d_model, generator=torch.Generator().manual_seed(s)) for s in range(seeds)]
    out = torch.stack(rows) if rows else torch.zeros(0, d_model)
    return out / out.norm(dim=-1, keepdim=True)


class DirectionAblation:
    """Context manager removing a unit direction from the residual stream of each batch row (`directions`:
    rows x d_model, a row each): at the embeddings and at every decoder layer's output, every position,
    generated tokens included."""

    def __init__(self, lm: LoadedModel, directions: torch.Tensor):
        self.lm, self.r = lm, directions.to(lm.device)

    def __enter__(self):
        modules = [self.lm.model.get_input_embeddings(), *self.lm.anatomy.layers]
        self._handles = [m.register_forward_hook(self._remove) for m in modules]
        return self

    def _remove(self, module, args, out):
        x = out[0] if isinstance(out, tuple) else out
        r = self.r[: x.shape[0], None, :].to(x.dtype)
        x.sub_((x * r).sum(-1, keepdim=True) * r)  # in place: a fresh output, and no autograd is recording

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def removed_by_layer(
    lm: LoadedModel, metric: Metric, pairs: list[TokenizedPair], directions: torch.Tensor, progress=None
) -> list[float]:
    """For each layer's direction, the share of the mean TE of `pairs` that ablating it removes (Arditi et
    al. choose the direction this way, on pairs they do not test on): one batch row per layer.
    `progress(done, total)` hears of each pair."""
    shifts, tes = torch.zeros(len(directions), dtype=torch.float64), 0.0
    with torch.inference_mode():
        for i, tp in enumerate(pairs, 1):
            bound = metric.bind(tp)
            on_treatment = bound.shifted(tp.shift)
            m_control = rows_metric(lm, bound, tp.control_ids, 1)[0]
            m_before = rows_metric(lm, on_treatment, tp.treatment_ids, 1)[0]
            with DirectionAblation(lm, directions):
                after = rows_metric(lm, on_treatment, tp.treatment_ids, len(directions))
            shifts += (after - m_before).double().cpu()
            tes += (m_before - m_control).item()
            if progress:
                progress(i, len(pairs))
    if not tes:
        return [0.0] * len(directions)
    return (-shifts / tes).tolist()
