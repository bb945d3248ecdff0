"""The neurons of one layer (NeuronsPane), or the top neurons across layers (TopPane), a page at a time, with
their exact IE where atp verified them, recurrence over pairs, gate-check rank and generation flips."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding

from harmmed_tui.db import export, queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import PAGE, View
from harmmed_tui.tui.panes import Loaded, Pane, Run


@dataclass(frozen=True)
class Neurons:
    rows: list[tuple]  # queries.top_neurons' page
    total: int  # rows over every page
    recur: dict[tuple[int, int], int]  # (layer, neuron) -> pairs whose top 20 it is in
    gated: dict[tuple[int, int], int]  # (layer, neuron) -> rank in the newest gate check's widest set
    flips: dict[tuple[int, int | None, int], tuple[int, int]]  # (layer, position, neuron) -> flips


class NeuronsPane(Pane):
    LEVEL, FIGURE, EXPORT, PAGED = "neurons", "neurons", "neuron", True
    CRUMB = "layer {layer} > mlp > neurons"
    BINDINGS = [
        Binding(
            "right_square_bracket",
            "page(1)",
            "next neurons",
            id="explore.next_page",
            tooltip=f"the next page of {PAGE} neurons",
            show=False,
        ),
        Binding(
            "left_square_bracket",
            "page(-1)",
            "previous neurons",
            id="explore.previous_page",
            tooltip="the previous page of neurons",
            show=False,
        ),
    ]

    @staticmethod
    def load(store: Store, view: View, run: Run) -> Neurons:
        rows = queries.top_neurons(store, view, run.method)
        checks = run.checks
        ranked = checks[0]["neurons"][checks[0]["spec"]["groups"][-1]] if checks else []
        flips = {}
        for layer in {r[0] for r in rows}:
            for (module, pos, unit), f in queries.generation_flips(store, view, layer).items():
                if module == "neuron":
                    flips[(layer, pos, unit)] = f
        return Neurons(
            rows,
            queries.neuron_count(store, view, run.method),
            export.recurrence(store, view.run_id, run.method),
            {n: i + 1 for i, n in enumerate(map(tuple, ranked))},
            flips,
        )

    def action_page(self, step: int) -> None:
        """The next or previous page of neurons; a short page is the last one."""
        view = self.screen.view
        at_end = view.page == 0 if step < 0 else self.table.row_count < PAGE
        if not at_end:
            self.screen.view = view.to(page=view.page + step)

    def draw(self, loaded: Loaded) -> None:
        self._rows(loaded)
        n, view, plt = loaded.data, loaded.view, self.plt
        first, rows, name = view.offset, n.rows, view.effect.upper()
        if rows:
            plt.hist([r[3] for r in rows], bins=30)
            plt.title(f"L{view.layer} {name}, #{first + 1}-{first + len(rows)}")
            plt.xlabel(name)
        else:
            plt.title("no neuron rows")

    def _rows(self, loaded: Loaded, with_layer: bool = False) -> None:
        t, view, n, method = self.table, loaded.view, loaded.data, loaded.run.method
        verified = method == "atp"
        name = view.effect.upper()
        columns = [
            "#",
            *(["layer"] if with_layer else []),
            "neuron",
            "pos",
            f"{name} ({method})",
            f"{name}/TE",
        ]
        columns += ["exact"] if verified else []
        columns += ["n", "recur", "gate"] + (["flips"] if n.flips else [])
        for col in columns:
            t.add_column(col, key=col)
        for i, (layer, neuron, pos, ie, exact, count, share) in enumerate(n.rows):
            cells = [str(view.offset + i + 1), *([str(layer)] if with_layer else []), str(neuron)]
            cells += [
                "*" if pos is None else str(pos),
                f"{ie:+.4f}",
                "" if share is None else f"{share:+.3f}",
            ]
            cells += [f"{exact:+.4f}" if exact is not None else ""] if verified else []
            cells += [str(count), str(n.recur.get((layer, neuron), 0))]
            cells.append(f"#{n.gated[(layer, neuron)]}" if (layer, neuron) in n.gated else "")
            if n.flips:  # of the pairs whose patched answer was generated: how many flipped
                f = n.flips.get((layer, pos, neuron))
                cells.append(f"{f[0]}/{f[1]}" if f else "")
            t.add_row(*cells, key=f"{layer}:{neuron}:{pos}")  # (a neuron may rank at several positions)
        pages = max(1, -(-n.total // PAGE))
        self.legend(
            f"page {view.page + 1} of {pages} ([ ]) · recur: in how many pairs' top 20 · gate: gate-check rank"
        )


class TopPane(NeuronsPane):
    LEVEL = "top"
    CRUMB = "top neurons across layers"

    def draw(self, loaded: Loaded) -> None:
        self._rows(loaded, with_layer=True)
        rows, first, plt = loaded.data.rows, loaded.view.offset, self.plt
        if rows:
            layers = sorted({r[0] for r in rows})
            plt.bar([str(layer) for layer in layers], [sum(r[0] == layer for r in rows) for layer in layers])
            plt.title(f"layers of #{first + 1}-{first + len(rows)}")
            plt.xlabel("layer")
        else:
            plt.title("no neuron rows")
