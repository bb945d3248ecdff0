"""One layer's module x position grid, labelled with the tokens of the pair shown; beside it, attn and mlp
by position."""

from __future__ import annotations

from dataclasses import dataclass

from harmmed_tui.analysis.sites import readable
from harmmed_tui.db import queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.panes import MODULES, Loaded, Pane, Run, number

LABEL = 16  # characters of a position's column header: `12:·token`


@dataclass(frozen=True)
class Grid:
    grid: dict[str, dict[int | None, float]]  # module -> position -> effect
    share: dict[str, dict[int | None, float]]  # module -> position -> share of TE
    flips: dict  # (module, position, -1) -> (flipped, verified)
    star: str  # what the module-level site is called: `*` or `suffix`


class GridPane(Pane):
    LEVEL, FIGURE, CELLS = "modules", "grid", True
    CRUMB = "layer {layer}"

    @staticmethod
    def load(store: Store, view: View, run: Run) -> Grid:
        return Grid(
            queries.module_grid(store, view, run.method),
            queries.module_grid(store, view, run.method, share=True),
            queries.generation_flips(store, view, view.layer),
            queries.module_level_name(store, view.run_id),
        )

    def show(self, loaded: Loaded) -> None:
        """A layer opened afresh starts on `*` (the decision is read at the end of the prompt, and the last
        positions are in view from there)."""
        fresh = self.shown is None or self.shown.layer != loaded.view.layer
        super().show(loaded)
        if fresh:
            self.table.move_cursor(row=0, column=len(self.table.columns) - 1)

    def draw(self, loaded: Loaded) -> None:
        t, plt, view, g = self.table, self.plt, loaded.view, loaded.data
        grid, share, star = g.grid, g.share, g.star
        name = view.effect.upper()
        positions = sorted({p for row in grid.values() for p in row}, key=lambda p: (p is None, p or 0))
        pairs = loaded.run.pairs
        shown = pairs[view.pair or 0] if pairs else {"treatment_tokens": [], "control_tokens": []}
        tokens = shown["treatment_tokens"]
        # the treatment's token p + shift pairs with the control's p (end alignment; 0 for equal lengths)
        shift = len(tokens) - len(shown["control_tokens"])
        by_te = view.by_te and bool(loaded.te)
        t.fixed_columns = 1  # the module names stay while positions scroll
        t.add_column("module", key="module")
        for p in positions:  # labelled with the tokens of the pair shown (pair 0 for the aggregate)
            i = p + shift if p is not None and p >= 0 else p
            label = star if p is None else tokens[i] if -len(tokens) <= i < len(tokens) else ""
            t.add_column(f"{star if p is None else p}:{readable(label)}"[:LABEL], key=str(p))
        for m in MODULES:
            if m not in grid:
                continue
            values = [grid[m].get(p, float("nan")) for p in positions]
            scale = max((abs(v) for v in values if v == v), default=0.0)
            cells = []
            for p, v in zip(positions, values, strict=True):
                f = g.flips.get((m, p, -1))
                mark = "" if f is None else "⚑" if f[0] else "·"
                ratio = number(share.get(m, {}).get(p))
                cells.append(t.heat(ratio, 1.0, mark) if by_te else t.heat(v, scale, mark))
            t.add_row(m, *cells, key=m)
        self.scale_legend(loaded)
        ps = [p for p in positions if p is not None]
        labels = [str(p) for p in ps] + ([star] if None in positions else [])
        values = share if by_te else grid
        plt.multiple_bar(
            list(range(len(labels))),
            [[values.get(m, {}).get(p) or 0.0 for p in [*ps, None][: len(labels)]] for m in ("attn", "mlp")],
            labels=["attn", "mlp"],
        )
        # few enough ticks to fit: plotext's own thinning of crowded ticks varies from run to run
        step = max(1, -(-len(labels) // 5))
        ticks = sorted({*range(0, len(labels), step), len(labels) - 1})
        plt.xticks(ticks, [labels[i] for i in ticks])
        plt.title(f"L{view.layer} {name + '/TE' if by_te else name} by position")
        plt.xlabel("position")
