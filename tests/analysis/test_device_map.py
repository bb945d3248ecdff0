"""A model split by accelerate (here: CPU and disk offload) gives the unsplit model's numbers."""

import json

import pytest

from harmmed_tui.analysis import gate
from harmmed_tui.analysis.errors import ModelLoadError
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import load_pairs, tokenize_pairs
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.conftest import SMOLLM_TOKENIZER

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def split(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("map") / "device_map.json"
    path.write_text(json.dumps(SPLIT))
    return str(tiny_dir("llama", SMOLLM_TOKENIZER)), str(path)


def stored(tmp_path, name, spec) -> dict:
    with Store(tmp_path / f"{name}.db") as store:
        execute(spec, store)
        rows = export.effect_rows(store, 1, "layer") + export.effect_rows(store, 1, "neuron")
        provenance = store.run(1)["provenance"]
    keys = ("pair", "layer", "module", "position", "neuron", "method")
    return {tuple(r.get(k) for k in keys): r["ie"] for r in rows}, provenance


@pytest.mark.parametrize(
    "changes",
    [
        dict(modules=("resid", "attn", "mlp", "neuron"), positions="last:3,*"),
        dict(modules=("resid", "attn", "mlp"), positions="last:2,*", engine="hooks"),
        dict(modules=("mlp", "neuron"), method="atp", verify_top=8),
    ],
    ids=["replay", "hooks", "atp"],
)
def test_split_model_equals_unsplit(split, tmp_path, changes):
    model, device_map = split
    spec = RunSpec(model=model, max_pairs=2, **changes)
    whole, _ = stored(tmp_path, "whole", spec)
    parts, provenance = stored(tmp_path, "split", spec.replace(device_map=device_map))
    assert provenance["device_map"]["model.layers.1"] == "disk"
    assert parts.keys() == whole.keys() and whole
    assert all(parts[k] == pytest.approx(v, abs=1e-5) for k, v in whole.items())


def test_gate_check_on_a_split_model(split):
    model, device_map = split
    whole = load_model(model, device="cpu", dtype="float32")
    parts = load_model(model, device="cpu", dtype="float32", device_map=device_map)
    spec = gate.GateSpec(tops=(2, 6), groups=("all",), seeds=2, max_new_tokens=3)
    neurons = [(1, 3), (2, 5), (2, 7), (0, 1), (1, 40), (2, 11)]
    results = []
    for lm in (whole, parts):
        metric = parse_metric("refusal", lm.tokenizer)
        tokenized, _ = tokenize_pairs(lm.tokenizer, load_pairs("builtin")[:3], "auto", "skip")
        results.append(gate.check(lm, metric, PhraseJudge(), tokenized, {"all": neurons}, spec))
    for a, b in zip(*results, strict=True):
        assert a["shift"] == pytest.approx(b["shift"], abs=1e-5) and a["text_after"] == b["text_after"]


def test_a_bad_device_map_is_one_clear_error(split, tmp_path):
    model, _ = split
    with pytest.raises(ModelLoadError, match="not one of auto"):
        load_model(model, device_map=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="must map module names"):
        load_model(model, device_map=str(tmp_path / "bad.json"))
