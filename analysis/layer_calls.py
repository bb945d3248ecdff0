"""A decoder layer's captured call, with each argument the replay rewrites found by what it is.

The exact engine (analysis.patching) re-runs captured decoder-layer calls on a slice of token positions,
with the control run's keys/values as a prefix. It must therefore rewrite some arguments: the KV cache, the
attention mask and every per-position tensor (position ids, rotary embeddings, cache positions).
transformers renames these between releases (5.24 renamed `past_key_values` to `cache`), so none is found
by its name: the cache by its `Cache` type or annotation, the mask by its (.., T, T) shape, per-position
tensors by a length-T sequence axis. What this cannot recognise, the engine's self-check catches.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache


def _mentions_cache(annotation) -> bool:
    """Whether a parameter annotation is (or includes, as in `Cache | None`) a transformers Cache."""
    if isinstance(annotation, str):  # modules with `from __future__ import annotations`
        return "Cache" in annotation
    if isinstance(annotation, type):
        return issubclass(annotation, Cache)
    return any(_mentions_cache(a) for a in typing.get_args(annotation))


def _per_position(value, first: int, stop: int, n: int):
    """`value` restricted to positions first..stop-1 wherever it has a sequence axis of length n: axis 1 of
    batch-first tensors (position ids, rotary cos/sin), axis 0 of a 1-D index tensor (cache positions)."""
    if torch.is_tensor(value):
        if value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == n:
            return value[:, first:stop]
        if value.dim() == 1 and value.shape[0] == n and not value.is_floating_point():
            return value[first:stop]
        return value
    if isinstance(value, tuple | list):
        return type(value)(_per_position(v, first, stop, n) for v in value)
    if isinstance(value, dict):
        return {k: _per_position(v, first, stop, n) for k, v in value.items()}
    return value


@dataclass
class LayerCall:
    """The keyword arguments of one decoder-layer call on an n-token prompt, and which of them are the
    layer's input, its KV cache and its attention mask (None where the layer takes none we recognise)."""

    arguments: dict[str, Any]
    n: int
    hidden: str
    cache: str | None
    mask: str | None

    @classmethod
    def capture(cls, layer: torch.nn.Module, args: tuple, kwargs: dict, n: int) -> LayerCall:
        """From a forward pre-hook's (args, kwargs) on a prompt of n tokens."""
        params = inspect.signature(layer.forward).parameters
        arguments = dict(inspect.signature(layer.forward).bind(*args, **kwargs).arguments)
        for p in params.values():  # flatten **kwargs, whatever the layer calls it
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(p.name, {}))
        hidden = next(iter(params))  # a decoder layer's first parameter is its input
        cache = next(
            (
                name
                for name, p in params.items()
                if isinstance(arguments.get(name), Cache) or _mentions_cache(p.annotation)
            ),
            None,
        )
        return cls(arguments, n, hidden, cache, cls._find_mask(arguments, params, n))

    @staticmethod
    def _find_mask(arguments: dict, params, n: int) -> str | None:
        for name, value in arguments.items():
            if torch.is_tensor(value) and value.dim() == 4 and value.shape[-2:] == (n, n):
                return name
        # Attention kernels may take no mask for a plain causal prompt (SDPA's is_causal); a replay of a
        # position slice needs one, passed through the layer's own mask parameter.
        unset = [
            name
            for name in params
            if "mask" in name and "encoder" not in name and arguments.get(name) is None
        ]
        return unset[0] if len(unset) == 1 else None

    @property
    def hidden_states(self) -> torch.Tensor:
        return self.arguments[self.hidden]

    def sliced(self, first: int, stop: int, causal_mask) -> dict[str, Any]:
        """The call for query positions first..stop-1 (keys span 0..stop-1); `causal_mask(first, stop)`
        builds the mask where the captured call had none. The cache and input are left to the caller."""
        if (first, stop) == (0, self.n):
            return dict(self.arguments)
        out = {}
        for name, value in self.arguments.items():
            if name == self.hidden:
                out[name] = value
            elif name == self.mask:
                out[name] = causal_mask(first, stop) if value is None else value[..., first:stop, :stop]
            else:
                out[name] = _per_position(value, first, stop, self.n)
        if self.mask and self.mask not in out:
            out[self.mask] = causal_mask(first, stop)
        return out
