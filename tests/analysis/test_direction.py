"""The refusal direction: the difference of mean layer outputs at the last prompt position of a run's own
pairs (checked against the model's own hidden states), `direction` sites exact in both engines against a
forward-hook reference (equal lengths on every family, end-aligned pairs), AtP's estimate against the
gradient by hand, and directional ablation removing the direction at every layer."""

import pytest
import torch

from harmmed_tui.analysis.attribution import Attribution
from harmmed_tui.analysis.direction import DirectionAblation, mean_difference, random_directions
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair, tokenize_pairs
from harmmed_tui.analysis.patching import ActivationRecorder, DirectEffects, PairPatcher, prompt_metric
from harmmed_tui.analysis.sites import ALL_POSITIONS, SUFFIX, Site, site_grid
from tests.analysis.hooked import hooked_logits
from tests.analysis.test_end_alignment import PAIRS as END_PAIRS
from tests.analysis.test_heads import PAIR
from tests.conftest import SMOLLM_TOKENIZER, TINY_CONFIGS

PAIRS = [
    PAIR,
    Pair("Tell me how to poison a neighbour", "Tell me how to greet a neighbour", id="q"),
    Pair("Write a threat to my boss today", "Write a poem to my boss today", id="r"),
]


def reference_ie(lm, tp, metric, site: Site, r: torch.Tensor) -> float:
    """One plain forward per site: the control run's layer output at the site's positions moved along r
    to the treatment's projection (x + ((t - x) . r) r), every other component left as it is."""
    layer = lm.anatomy.layers[site.layer]
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    n = len(tp.control_ids)
    positions = {ALL_POSITIONS: range(n), SUFFIX: range(n - tp.suffix_len, n)}.get(
        site.position, [site.position]
    )
    positions = list(positions)
    stored = {}

    def grab(m, args, out):
        stored["t"] = first(out).clone()

    def put(m, args, out):
        x = first(out)
        t = stored["t"][0, [p + tp.shift for p in positions]]
        c = x[0, positions]
        x[0, positions] = c + ((t - c) @ r)[:, None] * r

    hooked_logits(lm, tp.treatment_ids, layer, grab)
    clean, patched = hooked_logits(lm, tp.control_ids), hooked_logits(lm, tp.control_ids, layer, put)
    return (metric(patched[:, metric.positions]) - metric(clean[:, metric.positions])).item()


def test_the_direction_is_the_normalised_mean_difference_of_the_last_hidden_states(tiny_dir):
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    tps = [tokenize_pair(lm.tokenizer, p, i) for i, p in enumerate(PAIRS)]
    heard = []
    d = mean_difference(lm, tps, lambda done, total: heard.append((done, total)))
    assert heard == [(1, 3), (2, 3), (3, 3)]  # (a job's countable stage: never silent on a slow model)
    assert d.units.shape == (lm.anatomy.n_layers, lm.anatomy.d_model) and d.pairs == 3
    diff = 0
    with torch.no_grad():
        for tp in tps:
            t = lm.model(torch.tensor([tp.treatment_ids]), output_hidden_states=True).hidden_states
            c = lm.model(torch.tensor([tp.control_ids]), output_hidden_states=True).hidden_states
            # hidden_states[l + 1] is layer l's output (the last one is after the final norm: left out)
            diff = diff + torch.stack([t[i + 1][0, -1] - c[i + 1][0, -1] for i in range(len(t) - 2)])
    want = diff / 3
    assert torch.allclose(d.norms[:-1], want.norm(dim=-1), atol=1e-4)
    assert torch.allclose(d.units[:-1], want / want.norm(dim=-1, keepdim=True), atol=1e-5)
    assert torch.allclose(d.units.norm(dim=-1), torch.ones(lm.anatomy.n_layers), atol=1e-5)


def direction_sites(lm, tp):
    n = len(tp.control_ids)
    return site_grid(range(lm.anatomy.n_layers), ["direction"], [0, n - 2, n - 1, ALL_POSITIONS], 0)


def first_pair(tiny_dir, family):
    """A tiny model, its first pair with the metric bound, the pairs' direction and the pair's sites."""
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tps = [tokenize_pair(lm.tokenizer, p, i) for i, p in enumerate(PAIRS)]
    units = mean_difference(lm, tps).units
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tps[0])
    return lm, tps[0], metric, units, direction_sites(lm, tps[0])


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_direction_sites_equal_a_forward_hook_reference_in_both_engines(tiny_dir, family):
    lm, tp, metric, units, sites = first_pair(tiny_dir, family)
    keys = {(s.layer, s.module) for s in sites}
    for engine in ("replay", "hooks"):
        patcher = PairPatcher(lm, tp, metric, keys, engine, directions=units)
        got = {}
        for chunk, ie in patcher.effects(sites, batch_tokens=60):
            got.update(zip(chunk, ie.tolist(), strict=True))
        for site in sites:
            want = reference_ie(lm, tp, metric, site, units[site.layer])
            assert got[site] == pytest.approx(want, abs=1e-4), (engine, site)
    assert max(abs(v) for v in got.values()) > 1e-3  # (not a test of zeros)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("engine", ["replay", "hooks"])
def test_end_aligned_direction_sites_and_their_direct_effects(tiny_dir, family, engine):
    lm = load_model(str(tiny_dir(family, SMOLLM_TOKENIZER)), device="cpu", dtype="float32")
    tps, _ = tokenize_pairs(lm.tokenizer, list(END_PAIRS.values()), "auto", "end")
    units = mean_difference(lm, tps).units
    tp = tps[0]
    assert tp.shift != 0
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    n = len(tp.control_ids)
    sites = site_grid(range(lm.anatomy.n_layers), ["direction"], [n - 1, n - 3, SUFFIX], 0)
    keys = {(s.layer, s.module) for s in sites}
    patcher = PairPatcher(lm, tp, metric, keys, engine, directions=units)
    got = {}
    for chunk, ie in patcher.effects(sites, batch_tokens=90):
        got.update(zip(chunk, ie.tolist(), strict=True))
    des = DirectEffects(lm, tp, metric, keys, engine, units).of(sites, batch_tokens=90).tolist()
    for site, de in zip(sites, des, strict=True):
        assert got[site] == pytest.approx(reference_ie(lm, tp, metric, site, units[site.layer]), abs=1e-4)
        # DE: the treatment run moved along r to the control's projection, less m(control)
        want = reference_ie(
            lm, tp.reversed(), metric.shifted(tp.shift), site.shifted(tp.shift), units[site.layer]
        )
        assert de == pytest.approx(want + patcher.te.item(), abs=1e-4), site


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_atp_along_a_direction_is_the_projected_change_times_the_projected_gradient(tiny_dir, family):
    lm, tp, metric, units, sites = first_pair(tiny_dir, family)
    got = dict(zip(sites, Attribution(lm, tp, metric, sites, units).effects(sites).tolist(), strict=True))
    for layer in range(lm.anatomy.n_layers):
        key = (layer, "resid")
        with torch.no_grad(), ActivationRecorder(lm, [key]) as treated:
            prompt_metric(lm, metric, input_ids=torch.tensor([tp.treatment_ids]))
        with torch.enable_grad(), ActivationRecorder(lm, [key], in_graph=True) as control:
            embeds = lm.model.get_input_embeddings()(torch.tensor([tp.control_ids])).detach().requires_grad_()
            (grad,) = torch.autograd.grad(prompt_metric(lm, metric, inputs_embeds=embeds), [control[key]])
        r = units[layer]
        per_pos = ((treated[key] - control[key][0].detach()) @ r) * (grad[0] @ r)
        for site in (s for s in sites if s.layer == layer):
            want = per_pos.sum() if site.position == ALL_POSITIONS else per_pos[site.position]
            assert got[site] == pytest.approx(want.item(), abs=1e-5), site


def test_ablation_removes_the_direction_from_every_layer_output_and_rows_differ(tiny_dir):
    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    tps = [tokenize_pair(lm.tokenizer, p, i) for i, p in enumerate(PAIRS)]
    units = mean_difference(lm, tps).units
    rows = torch.stack([units[1], random_directions(lm.anatomy.d_model, 1)[0]])
    keys = [(layer, "resid") for layer in range(lm.anatomy.n_layers)]
    with torch.no_grad(), DirectionAblation(lm, rows), ActivationRecorder(lm, keys, in_graph=True) as acts:
        lm.model(torch.tensor([tps[0].treatment_ids] * 2), use_cache=False)
    for layer in range(lm.anatomy.n_layers):
        out = acts[(layer, "resid")]
        assert (out[0] @ rows[0]).abs().max() < 1e-4 and (out[1] @ rows[1]).abs().max() < 1e-4
        assert (out[0] @ rows[1]).abs().max() > 1e-3  # each row loses its own direction only
    r = random_directions(16, 3)
    assert torch.allclose(r.norm(dim=-1), torch.ones(3)) and torch.equal(r, random_directions(16, 3))


def test_a_run_stores_its_direction_and_a_resume_patches_along_the_stored_one(tmp_path):
    """The direction is the run's: taken once from its pairs, stored with it, and what a resume patches
    along (here a stored direction altered on purpose: the resumed rows follow it, not a recomputed one)."""
    import numpy as np

    from harmmed_tui.analysis.models import load_model
    from harmmed_tui.analysis.spec import RunSpec
    from harmmed_tui.db import export
    from harmmed_tui.db.runner import execute
    from harmmed_tui.db.store import Store

    spec = RunSpec(max_pairs=3, modules=("resid", "direction"), positions="last")
    with Store(tmp_path / "runs.db") as store:
        run = execute(spec, store).run_id
        units, norms, pairs = store.directions(run)
        lm = load_model("default", device="cpu")
        tps = [tokenize_pair(lm.tokenizer, p, i) for i, p in enumerate(_builtin(3))]
        fresh = mean_difference(lm, tps)
        assert pairs == 3 and np.allclose(units, fresh.units.numpy(), atol=1e-5)
        assert np.allclose(norms, fresh.norms.numpy(), rtol=1e-5)
        # the last layer's direction replaced, pair 2's rows dropped, the run interrupted: resume
        flipped = units.copy()
        flipped[-1] = random_directions(units.shape[1], 1)[0].numpy()
        store.set_directions(run, flipped, norms, pairs)
        store.db.execute("DELETE FROM effects WHERE run_id = ? AND pair = 2", [run])
        store.db.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", [run])
        store.db.conn.commit()
        execute(spec, store, run_id=run)
        rows = export.table(store, run, "layer")
    last = lm.anatomy.n_layers - 1
    got = next(r["ie"] for r in rows if (r["pair"], r["layer"], r["module"]) == (2, last, "direction"))
    tp = tps[2]
    metric = parse_metric("refusal", lm.tokenizer).bind(tp)
    site = Site(last, "direction", len(tp.control_ids) - 1)
    want = reference_ie(lm, tp, metric, site, torch.from_numpy(flipped[last]))
    assert got == pytest.approx(want, abs=1e-4)
    assert got != pytest.approx(reference_ie(lm, tp, metric, site, fresh.units[last]), abs=1e-3)


def _builtin(n):
    from harmmed_tui.analysis.pairs import load_pairs

    return load_pairs("builtin")[:n]


def test_the_gate_curve_ablates_the_direction_beside_the_neurons(tiny_dir):
    """The direction arms of a gate check: its row's metric equals a plain forward with the direction
    projected out of the embeddings and every layer's output; random arms take seeded unit directions."""
    from harmmed_tui.analysis import gate
    from harmmed_tui.analysis.gate_curve import curve
    from harmmed_tui.analysis.judge import PhraseJudge

    lm = load_model(str(tiny_dir("llama")), device="cpu", dtype="float32")
    tps = [tokenize_pair(lm.tokenizer, p, i, align="end") for i, p in enumerate(PAIRS)]
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer)
    r = mean_difference(lm, tps[:2]).units[1]
    spec = gate.GateSpec(tops=(2,), groups=("all",), seeds=2, max_new_tokens=4)
    rows = gate.check(lm, metric, PhraseJudge(("e",)), tps[2:], {"all": [(1, 3), (2, 5)]}, spec, direction=r)
    mine = [x for x in rows if x["grp"] == "direction"]
    assert [(x["arm"], x["seed"], x["k"], x["units"]) for x in mine] == [
        ("top", -1, 1, 1), ("random", 0, 1, 1), ("random", 1, 1, 1)
    ]  # fmt: skip
    tp, bound = tps[2], metric.bind(tps[2]).shifted(tps[2].shift)
    for row, direction in zip(mine, [r, *random_directions(lm.anatomy.d_model, 2)], strict=True):

        def project_out(module, args, out, d=direction):
            x = out[0] if isinstance(out, tuple) else out
            x -= (x @ d)[..., None] * d

        hooks = [
            m.register_forward_hook(project_out)
            for m in [lm.model.get_input_embeddings(), *lm.anatomy.layers]
        ]
        try:
            with torch.no_grad():
                logits = lm.model(torch.tensor([tp.treatment_ids]), use_cache=False).logits
        finally:
            for h in hooks:
                h.remove()
        assert row["m_after"] == pytest.approx(bound(logits[:, bound.positions])[0].item(), abs=1e-4)
    assert mine[0]["m_after"] != pytest.approx(mine[0]["m_before"], abs=1e-4)
    points = {p.group: p for p in curve(rows)}
    assert set(points) == {"all", "direction"} and points["direction"].seeds == 2
    assert (
        points["direction"].top_removed_low
        <= points["direction"].top_removed
        <= points["direction"].top_removed_high
    )


def test_direction_sites_need_a_control_prompt_and_verify_their_generations(tmp_path):
    """A noise contrast has no control prompt to take a direction from: refused before loading; a run's top
    direction sites patched into the control prompt's answer (--verify-generation) move along it."""
    from harmmed_tui.analysis.errors import SiteError
    from harmmed_tui.analysis.mediation import check_choices
    from harmmed_tui.analysis.spec import RunSpec
    from harmmed_tui.db import export
    from harmmed_tui.db.runner import execute
    from harmmed_tui.db.store import Store

    with pytest.raises(SiteError, match="--corrupt runs have no control prompt"):
        check_choices(RunSpec(corrupt="bomb", modules=("direction",)))
    with Store(tmp_path / "runs.db") as store:
        spec = RunSpec(max_pairs=1, modules=("direction",), positions="last", verify_generation=2)
        run = execute(spec, store).run_id
        rows = export.table(store, run, "generation")
    assert len(rows) == 2 and {r["module"] for r in rows} == {"direction"}
    assert all(r["flips"] for r in rows)  # the organism's refusal, moved along its direction at layer 0 on
