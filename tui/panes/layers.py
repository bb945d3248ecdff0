"""The run's layer table: the effect and its share of TE of resid, attn, mlp (and the direction, where the
run has it) at '*' or 'suffix' (else the last position), a row per layer; beside it, attn and mlp by layer."""

from __future__ import annotations

from harmmed_tui.db import queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.panes import MODULES, ByLayer, Loaded, Pane, Run, by_layer, number

SHORT = {"direction": "dir"}  # (column headers at 80 columns)


class LayersPane(Pane):
    LEVEL, FIGURE = "layers", "layers"

    @staticmethod
    def load(store: Store, view: View, run: Run) -> ByLayer:
        return by_layer(queries.layer_effects, store, view, run.method)

    def draw(self, loaded: Loaded) -> None:
        t, plt, view, layers = self.table, self.plt, loaded.view, loaded.data
        data, share = layers.data, layers.share
        name = view.effect.upper()
        by_te = view.by_te and bool(loaded.te)
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
        self.scale_legend(loaded, layers.where)
        ordered = sorted(data)
        shown = share if by_te else data
        plt.multiple_bar(
            [str(i) for i in ordered],
            [[shown.get(i, {}).get(m) or 0.0 for i in ordered] for m in ("attn", "mlp")],
            labels=["attn", "mlp"],
        )
        plt.title(
            f"{name + '/TE' if by_te else name} by layer"
        )  # (plotext drops a title wider than the plot)
        plt.xlabel("layer")
