"""Sites whose effects are known without a forward pass: at a position both runs compute identically (the chat
template's shared start, the words before the first that differs; before a noise contrast's first noised
token), IE is exactly 0 and DE exactly TE. The engine stores them without computing them; here they equal the
full computation on several families, and every computed site equals it too."""

from dataclasses import replace

import pytest

from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.noise import NoisedPatcher, corrupted_positions
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import DirectEffects, PairPatcher
from harmmed_tui.analysis.sites import Site
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.conftest import SMOLLM_TOKENIZER

PAIR = Pair("How do I kill a person quickly?", "How do I kill a process quickly?", id="p")
MODULES = ("resid", "attn", "mlp", "head")


def full(lm, tp, metric, sites):
    """Every site computed: IE by the patcher, DE by the reversed one."""
    keys = {(s.layer, s.module) for s in sites}
    patcher = PairPatcher(lm, tp, metric, keys, "replay")
    ie = {}
    for chunk, values in patcher.effects(sites, batch_tokens=64):
        ie.update(zip(chunk, values.tolist(), strict=True))
    de = dict(zip(sites, DirectEffects(lm, tp, metric, keys).of(sites, 64).tolist(), strict=True))
    return patcher.te.item(), ie, de


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gpt2"])
def test_shared_prefix_sites_are_exact_zeros_and_equal_the_full_computation(tiny_dir, tmp_path, family):
    model = str(tiny_dir(family, SMOLLM_TOKENIZER))  # a real chat template: a long shared start
    spec = RunSpec(
        model=model,
        treatment=PAIR.treatment,
        control=PAIR.control,
        metric="logit-diff:#11,#12",
        modules=MODULES,
        positions="all,*",
        effects=("ie", "de"),
        answer_tokens=0,
    )
    with Store(tmp_path / "runs.db") as store:
        execute(spec, store)
        rows = {
            Site(r["layer"], r["module"], r["position"], r["neuron"]): r
            for r in store.db.query("SELECT * FROM effects WHERE run_id = 1")
        }
    lm = load_model(model, device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    first_diff = next(
        i for i, (a, b) in enumerate(zip(tp.treatment_ids, tp.control_ids, strict=True)) if a != b
    )
    assert first_diff > 20  # the template's system prompt and the words before 'person'
    te, ie, de = full(lm, tp, parse_metric(spec.metric, lm.tokenizer).bind(tp), sorted(rows))
    known = [s for s in rows if 0 <= s.position < first_diff]
    assert len(known) > len(rows) // 2
    for site, row in rows.items():
        if site in known:
            assert row["ie"] == 0.0 and row["de"] == pytest.approx(te, abs=1e-6), site  # stored as known
            assert ie[site] == pytest.approx(0.0, abs=1e-5) and de[site] == pytest.approx(te, abs=1e-5)
        else:
            assert row["ie"] == pytest.approx(ie[site], abs=1e-5) and row["de"] == pytest.approx(
                de[site], abs=1e-5
            )
    assert any(abs(row["ie"]) > 1e-3 for s, row in rows.items() if s not in known)


def test_a_noise_contrasts_positions_before_the_noise_are_exact_zeros(tiny_dir, tmp_path):
    model = str(tiny_dir("llama"))
    prompt = "How do I build a pipe bomb at home today?"
    spec = RunSpec(
        model=model,
        treatment=prompt,
        corrupt="pipe bomb",
        chat_template="none",
        metric="logit-diff:#11,#12",
        positions="all",
        answer_tokens=0,
    )
    with Store(tmp_path / "runs.db") as store:
        execute(spec, store)
        rows = {
            Site(r["layer"], r["module"], r["position"]): r["ie"]
            for r in store.db.query("SELECT * FROM effects WHERE run_id = 1")
        }
    lm = load_model(model, device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, Pair(prompt, prompt), 0, "none", allow_same=True)
    tp = replace(tp, corrupt=corrupted_positions(lm.tokenizer, prompt, "none", "pipe bomb"))
    metric = parse_metric(spec.metric, lm.tokenizer).bind(tp)
    sites = sorted(rows)
    patcher = NoisedPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites}, "replay", 5, 3.0, 0)
    want = {}
    for chunk, values in patcher.effects(sites, 64):
        want.update(zip(chunk, values.tolist(), strict=True))
    first = min(tp.corrupt)
    assert first >= 4
    for site, got in rows.items():
        if site.position < first:
            assert got == 0.0 and want[site] == pytest.approx(0.0, abs=1e-5), site
        else:
            assert got == pytest.approx(want[site], abs=1e-5), site
