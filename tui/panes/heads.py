"""Every attention head of the run in one table, a row per layer and a column per head; beside it, the
heads of the layer in focus."""

from __future__ import annotations

from harmmed_tui.db import queries
from harmmed_tui.tui.panes import measures, number
from harmmed_tui.tui.widgets import Table


def draw(screen, t: Table, plt, te: float | None, checks) -> None:
    """Every head of the run in one view: a row per layer, a column per head, at '*'/'suffix' (else
    the last position); the plot, the heads of the layer in focus."""
    args = (screen.app.store, screen.run_id, screen.pair, screen.method, screen.category)
    name, mean, ratio = measures(screen)
    data, share = queries.head_grid(*args, value=mean), queries.head_grid(*args, value=ratio)
    where = "every position at once"
    if not data:
        data = queries.head_grid(*args, value=mean, last=True)
        share = queries.head_grid(*args, value=ratio, last=True)
        where = "the last position (no * sites)"
    by_te = screen.by_te and bool(te)
    shown = share if by_te else data
    heads = sorted({h for row in data.values() for h in row})
    t.add_column("layer", key="layer")
    for h in heads:
        t.add_column(f"h{h}", key=f"h{h}")
    for layer in sorted(data):
        values = [number(shown.get(layer, {}).get(h)) for h in heads]
        scale = 1.0 if by_te else max((abs(v) for v in values if v == v), default=0.0)
        t.add_row(str(layer), *(t.heat(v, scale) for v in values), key=str(layer))
    screen.scale_legend(te, f"{where}, {screen.method} patching")
    focus = (
        screen.focus_layer
        if screen.focus_layer in data
        else max(data, key=lambda layer: max(abs(v) for v in data[layer].values()), default=None)
    )
    if focus is not None:
        plt.bar([str(h) for h in heads], [shown.get(focus, {}).get(h) or 0.0 for h in heads])
        plt.title(f"L{focus} heads {name + '/TE' if by_te else name}")
        plt.xlabel("head")
