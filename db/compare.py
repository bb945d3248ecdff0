"""Two runs side by side: the layer x module table of each (IE/TE of the module-level site, mean over
pairs) and their difference, e.g. over-refusal pairs against true-refusal pairs, base against instruct,
plain against jailbroken prompts, or two metrics."""

from __future__ import annotations

import math

from harmmed_tui.analysis.sites import LAYER_MODULES
from harmmed_tui.db import export
from harmmed_tui.db.store import Store, StoreError


def _table(store: Store, run_id: int) -> dict[tuple[int, str], float]:
    """(layer, module) -> IE/TE over pairs (sum IE / sum TE) at the run's module-level site (`*` or `suffix`)."""
    rows = export.table(store, run_id, "layer", aggregated=True)
    table = {
        (r["layer"], r["module"]): r["ie_share"]
        for r in rows
        if r["position"] in ("*", "suffix") and r["ie_share"] is not None
    }
    if not table:
        raise StoreError(f"run {run_id} has no module-level rows ('*' or 'suffix' positions) to compare")
    return table


def compare(store: Store, run_a: int, run_b: int) -> tuple[list[dict], float | None, str | None]:
    """One row per (layer, module) both runs have: IE/TE of each and b - a; the Pearson correlation of the two
    tables over those cells (None with fewer than 3, or no spread); and a note naming the cells only one run
    has (None when they have the same)."""
    if run_a == run_b:
        raise StoreError(f"compare needs two different runs (got {run_a} twice)")
    store.run(run_a), store.run(run_b)  # both exist, before either is read
    a, b = _table(store, run_a), _table(store, run_b)
    keys = sorted(a.keys() & b.keys(), key=lambda k: (k[0], LAYER_MODULES.index(k[1])))
    if not keys:
        raise StoreError(
            f"runs {run_a} and {run_b} share no layer and module to compare (run {run_a}: {_cells(a)}; "
            f"run {run_b}: {_cells(b)})"
        )
    only = [
        f"only run {rid} has {_cells(mine.keys() - theirs.keys())}"
        for rid, mine, theirs in ((run_a, a, b), (run_b, b, a))
        if mine.keys() - theirs.keys()
    ]
    note = (
        f"runs {run_a} and {run_b} share {len(keys)} layer x module cells; " + "; ".join(only)
        if only
        else None
    )
    rows = [
        {
            "layer": layer,
            "module": module,
            f"ie_share_{run_a}": a[k],
            f"ie_share_{run_b}": b[k],
            "difference": b[k] - a[k],
        }
        for k in keys
        for layer, module in (k,)
    ]
    return rows, _pearson([a[k] for k in keys], [b[k] for k in keys]), note


def _cells(keys) -> str:
    """Cells as `layers 0-3 (resid, mlp)`, compactly."""
    layers = sorted({layer for layer, _ in keys})
    modules = [m for m in LAYER_MODULES if any(k[1] == m for k in keys)]
    streaks: list[list[int]] = []  # consecutive layers, each as [first, last]
    for layer in layers:
        if streaks and layer == streaks[-1][1] + 1:
            streaks[-1][1] = layer
        else:
            streaks.append([layer, layer])
    spans = [f"{first}" if first == last else f"{first}-{last}" for first, last in streaks]
    return f"layers {','.join(spans)} ({', '.join(modules)})"


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((u - mx) * (v - my) for u, v in zip(x, y, strict=True))
    sxx, syy = sum((u - mx) ** 2 for u in x), sum((v - my) ** 2 for v in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None
