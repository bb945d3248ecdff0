"""Statistics over pairs and sites: bootstrap confidence intervals of a mean, rank agreement."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; a single value gives a zero-width interval."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_cis(samples: list, level: float = 0.95, n_boot: int = 2000) -> list[tuple[float, float]]:
    """bootstrap_ci of each sample, equal to it bit for bit (each sample's means reduced alone, as there):
    samples of one size share the resampled indices (the same seed draws the same ones), drawn once, and
    their quantiles are taken together."""
    out: list = [None] * len(samples)
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_size.setdefault(len(s), []).append(i)
    for n, members in by_size.items():
        if n < 2:
            for i in members:
                out[i] = bootstrap_ci(samples[i], level, n_boot)
            continue
        idx = np.random.default_rng(0).integers(0, n, size=(n_boot, n))
        means = np.stack([np.asarray(samples[i], dtype=float)[idx].mean(axis=1) for i in members])
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
        for j, i in enumerate(members):
            out[i] = (float(lo[j]), float(hi[j]))
    return out


def ie_share(ie, te) -> float | None:
    """A site's share of the total effect over pairs: sum IE / sum TE (ratio of sums), the one aggregated
    IE/TE every surface shows (a mean of per-pair ratios is dominated by the pairs of smallest TE)."""
    total = float(np.sum(te))
    return float(np.sum(ie)) / total if total else None


def spearman(a, b) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant or n < 2."""
    ra, rb = (_ranks(np.asarray(v, dtype=float)) for v in (a, b))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]  # tied values share the mean of the ranks they span


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound at 0 or n successes, unlike the normal one)."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def percent(v: float | None, sd: float | None = None) -> str:
    """A share as a whole percentage (with ± sd to a tenth when given); n/a for None; never "-0%"."""
    if v is None:
        return "n/a"
    if sd is None:
        return f"{round(v * 100) + 0:.0f}%"
    return f"{round(v * 100, 1) + 0:.1f}±{sd * 100:.1f}%"
