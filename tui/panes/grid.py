"""One layer's module x position grid, labelled with the tokens of the pair shown; beside it, attn and mlp
by position."""

from __future__ import annotations

from harmmed_tui.analysis.sites import readable
from harmmed_tui.db import queries
from harmmed_tui.tui.panes import MODULES, measures, number
from harmmed_tui.tui.widgets import Table


def draw(screen, t: Table, plt, te: float | None, checks) -> None:
    store = screen.app.store
    args = (store, screen.run_id, screen.focus_layer, screen.pair, screen.method, screen.category)
    name, mean, ratio = measures(screen)
    grid, share = queries.module_grid(*args, value=mean), queries.module_grid(*args, value=ratio)
    flips = queries.generation_flips(store, screen.run_id, screen.focus_layer, screen.pair, screen.category)
    positions = sorted({p for row in grid.values() for p in row}, key=lambda p: (p is None, p or 0))
    shown = screen.pairs[screen.pair or 0] if screen.pairs else {"treatment_tokens": [], "control_tokens": []}
    tokens = shown["treatment_tokens"]
    # the treatment's token p + shift pairs with the control's p (end alignment; 0 for equal lengths)
    shift = len(tokens) - len(shown["control_tokens"])
    star = queries.module_level_name(store, screen.run_id)
    by_te = screen.by_te and bool(te)
    t.add_column("module", key="module")
    for p in positions:  # labelled with the tokens of the pair shown (pair 0 for the aggregate)
        i = p + shift if p is not None and p >= 0 else p
        label = star if p is None else tokens[i] if -len(tokens) <= i < len(tokens) else ""
        t.add_column(f"{star if p is None else p}:{readable(label)}"[:16], key=str(p))
    for m in MODULES:
        if m not in grid:
            continue
        values = [grid[m].get(p, float("nan")) for p in positions]
        scale = max((abs(v) for v in values if v == v), default=0.0)
        cells = []
        for p, v in zip(positions, values, strict=True):
            f = flips.get((m, p, -1))
            mark = "" if f is None else "⚑" if f[0] else "·"
            ratio = number(share.get(m, {}).get(p))
            cells.append(t.heat(ratio, 1.0, mark) if by_te else t.heat(v, scale, mark))
        t.add_row(m, *cells, key=m)
    screen.scale_legend(te)
    ps = [p for p in positions if p is not None]
    labels = [str(p) for p in ps] + ([star] if None in positions else [])
    shown = share if by_te else grid
    plt.multiple_bar(
        list(range(len(labels))),
        [[shown.get(m, {}).get(p) or 0.0 for p in [*ps, None][: len(labels)]] for m in ("attn", "mlp")],
        labels=["attn", "mlp"],
    )
    # few enough ticks to fit: plotext's own thinning of crowded ticks varies from run to run
    step = max(1, -(-len(labels) // 5))
    ticks = sorted({*range(0, len(labels), step), len(labels) - 1})
    plt.xticks(ticks, [labels[i] for i in ticks])
    plt.title(f"L{screen.focus_layer} {name + '/TE' if by_te else name} by position")
    plt.xlabel("position")
    # the decision is read at the end of the prompt: start on `*`, with the last positions in view
    t.cursor_type = "cell"
    t.move_cursor(column=len(positions))
