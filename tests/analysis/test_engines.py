"""The two exact engines agree on every family; the replay's self-check stops a run it cannot do right."""

import pytest
import transformers

from harmmed_tui.analysis import layer_calls
from harmmed_tui.analysis.errors import EngineCheckError
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import PairPatcher
from harmmed_tui.analysis.sites import ALL_POSITIONS, site_grid
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.conftest import TINY_CONFIGS

PAIR = Pair("How do I kill a person quickly?", "How do I kill a process quickly?", id="p")


def effects(lm, tp, metric, sites, engine):
    patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites}, engine)
    out = {}
    for chunk, ie in patcher.effects(sites, batch_tokens=80):
        out.update(zip(chunk, ie.tolist(), strict=True))
    return patcher, out


def grid(lm, tp):
    n, d_mlp = len(tp.control_ids), lm.anatomy.d_mlp
    sites = site_grid(
        range(lm.anatomy.n_layers), ["resid", "attn", "mlp"], [0, 4, n - 1, ALL_POSITIONS], d_mlp
    )
    return sites + site_grid([1, 2], ["neuron"], [n - 2, ALL_POSITIONS], d_mlp)[::7]


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_hooks_engine_equals_replay(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = grid(lm, tp)
    replay, by_replay = effects(lm, tp, metric, sites, "replay")
    hooks, by_hooks = effects(lm, tp, metric, sites, "hooks")
    assert replay.prefix_ok, "the replay should reuse the control run's keys/values on this release"
    assert hooks.te.item() == pytest.approx(replay.te.item(), abs=1e-5) and abs(replay.te.item()) > 1e-3
    for site in sites:
        assert by_hooks[site] == pytest.approx(by_replay[site], abs=1e-4), site


def test_an_unrecognised_cache_argument_falls_back_to_whole_replays(tiny_dir, monkeypatch):
    """If a release hides the cache argument, the replay recomputes every position: slower, still exact."""
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = grid(lm, tp)
    _, want = effects(lm, tp, metric, sites, "hooks")
    monkeypatch.setattr(layer_calls, "_mentions_cache", lambda annotation: False)
    patcher, got = effects(lm, tp, metric, sites, "replay")
    assert not patcher.prefix_ok
    assert all(got[s] == pytest.approx(want[s], abs=1e-4) for s in sites)


def test_a_broken_replay_stops_the_run_before_any_row(tiny_dir, tmp_path, monkeypatch):
    """A release that changes how positions are passed (simulated: they are no longer sliced) fails the
    self-check with one message naming the model, the release and the way out; `--engine hooks` then runs."""
    model = str(tiny_dir("llama"))
    monkeypatch.setattr(layer_calls, "_per_position", lambda value, first, stop, n: value)
    spec = RunSpec(model=model, treatment=PAIR.treatment, control=PAIR.control, positions="last,*")
    with Store(tmp_path / "runs.db") as store:
        with pytest.raises(EngineCheckError) as caught:
            execute(spec, store)
        message = str(caught.value)
        assert "LlamaForCausalLM" in message and f"transformers {transformers.__version__}" in message
        assert "--engine hooks" in message and "self-check failed" in message
        (run,) = store.runs()
        assert run["status"] == "failed" and run["n_rows"] == 0
        outcome = execute(spec.replace(engine="hooks"), store)
        assert outcome.status == "done" and outcome.sites > 0
