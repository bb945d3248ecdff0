"""Attribution patching is the derivative of the patching curve at the control run, and `--verify-top`
stores exact effects for the sites it proposes."""

import json
import subprocess
import sys

import pytest
import torch

from harmmed_tui.analysis.attribution import Attribution
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import tokenize_pair
from harmmed_tui.analysis.sites import ALL_POSITIONS, SUFFIX, site_grid
from harmmed_tui.db.store import Store
from tests.analysis.test_patching import PAIR, engine_ies


def patching_slope(lm, tp, metric, site, eps=1e-3) -> float:
    """d/da m(control run with the site at a_c + a (a_t - a_c)) at a = 0, by central differences; a_t is
    read at the treatment's aligned positions (p + shift for end-aligned pairs)."""
    mod = lm.anatomy.module(site.layer, site.module)
    neuron = site.module == "neuron"
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    acts = {}

    def run(ids, hook):
        h = mod.register_forward_pre_hook(hook) if neuron else mod.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = lm.model(torch.tensor([ids]), use_cache=False).logits
            return metric(logits[:, metric.positions]).item()
        finally:
            h.remove()

    def grab(name):
        return lambda m, args, out=None: acts.__setitem__(name, (args[0] if neuron else first(out)).clone())

    run(tp.treatment_ids, grab("t"))
    run(tp.control_ids, grab("c"))
    n = len(tp.control_ids)
    pos = {ALL_POSITIONS: range(n), SUFFIX: range(n - tp.suffix_len, n)}.get(site.position, [site.position])
    pos, src = list(pos), [p + tp.shift for p in pos]
    units = slice(site.neuron, site.neuron + 1) if neuron else slice(None)

    def nudge(alpha):
        def hook(m, args, out=None):
            t = args[0] if neuron else first(out)
            a_t, a_c = acts["t"][:, src, units], acts["c"][:, pos, units]
            t[:, pos, units] = a_c + alpha * (a_t - a_c)

        return hook

    return (run(tp.control_ids, nudge(eps)) - run(tp.control_ids, nudge(-eps))) / (2 * eps)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("metric_spec", ["logit-diff:#11,#12", "target-logprob"])
def test_atp_is_the_slope_of_the_patching_curve(tiny_dir, family, metric_spec):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    # float64 makes finite differences a sharp reference (RMSNorm still computes in float32: hence the
    # step of 1e-3 and the tolerance; a wrong gradient path is off by far more)
    lm.model.double()
    metric = parse_metric(metric_spec, lm.tokenizer)
    tp = tokenize_pair(lm.tokenizer, PAIR, 0, need_target=metric_spec == "target-logprob")
    bound = metric.bind(tp)
    n = len(tp.control_ids)
    sites = site_grid([0, 2], ["resid", "attn", "mlp"], [1, n - 1, ALL_POSITIONS], lm.anatomy.d_mlp)
    sites += site_grid([1, 2], ["neuron"], [n - 1, ALL_POSITIONS], lm.anatomy.d_mlp)[::7]
    attribution = Attribution(lm, tp, bound, sites)
    got = attribution.effects(sites)
    assert got.abs().max() > 1e-3
    for site, value in zip(sites, got.tolist(), strict=True):
        assert value == pytest.approx(patching_slope(lm, tp, bound, site), rel=2e-3, abs=2e-3), site
    # and its totals are the plain forward passes' metric values
    patcher, _ = engine_ies(lm, tp, bound, sites[:1])
    assert attribution.te.item() == pytest.approx(patcher.te.item(), abs=1e-9)


def _cli(*args) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "harmmed_tui.tui.cli", *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_atp_run_with_exact_verification(db_path):
    common = ["--db", str(db_path), "--max-pairs", "2", "--modules", "mlp,neuron", "--layers", "2-3"]
    common += ["--positions", "last:3,*", "--json"]
    atp = json.loads(_cli("run", *common, "--method", "atp", "--verify-top", "40"))
    exact = json.loads(_cli("run", *common))
    assert atp["te"] == pytest.approx(exact["te"], abs=1e-4)
    store = Store(db_path)

    def rows(run, method):
        sql = "SELECT pair, layer, module, position, neuron, ie FROM effects WHERE run_id = ? AND method = ?"
        return {r[:5]: r[5] for r in store.db.execute(sql, [run, method])}

    estimates, checked, truth = (
        rows(atp["run_id"], "atp"),
        rows(atp["run_id"], "exact"),
        rows(exact["run_id"], "exact"),
    )
    assert estimates.keys() == truth.keys() and atp["sites"] == len(truth) + 2 * 40
    assert len(checked) == 2 * 40
    for key, ie in checked.items():  # the verified sites are the largest estimates, patched for real
        assert ie == pytest.approx(truth[key], abs=1e-4)
        smaller = [abs(v) for k, v in estimates.items() if k[0] == key[0] and k not in checked]
        assert abs(estimates[key]) >= max(smaller)
    rhos = [p["atp_spearman"] for p in store.pairs(atp["run_id"])]
    assert all(0.5 < rho <= 1 for rho in rhos), rhos
    layer_csv = _cli("export", str(atp["run_id"]), "--db", str(db_path), "--format", "jsonl")
    assert {json.loads(line)["ie"] for line in layer_csv.splitlines()} <= set(estimates.values())


def test_an_interrupted_atp_run_resumes_to_the_same_rows(db_path):
    args = ["--db", str(db_path), "--max-pairs", "2", "--modules", "neuron", "--layers", "2-3"]
    run = json.loads(_cli("run", *args, "--method", "atp", "--verify-top", "10", "--json"))
    store = Store(db_path)
    sql = "SELECT pair, layer, module, position, neuron, method, ie FROM effects WHERE run_id = ?"
    before = {r[:6]: r[6] for r in store.db.execute(sql, [run["run_id"]])}
    rho = [p["atp_spearman"] for p in store.pairs(run["run_id"])]
    with store.db.conn:  # as if killed while storing pair 1's estimates
        store.db.execute(
            "DELETE FROM effects WHERE run_id = ? AND pair = 1 AND neuron % 3 = 0", [run["run_id"]]
        )
        store.db.execute("UPDATE pairs SET atp_spearman = NULL WHERE pair = 1")
    store.set_status(run["run_id"], "interrupted")
    resumed = json.loads(_cli("resume", str(run["run_id"]), "--db", str(db_path), "--json"))
    assert resumed["status"] == "done"
    after = {r[:6]: r[6] for r in store.db.execute(sql, [run["run_id"]])}
    assert after.keys() == before.keys() and max(abs(after[k] - before[k]) for k in before) < 1e-6
    assert [p["atp_spearman"] for p in store.pairs(run["run_id"])] == pytest.approx(rho)
