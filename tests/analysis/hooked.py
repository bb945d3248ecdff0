"""One plain forward pass with one hook: what the reference implementations the engines are held to run."""

import torch


def hooked_logits(lm, ids: list[int], module=None, hook=None, on_input: bool = False) -> torch.Tensor:
    """Logits of a forward pass of `ids`, `hook` on `module` as a forward hook (a pre-hook with `on_input`)."""
    handle = None
    if hook is not None:
        handle = module.register_forward_pre_hook(hook) if on_input else module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return lm.model(torch.tensor([ids]), use_cache=False).logits
    finally:
        if handle is not None:
            handle.remove()
