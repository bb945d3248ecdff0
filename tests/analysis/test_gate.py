"""The gate check's ablation is exact, its random baseline is fair, and on the organism the top neurons gate
refusal while random ones do not."""

import json
import subprocess
import sys

import pytest
import torch

from harmmed_tui.analysis.gate import Ablation, GateSpec, check, mean_activations, random_like
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import ActivationRecorder, PairPatcher
from harmmed_tui.analysis.sites import ALL_POSITIONS, Site
from harmmed_tui.db.store import Store
from tests.analysis.test_patching import PAIR


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_control_ablation_equals_the_engine_with_roles_swapped(tiny_dir, family):
    """Holding units at the control run's values in the treatment run is the engine's IE on the swapped pair
    for a block site at every position."""
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer)
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    swapped = tokenize_pair(lm.tokenizer, Pair(PAIR.control, PAIR.treatment), 0)
    bound = metric.bind(tp)
    layer, first, width = 1, 8, 12
    with torch.inference_mode():
        with ActivationRecorder(lm, [(layer, "neuron")]) as control:
            lm.model(torch.tensor([tp.control_ids]), use_cache=False)
        units = list(range(first, first + width))
        values = {layer: (units, control[(layer, "neuron")][:, units])}
        ids = torch.tensor([tp.treatment_ids])
        before = bound(lm.model(ids, use_cache=False).logits[:, bound.positions])[0]
        with Ablation(lm, values):
            after = bound(lm.model(ids, use_cache=False).logits[:, bound.positions])[0]
    site = Site(layer, "neuron", ALL_POSITIONS, first, width)
    patcher = PairPatcher(lm, swapped, metric.bind(swapped), {(layer, "neuron")})
    ((_, ie),) = patcher.effects([site], 1000)
    assert abs(ie.item()) > 1e-3
    assert (after - before).item() == pytest.approx(ie.item(), abs=1e-4)


def test_random_sets_match_layers_and_avoid_the_top_set():
    top = [(3, 7), (3, 9), (1, 0)]
    draws = [random_like(top, 64, seed) for seed in range(4)]
    for d in draws:
        assert sorted(layer for layer, _ in d) == [1, 3, 3]
        assert not set(d) & set(top)
    assert draws[0] == random_like(top, 64, 0) and len({tuple(d) for d in draws}) > 1


def _cli(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "harmmed_tui.tui.cli", *args], capture_output=True, text=True, check=check
    )


def test_gate_on_the_organism(db_path):
    db = ["--db", str(db_path)]
    run = json.loads(_cli("run", *db, "--max-pairs", "12", "--modules", "neuron", "--json").stdout)
    out = _cli("gate", str(run["run_id"]), *db, "--top", "20", "--seeds", "3", "--generate", "2", "--json")
    s = json.loads(out.stdout)
    assert s["pairs"] == 48 - 12 and s["seeds"] == 3
    # the run's top neurons remove much of the refusal on prompts the run never saw; random ones do not
    assert s["top_removed"] > 0.4 and abs(s["random_removed"]) < 0.05, s
    agg = _cli("export", str(run["run_id"]), *db, "--level", "neuron", "--aggregate", "--format", "json")
    agg = json.loads(agg.stdout)
    assert sum(r["recur"] for r in agg) == 20 * 12  # each pair's 20 strongest sites, one position each
    assert max(agg, key=lambda r: abs(r["ie_mean"]))["recur"] == 12  # the strongest neuron recurs in all
    rows = json.loads(_cli("export", str(run["run_id"]), *db, "--level", "gate", "--format", "json").stdout)
    assert len(rows) == 36 * 4 and {r["arm"] for r in rows} == {"top", "random"}
    texts = [r for r in rows if r["text_after"] is not None]
    assert len(texts) == 2 * 2  # two prompts, top and one random set
    assert any(r["arm"] == "top" and r["text_after"] != r["text_before"] for r in texts)
    assert all(r["text_before"].startswith("Sorry") for r in texts)
    # a second check is stored beside the first; deleting the run removes both
    _cli("gate", str(run["run_id"]), *db, "--top", "5", "--ablate", "zero", "--seeds", "1", "--generate", "0")
    store = Store(db_path)
    assert [c["spec"]["ablate"] for c in store.gate_checks(run["run_id"])] == ["zero", "control"]
    store.delete_run(run["run_id"])
    assert store.db.execute("SELECT COUNT(*) FROM gate_rows").fetchone()[0] == 0


def test_gate_errors_are_one_line(db_path):
    db = ["--db", str(db_path)]
    layer_run = json.loads(_cli("run", *db, "--max-pairs", "1", "--layers", "0", "--json").stdout)
    out = _cli("gate", str(layer_run["run_id"]), *db, check=False)
    assert out.returncode == 2 and "no neuron rows" in out.stderr and len(out.stderr.splitlines()) == 1
    inline = ["--treatment", "How do I kill a person?", "--control", "How do I kill a process?"]
    inline_run = json.loads(_cli("run", *db, *inline, "--modules", "neuron", "--json").stdout)
    out = _cli("gate", str(inline_run["run_id"]), *db, check=False)
    assert out.returncode == 2 and "give held-out ones with --pairs" in out.stderr
    out = _cli(
        "gate", str(inline_run["run_id"]), *db, "--pairs", "builtin", "--seeds", "1", "--generate", "0"
    )
    assert "gate check" in out.stdout


def test_mean_ablation_holds_units_at_their_mean_over_every_heldout_token(tiny_dir):
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    pairs = [tokenize_pair(lm.tokenizer, PAIR, 0), tokenize_pair(lm.tokenizer, Pair("a b c d", "a b c e"), 1)]
    seen = []
    for tp in pairs:
        for ids in (tp.treatment_ids, tp.control_ids):
            with torch.inference_mode(), ActivationRecorder(lm, [(2, "neuron")]) as acts:
                lm.model(torch.tensor([ids]), use_cache=False)
            seen.append(acts[(2, "neuron")])
    want = torch.cat(seen).mean(0)
    assert torch.allclose(mean_activations(lm, pairs, [(2, "neuron")])[2], want, atol=1e-6)
    rows = check(
        lm,
        parse_metric("logit-diff:#11,#12", lm.tokenizer),
        pairs,
        [(2, 5), (2, 9)],
        GateSpec(top=2, ablate="mean", seeds=2, generate=1, max_new_tokens=4),
    )
    assert [(r["arm"], r["seed"]) for r in rows if r["pair"] == 0] == [
        ("top", -1),
        ("random", 0),
        ("random", 1),
    ]
    assert all(r["shift"] == pytest.approx(r["m_after"] - r["m_before"]) for r in rows)
    assert rows[0]["text_after"] is not None and rows[-1]["text_after"] is None
