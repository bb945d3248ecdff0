"""Attribution patching (AtP): IE(site) ~ (a_treatment - a_control) . dm/da, gradient at the control run.

It is the first-order Taylor term of the exact IE, so it ranks every site of a pair from one treatment
forward, one control forward and one backward. The backward asks only for the gradients of the recorded
activations (load_model freezes the parameters), which keeps it near the cost of a forward pass.
"""

from __future__ import annotations

import torch

from harmmed_tui.analysis.metrics import BoundMetric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair
from harmmed_tui.analysis.patching import ActivationRecorder, prompt_metric
from harmmed_tui.analysis.sites import ALL_POSITIONS, SUFFIX, UNIT_MODULES, Site


class Attribution:
    """One pair's metric totals and the AtP estimate of every site's IE."""

    def __init__(
        self,
        lm: LoadedModel,
        pair: TokenizedPair,
        metric: BoundMetric,
        sites: list[Site],
        directions: torch.Tensor | None = None,
    ):
        keys = sorted({(s.layer, s.module) for s in sites})
        device = lm.device
        with torch.inference_mode():
            with ActivationRecorder(lm, keys) as treatment:
                ids = torch.tensor([pair.treatment_ids], device=device)
                self.m_treatment = prompt_metric(lm, metric.shifted(pair.shift), input_ids=ids)
        with torch.enable_grad(), ActivationRecorder(lm, keys, in_graph=True) as control:
            ids = torch.tensor([pair.control_ids], device=device)
            # Gradients start at the embeddings, so every activation downstream is part of the graph.
            embeds = lm.model.get_input_embeddings()(ids).detach().requires_grad_()
            m_control = prompt_metric(lm, metric, inputs_embeds=embeds)
            grads = torch.autograd.grad(m_control, [control[k] for k in keys], materialize_grads=True)
        self.m_control = m_control.detach()
        self.te = self.m_treatment - self.m_control
        # Per (layer, module): contribution of each control position (rows; then a row for `*` and one for
        # `suffix`) and unit (columns), in one flat table so that any list of sites is read out with one gather.
        tables, self.offsets, offset = [], {}, 0
        n, suffix = len(pair.control_ids), pair.suffix_len
        for key, grad in zip(keys, grads, strict=True):
            # in float64: half-precision differences of close activations are mostly rounding
            a_t, a_c, g = (x.double() for x in (treatment[key], control[key][0].detach(), grad[0]))
            diff = _aligned(a_t, pair.shift, n) - a_c
            delta = diff * g
            if key[1] == "head":  # the sum over the head's slice of the output projection's input
                per_pos = delta.unflatten(-1, (lm.anatomy.n_heads, lm.anatomy.d_head)).sum(-1)
            elif key[1] == "neuron":
                per_pos = delta
            elif key[1] == "direction":  # the change along r times the gradient along r
                r = directions[key[0]].to(a_c.device).double()
                per_pos = ((diff @ r) * (g @ r))[:, None]
            else:
                per_pos = delta.sum(-1, keepdim=True)
            table = torch.cat(
                [per_pos, per_pos.sum(0, keepdim=True), per_pos[n - suffix :].sum(0, keepdim=True)]
            )
            # base + position * width + neuron addresses a unit (or head); the +1 cancels NO_NEURON (-1) of
            # other sites
            self.offsets[key] = (offset + (key[1] not in UNIT_MODULES), table.shape[1], n)
            offset += table.numel()
            tables.append(table.flatten())
        self.flat = torch.cat(tables).cpu()

    def effects(self, sites: list[Site]) -> torch.Tensor:
        """The AtP IE of each site, in order (single units: AtP ranks neurons one by one; heads whole)."""
        offsets = self.offsets
        rows = {ALL_POSITIONS: 0, SUFFIX: 1}  # after the n position rows
        index = [
            base + (n + rows[s.position] if s.position in rows else s.position) * width + s.neuron
            for s in sites
            for base, width, n in (offsets[s.layer, s.module],)
        ]
        return self.flat[torch.tensor(index, dtype=torch.long)]


def direct_effects(
    lm: LoadedModel,
    pair: TokenizedPair,
    metric: BoundMetric,
    sites: list[Site],
    directions: torch.Tensor | None = None,
) -> torch.Tensor:
    """AtP's DE of each site: m(treatment) + (a_control - a_treatment) . dm/da at the treatment run
    - m(control), the AtP IE of the pair with its roles swapped less that pair's TE (-TE)."""
    reverse = [s.shifted(pair.shift) for s in sites]
    swapped = Attribution(lm, pair.reversed(), metric.shifted(pair.shift), reverse, directions)
    return swapped.effects(reverse) - swapped.te.item()


def _aligned(a_t: torch.Tensor, shift: int, n: int) -> torch.Tensor:
    """The treatment's activations at the control's n positions (position p + shift pairs with p); control
    positions with no treatment counterpart (a shorter treatment) are never sites, and get zeros."""
    if shift == 0:
        return a_t
    out = a_t.new_zeros((n, *a_t.shape[1:]))
    out[max(0, -shift) :] = a_t[max(0, shift) : max(0, shift) + n - max(0, -shift)]
    return out
