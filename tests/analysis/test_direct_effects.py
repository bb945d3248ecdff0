"""Direct effects: DE(site) = m(treatment run with the site held at its control value) - m(control run).
Exact in both engines against one plain forward per site (equal lengths on every family, end-aligned pairs
of both length orders), AtP's DE against the gradient at the treatment run taken by hand, and a run that
asks for them stores, exports and aggregates them beside IE."""

import pytest
import torch

from harmmed_tui.analysis.attribution import direct_effects
from harmmed_tui.analysis.errors import SiteError
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import tokenize_pair
from harmmed_tui.analysis.patching import ActivationRecorder, DirectEffects, PairPatcher, prompt_metric
from harmmed_tui.analysis.sites import ALL_POSITIONS, SUFFIX, UNIT_MODULES, Site, site_grid
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.analysis.hooked import hooked_logits
from tests.analysis.test_end_alignment import PAIRS as END_PAIRS
from tests.analysis.test_end_alignment import sites_of as end_sites
from tests.analysis.test_heads import PAIR
from tests.conftest import SMOLLM_TOKENIZER, TINY_CONFIGS
from tests.tui.pilot import press


def reference_de(lm, tp, metric, site: Site) -> float:
    """One plain forward per site: the treatment prompt with the site overwritten by the control's value
    (the control's position p is the treatment's p + shift), its metric read at the treatment's positions,
    less the control run's metric."""
    a = lm.anatomy
    mod = a.module(site.layer, site.module)
    on_input = site.module in UNIT_MODULES
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    n = len(tp.control_ids)
    if site.position == ALL_POSITIONS:
        positions = list(range(n))
    elif site.position == SUFFIX:
        positions = list(range(n - tp.suffix_len, n))
    else:
        positions = [site.position]
    units = slice(None)
    if on_input:
        r = a.units(site.module, site.neuron, site.width)
        units = slice(r.start, r.stop)
    stored = {}

    def grab(m, args, out=None):
        stored["c"] = (args[0] if on_input else first(out)).clone()

    def put(m, args, out=None):
        t = args[0] if on_input else first(out)
        t[:, [p + tp.shift for p in positions], units] = stored["c"][:, positions, units]

    clean_control = hooked_logits(lm, tp.control_ids, mod, grab, on_input)
    patched = hooked_logits(lm, tp.treatment_ids, mod, put, on_input)
    on_treatment = metric.shifted(tp.shift)
    return (
        on_treatment(patched[:, on_treatment.positions]) - metric(clean_control[:, metric.positions])
    ).item()


def equal_length_sites(lm, tp):
    n, a = len(tp.control_ids), lm.anatomy
    layers = [0, a.n_layers - 1]
    sites = site_grid(layers, ["resid", "attn", "mlp"], [0, n - 1, ALL_POSITIONS], a.d_mlp)
    sites += site_grid(layers, ["neuron"], [n - 1, ALL_POSITIONS], a.d_mlp)[::7]
    return sites + site_grid(layers, ["head"], [n - 1], a.d_mlp, n_heads=a.n_heads)


def engine_des(lm, tp, metric, sites, engine):
    direct = DirectEffects(lm, tp, metric, {(s.layer, s.module) for s in sites}, engine)
    return dict(zip(sites, direct.of(sites, batch_tokens=60).tolist(), strict=True))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_direct_effects_equal_a_forward_hook_reference_in_both_engines(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = equal_length_sites(lm, tp)
    te = PairPatcher(lm, tp, metric, set()).te.item()
    for engine in ("replay", "hooks"):
        got = engine_des(lm, tp, metric, sites, engine)
        for site in sites:
            assert got[site] == pytest.approx(reference_de(lm, tp, metric, site), abs=1e-4), (engine, site)
    # holding the whole residual stream of layer 0 at its control value everywhere is the control run
    assert got[Site(0, "resid", ALL_POSITIONS)] == pytest.approx(0.0, abs=1e-4)
    # a site that changes nothing (position 0 precedes the pair's difference) leaves the whole TE
    assert got[Site(0, "mlp", 0)] == pytest.approx(te, abs=1e-4) and abs(te) > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("which", sorted(END_PAIRS))
@pytest.mark.parametrize("engine", ["replay", "hooks"])
def test_end_aligned_direct_effects_equal_the_reference(tiny_dir, family, which, engine):
    lm = load_model(str(tiny_dir(family, SMOLLM_TOKENIZER)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, END_PAIRS[which], 0, need_target=True, align="end")
    assert tp.shift != 0
    metric = parse_metric("target-logprob", lm.tokenizer).bind(tp)
    sites = end_sites(lm, tp)
    got = engine_des(lm, tp, metric, sites, engine)
    for site in sites:
        assert got[site] == pytest.approx(reference_de(lm, tp, metric, site), abs=1e-4), site


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_atp_direct_effect_is_te_less_the_linearised_loss_at_the_treatment_run(tiny_dir, family):
    """AtP's DE = TE - (a_treatment - a_control) . dm/da, the gradient taken at the treatment run."""
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    n, a = len(tp.control_ids), lm.anatomy
    sites = site_grid([1], ["mlp", "neuron"], [n - 1, ALL_POSITIONS], a.d_mlp)[::5]
    got = dict(zip(sites, direct_effects(lm, tp, metric, sites).tolist(), strict=True))
    key = (1, "neuron")
    with torch.no_grad(), ActivationRecorder(lm, [key, (1, "mlp")]) as control:
        m_c = prompt_metric(lm, metric, input_ids=torch.tensor([tp.control_ids]))
    with torch.enable_grad(), ActivationRecorder(lm, [key, (1, "mlp")], in_graph=True) as treated:
        embeds = lm.model.get_input_embeddings()(torch.tensor([tp.treatment_ids])).detach().requires_grad_()
        m_t = prompt_metric(lm, metric, inputs_embeds=embeds)
        keys = [key, (1, "mlp")]
        grads = dict(zip(keys, torch.autograd.grad(m_t, [treated[k] for k in keys]), strict=True))
    te = (m_t - m_c).item()
    for site in sites:
        k = (site.layer, site.module)
        delta = ((treated[k][0].detach() - control[k]) * grads[k][0]).double()
        if site.module == "neuron":
            delta = delta[:, site.neuron]
        part = delta.sum() if site.position == ALL_POSITIONS else delta[site.position].sum()
        assert got[site] == pytest.approx(te - part.item(), abs=1e-5), site


def test_a_run_stores_ie_and_de_side_by_side_and_exports_both(tmp_path):
    """On the embedded model, exact and atp (with exact verification): every row has its DE, the layer
    export a de column and its aggregate de_mean and de_share (sum DE / sum TE), one definition."""
    with Store(tmp_path / "runs.db") as store:
        spec = RunSpec(max_pairs=2, positions="last,*", effects=("ie", "de"))
        exact = execute(spec, store).run_id
        atp = execute(
            spec.replace(modules=("neuron",), layers="-1", method="atp", verify_top=5), store
        ).run_id
        plain = execute(RunSpec(max_pairs=1, positions="last"), store).run_id
        rows = export.table(store, exact, "layer")
        aggregated = export.table(store, exact, "layer", aggregated=True)
        neurons = export.table(store, atp, "neuron")
        te = {p["pair"]: p["te"] for p in store.pairs(exact)}
        # the explorer's neuron pane, from the summary and live (one pair): DE ranked as IE is
        from harmmed_tui.db import queries
        from harmmed_tui.db.view import Effect, View

        summary = queries.top_neurons(store, View(atp, "top", effect=Effect.DE), "atp", limit=3)
        one = queries.top_neurons(store, View(atp, "top", pair=0, effect=Effect.DE), "atp", limit=3)
        assert "de" not in export.table(store, plain, "layer")[0]
    assert all(r["de"] is not None for r in rows + neurons)
    atp_de = {(r["pair"], r["layer"], r["neuron"]): r["de"] for r in neurons if r["method"] == "atp"}
    mean_de = {
        (layer, n): sum(v for (_, lay, m), v in atp_de.items() if (lay, m) == (layer, n)) / 2
        for (_, layer, n) in atp_de
    }
    # ranked by what the effect needs each neuron for, |TE - DE| (a DE near TE: one it does without)
    mean_te = sum(te.values()) / 2
    assert [r[3] for r in summary] == pytest.approx([mean_de[(r[0], r[1])] for r in summary])
    need = sorted((abs(mean_te - v) for v in mean_de.values()), reverse=True)[:3]
    assert [abs(mean_te - r[3]) for r in summary] == pytest.approx(need)
    assert [r[3] for r in one] == pytest.approx([atp_de[(0, r[0], r[1])] for r in one])
    assert [abs(te[0] - r[3]) for r in one] == pytest.approx(
        sorted((abs(te[0] - v) for (p, _, _), v in atp_de.items() if p == 0), reverse=True)[:3]
    )
    assert {r["method"] for r in neurons} == {"atp", "exact"} and sum(
        r["method"] == "exact" for r in neurons
    ) == 10
    # layer 0's residual stream at every position held at its control value is the control run: DE 0
    assert all(
        abs(r["de"]) < 1e-4
        for r in rows
        if r["layer"] == 0 and r["module"] == "resid" and r["position"] == "*"
    )
    for a in aggregated:
        mine = [
            r
            for r in rows
            if (r["layer"], r["module"], r["position"]) == (a["layer"], a["module"], a["position"])
            or (
                a["position"] == -1
                and r["position"] != "*"
                and (r["layer"], r["module"]) == (a["layer"], a["module"])
            )
        ]
        assert a["de_mean"] == pytest.approx(sum(r["de"] for r in mine) / len(mine))
        assert a["de_share"] == pytest.approx(sum(r["de"] for r in mine) / sum(te[r["pair"]] for r in mine))


def test_direct_effects_of_a_noise_contrast_are_refused_before_loading():
    from harmmed_tui.analysis.mediation import check_choices

    with pytest.raises(SiteError, match="--corrupt"):
        check_choices(RunSpec(corrupt="bomb", effects=("ie", "de")))
    with pytest.raises(SiteError, match="give ie, or ie,de"):
        check_choices(RunSpec(effects=("de",)))


def test_the_claims_report_says_whether_direct_effects_agree(tmp_path):
    """Claims 0-2 judged again on each site's necessity, TE - DE, by the same rule; claim 3's gate curve is
    a necessity test itself. A run without DE says nothing about them."""
    from harmmed_tui.analysis import claims
    from harmmed_tui.db import report

    with Store(tmp_path / "runs.db") as store:
        run = execute(RunSpec(max_pairs=4, effects=("ie", "de")), store).run_id
        plain = execute(RunSpec(max_pairs=4), store).run_id
        found = report.run_claims(store, run)
        necessity = report.run_effects(store, run, "necessity")
        effects = report.run_effects(store, run)
        text = report.render(store, run)
        assert all(not c.direct for c in report.run_claims(store, plain))
        assert "Direct effects" not in report.render(store, plain)
    again = [claims.claim_0(necessity), claims.claim_1(necessity), claims.claim_2(necessity)]
    for c, n in zip(found, again, strict=False):
        assert c.direct.startswith(f"{'agree' if c.verdict == n.verdict else 'disagree'} with the indirect")
        assert f"the claim is {n.verdict}" in c.direct
    assert found[3].direct == found[4].direct == claims.GATE_IS_NECESSITY
    assert text.count("*Direct effects:*") == 5
    # necessity = TE - DE, pair by pair (layer 0's resid at every position held: the whole TE lost)
    for p, q in zip(effects.pairs, necessity.pairs, strict=True):
        assert set(p.modules) == set(q.modules) and p.te == q.te


async def test_t_cycles_ie_and_de_in_the_explorer(tmp_path):
    """t: IE/TE, IE, DE/TE, DE, and back; the DE/TE cells are the export's de_share (one definition)."""
    from harmmed_tui.tui.app import HarmmedApp
    from harmmed_tui.tui.explore_screen import ExploreScreen

    db = tmp_path / "runs.db"
    with Store(db) as store:
        spec = RunSpec(max_pairs=2, modules=("resid", "attn", "mlp", "neuron"), positions="last,*")
        execute(spec.replace(effects=("ie", "de")), store)
        share = {
            (r["layer"], r["module"]): r["de_share"]
            for r in export.table(store, 1, "layer", aggregated=True)
            if r["position"] == "*"
        }
    app = HarmmedApp(str(db))
    async with app.run_test(size=(120, 30)) as pilot:
        await press(pilot, "enter")
        screen = app.screen
        assert isinstance(screen, ExploreScreen)
        table = screen.pane.table
        labels = lambda: [str(c.label) for c in screen.pane.table.columns.values()]  # noqa: E731
        assert labels()[1] == "resid IE/TE"
        seen = []
        for _ in range(4):
            await press(pilot, "t")
            seen.append((screen.view.effect, screen.view.by_te, labels()[1]))
        assert seen == [
            ("ie", False, "resid IE"),
            ("de", True, "resid DE/TE"),
            ("de", False, "resid DE"),
            ("ie", True, "resid IE/TE"),
        ]
        await press(pilot, "t", "t")
        assert "colour: DE/TE" in str(screen.pane.query_one(".legend").render())
        cell = str(table.get_row_at(3)[3]).lstrip(" ░▒▓█")  # layer 3's mlp DE/TE
        assert float(cell) == pytest.approx(share[(3, "mlp")], abs=5e-4)
        await press(pilot, "N")  # the top neurons show IE and IE/TE at once: t switches IE and DE
        assert screen.view.level == "top" and labels()[4:6] == ["DE (exact)", "DE/TE"]
        await press(pilot, "t")
        assert labels()[4:6] == ["IE (exact)", "IE/TE"]
        await press(pilot, "t")
        assert labels()[4:6] == ["DE (exact)", "DE/TE"]


async def test_setup_starts_a_run_with_direct_effects_and_direction_sites(tmp_path):
    """The Setup form's effects select and modules field reach the run as --effects and --modules do."""
    from harmmed_tui.tui.app import HarmmedApp
    from harmmed_tui.tui.explore_screen import ExploreScreen
    from harmmed_tui.tui.setup_screen import SetupScreen

    spec = RunSpec(max_pairs=1, modules=("resid", "direction"), positions="last")
    app = HarmmedApp(str(tmp_path / "runs.db"), spec)
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "n")
        assert isinstance(app.screen, SetupScreen)
        app.screen.query_one("#effects").value = "ie,de"
        await pilot.pause()
        await press(pilot, "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ExploreScreen)
        run = app.store.run(app.screen.run_id)
        assert RunSpec.from_json(run["spec"]).effects == ("ie", "de") and run["status"] == "done"
        rows = export.table(app.store, run["id"], "layer")
    assert {r["module"] for r in rows} == {"resid", "direction"} and all(r["de"] is not None for r in rows)
