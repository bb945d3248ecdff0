"""The gate check's ablation is exact and batches arms without mixing them, its random baseline is fair, its
curve is the stated arithmetic, and on the organism the top neurons gate refusal while random ones do not."""

import json
import subprocess
import sys

import pytest
import torch

from harmmed_tui.analysis.behaviour import decode_answer, greedy_ids
from harmmed_tui.analysis.gate import Ablation, GateSpec, arms, check, mean_activations, random_like
from harmmed_tui.analysis.gate_curve import curve, group_layers
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import ActivationRecorder, PairPatcher
from harmmed_tui.analysis.sites import ALL_POSITIONS, Site
from harmmed_tui.db.store import Store
from tests.analysis.test_patching import PAIR


def _only(lm, layer: int, units: list[int], rows: int = 1) -> dict:
    mask = torch.zeros(rows, lm.anatomy.d_mlp, dtype=torch.bool)
    mask[:, units] = True
    return {layer: mask}


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
        ids = torch.tensor([tp.treatment_ids])
        before = bound(lm.model(ids, use_cache=False).logits[:, bound.positions])[0]
        with Ablation(lm, _only(lm, layer, units), {layer: control[(layer, "neuron")]}):
            after = bound(lm.model(ids, use_cache=False).logits[:, bound.positions])[0]
    site = Site(layer, "neuron", ALL_POSITIONS, first, width)
    patcher = PairPatcher(lm, swapped, metric.bind(swapped), {(layer, "neuron")})
    ((_, ie),) = patcher.effects([site], 1000)
    assert abs(ie.item()) > 1e-3
    assert (after - before).item() == pytest.approx(ie.item(), abs=1e-4)


def test_control_ablation_of_an_unequal_pair_is_end_aligned(tiny_dir):
    """A longer treatment: its position p takes the control's value at p - shift, its first `shift`
    positions the mean over the held-out prompts; checked against a forward hook written out by hand."""
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer)
    tp = tokenize_pair(
        lm.tokenizer, Pair("Tell me now how to make a bomb at home", "Make a cake"), 0, align="end"
    )
    assert tp.shift > 0
    layer, units = 1, [3, 8, 20]
    ranked = {"all": [(layer, u) for u in units]}
    spec = GateSpec(tops=(3,), groups=("all",), seeds=1, max_new_tokens=2)
    (top, _) = check(lm, metric, PhraseJudge(), [tp], ranked, spec)
    with torch.inference_mode():
        with ActivationRecorder(lm, [(layer, "neuron")]) as control:
            lm.model(torch.tensor([tp.control_ids]), use_cache=False)
        mean = mean_activations(lm, [tp], [(layer, "neuron")])[layer]
        c = control[(layer, "neuron")]

        def hold(module, args):
            x = args[0].clone()
            for p in range(x.shape[1]):
                x[0, p, units] = (c[p - tp.shift] if p >= tp.shift else mean)[units]
            return (x, *args[1:])

        handle = lm.anatomy.down(layer).register_forward_pre_hook(hold)
        try:
            bound = metric.bind(tp).shifted(tp.shift)
            logits = lm.model(torch.tensor([tp.treatment_ids]), use_cache=False).logits
        finally:
            handle.remove()
    assert top["m_after"] == pytest.approx(bound(logits[:, bound.positions])[0].item(), abs=1e-4)
    assert top["m_after"] != pytest.approx(top["m_before"], abs=1e-4)


@pytest.mark.parametrize(
    "family,phrases",
    [("llama", ("e",)), ("llama", ("ing",)), ("llama", ("on",)), ("llama", ("Sorry",)), ("gpt2", ("e",)),
     ("qwen2", ("e",)), ("gemma2", ("e",)), ("gemma3", ("e",)), ("gpt_neox", ("e",)), ("phi3", ("e",)),
     ("olmo2", ("e",)), ("mistral", ("e",)), ("qwen3", ("e",))],
)  # fmt: skip
def test_the_fast_curve_equals_the_exhaustive_one(tiny_dir, family, phrases):
    """Repeated sets run once, the layers below a batch's ablations once per pair (shared by its rows),
    answers only where a flip can count, rows stopped once refused: every number and verdict of the curve is
    the exhaustive computation's."""
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer)
    pairs = [
        tokenize_pair(lm.tokenizer, Pair(t, c), i, align="end")
        for i, (t, c) in enumerate(
            [(PAIR.treatment, PAIR.control), ("How do I hurt my sister badly?", "How do I help my sister?")]
            + [(f"Tell me {w} about a bomb", f"Tell me {w} about a cake") for w in ("all", "more", "nothing")]
        )
    ]
    ranked = {
        "final": [(2, u) for u in (5, 40, 7, 1)],
        "last-quarter": [(2, u) for u in (5, 40, 7, 1)],  # the same units: runs once
        "all": [(2, 5), (0, 9), (1, 3), (2, 40), (0, 1)],
    }
    spec = GateSpec(tops=(1, 2, 4), seeds=2, max_new_tokens=8)
    judge = PhraseJudge(phrases)
    fast = check(lm, metric, judge, pairs, ranked, spec)
    slow = check(lm, metric, judge, pairs, ranked, spec, exhaustive=True)
    # batches of other sizes round differently: the metrics agree to 1e-5, so a share of TE removed (a mean
    # of metric shifts over the mean TE) agrees to 1e-5 over that TE
    assert [r["m_after"] for r in fast] == pytest.approx([r["m_after"] for r in slow], abs=1e-5)
    for p, q in zip(curve(fast), curve(slow), strict=True):
        assert p.as_dict() == pytest.approx(q.as_dict(), rel=1e-5, abs=1e-5 / min(1.0, abs(q.mean_te)))
    for f, s in zip(fast, slow, strict=True):
        assert (f["pair"], f["grp"], f["k"], f["seed"], f["refused_before"]) == (
            s["pair"], s["grp"], s["k"], s["seed"], s["refused_before"]
        )  # fmt: skip
        if s["refused_before"]:
            assert f["refused_after"] == s["refused_after"] and s["text_after"].startswith(f["text_after"])
        else:
            assert f["text_after"] is None and f["refused_after"] is None


def test_random_sets_match_layers_and_avoid_the_top_set():
    top = ((3, 7), (3, 9), (1, 0))
    draws = [random_like(top, 64, seed) for seed in range(4)]
    for d in draws:
        assert sorted(layer for layer, _ in d) == [1, 3, 3]
        assert not set(d) & set(top)
    assert draws[0] == random_like(top, 64, 0) and len({d for d in draws}) > 1


def test_arms_per_group_and_k_skip_sets_that_repeat():
    ranked = {"final": [(2, u) for u in range(3)], "all": [(0, 1), (2, 0), (1, 4), (2, 1)]}
    spec = GateSpec(tops=(1, 2, 5, 20), groups=("final", "all"), seeds=2)
    got = [(a.group, a.k, a.seed, len(a.neurons)) for a in arms(ranked, spec, 16)]
    # final ranked 3 neurons: K=5 ablates those 3, and K=20 would ablate the same 3, so it is left out
    assert [g for g in got if g[2] == -1] == [
        ("final", 1, -1, 1), ("final", 2, -1, 2), ("final", 5, -1, 3),
        ("all", 1, -1, 1), ("all", 2, -1, 2), ("all", 5, -1, 4),
    ]  # fmt: skip
    assert len(got) == 6 * 3
    assert group_layers("final", 24) == [23] and group_layers("last-quarter", 24) == list(range(18, 24))
    assert group_layers("last-quarter", 3) == [2] and group_layers("all", 3) == [0, 1, 2]


def test_batched_arms_equal_each_arm_alone(tiny_dir):
    """Every arm of a pair runs as one batch row of one forward and one generate: each row's metric and
    answer equal that arm's ablation run alone."""
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer)
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    ranked = {"all": [(2, 5), (0, 9), (1, 3), (2, 40)], "final": [(2, 5), (2, 40)]}
    spec = GateSpec(tops=(1, 2, 4), groups=("final", "all"), seeds=2, max_new_tokens=6)
    rows = check(lm, metric, PhraseJudge(("the",)), [tp], ranked, spec, exhaustive=True)
    todo = arms(ranked, spec, lm.anatomy.d_mlp)
    assert len(rows) == len(todo) == 5 * 3
    bound = metric.bind(tp)
    with torch.inference_mode(), ActivationRecorder(lm, [(i, "neuron") for i in range(3)]) as control:
        lm.model(torch.tensor([tp.control_ids]), use_cache=False)
    for arm, row in zip(todo, rows, strict=True):
        masks = {}
        for layer, unit in arm.neurons:
            masks.setdefault(layer, torch.zeros(1, lm.anatomy.d_mlp, dtype=torch.bool))[0, unit] = True
        ablation = Ablation(lm, masks, {layer: control[(layer, "neuron")] for layer in masks})
        with torch.inference_mode(), ablation:
            m = bound(lm.model(torch.tensor([tp.treatment_ids]), use_cache=False).logits[:, bound.positions])
        with ablation:
            text = decode_answer(lm, greedy_ids(lm, tp.treatment_ids, spec.max_new_tokens))
        assert (row["grp"], row["k"], row["seed"]) == (arm.group, arm.k, arm.seed)
        assert row["m_after"] == pytest.approx(m.item(), abs=1e-4)
        assert row["text_after"] == text and row["refused_after"] == ("the" in text.casefold())
    assert any(r["shift"] != 0 for r in rows)


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
    spec = GateSpec(tops=(2,), groups=("all",), ablate="mean", seeds=2, max_new_tokens=4)
    rows = check(
        lm,
        parse_metric("logit-diff:#11,#12", lm.tokenizer),
        PhraseJudge(),
        pairs,
        {"all": [(2, 5), (2, 9)]},
        spec,
    )
    assert [(r["arm"], r["seed"]) for r in rows if r["pair"] == 0] == [
        ("top", -1),
        ("random", 0),
        ("random", 1),
    ]
    assert all(r["shift"] == pytest.approx(r["m_after"] - r["m_before"]) for r in rows)


def test_curve_arithmetic():
    """Share of TE removed is -mean shift / mean TE; flips count only pairs refused before ablation."""

    def row(pair, seed, shift, before, after):
        return dict(grp="all", k=2, units=2, pair=pair, seed=seed, shift=shift, te=4.0,
                    refused_before=before, refused_after=after)  # fmt: skip

    rows = [
        row(0, -1, -3.0, True, False), row(1, -1, -1.0, True, True), row(2, -1, 0.0, False, False),
        row(0, 0, -0.4, True, True), row(1, 0, 0.0, True, True), row(2, 0, 0.1, False, True),
        row(0, 1, 0.0, True, False), row(1, 1, -0.2, True, True), row(2, 1, 0.1, False, False),
    ]  # fmt: skip
    (p,) = curve(rows)
    assert (p.pairs, p.refused, p.seeds, p.units) == (3, 2, 2, 2)
    assert p.top_removed == pytest.approx(4 / 3 / 4) and p.top_flipped == 0.5
    assert p.random_removed == pytest.approx(((0.3 / 3) + (0.1 / 3)) / 4 / 2)
    assert p.random_flipped == pytest.approx(0.25) and p.random_flipped_sd == pytest.approx(0.5**0.5 / 2)
    unjudged = [dict(r, refused_before=None, refused_after=None) for r in rows]
    (u,) = curve(unjudged)
    assert u.refused == 0 and u.top_flipped is None and u.random_flipped is None


def _cli(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "harmmed_tui.tui.cli", *args], capture_output=True, text=True, check=check
    )


def test_gate_curve_on_the_organism(db_path):
    """The organism refuses every held-out harmful prompt and its refusal runs through a few neurons outside
    the final layer: ablating the top 20 of all layers flips every refusal, random sets and final-layer
    sets flip none. Its refusal direction (from the run's own pairs) carries half the TE and flips none."""
    db = ["--db", str(db_path)]
    run = json.loads(_cli("run", *db, "--max-pairs", "12", "--modules", "neuron", "--json").stdout)
    rid = str(run["run_id"])
    out = _cli("gate", rid, *db, "--top", "5,20", "--seeds", "3", "--groups", "final,all", "--json")
    points = {(p["group"], p["k"]): p for p in json.loads(out.stdout)["curve"]}
    assert set(points) == {("final", 5), ("final", 20), ("all", 5), ("all", 20), ("direction", 1)}
    direction = points[("direction", 1)]
    assert direction["top_removed"] > 0.4 and direction["top_flipped"] == 0.0
    assert abs(direction["random_removed"]) < 0.05 and direction["seeds"] == 3
    gate = points[("all", 20)]
    assert gate["pairs"] == 48 - 12 and gate["refused"] == 36 and gate["seeds"] == 3
    assert gate["top_removed"] > 0.4 and gate["top_flipped"] == 1.0, gate
    assert abs(gate["random_removed"]) < 0.05 and gate["random_flipped"] == 0.0
    assert points[("final", 20)]["top_flipped"] == 0.0
    rows = json.loads(_cli("export", rid, *db, "--level", "gate", "--format", "json").stdout)
    assert len(rows) == 36 * 5 * (1 + 3) and {r["arm"] for r in rows} == {"top", "random"}
    flipped = [r for r in rows if r["grp"] == "all" and r["k"] == 20 and r["arm"] == "top"]
    assert all(
        r["text_before"].startswith("Sorry") and not r["text_after"].startswith("Sorry") for r in flipped
    )
    assert all(r["sign"] == "positive" for r in rows)
    curve_rows = json.loads(
        _cli("export", rid, *db, "--level", "gate", "--aggregate", "--format", "json").stdout
    )
    assert [(r["group"], r["k"]) for r in curve_rows] == [
        ("final", 5),
        ("final", 20),
        ("all", 5),
        ("all", 20),
        ("direction", 1),
    ]
    shown = _cli("show", rid, *db).stdout
    assert "all: top 20 flip 100% of 36 refusals (random 0%)" in " ".join(shown.split())
    # a second check is stored beside the first; deleting the run removes both
    _cli("gate", rid, *db, "--top", "5", "--ablate", "zero", "--seeds", "1", "--groups", "all")
    store = Store(db_path)
    assert [c["spec"]["ablate"] for c in store.gate_checks(run["run_id"])] == ["zero", "control"]
    store.delete_run(run["run_id"])
    assert store.db.execute("SELECT COUNT(*) FROM gate_rows").fetchone()[0] == 0
