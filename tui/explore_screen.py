"""Explore: run > layer > module > neuron panes (and the top neurons across layers), with the numbers that
matter on screen: a header with the metric, method, pairs and TE with its CI; IE and IE/TE side by side;
plots; the gate verdict."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual_plotext import PlotextPlot

from harmmed_tui.analysis.errors import StoreError
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.stats import bootstrap_ci
from harmmed_tui.db import export, jobs, queries, report
from harmmed_tui.tui.messages import StoreChanged
from harmmed_tui.tui.panes import MODULES, grid, heads, layers, neurons
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.run_details import RunDetailsScreen
from harmmed_tui.tui.safe_text import literal, plain
from harmmed_tui.tui.widgets import GLYPHS, JobsLine, Table

# what each level draws (tui.panes)
PANES = {
    "layers": layers.draw,
    "modules": grid.draw,
    "neurons": neurons.draw,
    "top": neurons.draw_top,
    "heads": heads.draw,
}
UP = {"neurons": "modules", "modules": "layers", "top": "layers", "heads": "layers", "layers": None}


class ExploreScreen(Screen):
    BINDINGS = [
        Binding(
            "enter",
            "drill",
            "drill",
            id="explore.drill",
            tooltip="drill in: layer > module > the mlp's neurons",
        ),
        Binding("escape", "up", "back", id="explore.up", tooltip="back up a level, where you left it"),
        Binding(
            "p",
            "next_pair(1)",
            "pair",
            id="explore.pair",
            tooltip="the next pair alone; after the last, the aggregate",
        ),
        Binding(
            "P",
            "next_pair(-1)",
            "previous pair",
            id="explore.previous_pair",
            tooltip="the previous pair",
            show=False,
        ),
        Binding(
            "0",
            "aggregate",
            "aggregate",
            id="explore.aggregate",
            tooltip="the aggregate over all pairs",
            show=False,
        ),
        Binding(
            "C",
            "next_category",
            "category",
            id="explore.category",
            tooltip="aggregate over one category of the harmful prompts, the next, all",
            show=False,
        ),
        Binding(
            "t",
            "toggle_scale",
            "IE/TE",
            id="explore.scale",
            tooltip="show and colour IE/TE (by TE) or IE (each row by its largest); then DE/TE and DE, where "
            "the run stored direct effects (--effects ie,de)",
        ),
        Binding(
            "N",
            "top_neurons",
            "top neurons",
            id="explore.top",
            tooltip="the top neurons across all layers",
            show=False,
        ),
        Binding(
            "H",
            "heads",
            "heads",
            id="explore.heads",
            tooltip="every attention head: a layer x head table (enter on attn opens it at its layer)",
            show=False,
        ),
        Binding(
            "a",
            "gate",
            "gate curve",
            id="explore.gate",
            tooltip="gate curve: ablate the top 1..1000 neurons on held-out pairs, vs random ones",
            show=False,
        ),
        Binding(
            "R",
            "report",
            "claims",
            id="explore.report",
            tooltip="the paper's four claims, judged on this run",
        ),
        Binding(
            "slash",
            "filter",
            "filter",
            id="explore.filter",
            show=False,
            tooltip="filter the rows: a neuron number, a token, ...",
        ),
        Binding(
            "s",
            "sort",
            "sort",
            id="explore.sort",
            show=False,
            tooltip="sort by the next column (largest absolute value first); after the last, as shown",
        ),
        Binding(
            "y",
            "copy",
            "copy",
            id="explore.copy",
            show=False,
            tooltip="copy the cell (grid) or the row, tab-separated, to the clipboard",
        ),
        Binding(
            "i",
            "details",
            "details",
            id="explore.details",
            tooltip="run details: settings, provenance, each pair's TE and answers",
            show=False,
        ),
        Binding(
            "right_square_bracket",
            "page(1)",
            "next neurons",
            id="explore.next_page",
            tooltip="the next page of 200 neurons",
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
    PAGE = 200  # neurons fetched per page

    def __init__(self, run_id: int, level: str = "layers", focus_layer: int | None = None):
        """`level` and `focus_layer`: where it opens (a study's other run opens on the pane asked for)."""
        super().__init__()
        self.run_id, self.pair, self.focus_layer, self.level = run_id, None, focus_layer, level
        self.home = level
        self.category: str | None = None  # with no pair: average over this category's pairs only
        self.page = 0
        self.by_te = True  # show and colour IE/TE (by TE); else IE, coloured per row
        self.effect = "ie"  # or "de", the direct effect, where the run stored it (t cycles)
        self._view: tuple | None = None  # what show() last drew
        self._places: dict[str, tuple[int, int]] = {}  # each level's cursor when we left it
        self.filter_text = ""  # rows of the table in front holding it (case-insensitive)
        self.sort_column: int | None = None  # the column the table in front is sorted by
        self._has_neurons = False  # (a streaming run gets its neuron rows later: see show)
        self._status = ""  # the run's status when its pairs were last read

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="crumb")
        yield Static("", id="summary")
        yield Static("", id="gate")
        yield JobsLine(id="jobs")
        yield Static("", id="legend")
        yield Input(placeholder="filter rows (enter applies; empty enter clears)", id="filter")
        with Horizontal():
            yield Table(id="table", cursor_type="row")
            yield PlotextPlot(id="plot")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        store = self.app.store
        self.method = store.run_method(self.run_id)
        self.spec = RunSpec.from_json(store.run(self.run_id)["spec"])
        self.query_one("#filter").display = False
        self._progress = self._run_progress()  # when the table was last drawn
        # a neuron-only run (the gate recipe) has no layer table: it opens on its top neurons
        self._has_neurons = queries.has_neurons(store, self.run_id)
        if not queries.has_modules(store, self.run_id) and self._has_neurons and self.level == "layers":
            self.level = "top"
        self.show()

    # --- what is shown ------------------------------------------------------------------------------
    def _shown_pairs(self) -> list[dict]:
        if self.pair is not None:
            return [p for p in self.pairs if p["pair"] == self.pair]
        return [p for p in self.pairs if self.category is None or p["category"] == self.category]

    def _te(self) -> float | None:
        te = [p["te"] for p in self._shown_pairs() if p["te"] is not None]
        return sum(te) / len(te) if te else None

    def _summary(self, run: dict) -> Content:
        """The header: metric, method, pairs and TE (mean with its 95% CI), or the one pair shown. Prompts, ids
        and errors are the user's text: template variables, never markup."""
        if run["status"] == "failed":
            return Content.from_markup("[b red]failed:[/] $error", error=plain(run["error"] or ""))
        method = {"atp": "atp (attribution patching)"}.get(self.method, self.method)
        parts = [f"metric {plain(self.spec.metric)}", f"method {method}"]
        shown = self._shown_pairs()
        if self.pair is None:
            te = [p["te"] for p in shown if p["te"] is not None]
            if te:
                lo, hi = bootstrap_ci(te)
                parts.append(f"{len(te)} pairs, TE {sum(te) / len(te):+.3f} [95% CI {lo:+.3f}, {hi:+.3f}]")
            return Content(" · ".join(parts))
        p = shown[0]
        te = "" if p["te"] is None else f" · TE {p['te']:+.3f}"
        behaviour = export.stored_behaviour(p)
        rho = "" if p["atp_spearman"] is None else f" · atp vs exact ρ {p['atp_spearman']:.3f}"
        return Content.from_markup(
            "pair $pair $id: [b]$treatment[/] vs $control$rest",
            pair=str(p["pair"]),
            id=_clipped(p["pair_id"] or "", PROMPT_SHOWN),
            treatment=_clipped(p["treatment"], PROMPT_SHOWN),
            control=_clipped(p["control"], PROMPT_SHOWN),
            rest=f"{te}{' · ' + behaviour if behaviour else ''}{rho} · " + " · ".join(parts),
        )

    def show(self) -> None:
        store = self.app.store
        run = store.run(self.run_id)
        if run["status"] == "running" or run["status"] != self._status:  # its pairs' TE arrive as it runs
            self.pairs, self._status = store.pairs(self.run_id), run["status"]
        who = f"pair {self.pair}" if self.pair is not None else "all pairs"
        if self.pair is None and self.category is not None:
            who = f"pairs of category {self.category}"
        crumb = [f"run {self.run_id} ({run['status']}, {queries.model_label(run['model'])})"]
        crumb += {
            "top": ["top neurons across layers"],
            "heads": ["attention heads (layer x head)"],
            "modules": [f"layer {self.focus_layer}"],
            "neurons": [f"layer {self.focus_layer}", "mlp", "neurons"],
        }.get(self.level, [])
        self.query_one("#crumb", Static).update(literal(" > ".join(crumb) + f"   [{who}]"))
        self.query_one("#summary", Static).update(self._summary(run))
        t, plot = self.query_one(Table), self.query_one(PlotextPlot)
        view = (self.level, self.focus_layer, self.page, self.pair, self.category, self.by_te, self.effect)
        cursor = t.cursor_coordinate if view == self._view else None  # kept while a run streams in
        self._view = view
        t.clear(columns=True)
        t.fixed_columns = 1 if self.level == "modules" else 0  # the module names stay while positions scroll
        t.cursor_type = "row"
        plot.plt.clear_data()
        plot.plt.clear_figure()
        checks = store.gate_checks(self.run_id) if self.level in ("neurons", "top") else []
        te = self._te()
        PANES[self.level](self, t, plot.plt, te, checks)
        self._filter_and_sort(t)
        plot.refresh()
        self._show_gate(checks)
        self._has_neurons = self._has_neurons or queries.has_neurons(store, self.run_id)
        self.refresh_bindings()  # (which keys apply depends on the pane)
        if cursor is not None and cursor.row < t.row_count:
            t.move_cursor(row=cursor.row, column=cursor.column)
        t.focus()

    def legend(self, text: str) -> None:
        self.query_one("#legend", Static).update(text)

    def _filter_and_sort(self, t: Table) -> None:
        """Keep the rows holding the filter text; sort by the chosen column, largest first."""
        notes = []
        if self.filter_text and self.level in PAGED:  # (filtered in SQL across every page: tui.panes.neurons)
            notes.append(Content.from_markup("filter '$text' (every page)", text=plain(self.filter_text)))
        elif self.filter_text:
            needle = self.filter_text.casefold()
            for row in list(t.rows):
                if not any(needle in str(c).casefold() for c in t.get_row(row)):
                    t.remove_row(row)
            notes.append(
                Content.from_markup(
                    "filter '$text': $n rows", text=plain(self.filter_text), n=str(t.row_count)
                )
            )
        if self.sort_column is not None and self.sort_column < len(t.columns):
            column = list(t.columns)[self.sort_column]

            def value(cell) -> tuple:
                text = str(cell).lstrip(GLYPHS).rstrip("⚑·").lstrip("#")
                try:  # (effects: the strongest either way is what people look for)
                    return (0, -abs(float(text)))
                except ValueError:
                    return (1, text)

            t.sort(column, key=value)
            notes.append(Content(f"sorted by |{t.columns[column].label}| (s: next)"))
        if notes:
            self.query_one("#legend", Static).update(Content(" · ").join([*notes, Content("/ filter")]))

    def scale_legend(self, te: float | None, where: str = "") -> None:
        at = f"at {where} · " if where and not where.startswith("every") else ""
        views = self._views()
        effect, by_te = views[(views.index((self.effect, self.by_te)) + 1) % len(views)]
        after = f"t: {effect.upper()}{'/TE' if by_te else ''}"
        name = self.effect.upper()
        if self.by_te and te:
            self.legend(
                f"{at}colour: {name}/TE (TE {te:+.3f}), [red]red +[/] [blue]blue −[/], full at ±1 · {after}"
            )
        else:
            self.legend(
                f"{at}colour: {name}, each row by its largest |{name}|, [red]red +[/] [blue]blue −[/] · {after}"
            )

    def _show_gate(self, checks: list[dict]) -> None:
        """The newest gate check's verdict and one of its generations, above the neuron panes."""
        box = self.query_one("#gate", Static)
        box.display = bool(checks)
        if checks:
            texts = queries.gate_answers(self.app.store, checks[0], 1)
            shown = literal(
                queries.gate_verdict(checks[0])
                + "".join(f"\n{p} (top {k}, {g}): {b!r} -> {a!r}" for p, g, k, b, a in texts),
                newlines=True,
            )
            box.update(shown)  # two lines, each cut with … (app.tcss): the verdict is claim 3 under R

    # --- actions ------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters) -> bool:
        """Keys that would do nothing in the pane in front are left out of the footer and do nothing."""
        if action == "toggle_scale":  # (neurons show both IE and IE/TE: t there switches IE and DE)
            return self.level in ("layers", "modules", "heads") or len(self.spec.effects) > 1
        if action == "page":
            return self.level in ("neurons", "top")
        return True

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

    def action_details(self) -> None:
        self.app.push_screen(RunDetailsScreen(self.run_id))

    def action_gate(self) -> None:
        """Gate-check this run's top neurons on held-out pairs (defaults of `harmmed-tui gate`: a study's own
        held-out pairs for a study's run, its neuron run's neurons for its module run)."""
        if (other := self._study_neurons()) is not None:
            self.app.start_gate(other)
            return
        if self._no_neurons("a gate check ablates a run's top neurons"):
            return
        self.app.start_gate(self.run_id)

    def _study_neurons(self) -> int | None:
        """Of a study's module run (no neurons of its own): the study's neuron run, where its neurons are."""
        if self._has_neurons or (study := report.study_of(self.app.store, self.run_id)) is None:
            return None
        other = study["neurons_run"]
        return other if other is not None and queries.has_neurons(self.app.store, other) else None

    def _no_neurons(self, why: str) -> bool:
        """Say why a neuron key does nothing on a run without neuron rows, and what gives it some (a study's
        module run opens its neuron run instead: the callers ask _study_neurons first)."""
        if not self._has_neurons:
            self.notify(
                f"run {self.run_id} has no neuron rows ({why}): run it with modules including neuron, "
                "or run a study",
                severity="warning",
            )
        return not self._has_neurons

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.placeholder = (
            f"filter neurons on every page: {queries.NEURON_MATCH}"
            if self.level in PAGED
            else "filter rows: text in any column (enter applies; empty enter clears)"
        )
        box.display = True
        box.value = self.filter_text
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filtered(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if self.level in PAGED:
            try:
                queries.neuron_filter_check(text)
            except StoreError as e:
                self.notify(str(e), severity="warning")
                return
        self.filter_text, self.page = text, 0
        event.input.display = False
        self.show()

    def action_sort(self) -> None:
        """Sort by the next value column (an effect, a share: never a layer, neuron or position number);
        after the last, back to the order shown."""
        labels = [str(c.label) for c in self.query_one(Table).columns.values()]
        values = [i for i, label in enumerate(labels) if label.split(" ")[0] not in NOT_VALUES]
        later = [i for i in values if self.sort_column is None or i > self.sort_column]
        self.sort_column = later[0] if later else None
        self.show()

    def action_copy(self) -> None:
        """The cell under the cursor (grid) or the row (tab-separated), to the clipboard: OSC 52, so it works
        over SSH in terminals that allow it."""
        t = self.query_one(Table)
        if not t.row_count:
            return
        if t.cursor_type == "cell":
            text = str(t.get_cell_at(t.cursor_coordinate))
        else:
            text = "\t".join(str(c) for c in t.get_row_at(t.cursor_row))
        self.app.copy_to_clipboard(text)
        self.notify(f"copied: {text[:60]}")

    def _views(self) -> list[tuple[str, bool]]:
        """What `t` cycles through: (effect, by TE); the direct effect where the run stored it. The neuron
        panes show both scales at once: there it switches the effect only."""
        effects = [e for e in queries.EFFECTS if e in self.spec.effects]
        scales = (self.by_te,) if self.level in ("neurons", "top") else (True, False)
        return [(e, by_te) for e in effects for by_te in scales]

    def action_toggle_scale(self) -> None:
        views = self._views()
        self.effect, self.by_te = views[(views.index((self.effect, self.by_te)) + 1) % len(views)]
        self.show()

    def action_heads(self) -> None:
        if not queries.has_heads(self.app.store, self.run_id):
            self.notify(
                f"run {self.run_id} has no head rows: run it with modules including head", severity="warning"
            )
            return
        if self.level != "heads":
            self._leave()
            self.level = "heads"
            self.show()
            self._cursor_on_layer()

    def _cursor_on_layer(self) -> None:
        """In the heads table, the row of the layer in focus (the one whose attn row was opened)."""
        t = self.query_one(Table)
        keys = [str(k.value) for k in t.rows]
        if self.focus_layer is not None and str(self.focus_layer) in keys:
            t.move_cursor(row=keys.index(str(self.focus_layer)))

    def action_top_neurons(self) -> None:
        if (other := self._study_neurons()) is not None:
            self.app.push_screen(ExploreScreen(other, "top"))
            return
        if self._no_neurons("N ranks them across layers"):
            return
        if self.level != "top":
            self._leave()
            self.level, self.page = "top", 0
            self.show()

    @on(DataTable.RowSelected)
    @on(DataTable.CellSelected)
    def _row_selected(self) -> None:  # the focused table consumes enter itself
        self.action_drill()

    def _leave(self) -> None:
        """Remember where the cursor is on this level, to come back to it."""
        t = self.query_one(Table)
        self._places[self.level] = (t.cursor_row, t.cursor_column)

    def action_drill(self) -> None:
        t = self.query_one(Table)
        if not t.row_count:
            return
        self.filter_text, self.sort_column = "", None
        key = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value
        if self.level == "layers":
            self._leave()
            self.focus_layer, self.level = int(key), "modules"
        elif self.level == "modules" and key == "mlp" and (other := self._study_neurons()) is not None:
            self.app.push_screen(ExploreScreen(other, "neurons", self.focus_layer))
            return
        elif self.level == "modules" and key == "mlp":
            self._leave()
            self.level, self.page = "neurons", 0
        elif self.level == "modules" and key == "attn" and queries.has_heads(self.app.store, self.run_id):
            self._leave()
            self.level = "heads"
            self.show()
            self._cursor_on_layer()
            return
        elif self.level == "top":
            self._leave()
            self.focus_layer, self.level, self.page = int(key.split(":")[0]), "neurons", 0
        else:
            return
        self.show()

    def action_up(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:  # escape closes the filter box first
            box.display = False
            self.query_one(Table).focus()
            return
        self.filter_text, self.sort_column = "", None
        came_from = self.level
        if UP[self.level] is None or (self.level == self.home and self.home != "layers"):
            self.app.pop_screen()  # (a study's other run, opened at a pane: escape goes back where it came from)
            return
        self.level = "top" if came_from == "neurons" and "top" in self._places else UP[came_from]
        if came_from == "heads" and "modules" in self._places and self.focus_layer is not None:
            self.level = "modules"
        self._places.pop(came_from, None)
        if self.level == "layers":
            self.focus_layer = None
        self.page = 0
        self.show()
        if (place := self._places.get(self.level)) is not None:  # back where we left this level
            t = self.query_one(Table)
            row, column = place
            if row < t.row_count:
                t.move_cursor(row=row, column=column)

    def action_page(self, step: int) -> None:
        """The next or previous page of neurons; a short page is the last one."""
        at_end = self.page == 0 if step < 0 else self.query_one(Table).row_count < self.PAGE
        if self.level in ("neurons", "top") and not at_end:
            self.page += step
            self.show()

    def action_next_pair(self, step: int = 1) -> None:
        """The next (or previous) pair alone, then the aggregate over all pairs, and round again."""
        order = [None] + [p["pair"] for p in self.pairs]
        self.pair = order[(order.index(self.pair) + step) % len(order)]
        self.show()

    def action_aggregate(self) -> None:
        self.pair = None
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

    def figure(self) -> dict:
        """The figure of the pane in front (db.figures.draw's arguments), for `e`."""
        kind = {
            "layers": "layers",
            "modules": "grid",
            "neurons": "neurons",
            "top": "neurons",
            "heads": "heads",
        }[self.level]
        args = {"kind": kind, "pair": self.pair}
        if kind == "grid":  # of the module under the cursor
            t = self.query_one(Table)
            row = t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value if t.row_count else "resid"
            args["module"] = row if row in MODULES else "resid"
        return args

    def job_in_front(self) -> dict | None:
        """The job writing this run (or gate-checking it), for `c`."""
        return jobs.of_run(self.app.store, self.run_id)

    def _run_progress(self) -> tuple[str, int | None]:
        """The run's status and its job's sites done."""
        job = self.job_in_front()
        return self.app.store.run(self.run_id)["status"], job and job["done"]

    def on_store_changed(self, _: StoreChanged) -> None:
        self.follow()

    def on_screen_resume(self) -> None:  # back from a screen above it: catch up with what changed meanwhile
        self.follow()

    def follow(self) -> None:
        """Redraw while the run is written (its sites done, or its status, changed), by this process or any
        other; the top neurons across layers, an aggregate of every neuron row, once it ends."""
        progress = self._run_progress()
        if progress != self._progress and (progress[0] != "running" or self.level != "top"):
            self._progress = progress
            self.show()


PAGED = ("neurons", "top")  # the levels shown a page at a time (their filter runs in SQL)
# columns `s` never sorts by: what a row is, not a value of it
NOT_VALUES = {
    "#",
    "layer",
    "neuron",
    "pos",
    "position",
    "token",
    "module",
    "n",
    "recur",
    "gate",
    "flips",
    "pair",
}

PROMPT_SHOWN = 40  # characters of each prompt in the header: with TE and behaviour, two lines at 80 columns


def _clipped(text: str, limit: int) -> str:
    """One line of at most `limit` characters (… where cut); the whole text is in the run's details."""
    text = plain(text, newlines=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
