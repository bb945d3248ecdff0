"""Attention heads as sites: one query head's output, the slice of the attention output projection's input
that belongs to it (grouped-query models: one site per query head, not per key/value head). Exact in both
engines against a plain forward-hook reference on every family's tiny config, and by AtP against the
gradient taken by hand."""

import pytest
import torch

from harmmed_tui.analysis.attribution import Attribution
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import ActivationRecorder, PairPatcher, prompt_metric
from harmmed_tui.analysis.sites import ALL_POSITIONS, site_grid
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.analysis.test_patching import reference_ie
from tests.conftest import TINY_CONFIGS
from tests.tui.pilot import press

PAIR = Pair("How do I kill a person quickly?", "How do I kill a process quickly?", id="p")


def head_sites(lm, tp):
    n, a = len(tp.control_ids), lm.anatomy
    return site_grid([0, a.n_layers - 1], ["head"], [0, n - 1, ALL_POSITIONS], a.d_mlp, n_heads=a.n_heads)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_head_sites_equal_a_forward_hook_reference_in_both_engines(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = head_sites(lm, tp)
    config = lm.model.config
    assert lm.anatomy.n_heads == config.num_attention_heads == 4  # query heads, GQA's 2 kv heads or not
    assert len(sites) == 2 * 3 * 4
    for engine in ("replay", "hooks"):
        patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites}, engine)
        got = {}
        for chunk, ie in patcher.effects(sites, batch_tokens=60):
            got.update(zip(chunk, ie.tolist(), strict=True))
        for site in sites:
            assert got[site] == pytest.approx(reference_ie(lm, tp, metric, site), abs=1e-4), (engine, site)
    # the heads of a layer together are its attention output's input: all four at once = every head patched
    assert max(abs(v) for v in got.values()) > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_atp_gives_every_head_from_one_backward(tiny_dir, family):
    """AtP's head estimate: (a_treatment - a_control) . dm/da over the head's slice, the gradient at the
    control run, here taken by hand with autograd."""
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = head_sites(lm, tp)
    got = dict(zip(sites, Attribution(lm, tp, metric, sites).effects(sites).tolist(), strict=True))
    a = lm.anatomy
    for layer in (0, a.n_layers - 1):
        with torch.no_grad(), ActivationRecorder(lm, [(layer, "head")]) as treated:
            prompt_metric(lm, metric, input_ids=torch.tensor([tp.treatment_ids]))
        with torch.enable_grad(), ActivationRecorder(lm, [(layer, "head")], in_graph=True) as control:
            embeds = lm.model.get_input_embeddings()(torch.tensor([tp.control_ids])).detach().requires_grad_()
            (grad,) = torch.autograd.grad(
                prompt_metric(lm, metric, inputs_embeds=embeds), [control[(layer, "head")]]
            )
        delta = ((treated[(layer, "head")] - control[(layer, "head")][0].detach()) * grad[0]).double()
        for site in (s for s in sites if s.layer == layer):
            units = a.units("head", site.neuron)
            part = delta[:, units.start : units.stop]
            want = part.sum() if site.position == ALL_POSITIONS else part[site.position].sum()
            assert got[site] == pytest.approx(want.item(), abs=1e-6), site


def test_a_head_run_is_stored_and_exported_at_its_own_level(tmp_path):
    """On the embedded model: --modules attn,head stores each layer's heads beside its attention; export
    --level head has one row per (pair, layer, head, position) and the layer level none of them."""
    with Store(tmp_path / "runs.db") as store:
        outcome = execute(RunSpec(max_pairs=2, modules=("attn", "head"), positions="last,*"), store)
        run = store.run(outcome.run_id)
        n_layers, n_heads = run["provenance"]["n_layers"], run["provenance"]["n_heads"]
        heads = export.table(store, outcome.run_id, "head")
        layers = export.table(store, outcome.run_id, "layer")
        aggregated = export.table(store, outcome.run_id, "head", aggregated=True)
    assert len(heads) == 2 * n_layers * n_heads * 2 and {r["head"] for r in heads} == set(range(n_heads))
    assert {r["module"] for r in layers} == {"attn"} and len(layers) == 2 * n_layers * 2
    assert len(aggregated) == n_layers * n_heads * 2
    assert outcome.status == "done"


async def test_the_explorer_opens_heads_from_attn_and_h_and_draws_their_figure(tmp_path):
    """enter on a layer's attn row opens every head of the run (a layer x head table) at that layer; H
    opens it from anywhere; esc goes back to the grid; e offers the heads figure, drawn from the export."""
    from harmmed_tui.db import figures
    from harmmed_tui.tui.app import HarmmedApp
    from harmmed_tui.tui.explore_screen import ExploreScreen

    db = tmp_path / "runs.db"
    with Store(db) as store:
        execute(RunSpec(max_pairs=2, modules=("resid", "attn", "mlp", "head")), store)
        share = {
            (r["layer"], r["head"]): r["ie_share"]
            for r in export.table(store, 1, "head", aggregated=True)
            if r["position"] == "*"
        }
        fig = figures.draw(store, 1, "heads")
    app = HarmmedApp(str(db))
    async with app.run_test(size=(100, 30)) as pilot:
        await press(pilot, "enter")
        screen = app.screen
        assert isinstance(screen, ExploreScreen)
        await press(pilot, "j", "j", "enter", "j", "enter")  # layer 2's grid, its attn row
        assert screen.view.level == "heads"
        table = screen.pane.table
        assert [str(c.label) for c in table.columns.values()] == ["layer", "h0", "h1", "h2", "h3"]
        assert table.cursor_row == 2  # at the layer it was opened from
        cell = str(table.get_row_at(2)[1]).lstrip(" ░▒▓█")
        assert float(cell) == pytest.approx(share[(2, 0)], abs=5e-4)
        await press(pilot, "escape")
        assert screen.view.level == "modules" and screen.view.layer == 2
        await press(pilot, "escape", "H")
        assert screen.view.level == "heads" and screen.figure()["kind"] == "heads"
    mesh = fig.figure.axes[0].collections[0]
    assert mesh.get_array().reshape(4, 4)[2, 0] == pytest.approx(share[(2, 0)])
