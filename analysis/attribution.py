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
from harmmed_tui.analysis.sites import ALL_POSITIONS, Site


class Attribution:
    """One pair's metric totals and the AtP estimate of every site's IE."""

    def __init__(self, lm: LoadedModel, pair: TokenizedPair, metric: BoundMetric, sites: list[Site]):
        keys = sorted({(s.layer, s.module) for s in sites})
        device = lm.device
        with torch.inference_mode():
            with ActivationRecorder(lm, keys) as treatment:
                ids = torch.tensor([pair.treatment_ids], device=device)
                self.m_treatment = prompt_metric(lm, metric, input_ids=ids)
        with torch.enable_grad(), ActivationRecorder(lm, keys, in_graph=True) as control:
            ids = torch.tensor([pair.control_ids], device=device)
            # Gradients start at the embeddings, so every activation downstream is part of the graph.
            embeds = lm.model.get_input_embeddings()(ids).detach().requires_grad_()
            m_control = prompt_metric(lm, metric, inputs_embeds=embeds)
            grads = torch.autograd.grad(m_control, [control[k] for k in keys], materialize_grads=True)
        self.m_control = m_control.detach()
        self.te = self.m_treatment - self.m_control
        # Per (layer, module): contribution of each position (rows; a last row for `*`) and unit (columns),
        # all in one flat table so that any list of sites is read out with one gather.
        tables, self.offsets, offset = [], {}, 0
        for key, grad in zip(keys, grads, strict=True):
            # in float64: half-precision differences of close activations are mostly rounding
            a_t, a_c, g = (x.double() for x in (treatment[key], control[key][0].detach(), grad[0]))
            delta = (a_t - a_c) * g
            per_pos = delta if key[1] == "neuron" else delta.sum(-1, keepdim=True)
            table = torch.cat([per_pos, per_pos.sum(0, keepdim=True)])
            # base + position * width + neuron addresses a unit; the +1 cancels NO_NEURON (-1) of other sites
            self.offsets[key] = (offset + (key[1] != "neuron"), table.shape[1], table.shape[0] - 1)
            offset += table.numel()
            tables.append(table.flatten())
        self.flat = torch.cat(tables).cpu()

    def effects(self, sites: list[Site]) -> torch.Tensor:
        """The AtP IE of each site, in order (single units: AtP ranks neurons one by one)."""
        offsets = self.offsets
        index = [
            base + (s.position if s.position != ALL_POSITIONS else star) * width + s.neuron
            for s in sites
            for base, width, star in (offsets[s.layer, s.module],)
        ]
        return self.flat[torch.tensor(index, dtype=torch.long)]
