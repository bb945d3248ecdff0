"""Every attention head of the run in one table, a row per layer and a column per head; beside it, the
heads of the layer in focus."""

from __future__ import annotations

from harmmed_tui.db import queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.panes import ByLayer, Loaded, Pane, Run, by_layer, number


class HeadsPane(Pane):
    LEVEL, FIGURE, EXPORT = "heads", "heads", "head"
    CRUMB = "attention heads (layer x head)"

    @staticmethod
    def load(store: Store, view: View, run: Run) -> ByLayer:
        return by_layer(queries.head_grid, store, view, run.method)

    def draw(self, loaded: Loaded) -> None:
        t, plt, view, heads = self.table, self.plt, loaded.view, loaded.data
        name = view.effect.upper()
        by_te = view.by_te and bool(loaded.te)
        shown = heads.share if by_te else heads.data
        numbers = sorted({h for row in heads.data.values() for h in row})
        t.add_column("layer", key="layer")
        for h in numbers:
            t.add_column(f"h{h}", key=f"h{h}")
        for layer in sorted(heads.data):
            values = [number(shown.get(layer, {}).get(h)) for h in numbers]
            scale = 1.0 if by_te else max((abs(v) for v in values if v == v), default=0.0)
            t.add_row(str(layer), *(t.heat(v, scale) for v in values), key=str(layer))
        self.scale_legend(loaded, heads.where, loaded.run.method)
        data = heads.data
        focus = (
            view.layer
            if view.layer in data
            else max(data, key=lambda layer: max(abs(v) for v in data[layer].values()), default=None)
        )
        if focus is not None:
            plt.bar([str(h) for h in numbers], [shown.get(focus, {}).get(h) or 0.0 for h in numbers])
            plt.title(f"L{focus} heads {name + '/TE' if by_te else name}")
            plt.xlabel("head")

    def show(self, loaded: Loaded) -> None:
        """Opened from a layer's attn row: the cursor on that layer's row."""
        fresh = self.shown is None or self.shown.layer != loaded.view.layer
        super().show(loaded)
        keys = [str(k.value) for k in self.table.rows]
        if fresh and str(loaded.view.layer) in keys:
            self.table.move_cursor(row=keys.index(str(loaded.view.layer)))
