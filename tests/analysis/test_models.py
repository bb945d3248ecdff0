"""Loading by local directory for every supported family; clear errors for what cannot load."""

import pytest
import torch

from harmmed_tui.analysis.models import ModelLoadError, load_model
from tests.conftest import TINY_CONFIGS


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_every_family_loads_and_exposes_its_sites(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    a = lm.anatomy
    assert a.n_layers == 3 and a.d_model == 32
    ids = torch.tensor([[5, 6, 7, 8]])
    seen = {}
    hooks = [
        a.module(1, m).register_forward_hook(lambda mod, args, out, m=m: seen.__setitem__(m, out))
        for m in ("resid", "attn", "mlp")
    ]
    hooks.append(a.down(1).register_forward_pre_hook(lambda mod, args: seen.__setitem__("neuron", args[0])))
    with torch.no_grad():
        logits = lm.model(ids).logits
    for h in hooks:
        h.remove()
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    assert first(seen["mlp"]).shape == (1, 4, 32) and first(seen["attn"]).shape == (1, 4, 32)
    assert seen["neuron"].shape == (1, 4, a.d_mlp)
    # the anatomy's head reproduces the model's own logits from the last decoder layer's output
    last = {}
    h = a.layers[-1].register_forward_hook(lambda mod, args, out: last.__setitem__("h", first(out)))
    with torch.no_grad():
        lm.model(ids)
    h.remove()
    assert torch.allclose(a.logits(last["h"]), logits, atol=1e-4)


def test_unknown_model_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such/model'"):
        load_model("no-such/model", device="cpu")


def test_directory_without_config_and_missing_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"), device="cpu")


def test_bad_dtype_and_device():
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("default", dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            load_model("default", device="cuda")
