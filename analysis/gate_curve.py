"""The gate curve: what ablating a run's top K neurons does to held-out pairs, for several K and layer groups.

Pure arithmetic over a gate check's stored rows (no torch), so the read-only commands (`show`, `export`,
`report`) and the explorer draw it straight from the store. Each point compares the top-K set with K random
neurons matched by layer (mean ± sd over seeds) on two scales: the share of the mean TE the ablation
removes, and the share of the held-out pairs refused before ablation whose judged verdict flips to an answer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from statistics import fmean, stdev

import numpy as np

from harmmed_tui.analysis.stats import bootstrap_ci, percent

SIGNS = ("positive", "negative", "abs")
GROUPS = ("final", "last-quarter", "all")


def group_layers(group: str, n_layers: int) -> list[int]:
    """The layers of a layer group: the final layer, the last quarter (at least one layer), or all."""
    first = {"final": n_layers - 1, "last-quarter": n_layers - math.ceil(n_layers / 4), "all": 0}[group]
    return list(range(first, n_layers))


@dataclass(frozen=True)
class Point:
    group: str
    k: int  # as asked; `units` is how many the group had to ablate (fewer when the run ranked fewer)
    units: int
    pairs: int
    mean_te: float
    top_removed: float | None  # share of the mean TE removed by the top set (None when TE is 0)
    random_removed: float | None  # mean over seeds
    random_removed_sd: float | None
    refused: int  # held-out pairs whose treatment was judged refused before ablation
    top_flipped: float | None  # share of those answered, not refused, after ablating the top set
    random_flipped: float | None
    random_flipped_sd: float | None
    seeds: int
    top_removed_low: float | None = None  # 95% bootstrap interval of top_removed over the held-out pairs
    top_removed_high: float | None = None
    te_low: float | None = None  # 95% bootstrap interval of the held-out pairs' mean TE
    te_high: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def te_spans_zero(self) -> bool:
        """The held-out TE may be 0: no share of it means anything (every share here is then None)."""
        return self.te_low is not None and self.te_low <= 0 <= self.te_high

    def removed_text(self) -> str:
        """The top set's share of TE removed, with its interval, or why there is none."""
        if self.te_spans_zero:
            return (
                f"no share of TE (the held-out TE's 95% CI, {self.te_low:+.3g} to {self.te_high:+.3g}, spans 0: "
                "inconclusive)"
            )
        text = f"{percent(self.top_removed)} of TE"
        if self.top_removed_low is not None:
            text += f" (95% CI {percent(self.top_removed_low)} to {percent(self.top_removed_high)})"
        return text


def _removed(rows: list[dict], mean_te: float) -> float | None:
    return -fmean(r["shift"] for r in rows) / mean_te if rows and mean_te else None


def _flipped(rows: list[dict]) -> float | None:
    judged = [r for r in rows if r["refused_before"]]
    if not judged or any(r["refused_after"] is None for r in judged):
        return None
    return sum(not r["refused_after"] for r in judged) / len(judged)


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return fmean(values), stdev(values) if len(values) > 1 else 0.0


def curve(rows: list[dict]) -> list[Point]:
    """One point per (layer group, K) of a check's rows (dicts with group, k, units, arm, seed, shift, te,
    refused_before, refused_after), in the order the check ran them."""
    cells: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["grp"], r["k"])][r["seed"]].append(r)
    points = []
    for (group, k), by_seed in cells.items():
        top = by_seed.pop(-1)
        mean_te = fmean(r["te"] for r in top)
        te_ci = bootstrap_ci([r["te"] for r in top])
        nothing = te_ci[0] <= 0 <= te_ci[1]  # a share of a TE that may be 0 is no finding: left out
        removed = (None, None) if nothing else _mean_sd([_removed(v, mean_te) for v in by_seed.values()])
        flipped = _mean_sd([_flipped(v) for v in by_seed.values()])
        points.append(
            Point(
                group,
                k,
                top[0]["units"],
                len(top),
                mean_te,
                None if nothing else _removed(top, mean_te),
                *removed,
                sum(bool(r["refused_before"]) for r in top),
                _flipped(top),
                *flipped,
                len(by_seed),
                *((None, None) if nothing else _removed_ci(top)),
                *te_ci,
            )
        )
    return points


def _removed_ci(rows: list[dict], n_boot: int = 2000) -> tuple[float | None, float | None]:
    """The percentile bootstrap interval, over pairs, of the share of TE removed (a ratio of sums)."""
    shift = np.array([r["shift"] for r in rows], dtype=float)
    te = np.array([r["te"] for r in rows], dtype=float)
    if not te.sum():
        return None, None
    idx = np.random.default_rng(0).integers(0, len(rows), size=(n_boot, len(rows)))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = -shift[idx].sum(1) / te[idx].sum(1)
    lo, hi = np.nanquantile(draws, [0.025, 0.975])
    return float(lo), float(hi)
