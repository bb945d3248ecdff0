"""Explore: run > layer > module > neuron panes, with plots and the gate verdict."""

from __future__ import annotations

import time

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static
from textual_plotext import PlotextPlot

from harmmed_tui.db import export, queries
from harmmed_tui.tui.messages import RunProgress
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.widgets import Table, heat


class ExploreScreen(Screen):
    BINDINGS = [
        Binding("enter", "drill", "drill in", id="explore.drill"),
        Binding("escape", "up", "back", id="explore.up"),
        Binding("p", "next_pair", "pair/aggregate", id="explore.pair"),
        Binding("C", "next_category", "category", id="explore.category", show=False),  # (in help and ctrl+p)
        Binding("a", "gate", "gate check", id="explore.gate"),
        Binding("R", "report", "claims", id="explore.report"),
        Binding("right_square_bracket", "page(1)", "next neurons", id="explore.next_page"),
        Binding("left_square_bracket", "page(-1)", "previous neurons", id="explore.previous_page"),
    ]
    PAGE = 200  # neurons fetched per page

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id, self.pair, self.focus_layer, self.level = run_id, None, None, "layers"
        self.category: str | None = None  # with no pair: average over this category's pairs only
        self.page = 0
        self._view: tuple | None = None  # what show() last drew

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="crumb")
        yield Static("", id="gate")
        with Horizontal(id="running"):
            yield ProgressBar(id="progress", show_eta=True)
            yield Static("", id="rate")
        with Horizontal():
            yield Table(id="table", cursor_type="row")
            yield PlotextPlot(id="plot")
        yield Footer()

    def on_mount(self) -> None:
        self.pairs = self.app.store.pairs(self.run_id)
        self.method = self.app.store.run_method(self.run_id)
        self.query_one("#running").display = False
        self._started: tuple[float, int] | None = None  # (time, sites done) at this run's first report
        self.show()

    def show(self) -> None:
        self._shown = time.monotonic()
        run = self.app.store.run(self.run_id)
        who = f"pair {self.pair}" if self.pair is not None else "aggregate over pairs"
        if self.pair is None and self.category is not None:
            who += f" of category {self.category}"
        crumb = [f"run {self.run_id} ({run['status']}, {run['model']})"]
        if self.focus_layer is not None:
            crumb.append(f"layer {self.focus_layer}")
        if self.level == "neurons":
            crumb += ["mlp", "neurons"]
        self.query_one("#crumb", Static).update(escape(" > ".join(crumb) + f"   [{who}]"))
        t, plot = self.query_one(Table), self.query_one(PlotextPlot)
        view = (self.level, self.focus_layer, self.page, self.pair, self.category)
        cursor = t.cursor_row if view == self._view else 0  # kept while a run streams in
        self._view = view
        t.clear(columns=True)
        t.fixed_columns = 1 if self.level == "modules" else 0  # the module names stay while positions scroll
        t.cursor_type = "row"
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        store = self.app.store
        checks = store.gate_checks(self.run_id) if self.level == "neurons" else []
        if self.level == "layers":
            data = queries.layer_effects(store, self.run_id, self.pair, self.method, self.category)
            for col in ("layer", "resid", "attn", "mlp"):
                t.add_column(col, key=col)
            for layer in sorted(data):
                t.add_row(
                    str(layer),
                    *(f"{data[layer].get(m, float('nan')):.4f}" for m in ("resid", "attn", "mlp")),
                    key=str(layer),
                )
            layers = sorted(data)
            for m in ("attn", "mlp"):
                plt.plot(layers, [data[i].get(m, 0.0) for i in layers])
            plt.title("IE by layer: attn (1st line) vs mlp (2nd)")
            plt.xlabel("layer")
        elif self.level == "modules":
            grid = queries.module_grid(
                store, self.run_id, self.focus_layer, self.pair, self.method, self.category
            )
            positions = sorted({p for row in grid.values() for p in row}, key=lambda p: (p is None, p or 0))
            shown = (
                self.pairs[self.pair or 0] if self.pairs else {"treatment_tokens": [], "control_tokens": []}
            )
            tokens = shown["treatment_tokens"]
            # the treatment's token p + shift pairs with the control's p (end alignment; 0 for equal lengths)
            shift = len(tokens) - len(shown["control_tokens"])
            star = queries.module_level_name(store, self.run_id)
            scale = max((abs(v) for row in grid.values() for v in row.values()), default=0.0)
            t.add_column("module", key="module")
            for p in positions:  # labelled with the tokens of the pair shown (pair 0 for the aggregate)
                i = p + shift if p is not None and p >= 0 else p
                label = star if p is None else tokens[i] if -len(tokens) <= i < len(tokens) else ""
                t.add_column(f"{star if p is None else p}:{label}"[:12], key=str(p))
            flips = queries.generation_flips(store, self.run_id, self.focus_layer, self.pair, self.category)
            for m in ("resid", "attn", "mlp"):
                if m in grid:
                    cells = (
                        heat(grid[m].get(p, float("nan")), scale, flips.get((m, p, -1))) for p in positions
                    )
                    t.add_row(m, *cells, key=m)
            ps = [p for p in positions if p is not None]
            for m in ("attn", "mlp"):
                if m in grid:
                    plt.bar(ps, [grid[m].get(p, 0.0) for p in ps])
            # few enough ticks to fit: plotext's own thinning of crowded ticks varies from run to run
            plt.xticks(ps[:: max(1, -(-len(ps) // 4))])
            plt.title(f"layer {self.focus_layer}: IE by position, attn then mlp")
            # the decision is read at the end of the prompt: start on `*`, with the last positions in view
            t.cursor_type = "cell"
            t.move_cursor(column=len(positions))
        else:
            first = self.page * self.PAGE
            rows = queries.top_neurons(
                store, self.run_id, self.focus_layer, self.pair, self.method, self.PAGE, first, self.category
            )
            verified = self.method == "atp"
            # each neuron's rank in the newest gate check's widest group (the sets its curve ablated)
            ranked = checks[0]["neurons"][checks[0]["spec"]["groups"][-1]] if checks else []
            gated = {u: i + 1 for i, (layer, u) in enumerate(ranked) if layer == self.focus_layer}
            recur = export.recurrence(store, self.run_id, self.method)
            method_col = f"IE ({self.method})"
            flips = queries.generation_flips(store, self.run_id, self.focus_layer, self.pair, self.category)
            gen = "flips" if any(k[0] == "neuron" for k in flips) else ""
            for col in (
                "#",
                "neuron",
                "pos",
                method_col,
                "exact" if verified else "",
                "n",
                "recur",
                "gate",
                gen,
            ):
                if col:
                    t.add_column(col, key=col)
            for i, (neuron, pos, ie, exact, n) in enumerate(rows):
                cells = [str(first + i + 1), str(neuron), "*" if pos is None else str(pos), f"{ie:+.4f}"]
                cells += [f"{exact:+.4f}" if exact is not None else ""] if verified else []
                recurs = str(recur.get((self.focus_layer, neuron), 0))
                cells += [str(n), recurs, f"#{gated[neuron]}" if neuron in gated else ""]
                if gen:  # of the pairs whose patched answer was generated: how many flipped
                    f = flips.get(("neuron", pos, neuron))
                    cells.append(f"{f[0]}/{f[1]}" if f else "")
                t.add_row(*cells)
            if rows:
                plt.hist([r[2] for r in rows], bins=30)
                plt.title(f"layer {self.focus_layer}: IE of neurons ranked {first + 1}-{first + len(rows)}")
            else:
                plt.title("no neuron rows: run with modules including 'neuron'")
        plot.refresh()
        self._show_gate(checks)
        if cursor < t.row_count:
            t.move_cursor(row=cursor)
        t.focus()

    def _show_gate(self, checks: list[dict]) -> None:
        """The newest gate check's verdict and one of its generations, above the neuron pane."""
        box = self.query_one("#gate", Static)
        box.display = bool(checks)
        if checks:
            texts = queries.gate_answers(self.app.store, checks[0], 1)
            box.update(
                queries.gate_verdict(checks[0])
                + "".join(f"\n{p} (top {k}, {g}): {b!r} -> {a!r}" for p, g, k, b, a in texts)
            )

    def action_report(self) -> None:
        """The paper's four claims judged on this run; enter there comes back to the table behind one."""
        n_layers = self.app.store.run(self.run_id)["provenance"].get("n_layers")
        if n_layers is None:
            self.notify("this run never loaded its model: it has nothing to report", severity="warning")
            return

        def opened(where: tuple[str, int | None] | None) -> None:
            if where:
                self.level, self.focus_layer = where
                self.page = 0
                self.show()

        self.app.push_screen(ReportScreen(self.run_id, n_layers), opened)

    def action_gate(self) -> None:
        """Gate-check this run's top neurons on held-out pairs (defaults of `harmmed-tui gate`)."""
        self.app.start_gate(self.run_id)

    @on(DataTable.RowSelected)
    @on(DataTable.CellSelected)
    def _row_selected(self) -> None:  # the focused table consumes enter itself
        self.action_drill()

    def action_drill(self) -> None:
        t = self.query_one(Table)
        if not t.row_count:
            return
        key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
        if self.level == "layers":
            self.focus_layer, self.level = int(key), "modules"
        elif self.level == "modules" and key == "mlp":
            self.level, self.page = "neurons", 0
        else:
            return
        self.show()

    def action_up(self) -> None:
        if self.level == "layers":
            self.app.pop_screen()
            return
        self.level = "modules" if self.level == "neurons" else "layers"
        self.focus_layer = self.focus_layer if self.level != "layers" else None
        self.show()

    def action_page(self, step: int) -> None:
        """The next or previous page of neurons; a short page is the last one."""
        at_end = self.page == 0 if step < 0 else self.query_one(Table).row_count < self.PAGE
        if self.level == "neurons" and not at_end:
            self.page += step
            self.show()

    def action_next_pair(self) -> None:
        order = [None] + [p["pair"] for p in self.pairs]
        self.pair = order[(order.index(self.pair) + 1) % len(order)]
        self.show()

    def action_next_category(self) -> None:
        """Aggregate over all pairs, then over each category of the harmful prompts in turn."""
        categories = sorted({p["category"] for p in self.pairs if p["category"]})
        if not categories:
            self.notify("this run's pairs have no categories")
            return
        order = [None, *categories]
        self.category, self.pair = order[(order.index(self.category) + 1) % len(order)], None
        self.show()

    def on_run_progress(self, message: RunProgress) -> None:
        self.query_one("#running").display = True
        self.query_one(ProgressBar).update(total=message.total, progress=message.done)
        now = time.monotonic()
        self._started = self._started or (now, message.done)
        rate = (message.done - self._started[1]) / max(now - self._started[0], 1e-9)
        self.query_one("#rate", Static).update(
            f"{message.done:,} / {message.total:,} sites" + (f"  {rate:,.0f}/s" if rate else "")
        )
        if now - self._shown > 1.0:  # rows stream in: refresh the pane, at most once a second
            self.show()
