"""Exact activation patching, many sites per forward pass.

For one pair we run the treatment once (caching the activations every site may need) and the control once
(capturing each decoder layer's call arguments). A batch of sites is then evaluated by replaying only the
decoder layers from the lowest patched layer upward, one batch row per site, from the control run's cached
layer input: layers below the patch cannot change. Logits are computed only at the positions the metric
reads, and the metric is reduced on device, so a batch costs one host sync.

The replay depends on how transformers calls its decoder layers (analysis.layer_calls), so every pair first
checks that an unpatched replay reproduces the control run, and stops with EngineCheckError if it does not.
`engine="hooks"` is the fallback that depends on nothing but forward hooks: whole-model forward passes of
the control prompt, one batch row per site.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

import torch
import transformers

from harmmed_tui.analysis.behaviour import greedy_batch
from harmmed_tui.analysis.errors import EngineCheckError
from harmmed_tui.analysis.layer_calls import LayerCall
from harmmed_tui.analysis.metrics import BoundMetric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair
from harmmed_tui.analysis.sites import UNIT_MODULES, Site, covered_positions

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


def rows_metric(
    lm: LoadedModel, metric: BoundMetric, ids: list[int], rows: int, below: int = 0
) -> torch.Tensor:
    """The metric of `rows` copies of one prompt, each under its own intervention (hooks): shape (rows,).
    `below`: the rows' interventions all sit at decoder layer `below` or above, so the layers under it compute
    the same on every row: they run once, on one row, widened to `rows` as they enter layer `below`."""
    keep = torch.tensor(metric.positions, device=lm.device)
    if not below or rows == 1:
        inputs = torch.tensor([ids], device=lm.device).expand(rows, -1)
        return metric(lm.model(inputs, use_cache=False, logits_to_keep=keep).logits)

    def widen(module, args, kwargs):
        if args:
            return (args[0].expand(rows, *args[0].shape[1:]).contiguous(), *args[1:]), kwargs
        x = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": x.expand(rows, *x.shape[1:]).contiguous()}

    handle = lm.anatomy.layers[below].register_forward_pre_hook(widen, with_kwargs=True)
    try:
        inputs = torch.tensor([ids], device=lm.device)
        return metric(lm.model(inputs, use_cache=False, logits_to_keep=keep).logits)
    finally:
        handle.remove()


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
            if module in UNIT_MODULES:
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


ENGINES = ("replay", "hooks")
# How far an unpatched replay may drift from the control run's metric: float32 reproduces it to rounding;
# half precision computes the replay's shorter sequences with other kernel tilings (scaled by max(1, |m|)).
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class PairPatcher:
    """IE(site) = m(control run with the site set to its treatment value) - m(control run), for one pair."""

    def __init__(
        self,
        lm: LoadedModel,
        pair: TokenizedPair,
        metric: BoundMetric,
        keys: Iterable[tuple[int, str]],
        engine: str = "replay",
        control_noise: torch.Tensor | None = None,
        directions: torch.Tensor | None = None,
    ):
        """`control_noise` (T x d_model): the control run is the control prompt with this added to its token
        embeddings (a noise contrast, analysis.noise); otherwise the control prompt itself. `directions`
        (n_layers x d_model, unit rows): what `direction` sites patch along (analysis.direction)."""
        self.lm, self.anatomy, self.metric, self.engine = lm, lm.anatomy, metric, engine
        self.directions = directions
        self.seq_len, self.control_ids = len(pair.control_ids), pair.control_ids
        self.shift, self.suffix_len, self.unchanged = pair.shift, pair.suffix_len, pair.unchanged
        device = lm.device
        ids = torch.tensor([pair.control_ids], device=device)
        with torch.inference_mode():
            if control_noise is None:
                self.control_inputs = {"input_ids": ids}
            else:
                embeds = lm.model.get_input_embeddings()(ids)
                self.control_inputs = {"inputs_embeds": embeds + control_noise.to(embeds)}
            with ActivationRecorder(lm, keys) as self.treatment_acts:
                ids = torch.tensor([pair.treatment_ids], device=device)
                self.m_treatment = prompt_metric(lm, metric.shifted(pair.shift), input_ids=ids)
            if engine == "hooks":
                self.m_control = prompt_metric(lm, metric, **self.control_inputs)
            else:
                self._prepare_replay()
        self.te = self.m_treatment - self.m_control

    def _prepare_replay(self) -> None:
        """Capture each decoder layer's call on the control prompt, record its keys/values by replaying it,
        and check that an unpatched replay reproduces the control run."""
        attn = self.lm.model.config._attn_implementation
        self.mask_kind = {"sdpa": "bool", "eager": "float"}.get(attn)
        self.layer_calls: list[LayerCall] = []
        with ExitStack() as stack:
            for layer in self.anatomy.layers:
                hook = layer.register_forward_pre_hook(self._capture_call, with_kwargs=True)
                stack.callback(hook.remove)
            self.m_control = prompt_metric(self.lm, self.metric, **self.control_inputs)
        # Keys/values of earlier positions can be reused only through a cache argument we recognise.
        self.prefix_ok = bool(self.mask_kind) and all(c.cache for c in self.layer_calls)
        self.kv = [KVPrefix() for _ in self.anatomy.layers]
        try:
            self.control_final = self._replay(0, 0, 1, self.seq_len, record=True)
            self._self_check(0, 0, self.control_final)
            # a later layer and position: exercises the cache prefix, the mask and the position slices
            start, first = self.anatomy.n_layers // 2, self._first_position([])
            stop = first + 1 if self.prefix_ok else self.seq_len
            self._self_check(start, first, self._replay(start, first, 1, stop))
        except EngineCheckError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
            self._fail(f"the replay raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    def _self_check(self, start: int, first: int, hidden: torch.Tensor) -> None:
        got = self.metric(self.anatomy.logits(hidden[:, [p - first for p in self.metric.positions]]))[0]
        want = self.m_control
        tolerance = SELF_CHECK_TOLERANCE.get(self.lm.dtype, 5e-2) * max(1.0, abs(want.item()))
        if not abs(got - want).item() <= tolerance:  # (NaN fails too)
            self._fail(
                f"an unpatched replay from layer {start}, position {first} gives metric {got.item():.6g} "
                f"where the control run gives {want.item():.6g} (|diff| > {tolerance:.0e})"
            )

    def _fail(self, what: str):
        raise EngineCheckError(
            f"the exact engine's self-check failed for {type(self.lm.model).__name__} with transformers "
            f"{transformers.__version__}: {what}. Its decoder layers' arguments changed in a way the replay "
            "does not handle; nothing was stored. Rerun with --engine hooks (slower, forward hooks only), "
            "and please report it."
        )

    def _capture_call(self, module, args, kwargs):
        self.layer_calls.append(LayerCall.capture(module, args, kwargs, self.seq_len))

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
        # hooks run the whole prompt; a kernel we cannot hand a prefix mask, or a layer without a cache
        # argument we recognise, replays every position
        if self.engine == "hooks" or not self.prefix_ok:
            return 0
        return min([self._positions(s)[0] for s in sites] + self.metric.positions)

    def _positions(self, site: Site) -> range:
        """The positions a site patches; of `*` (or `suffix`), only those where the runs differ: the first
        `unchanged` hold the same value in both, so patching them changes nothing, and the replay starts
        after them."""
        covered = covered_positions(site.position, self.seq_len, self.suffix_len)
        if len(covered) > 1 and covered.start < self.unchanged < covered.stop:
            return range(self.unchanged, covered.stop)
        return covered

    @torch.inference_mode()
    def patched_metric(self, sites: list[Site]) -> torch.Tensor:
        """The metric of a batch of control runs, row i with sites[i] set to its treatment value."""
        first = self._first_position(sites)
        with ExitStack() as stack:
            for (layer, module), index in self._patch_index(sites, first).items():
                stack.callback(self._install_patch(layer, module, index, first).remove)
            if self.engine == "hooks":
                inputs = {k: v.expand(len(sites), *v.shape[1:]) for k, v in self.control_inputs.items()}
                keep = torch.tensor(self.metric.positions, device=self.lm.device)
                return self.metric(self.lm.model(**inputs, use_cache=False, logits_to_keep=keep).logits)
            start = min(s.layer for s in sites)
            # At the start layer only the patched positions change; later ones keep the control output.
            at_start = [self._positions(s)[-1] for s in sites if s.layer == start]
            stop = max(at_start) + 1 if self.prefix_ok else self.seq_len
            hidden = self._replay(start, first, len(sites), stop)
        positions = [p - first for p in self.metric.positions]
        return self.metric(self.anatomy.logits(hidden[:, positions]))

    def _replay(self, start: int, first: int, batch: int, stop: int, record: bool = False) -> torch.Tensor:
        """Run decoder layers start.. on the control run's layer input from position `first` on; the start
        layer computes positions first..stop-1 only and takes the rest from the control run."""
        n = self.seq_len
        hidden = self.layer_calls[start].hidden_states[:, first:stop].expand(batch, -1, -1).contiguous()
        for layer in range(start, self.anatomy.n_layers):
            end = stop if layer == start else n
            captured = self.layer_calls[layer]
            call = _expand(captured.sliced(first, end, self._causal_mask), batch)
            if captured.cache:
                kv = self.kv[layer]
                prefix = KVPrefix(kv.keys[..., :first, :], kv.values[..., :first, :]) if first else None
                call[captured.cache] = kv if record else prefix
            call[captured.hidden] = hidden
            hidden = _first(self.anatomy.layers[layer](**call))
            if end < n:
                last = layer + 1 == self.anatomy.n_layers
                rest = self.control_final if last else self.layer_calls[layer + 1].hidden_states
                hidden = torch.cat([hidden, rest[:, end:].expand(batch, -1, -1)], dim=1)
        return hidden

    @torch.inference_mode()
    def patched_answers(self, sites: list[Site], max_new_tokens: int) -> list[list[int]]:
        """Greedy answers to the control prompt, row i with sites[i] set to its treatment value while the
        prompt is read (generated tokens are not patched: they attend to the patched prompt's cache)."""
        with ExitStack() as stack:
            for (layer, module), index in self._patch_index(sites, 0).items():
                stack.callback(self._install_patch(layer, module, index, 0, self.seq_len).remove)
            return greedy_batch(self.lm, self.control_ids, max_new_tokens, len(sites))

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
            positions = self._positions(s)
            target = coords[(s.layer, s.module)]
            if s.module in UNIT_MODULES:
                units = self.anatomy.units(s.module, s.neuron, s.width)
                target += [(row, p, u) for p in positions for u in units]
            else:
                target += [(row, p) for p in positions]
        device = self.lm.device
        return {k: tuple(torch.tensor(c, device=device).T) for k, c in coords.items()}

    def _install_patch(
        self, layer: int, module: str, index: tuple[torch.Tensor, ...], first: int, length: int | None = None
    ):
        """Hooks that overwrite the indexed activations with the treatment's; with `length`, only in calls
        over that many positions (a generation's prompt pass, not its one-token steps)."""
        source = self.treatment_acts[(layer, module)]
        # the treatment's value at each (position[, unit]); its position p + shift pairs with the control's p
        values = source[(index[1] + self.shift, *index[2:])]
        index = (index[0], index[1] - first, *index[2:])  # the replay's tensors start at position `first`
        mod = self.anatomy.module(layer, module)
        # In place: the patched tensors are fresh outputs of this replay, and no autograd is recording.
        if (
            module == "direction"
        ):  # only the component along r: the control's projection set to the treatment's
            r = self.directions[layer].to(device=values.device, dtype=values.dtype)

            def patch_along(m, args, out):
                if length is None or _first(out).shape[1] == length:
                    x = _first(out)
                    current = x[index]
                    x.index_put_(index, current + ((values - current) @ r)[:, None] * r)

            return mod.register_forward_hook(patch_along)
        if module in UNIT_MODULES:

            def patch_input(m, args):
                if length is None or args[0].shape[1] == length:
                    args[0].index_put_(index, values)

            return mod.register_forward_pre_hook(patch_input)

        def patch_output(m, args, out):
            if length is None or _first(out).shape[1] == length:
                _first(out).index_put_(index, values)

        return mod.register_forward_hook(patch_output)


class DirectEffects:
    """DE(site) = m(treatment run with the site held at its control value) - m(control run), for one pair
    (Vig et al. 2020's natural direct effect, in difference form): the IE of the pair with its roles swapped
    (TokenizedPair.reversed), less that pair's TE, which is -TE."""

    def __init__(
        self,
        lm: LoadedModel,
        pair: TokenizedPair,
        metric: BoundMetric,
        keys: Iterable[tuple[int, str]],
        engine: str = "replay",
        directions: torch.Tensor | None = None,
    ):
        self.shift = pair.shift
        reverse = pair.reversed()
        self.patcher = PairPatcher(
            lm, reverse, metric.shifted(pair.shift), keys, engine, directions=directions
        )

    def of(self, sites: list[Site], batch_tokens: int) -> torch.Tensor:
        """The DE of each site, in order, on device (the reversed patcher batches them its own way)."""
        reverse = [s.shifted(self.shift) for s in sites]
        values = {}
        for chunk, ie in self.patcher.effects(reverse, batch_tokens):
            values.update(zip(chunk, ie - self.patcher.te, strict=True))
        return torch.stack([values[s] for s in reverse])


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
