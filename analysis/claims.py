"""The paper's four claims (arXiv:2604.11663), judged on one run: what it shows, with numbers, confidence
intervals, the pairs behind them, and a verdict by a stated rule.

Shares of the effect are ratios of sums over pairs (sum of IE / sum of TE): a pair with a tiny TE cannot
blow them up as a mean of per-pair IE/TE would. Their 95% intervals come from a percentile bootstrap over
pairs; differences are bootstrapped paired (both sides from the same resampled pairs). Pure numpy: the
report is a read-only command and never loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harmmed_tui.analysis.gate_curve import Point
from harmmed_tui.analysis.stats import percent, wilson_ci

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
MIN_PAIRS = 3  # fewer pairs than this give no interval worth a verdict
MIN_REFUSALS = 5  # held-out refusals a gate curve needs before it can say a set flips "the majority"
SPARSE_SHARE = 0.05  # a "sparse" gate: at most this share of the final layer's MLP units
N_BOOT, LEVEL = 2000, 0.95


@dataclass(frozen=True)
class PairEffects:
    """One pair's stored effects, positions as control token indices."""

    id: str
    te: float
    last: int  # the last position (where the metric reads the next token)
    differing: tuple[int, ...]  # positions whose token differs between treatment and control (aligned)
    resid: dict[tuple[int, int], float]  # (layer, position) -> IE of the residual stream at that position
    modules: dict[tuple[str, int], float]  # (module, layer) -> IE at every position at once (`*`/suffix)
    flips: bool | None = None  # its judged behaviour: treatment refused and control answered (None: unjudged)


@dataclass(frozen=True)
class RunEffects:
    n_layers: int
    d_mlp: int
    pairs: list[PairEffects]


@dataclass
class Claim:
    number: int
    title: str
    verdict: str
    finding: str  # what the run shows, with its numbers
    rule: str  # how the verdict follows from them
    table: list[dict] = field(default_factory=list)  # the numbers behind it
    pairs: list[str] = field(default_factory=list)  # ids of the pairs behind it
    direct: str = ""  # whether the direct effects agree (a run that stored them), else empty


class _Bootstrap:
    """Ratio-of-sums statistics over pairs, with percentile intervals from one shared set of resamples."""

    def __init__(self, te: np.ndarray, seed: int = 0):
        self.te = te
        self.idx = np.random.default_rng(seed).integers(0, len(te), size=(N_BOOT, len(te)))

    def share(self, ie: np.ndarray) -> tuple[float, np.ndarray]:
        """sum(ie) / sum(te) over pairs along the first axis, and its bootstrap draws."""
        point = ie.sum(0) / self.te.sum()
        draws = ie[self.idx].sum(1) / self.te[self.idx].sum(1).reshape(-1, *([1] * (ie.ndim - 1)))
        return point, draws

    @staticmethod
    def ci(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.quantile(draws, (1 - LEVEL) / 2, axis=0), np.quantile(draws, (1 + LEVEL) / 2, axis=0)


def _layers(first: int, run: RunEffects) -> str:
    last = run.n_layers - 1
    return f"layer {last}" if first == last else f"layers {first}-{last}"


def _ci_text(lo: float, hi: float) -> str:
    return f"95% CI [{lo:+.2f}, {hi:+.2f}]"


def _too_few(number: int, title: str, rule: str, why: str, pairs: list[PairEffects]) -> Claim:
    return Claim(number, title, INCONCLUSIVE, why, rule, pairs=[p.id for p in pairs])


# --- claim 0 -----------------------------------------------------------------------------------------
TITLE_0 = "Early layers contextualise the harm"
RULE_0 = (
    "supported when, at layer 0, the differing tokens' resid IE/TE exceeds the last position's (the "
    "interval of last - differing lies below 0) and at some later layer the last position's exceeds theirs "
    "(the interval lies above 0); not supported otherwise; inconclusive with fewer than "
    f"{MIN_PAIRS} pairs with resid rows at the last and at the differing positions"
)


def _role_series(run: RunEffects) -> tuple[list[PairEffects], np.ndarray, np.ndarray, np.ndarray]:
    """The pairs with resid rows at every layer for the last position and their differing positions (the
    last one excluded), and per pair and layer: IE at the last position, summed IE at the differing
    positions, summed IE at the other positions."""
    layers = range(run.n_layers)
    usable, last, diff, other = [], [], [], []
    for p in run.pairs:
        differing = [d for d in p.differing if d != p.last]
        positions = {pos for (_, pos) in p.resid}
        if not differing or not all((layer, q) in p.resid for layer in layers for q in [p.last, *differing]):
            continue
        usable.append(p)
        last.append([p.resid[(layer, p.last)] for layer in layers])
        diff.append([sum(p.resid[(layer, d)] for d in differing) for layer in layers])
        rest = positions - {p.last, *differing}
        other.append([sum(p.resid.get((layer, q), 0.0) for q in rest) for layer in layers])
    shape = (len(usable), run.n_layers)
    return usable, *(np.array(v, dtype=float).reshape(shape) for v in (last, diff, other))


def claim_0(run: RunEffects) -> Claim:
    usable, last, diff, other = _role_series(run)
    te = np.array([p.te for p in usable])
    if len(usable) < MIN_PAIRS or te.sum() <= 0:
        why = (
            f"{len(usable)} pairs have resid rows at the last position and at the tokens that differ "
            "(claim 0 needs minimal pairs patched at every position: --modules including resid, --positions all)"
        )
        return _too_few(0, TITLE_0, RULE_0, why, usable)
    boot = _Bootstrap(te)
    gap, gap_draws = boot.share(last - diff)
    lo, hi = boot.ci(gap_draws)
    shares = {name: boot.share(v)[0] for name, v in (("differing", diff), ("other", other), ("last", last))}
    table = [
        {
            "layer": layer,
            "differing_ie_te": shares["differing"][layer],
            "other_ie_te": shares["other"][layer],
            "last_ie_te": shares["last"][layer],
            "last_minus_differing": gap[layer],
            "ci_low": lo[layer],
            "ci_high": hi[layer],
        }
        for layer in range(run.n_layers)
    ]
    crossed = [layer for layer in range(run.n_layers) if gap[layer] > 0]
    starts_at_tokens = hi[0] < 0
    moved = [layer for layer in range(1, run.n_layers) if lo[layer] > 0]
    verdict = SUPPORTED if starts_at_tokens and moved else NOT_SUPPORTED
    at0 = f"at layer 0 the differing tokens carry {shares['differing'][0]:.2f} of TE, the last position "
    at0 += f"{shares['last'][0]:.2f} (last - differing {gap[0]:+.2f}, {_ci_text(lo[0], hi[0])})"
    if crossed:
        c = crossed[0]
        cross = (
            f"the last position's resid IE/TE first exceeds the differing tokens' at layer {c} "
            f"({gap[c]:+.2f}, {_ci_text(lo[c], hi[c])})"
        )
    else:
        cross = "the last position's resid IE/TE never exceeds the differing tokens'"
    return Claim(0, TITLE_0, verdict, f"{at0}; {cross}.", RULE_0, table, [p.id for p in usable])


# --- claim 1 -----------------------------------------------------------------------------------------
TITLE_1 = "Harmful generation arises in later layers"
RULE_1 = (
    "supported when the share of the summed attn + mlp IE/TE (every position at once) that lies in the "
    "second half of the layers has an interval above 0.5; not supported when below 0.5; inconclusive when "
    f"it spans 0.5, the summed effect is not positive, or fewer than {MIN_PAIRS} pairs have those rows"
)


_NO_MODULES = "{} pairs have attn and mlp rows at every layer and position at once"


def _module_pairs(run: RunEffects) -> tuple[list[PairEffects], dict[str, np.ndarray], np.ndarray]:
    """Pairs with `*`-level attn and mlp rows at every layer, each module's (pairs, layers) IE, and TE."""
    keys = [(m, layer) for m in ("attn", "mlp") for layer in range(run.n_layers)]
    usable = [p for p in run.pairs if all(k in p.modules for k in keys)]
    ie = {
        m: np.array([[p.modules[(m, layer)] for layer in range(run.n_layers)] for p in usable]).reshape(
            len(usable), run.n_layers
        )
        for m in ("attn", "mlp")
    }
    return usable, ie, np.array([p.te for p in usable])


def _first_crossing(series: np.ndarray, threshold: float) -> np.ndarray:
    """The first index along the last axis where `series` exceeds `threshold` (its length: never)."""
    above = series > threshold
    return np.where(above.any(-1), above.argmax(-1), series.shape[-1])


def claim_1(run: RunEffects) -> Claim:
    usable, ie, te = _module_pairs(run)
    if len(usable) < MIN_PAIRS or te.sum() <= 0:
        return _too_few(1, TITLE_1, RULE_1, _NO_MODULES.format(len(usable)), usable)
    boot, half = _Bootstrap(te), run.n_layers // 2
    both = ie["attn"] + ie["mlp"]
    total, total_draws = boot.share(both.sum(1))
    late, late_draws = boot.share(both[:, half:].sum(1))
    share, draws = late / total, late_draws / total_draws
    lo, hi = boot.ci(draws)
    table, cumulative = [], {}
    for m in ("attn", "mlp"):
        per_layer = boot.share(ie[m])[0]
        cumulative[m] = np.cumsum(per_layer) / per_layer.sum() if per_layer.sum() else per_layer * np.nan
    for layer in range(run.n_layers):
        table.append(
            {
                "layer": layer,
                **{f"{m}_ie_te": boot.share(ie[m][:, layer])[0] for m in ("attn", "mlp")},
                **{f"{m}_cumulative_share": cumulative[m][layer] for m in ("attn", "mlp")},
            }
        )
    third = run.n_layers - max(1, run.n_layers // 3)
    mlp_last_third = 1 - cumulative["mlp"][third - 1] if third > 0 else 1.0
    finding = (
        f"{percent(share)} of the summed attn + mlp IE/TE lies in the second half ({_layers(half, run)}; "
        f"{_ci_text(lo, hi)}); {percent(mlp_last_third)} of the summed mlp IE/TE lies in the last third "
        f"({_layers(third, run)})"
    )
    verdict = INCONCLUSIVE
    if total > 0:
        verdict = SUPPORTED if lo > 0.5 else NOT_SUPPORTED if hi < 0.5 else INCONCLUSIVE
    else:
        finding += "; the summed effect is not positive"
    resid_pairs, last, _, _ = _role_series(run)
    if len(resid_pairs) >= MIN_PAIRS:
        rb = _Bootstrap(np.array([p.te for p in resid_pairs]))
        point, last_draws = rb.share(last)
        at = int(_first_crossing(point, 0.5))
        c_lo, c_hi = np.quantile(_first_crossing(last_draws, 0.5), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        finding += (
            f"; the last position's resid IE/TE first exceeds 0.5 at layer {at} (95% CI layers "
            f"{int(c_lo)}-{int(c_hi)})"
            if at < run.n_layers
            else "; the last position's resid IE/TE never exceeds 0.5"
        )
    return Claim(1, TITLE_1, verdict, finding + ".", RULE_1, table, [p.id for p in usable])


# --- claim 2 -----------------------------------------------------------------------------------------
TITLE_2 = "MLP blocks carry more of it than attention"
RULE_2 = (
    "supported when the summed mlp IE/TE minus the summed attn IE/TE (every position at once, paired "
    "bootstrap over pairs) has an interval above 0; not supported when below 0; inconclusive when it "
    f"spans 0 or fewer than {MIN_PAIRS} pairs have both modules' rows"
)


def claim_2(run: RunEffects) -> Claim:
    usable, ie, te = _module_pairs(run)
    if len(usable) < MIN_PAIRS or te.sum() <= 0:
        return _too_few(2, TITLE_2, RULE_2, _NO_MODULES.format(len(usable)), usable)
    boot = _Bootstrap(te)
    sums = {m: boot.share(ie[m].sum(1)) for m in ("attn", "mlp")}
    diff, draws = boot.share(ie["mlp"].sum(1) - ie["attn"].sum(1))
    lo, hi = boot.ci(draws)
    table = []
    for m in ("attn", "mlp"):
        m_lo, m_hi = boot.ci(sums[m][1])
        table.append({"module": m, "summed_ie_te": sums[m][0], "ci_low": m_lo, "ci_high": m_hi})
    table.append({"module": "mlp - attn", "summed_ie_te": diff, "ci_low": lo, "ci_high": hi})
    verdict = SUPPORTED if lo > 0 else NOT_SUPPORTED if hi < 0 else INCONCLUSIVE
    finding = (
        f"summed over layers, mlp carries {sums['mlp'][0]:.2f} of TE and attn {sums['attn'][0]:.2f}; "
        f"mlp - attn = {diff:+.2f} ({_ci_text(lo, hi)})."
    )
    return Claim(2, TITLE_2, verdict, finding, RULE_2, table, [p.id for p in usable])


# --- claim 3 -----------------------------------------------------------------------------------------
TITLE_3 = "A sparse set of final-layer neurons gates it"
RULE_3 = (
    "from the gate curve: supported when ablating some top K final-layer neurons, K at most "
    f"{SPARSE_SHARE:.0%} of the final layer's MLP units, turns the majority of the held-out refusals into "
    "answers while K random neurons of the same layer turn fewer than half (mean over seeds); not "
    f"supported when the curve has at least {MIN_REFUSALS} refusals to flip and no such K; inconclusive "
    "without a gate check with the final layer group, or with fewer refusals"
)


def _majority(points: list[Point]) -> Point | None:
    """The smallest-K point whose top set flips the majority of refusals while random sets do not."""
    for p in sorted(points, key=lambda p: p.k):
        if p.top_flipped is not None and p.top_flipped > 0.5 and (p.random_flipped or 0) < 0.5:
            return p
    return None


def _point_text(p: Point) -> str:
    lo, hi = wilson_ci(round(p.top_flipped * p.refused), p.refused)
    return (
        f"top {p.units} flip {percent(p.top_flipped)} of {p.refused} refusals (95% CI {percent(lo)}-"
        f"{percent(hi)}; random {percent(p.random_flipped)}) and remove {p.removed_text()}"
    )


def claim_3(run: RunEffects, curve: list[Point] | None, heldout: list[str] | None = None) -> Claim:
    heldout = heldout or []
    if not curve:
        return Claim(
            3,
            TITLE_3,
            INCONCLUSIVE,
            "the run has no gate check: press a in the explorer, or run `harmmed-tui gate RUN` (held out: a "
            "study's own pairs, the built-in pairs the run did not use, or give --pairs FILE or --harmful/"
            "--harmless sets).",
            RULE_3,
        )
    final = [p for p in curve if p.group == "final"]
    table = [p.as_dict() for p in curve]
    if not final:
        why = "the gate check has no final-layer group: run `harmmed-tui gate RUN --groups final,all`."
        return Claim(3, TITLE_3, INCONCLUSIVE, why, RULE_3, table, heldout)
    refused = final[0].refused
    if refused < MIN_REFUSALS:
        why = (
            f"the model refused {refused} of {final[0].pairs} held-out harmful prompts before ablation: "
            "refusals are too rare here for a gate to flip."
        )
        return Claim(3, TITLE_3, INCONCLUSIVE, why, RULE_3, table, heldout)
    if final[0].top_flipped is None:
        why = "the gate check judged no answers after ablation, so no flip was counted (--max-new-tokens)."
        return Claim(3, TITLE_3, INCONCLUSIVE, why, RULE_3, table, heldout)
    limit = SPARSE_SHARE * run.d_mlp
    found = _majority(final)
    parts = []
    if found:
        parts.append(f"final layer: {_point_text(found)}")
        verdict = SUPPORTED if found.units <= limit else NOT_SUPPORTED
        if found.units > limit:
            parts.append(f"{found.units} units is more than {SPARSE_SHARE:.0%} of the layer's {run.d_mlp}")
    else:
        best = max(final, key=lambda p: (p.top_flipped or 0, p.top_removed or 0))
        parts.append(f"final layer: no K flips the majority (at most: {_point_text(best)})")
        verdict = NOT_SUPPORTED
    wide = _majority([p for p in curve if p.group == "all"])
    if wide:
        parts.append(f"all layers: {_point_text(wide)}")
    elif any(p.group == "all" for p in curve):
        parts.append("all layers: no K flips the majority")
    return Claim(3, TITLE_3, verdict, "; ".join(parts) + ".", RULE_3, table, heldout)


# --- claim 4 (the rival) -------------------------------------------------------------------------------
TITLE_4 = "A single direction mediates it (Arditi et al. 2024)"
RULE_4 = (
    "from the gate curve's direction arms: the run's refusal direction (of the layer whose direction removes "
    "the most TE on the run's own pairs) removed from the residual stream at every layer and position; "
    "supported when that turns the majority of the held-out refusals into answers while random unit "
    "directions turn fewer than half (mean over seeds); not supported when the curve has at least "
    f"{MIN_REFUSALS} refusals to flip and it does not; inconclusive without direction arms, or with fewer "
    "refusals"
)


def claim_4(curve: list[Point] | None, heldout: list[str] | None = None, chosen: dict | None = None) -> Claim:
    heldout = heldout or []
    points = [p for p in curve or [] if p.group == "direction"]
    if not points or not chosen:
        why = (
            "the gate check has no direction arms (checked before they existed, or a noise contrast): run "
            "`harmmed-tui gate RUN` again."
        )
        return Claim(4, TITLE_4, INCONCLUSIVE, why, RULE_4, [p.as_dict() for p in curve or []], heldout)
    p = points[0]
    own = chosen["removed_own"][chosen["layer"]]
    # counts read as written: "3 of 3 refusals flipped", the random directions' as a mean over seeds
    table = [
        {
            "arm": f"direction (layer {chosen['layer']})",
            "te_removed": p.top_removed,
            "ci_low": p.top_removed_low,
            "ci_high": p.top_removed_high,
            "refusals_flipped": None if p.top_flipped is None else round(p.top_flipped * p.refused),
            "of_refusals": p.refused,
        },
        {
            "arm": f"random directions ({p.seeds} seeds, mean)",
            "te_removed": p.random_removed,
            "ci_low": None,
            "ci_high": None,
            "refusals_flipped": None if p.random_flipped is None else p.random_flipped * p.refused,
            "of_refusals": p.refused,
        },
    ]
    picked = (
        f"the layer {chosen['layer']} direction (chosen on the run's {chosen['own_pairs']} own pairs, whose TE "
        f"it removes {percent(own)} of)"
    )
    removed = f"removes {p.removed_text().replace('of TE', 'of the held-out TE', 1)}"
    baseline = (
        f"random directions remove {percent(p.random_removed, p.random_removed_sd)} and flip "
        f"{percent(p.random_flipped)}"
    )
    if p.refused < MIN_REFUSALS or p.top_flipped is None:
        why = (
            f"{picked} {removed}; {baseline}; but the model refused {p.refused} of {p.pairs} held-out harmful "
            "prompts before ablation: too few to judge flips."
        )
        return Claim(4, TITLE_4, INCONCLUSIVE, why, RULE_4, table, heldout)
    lo, hi = wilson_ci(round(p.top_flipped * p.refused), p.refused)
    flips = f"flips {percent(p.top_flipped)} of {p.refused} refusals (95% CI {percent(lo)}-{percent(hi)})"
    majority = p.top_flipped > 0.5 and (p.random_flipped or 0) < 0.5
    verdict = SUPPORTED if majority else NOT_SUPPORTED
    return Claim(
        4, TITLE_4, verdict, f"ablating {picked} {flips} and {removed}; {baseline}.", RULE_4, table, heldout
    )


# --- claims 0-2 need pairs whose behaviour changes ------------------------------------------------------
FLIP_RULE = (
    f"Claims 0-2 are about harmful behaviour: each is inconclusive when fewer than {MIN_PAIRS} of the run's "
    "pairs flip (treatment refused, control answered, as judged)"
)


def unflipped(run: RunEffects) -> str | None:
    """Why claims 0-2 give no verdict on this run's pairs (fewer than MIN_PAIRS flip), or None."""
    judged = [p for p in run.pairs if p.flips is not None]
    flipped = sum(bool(p.flips) for p in judged)
    if flipped >= MIN_PAIRS:
        return None
    if not judged:
        return (
            "the run judged no answers (--answer-tokens 0): whether its pairs change the model's behaviour is "
            "unknown"
        )
    return (
        f"only {flipped} of its {len(judged)} pairs flip (treatment refused, control answered): the effect "
        "measured is not one of harmful behaviour"
    )


def _without_behaviour(claim: Claim, why: str) -> Claim:
    claim.finding = f"{claim.finding.rstrip('.')}; but {why}."
    claim.verdict = INCONCLUSIVE
    return claim


# --- direct effects ------------------------------------------------------------------------------------
NECESSITY = "(TE - DE)/TE"
GATE_IS_NECESSITY = "the gate curve ablates in the treatment run: it tests necessity itself"


def _agreement(sufficient: Claim, necessary: Claim) -> str:
    """Claims 0-2 judged again by the same rule on the necessity of each site, TE - DE (the effect lost when
    the site alone is held at its control value in the treatment run), in place of its IE."""
    agree = "agree" if necessary.verdict == sufficient.verdict else "disagree"
    finding = necessary.finding.replace("IE/TE", NECESSITY).rstrip(".")
    return f"{agree} with the indirect ones: by necessity, {NECESSITY}, the claim is {necessary.verdict}; {finding}"


def judge(
    run: RunEffects,
    curve: list[Point] | None = None,
    heldout: list[str] | None = None,
    necessity: RunEffects | None = None,
    direction: dict | None = None,
) -> list[Claim]:
    """The paper's four claims for one run and (optionally) one of its gate checks, and the rival fifth (a
    single direction, from the check's direction arms; `direction`: how the check chose it); with `necessity`
    (the run's TE - DE in place of IE, where it stored direct effects), whether the direct effects agree."""
    found = [
        claim_0(run),
        claim_1(run),
        claim_2(run),
        claim_3(run, curve, heldout),
        claim_4(curve, heldout, direction),
    ]
    if necessity is not None:
        for c, n in zip(found, (claim_0, claim_1, claim_2), strict=False):
            c.direct = _agreement(c, n(necessity))
        found[3].direct = found[4].direct = GATE_IS_NECESSITY
    why = unflipped(run)
    for c in found[:3]:
        c.rule = f"{c.rule}. {FLIP_RULE}"
        if why:
            _without_behaviour(c, why)
    return found
