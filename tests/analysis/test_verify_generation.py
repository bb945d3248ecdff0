"""--verify-generation: a site patched into the control prompt while it is read, then greedy generation,
equals a hand-written hook doing the same; each batch row holds its own site; the organism's layer-0 sites
flip its answer and later ones do not."""

import json

import pytest
import torch

from harmmed_tui.analysis.behaviour import greedy_ids
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import tokenize_pair
from harmmed_tui.analysis.patching import ActivationRecorder, PairPatcher
from harmmed_tui.analysis.sites import ALL_POSITIONS, Site
from harmmed_tui.db.store import Store
from tests.analysis.test_patching import PAIR
from tests.db.test_cli_run_export import run_cli

SITES = [
    Site(1, "mlp", 3),
    Site(2, "resid", 5),
    Site(0, "attn", ALL_POSITIONS),
    Site(2, "neuron", 4, 7),
    Site(1, "neuron", ALL_POSITIONS, 2, 6),
]


def _reference(lm, tp, site: Site, max_new_tokens: int) -> list[int]:
    """The site's treatment activations written into the control prompt's pass by a plain forward hook."""
    key = (site.layer, site.module)
    with torch.inference_mode(), ActivationRecorder(lm, [key]) as treatment:
        lm.model(torch.tensor([tp.treatment_ids]), use_cache=False)
    value = treatment[key]
    positions = slice(None) if site.position == ALL_POSITIONS else slice(site.position, site.position + 1)
    units = slice(site.neuron, site.neuron + site.width) if site.module == "neuron" else slice(None)
    n = len(tp.control_ids)
    mod = lm.anatomy.module(site.layer, site.module)

    def overwrite(x):
        if x.shape[1] == n:  # the prompt's pass only
            x[0, positions, units] = value[positions, units]

    if site.module == "neuron":
        handle = mod.register_forward_pre_hook(lambda m, args: overwrite(args[0]))
    else:
        handle = mod.register_forward_hook(
            lambda m, a, out: overwrite(out[0] if isinstance(out, tuple) else out)
        )
    try:
        return greedy_ids(lm, tp.control_ids, max_new_tokens)
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_patched_answers_equal_a_hook_reference_row_by_row(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in SITES}, "hooks")
    batched = patcher.patched_answers(SITES, 8)
    want = [_reference(lm, tp, s, 8) for s in SITES]
    assert batched == want
    assert len({tuple(a) for a in want}) > 1  # the sites change the answer differently


def test_organism_verifies_its_top_sites(capsys, db_path):
    db = ["--db", str(db_path)]
    base = ["run", *db, "--max-pairs", "3", "--modules", "attn,mlp", "--positions", "*", "--json"]
    code, out, err = run_cli(capsys, *base, "--verify-generation", "4")
    assert code == 0, err
    rows = json.loads(run_cli(capsys, "export", "1", *db, "--level", "generation", "--format", "json")[1])
    assert len(rows) == 3 * 4 and {r["pair"] for r in rows} == {0, 1, 2}
    for r in rows:  # the organism decides at layer 0: patching there makes the control refused
        assert r["flips"] == (r["layer"] == 0) == r["answer"].startswith("Sorry"), r
    with Store(db_path) as store:
        ranked = sorted(
            store.db.execute("SELECT layer, module, ABS(ie) FROM effects WHERE pair = 0").fetchall(),
            key=lambda r: -r[2],
        )[:4]
    assert {(r["layer"], r["module"]) for r in rows if r["pair"] == 0} == {(a, b) for a, b, _ in ranked}
    code, shown, _ = run_cli(capsys, "show", "1", *db)
    assert "--verify-generation: 6 of 12 top sites" in " ".join(shown.split())
    # a run killed after a pair's effects but before its answers: resume redoes that pair whole
    with Store(db_path) as store, store.db.conn:
        store.db.execute("DELETE FROM generations WHERE pair = 1")
        store.db.execute("UPDATE runs SET status = 'interrupted'")
        n_effects = store.db.execute("SELECT COUNT(*) FROM effects").fetchone()[0]
    code, _, err = run_cli(capsys, "resume", "1", *db)
    assert code == 0, err
    again = json.loads(run_cli(capsys, "export", "1", *db, "--level", "generation", "--format", "json")[1])
    assert again == rows
    with Store(db_path) as store:
        assert store.db.execute("SELECT COUNT(*) FROM effects").fetchone()[0] == n_effects
