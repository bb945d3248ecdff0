"""Exact activation patching, many sites per forward pass.

For one pair we run the treatment once (caching the activations every site may need) and the control once
(capturing each decoder layer's call arguments). A batch of sites is then evaluated by replaying only the
decoder layers from the lowest patched layer upward, one batch row per site, from the control run's cached
layer input: layers below the patch cannot change. Logits are computed only at the positions the metric
reads, and the metric is reduced on device, so a batch costs one host sync.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

import torch

from analysis.metrics import BoundMetric
from analysis.models import LoadedModel
from analysis.pairs import TokenizedPair
from analysis.sites import ALL_POSITIONS, Site

# Activations cached per site kind: (layer, module) -> tensor of shape (T, width).
Cache = dict[tuple[int, str], torch.Tensor]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _expand(x, batch: int):
    """Broadcast a captured batch-1 argument to `batch` rows without copying."""
    if torch.is_tensor(x):
        return x.expand(batch, *x.shape[1:]) if x.dim() >= 2 and x.shape[0] == 1 else x
    if isinstance(x, tuple | list):
        return type(x)(_expand(v, batch) for v in x)
    return x


def prompt_metric(lm: LoadedModel, metric: BoundMetric, **inputs) -> torch.Tensor:
    """The metric of one unpatched pass (input_ids or inputs_embeds of batch 1), from logits computed only
    at the metric's positions: the vocabulary projection elsewhere is wasted."""
    keep = torch.tensor(metric.positions, device=lm.device)
    return metric(lm.model(**inputs, use_cache=False, logits_to_keep=keep).logits)[0]


class ActivationRecorder:
    """Context manager that records the activations of chosen (layer, module) sites: batch row 0, detached;
    or, with `in_graph`, the whole tensor as autograd sees it (to take gradients with respect to it)."""

    def __init__(self, lm: LoadedModel, keys: Iterable[tuple[int, str]], in_graph: bool = False):
        self.anatomy, self.keys, self.cache = lm.anatomy, sorted(set(keys)), {}
        self.in_graph = in_graph

    def __enter__(self) -> Cache:
        self._stack = ExitStack()
        for layer, module in self.keys:
            mod = self.anatomy.module(layer, module)
            key = (layer, module)
            if module == "neuron":
                hook = mod.register_forward_pre_hook(lambda m, args, key=key: self._put(key, args[0]))
            else:
                hook = mod.register_forward_hook(lambda m, args, out, key=key: self._put(key, _first(out)))
            self._stack.callback(hook.remove)
        return self.cache

    def _put(self, key, tensor):
        self.cache[key] = tensor if self.in_graph else tensor[0].detach()

    def __exit__(self, *exc):
        self._stack.close()


class KVPrefix:
    """Stands in for a layer's KV cache: either records the keys/values of a full pass, or prepends a recorded
    prefix (the control run's keys/values before the first patched position) to the replayed ones."""

    def __init__(self, keys=None, values=None):
        self.keys, self.values = keys, values

    def update(self, keys, values, *args, **kwargs):
        if self.keys is None:
            self.keys, self.values = keys, values
            return keys, values
        prefix = (self.keys.expand(keys.shape[0], -1, -1, -1), self.values.expand(keys.shape[0], -1, -1, -1))
        return torch.cat([prefix[0], keys], dim=-2), torch.cat([prefix[1], values], dim=-2)


_CACHE_ARGS = ("past_key_values", "layer_past")


class PairPatcher:
    """IE(site) = m(control run with the site set to its treatment value) - m(control run), for one pair."""

    def __init__(
        self, lm: LoadedModel, pair: TokenizedPair, metric: BoundMetric, keys: Iterable[tuple[int, str]]
    ):
        self.lm, self.anatomy, self.metric = lm, lm.anatomy, metric
        self.seq_len = len(pair.control_ids)
        device = lm.device
        self.mask_kind = {"sdpa": "bool", "eager": "float"}.get(lm.model.config._attn_implementation)
        with torch.inference_mode():
            with ActivationRecorder(lm, keys) as self.treatment_acts:
                ids = torch.tensor([pair.treatment_ids], device=device)
                self.m_treatment = prompt_metric(lm, metric, input_ids=ids)
            self.layer_calls: list[dict] = []
            with ExitStack() as stack:
                for layer in self.anatomy.layers:
                    hook = layer.register_forward_pre_hook(self._capture_call, with_kwargs=True)
                    stack.callback(hook.remove)
                ids = torch.tensor([pair.control_ids], device=device)
                self.m_control = prompt_metric(lm, metric, input_ids=ids)
            self.kv = [KVPrefix() for _ in self.anatomy.layers]
            self.control_final = self._replay(0, 0, 1, self.seq_len, record=True)
        self.te = self.m_treatment - self.m_control

    def _capture_call(self, module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        bound.update(bound.pop("kwargs", {}))
        self.layer_calls.append(bound)

    def effects(self, sites: list[Site], batch_tokens: int) -> Iterator[tuple[list[Site], torch.Tensor]]:
        """(sites, IE on device) per batch. Sites are grouped by layer, then position, so that each replay
        starts at the highest layer and the latest position it can; a batch holds at most `batch_tokens`
        replayed token positions (rows x positions from its first patched one), which bounds peak memory."""
        ordered = sorted(sites, key=lambda s: (s.layer, s.position))
        chunk: list[Site] = []
        chunk_first = self.seq_len  # first position of the chunk's replay, kept as sites are added
        for site in ordered:
            first = min(chunk_first, self._first_position([site]))
            if chunk and (len(chunk) + 1) * (self.seq_len - first) > batch_tokens:
                yield chunk, self.patched_metric(chunk) - self.m_control
                chunk, first = [], self._first_position([site])
            chunk.append(site)
            chunk_first = first
        if chunk:
            yield chunk, self.patched_metric(chunk) - self.m_control

    def _first_position(self, sites: list[Site]) -> int:
        """The first position a replay of these sites must compute (causal attention leaves earlier ones
        at their control values)."""
        if not self.mask_kind:  # an attention kernel we cannot hand a prefix mask: replay every position
            return 0
        first = min(0 if s.position == ALL_POSITIONS else s.position for s in sites)
        return min(first, *self.metric.positions)

    @torch.inference_mode()
    def patched_metric(self, sites: list[Site]) -> torch.Tensor:
        start, first = min(s.layer for s in sites), self._first_position(sites)
        # At the start layer only the patched positions change; later ones keep the control output.
        at_start = [s.position for s in sites if s.layer == start]
        stop = self.seq_len if ALL_POSITIONS in at_start or not self.mask_kind else max(at_start) + 1
        with ExitStack() as stack:
            for (layer, module), index in self._patch_index(sites, first).items():
                stack.callback(self._install_patch(layer, module, index, first).remove)
            hidden = self._replay(start, first, len(sites), stop)
        positions = [p - first for p in self.metric.positions]
        return self.metric(self.anatomy.logits(hidden[:, positions]))

    def _replay(self, start: int, first: int, batch: int, stop: int, record: bool = False) -> torch.Tensor:
        """Run decoder layers start.. on the control run's layer input from position `first` on; the start
        layer computes positions first..stop-1 only and takes the rest from the control run."""
        n = self.seq_len
        hidden = self.layer_calls[start]["hidden_states"][:, first:stop].expand(batch, -1, -1).contiguous()
        for layer in range(start, self.anatomy.n_layers):
            end = stop if layer == start else n
            call = {k: self._slice(k, v, first, end) for k, v in self.layer_calls[layer].items()}
            call = _expand(call, batch)
            for name in _CACHE_ARGS:
                if name in call:
                    kv = self.kv[layer]
                    prefix = KVPrefix(kv.keys[..., :first, :], kv.values[..., :first, :]) if first else None
                    call[name] = kv if record else prefix
            call["hidden_states"] = hidden
            hidden = _first(self.anatomy.layers[layer](**call))
            if end < n:
                last = layer + 1 == self.anatomy.n_layers
                rest = self.control_final if last else self.layer_calls[layer + 1]["hidden_states"]
                hidden = torch.cat([hidden, rest[:, end:].expand(batch, -1, -1)], dim=1)
        return hidden

    def _slice(self, name: str, value, first: int, stop: int):
        """A captured layer argument restricted to query positions first..stop-1 (keys span 0..stop-1)."""
        n = self.seq_len
        if (first, stop) == (0, n) or name == "hidden_states":
            return value
        if name == "attention_mask":
            return self._causal_mask(first, stop) if value is None else value[..., first:stop, :stop]
        if name in ("position_ids", "position_embeddings"):
            return (
                tuple(v[:, first:stop] for v in value) if isinstance(value, tuple) else value[:, first:stop]
            )
        if name == "cache_position":
            return value[first:stop]
        return value

    def _causal_mask(self, first: int, stop: int) -> torch.Tensor:
        device = self.lm.device
        allowed = (
            torch.arange(stop, device=device)[None, :] <= torch.arange(first, stop, device=device)[:, None]
        )
        if self.mask_kind == "bool":
            return allowed[None, None]
        mask = torch.zeros(allowed.shape, dtype=self.lm.dtype, device=device)
        return mask.masked_fill(~allowed, torch.finfo(self.lm.dtype).min)[None, None]

    def _patch_index(self, sites: list[Site], first: int) -> dict[tuple[int, str], tuple[torch.Tensor, ...]]:
        """For each patched (layer, module): the (row, position[, unit]) coordinates to overwrite, with
        positions counted in the full sequence."""
        coords: dict[tuple[int, str], list[tuple[int, ...]]] = defaultdict(list)
        for row, s in enumerate(sites):
            positions = range(self.seq_len) if s.position == ALL_POSITIONS else (s.position,)
            target = coords[(s.layer, s.module)]
            if s.module == "neuron":
                target += [(row, p, u) for p in positions for u in range(s.neuron, s.neuron + s.width)]
            else:
                target += [(row, p) for p in positions]
        device = self.lm.device
        return {k: tuple(torch.tensor(c, device=device).T) for k, c in coords.items()}

    def _install_patch(self, layer: int, module: str, index: tuple[torch.Tensor, ...], first: int):
        source = self.treatment_acts[(layer, module)]
        values = source[index[1:]]  # treatment value at each (position[, unit])
        index = (index[0], index[1] - first, *index[2:])  # the replay's tensors start at position `first`
        mod = self.anatomy.module(layer, module)
        # In place: the patched tensors are fresh outputs of this replay, and no autograd is recording.
        if module == "neuron":

            def patch_input(m, args):
                args[0].index_put_(index, values)

            return mod.register_forward_pre_hook(patch_input)

        def patch_output(m, args, out):
            _first(out).index_put_(index, values)

        return mod.register_forward_hook(patch_output)


def auto_batch_tokens(lm: LoadedModel) -> int:
    """Token positions per replay: on a GPU, what fits in a third of free memory; on a CPU, where large
    batches gain nothing, a size that keeps the prefix skipping fine-grained."""
    if lm.device.type != "cuda":
        return 512
    a = lm.anatomy
    heads = getattr(lm.model.config, "num_attention_heads", 16)
    elem = torch.finfo(lm.dtype).bits // 8
    per_token = (6 * a.d_model + 3 * a.d_mlp + heads * 512) * elem * 2
    free, _ = torch.cuda.mem_get_info(lm.device)
    return max(512, free // 3 // per_token)
