"""The four claims' verdicts follow their stated rules, on effects built to support, contradict or leave
open each claim; the shares are ratios of sums over pairs."""

import numpy as np
import pytest

from harmmed_tui.analysis import claims
from harmmed_tui.analysis.claims import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, PairEffects, RunEffects
from harmmed_tui.analysis.gate_curve import Point

L, T = 8, 6  # layers; positions 0..5, token 2 differs, 5 is the last


def _pair(i, te, resid=None, attn=None, mlp=None):
    """A pair whose resid IE at (layer, position) is resid(layer, position) * te, and whose `*`-level
    attn/mlp IE at a layer is attn(layer) * te / mlp(layer) * te."""
    modules = {}
    for name, f in (("attn", attn), ("mlp", mlp)):
        if f:
            modules |= {(name, layer): f(layer) * te for layer in range(L)}
    rows = {(layer, q): resid(layer, q) * te for layer in range(L) for q in range(T)} if resid else {}
    return PairEffects(f"p{i}", te, T - 1, (2,), rows, modules)


def _run(**effects):
    rng = np.random.default_rng(0)
    return RunEffects(L, 400, [_pair(i, 1 + rng.random(), **effects) for i in range(6)])


def moving(layer, q):  # the harm sits at the differing token early and at the last position late
    return {2: max(0.0, 1 - layer / 3), T - 1: min(1.0, layer / 3)}.get(q, 0.0)


def test_claim_0_effect_moving_from_the_differing_token_to_the_last():
    c = claims.claim_0(_run(resid=moving))
    assert c.verdict == SUPPORTED and "first exceeds the differing tokens' at layer 2" in c.finding
    assert [r["last_minus_differing"] for r in c.table[:4]] == pytest.approx([-1, -1 / 3, 1 / 3, 1])
    assert c.pairs == [f"p{i}" for i in range(6)]
    at_last_already = claims.claim_0(_run(resid=lambda layer, q: float(q == T - 1)))
    assert at_last_already.verdict == NOT_SUPPORTED
    assert claims.claim_0(_run(attn=lambda layer: 0.1)).verdict == INCONCLUSIVE  # no per-position rows


def test_claim_1_later_layers():
    late = claims.claim_1(_run(attn=lambda layer: 0.01, mlp=lambda layer: float(layer >= 6), resid=moving))
    assert late.verdict == SUPPORTED
    assert late.finding.startswith("98% of the summed attn + mlp IE/TE lies in the second half (layers 4-7")
    assert "the last position's resid IE/TE first exceeds 0.5 at layer 2" in late.finding
    assert late.table[-1]["mlp_cumulative_share"] == pytest.approx(1.0)
    early = claims.claim_1(_run(attn=lambda layer: 0.01, mlp=lambda layer: float(layer < 2)))
    assert early.verdict == NOT_SUPPORTED
    even = claims.claim_1(_run(attn=lambda layer: 0.0, mlp=lambda layer: 0.1))
    assert even.verdict == INCONCLUSIVE  # exactly half in each half: the interval holds 0.5


def test_claim_2_mlp_over_attention_with_a_paired_interval():
    c = claims.claim_2(_run(attn=lambda layer: 0.02, mlp=lambda layer: 0.1))
    assert c.verdict == SUPPORTED
    rows = {r["module"]: r for r in c.table}
    assert rows["mlp"]["summed_ie_te"] == pytest.approx(0.8) and rows["attn"][
        "summed_ie_te"
    ] == pytest.approx(0.16)
    assert rows["mlp - attn"]["summed_ie_te"] == pytest.approx(0.64)
    assert claims.claim_2(_run(attn=lambda layer: 0.1, mlp=lambda layer: 0.02)).verdict == NOT_SUPPORTED
    rng = np.random.default_rng(1)
    noisy = RunEffects(
        L,
        400,
        [
            _pair(i, 1.0, attn=lambda layer, s=s: 0.1 + s, mlp=lambda layer, s=s: 0.1 - s)
            for i, s in enumerate(rng.normal(0, 0.05, 8))
        ],
    )
    assert claims.claim_2(noisy).verdict == INCONCLUSIVE
    two = RunEffects(L, 400, _run(attn=lambda layer: 0.02, mlp=lambda layer: 0.1).pairs[:2])
    assert claims.claim_2(two).verdict == INCONCLUSIVE  # too few pairs for an interval


def _point(group, k, top_flipped, random_flipped=0.0, refused=20):
    return Point(group, k, k, 30, 5.0, 0.5, 0.0, 0.0, refused, top_flipped, random_flipped, 0.0, 3)


def test_claim_3_reads_the_gate_curve():
    run = RunEffects(L, 400, [])  # sparse: at most 5% of 400 = 20 final-layer units
    sparse = [_point("final", 5, 0.2), _point("final", 20, 0.8), _point("all", 5, 0.9)]
    c = claims.claim_3(run, sparse, ["h0", "h1"])
    assert c.verdict == SUPPORTED and c.pairs == ["h0", "h1"]
    assert "final layer: top 20 flip 80% of 20 refusals (95% CI 58%-92%" in c.finding
    assert "all layers: top 5 flip 90%" in c.finding
    dense = [_point("final", 20, 0.3), _point("final", 100, 0.9)]
    assert claims.claim_3(run, dense).verdict == NOT_SUPPORTED  # a majority only with 100 units
    random_too = [_point("final", 5, 0.9, random_flipped=0.7)]
    assert claims.claim_3(run, random_too).verdict == NOT_SUPPORTED
    rare = [_point("final", 5, 0.0, refused=2), _point("final", 20, 0.5, refused=2)]
    c = claims.claim_3(run, rare)
    assert c.verdict == INCONCLUSIVE and "refused 2 of 30" in c.finding and "too rare" in c.finding
    assert claims.claim_3(run, None).verdict == INCONCLUSIVE
    assert claims.claim_3(run, [_point("all", 5, 0.9)]).verdict == INCONCLUSIVE  # no final-layer group


def test_claim_4_reads_the_direction_arms_beside_the_neurons():
    """The rival: the run's direction ablated on held-out pairs against random directions, by the same
    majority rule as claim 3, with the choice of its layer on the run's own pairs stated."""
    chosen = {"layer": 2, "removed_own": [0.1, 0.3, 0.6, 0.2], "own_pairs": 12}
    curve = [_point("final", 5, 0.2), _point("direction", 1, 0.9)]
    c = claims.claim_4(curve, ["h0"], chosen)
    assert c.verdict == SUPPORTED and c.pairs == ["h0"]
    assert "layer 2 direction (chosen on the run's 12 own pairs, whose TE it removes 60% of)" in c.finding
    assert "flips 90% of 20 refusals (95% CI 70%-97%)" in c.finding and "random directions" in c.finding
    assert [r["arm"] for r in c.table] == ["direction (layer 2)", "random directions (3 seeds, mean)"]
    # read as written: 18 of 20 refusals flipped, not "0.9 | 20"
    assert (c.table[0]["refusals_flipped"], c.table[0]["of_refusals"]) == (18, 20)
    assert claims.claim_4([_point("direction", 1, 0.3)], [], chosen).verdict == NOT_SUPPORTED
    random_too = [_point("direction", 1, 0.9, random_flipped=0.6)]
    assert claims.claim_4(random_too, [], chosen).verdict == NOT_SUPPORTED
    rare = claims.claim_4([_point("direction", 1, 1.0, refused=2)], [], chosen)
    assert rare.verdict == INCONCLUSIVE and "refused 2 of 30" in rare.finding
    old = claims.claim_4([_point("final", 5, 0.2)], [], None)  # a check from before direction arms
    assert old.verdict == INCONCLUSIVE and "no direction arms" in old.finding
    assert [c.number for c in claims.judge(RunEffects(L, 400, []), curve, [], None, chosen)] == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_claim_3_says_too_rare_only_when_refusals_are_too_rare():
    run = RunEffects(L, 400, [])
    unjudged = claims.claim_3(run, [_point("final", 5, None)])
    assert unjudged.verdict == INCONCLUSIVE and "too rare" not in unjudged.finding
    assert "judged no answers after ablation" in unjudged.finding


def test_a_share_of_a_held_out_te_whose_interval_spans_0_is_no_finding():
    """Held-out TEs of both signs (mean near 0): "removes -1020% of TE" was printed; the curve now holds no
    share of it, and the claims say why."""
    from harmmed_tui.analysis.gate_curve import curve

    rows = []
    for pair, te in enumerate([2.0, -1.9, 1.5, -1.7, 0.3, -0.1]):
        for seed, shift in ((-1, -0.4), (0, 0.1), (1, -0.2)):
            rows.append(
                dict(
                    grp="final",
                    k=5,
                    units=5,
                    seed=seed,
                    pair=pair,
                    shift=shift,
                    te=te,
                    refused_before=1,
                    refused_after=0,
                )
            )
    (p,) = curve(rows)
    assert (
        p.te_spans_zero and p.top_removed is None and p.random_removed is None and p.top_removed_low is None
    )
    assert p.top_flipped == 1.0  # the flips are counted as ever
    c = claims.claim_3(RunEffects(L, 400, []), [p])
    assert "no share of TE (the held-out TE's 95% CI" in c.finding and "spans 0: inconclusive" in c.finding
    assert "%" not in c.finding.split("remove ")[1].replace("95% CI", "")


def test_every_sites_interval_computed_together_equals_each_alone():
    """export.aggregate takes every site's bootstrap interval at once (stats.bootstrap_cis): bit for bit the
    interval each site gets alone, for samples of every size (one pair, two, many)."""
    from harmmed_tui.analysis.stats import bootstrap_ci, bootstrap_cis

    rng = np.random.default_rng(1)
    samples = [list(rng.normal(size=n)) for n in [1, 2, 5, 40, 40, 7, 40] * 3]
    assert bootstrap_cis(samples) == [bootstrap_ci(s) for s in samples]
