"""The run's layer table: IE and IE/TE of resid, attn, mlp (and the direction, where the run has it) at '*'
or 'suffix' (else the last position), a row per layer; beside it, attn and mlp by layer."""

from __future__ import annotations

from harmmed_tui.db import queries
from harmmed_tui.tui.panes import MODULES, measures, number
from harmmed_tui.tui.widgets import Table

SHORT = {"direction": "dir"}  # (column headers at 80 columns)


def draw(screen, t: Table, plt, te: float | None, checks) -> None:
    args = (screen.app.store, screen.run_id, screen.pair, screen.method, screen.category)
    name, mean, ratio = measures(screen)
    data, share = queries.layer_effects(*args, value=mean), queries.layer_effects(*args, value=ratio)
    star = queries.module_level_name(screen.app.store, screen.run_id)
    # (`suffix`, of end-aligned pairs: every aligned position of the shared chat-template suffix)
    where = "every position at once" if star == "*" else "the shared suffix at once"
    if not data:  # a run without '*' or 'suffix' sites (--positions last:3): its last position, said so
        data = queries.layer_effects(*args, value=mean, last=True)
        share = queries.layer_effects(*args, value=ratio, last=True)
        where = "the last position (no * sites)"
    by_te = screen.by_te and bool(te)
    # the coloured quantity first, so that it is in view at 80 columns
    groups = (f"{name}/TE", name) if by_te else (name, f"{name}/TE")
    modules = [m for m in MODULES if any(m in row for row in data.values())]
    t.add_column("layer", key="layer")
    for group in groups:
        for m in modules:
            t.add_column(f"{SHORT.get(m, m)} {group}", key=f"{m} {group}")
    for layer in sorted(data):
        row = [data[layer].get(m, float("nan")) for m in modules]
        scale = max((abs(v) for v in row if v == v), default=0.0)
        ies = [t.heat(v, scale) if not by_te else f"{v:+.3f}" for v in row]
        ratios = [number(share.get(layer, {}).get(m)) for m in modules]
        shares = [t.heat(v, 1.0) if by_te else f"{v:+.3f}" if v == v else "" for v in ratios]
        t.add_row(str(layer), *(shares + ies if by_te else ies + shares), key=str(layer))
    screen.scale_legend(te, where)
    layers = sorted(data)
    shown = share if by_te else data
    plt.multiple_bar(
        [str(i) for i in layers],
        [[shown.get(i, {}).get(m) or 0.0 for i in layers] for m in ("attn", "mlp")],
        labels=["attn", "mlp"],
    )
    plt.title(f"{name + '/TE' if by_te else name} by layer")  # (plotext drops a title wider than the plot)
    plt.xlabel("layer")
