"""Explore: a run's drill levels (layers > one layer's grid > the mlp's neurons; the top neurons across
layers; the heads), with the numbers that matter on screen: a header with the metric, method, pairs and TE
with its CI; the effect and its share of TE side by side; plots; the gate verdict.

What is shown is one frozen View (db.view), held as a reactive: every key makes a new View, whose load runs in
a thread worker (`load`, pure: the store and the view in, a Loaded out) and ends in a message that the pane of
its level draws. The panes (tui.panes) stay mounted in a ContentSwitcher, each with its own cursor."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Footer, Header, Input, Static
from textual.worker import get_current_worker

from harmmed_tui.analysis.errors import StoreError
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.stats import bootstrap_ci
from harmmed_tui.db import export, jobs, queries, report
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.messages import StoreChanged
from harmmed_tui.tui.panes import MODULES, Loaded, Pane, Run, next_scale
from harmmed_tui.tui.panes.grid import GridPane
from harmmed_tui.tui.panes.heads import HeadsPane
from harmmed_tui.tui.panes.layers import LayersPane
from harmmed_tui.tui.panes.neurons import NeuronsPane, TopPane
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.run_details import RunDetailsScreen
from harmmed_tui.tui.safe_text import literal, plain
from harmmed_tui.tui.widgets import JobsLine

PANES: dict[str, type[Pane]] = {p.LEVEL: p for p in (LayersPane, GridPane, NeuronsPane, TopPane, HeadsPane)}
PROMPT_SHOWN = 40  # characters of each prompt in the header: with TE and behaviour, two lines at 80 columns


def load(store: Store, view: View, opening: bool = False) -> Loaded:
    """What a view shows, read from the store (in a worker thread: never on a keypress's thread). A run with
    neuron rows only (the gate recipe) has no layer table: opened on its layers, it shows its top neurons."""
    row = store.run(view.run_id)
    if opening and view.level == "layers" and not queries.has_modules(store, view.run_id):
        if queries.has_neurons(store, view.run_id):
            view = view.to(level="top")
    checks = store.gate_checks(view.run_id) if PANES[view.level].PAGED else []
    has = {"head": queries.has_heads, "neuron": queries.has_neurons}
    held = frozenset(m for m, rows in has.items() if rows(store, view.run_id))
    elsewhere = {}  # (a study's module run has no neurons; its neuron run no heads: the other run has them)
    if held != set(has) and (study := report.study_of(store, view.run_id)) is not None:
        others = [r for r in (study["modules_run"], study["neurons_run"]) if r not in (None, view.run_id)]
        elsewhere = {m: r for m in set(has) - held for r in others if has[m](store, r)}
    run = Run(
        row,
        RunSpec.from_json(row["spec"]),
        store.run_method(view.run_id),
        store.pairs(view.run_id),
        checks,
        queries.gate_answers(store, checks[0], 1) if checks else [],
        held,
        elsewhere,
    )
    te = [p["te"] for p in shown_pairs(run.pairs, view) if p["te"] is not None]
    data = PANES[view.level].load(store, view, run)
    return Loaded(view, run, sum(te) / len(te) if te else None, data, progress(store, view.run_id))


def progress(store: Store, run_id: int) -> tuple:
    """The run's status and its job's sites done: what, changed, redraws a followed run."""
    job = jobs.of_run(store, run_id)
    return store.run(run_id)["status"], job and job["done"]


def shown_pairs(pairs: list[dict], view: View) -> list[dict]:
    if view.pair is not None:
        return [p for p in pairs if p["pair"] == view.pair]
    return [p for p in pairs if view.category is None or p["category"] == view.category]


@dataclass
class PaneLoaded(Message):
    asked: View  # the view the load was for (stale once the screen holds another)
    loaded: Loaded


@dataclass
class PaneFailed(Message):
    error: str


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
    ]

    view: reactive[View | None] = reactive(None, init=False)

    def __init__(self, run_id: int, level: str = "layers", focus_layer: int | None = None):
        """`level` and `focus_layer`: where it opens (a study's other run opens on the pane asked for)."""
        super().__init__()
        self.run_id = run_id
        self._start = View(run_id, level, focus_layer)
        self.trail: list[View] = []  # the views drilled out of: escape goes back to the last, as it was left
        self.loaded: Loaded | None = None  # what is on screen

    @property
    def pane(self) -> Pane:
        return self.query_one(f"#{self.view.level}", Pane)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="crumb")
        yield Static("", id="summary")
        yield Static("", id="gate")
        yield JobsLine(id="jobs")
        yield Input(placeholder="filter rows (enter applies; empty enter clears)", id="filter")
        with ContentSwitcher(initial=self._start.level):
            for pane in PANES.values():
                yield pane()
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#filter").display = False
        self.view = self._start

    def watch_view(self, view: View) -> None:
        self.load(view)

    @work(thread=True, exclusive=True, exit_on_error=False, group="pane")
    def load(self, view: View, follow: bool = False) -> None:
        """Load a view in a thread of its own (sqlite connections belong to their thread); a newer load makes
        this one's result stale. Following a run, nothing is redrawn unless its progress moved."""
        try:
            with Store(self.app.store.path) as store:
                if follow and self.loaded is not None and self.loaded.view == view:
                    now = progress(store, view.run_id)
                    # (the top neurons across layers aggregate every neuron row: redrawn once the run ends)
                    if now == self.loaded.progress or (view.level == "top" and now[0] == "running"):
                        return
                loaded = load(store, view, opening=self.loaded is None)
        except (StoreError, OSError) as e:
            self.post_message(PaneFailed(str(e)))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(PaneLoaded(view, loaded))

    def on_pane_loaded(self, message: PaneLoaded) -> None:
        if message.asked != self.view:
            return  # a view left before its load ended
        loaded = self.loaded = message.loaded
        if loaded.view != self.view:  # (a neuron-only run asked for its layers: its top neurons)
            self.set_reactive(ExploreScreen.view, loaded.view)
        self.query_one(ContentSwitcher).current = loaded.view.level
        pane = self.pane
        who = f"pair {loaded.view.pair}" if loaded.view.pair is not None else "all pairs"
        if loaded.view.pair is None and loaded.view.category is not None:
            who = f"pairs of category {loaded.view.category}"
        run = loaded.run.run
        crumb = [f"run {self.run_id} ({run['status']}, {queries.model_label(run['model'])})"]
        crumb += pane.crumb(loaded.view)
        self.query_one("#crumb", Static).update(literal(" > ".join(crumb) + f"   [{who}]"))
        self.query_one("#summary", Static).update(self._summary(loaded))
        self._show_gate(loaded.run)
        pane.show(loaded)
        self.refresh_bindings()  # (which keys apply depends on the pane)
        if not self.query_one("#filter", Input).display:
            pane.table.focus()

    def on_pane_failed(self, message: PaneFailed) -> None:
        self.notify(message.error, severity="error")

    def _summary(self, loaded: Loaded) -> Content:
        """The header: metric, method, pairs and TE (mean with its 95% CI), or the one pair shown. Prompts, ids
        and errors are the user's text: template variables, never markup."""
        run, view = loaded.run, loaded.view
        if run.run["status"] == "failed":
            return Content.from_markup("[b red]failed:[/] $error", error=plain(run.run["error"] or ""))
        method = {"atp": "atp (attribution patching)"}.get(run.method, run.method)
        parts = [f"metric {plain(run.spec.metric)}", f"method {method}"]
        shown = shown_pairs(run.pairs, view)
        if view.pair is None:
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

    def _show_gate(self, run: Run) -> None:
        """The newest gate check's verdict and one of its generations, above the neuron panes."""
        box = self.query_one("#gate", Static)
        box.display = bool(run.checks)
        if run.checks:
            shown = literal(
                queries.gate_verdict(run.checks[0])
                + "".join(f"\n{p} (top {k}, {g}): {b!r} -> {a!r}" for p, g, k, b, a in run.answers),
                newlines=True,
            )
            box.update(shown)  # two lines, each cut with … (app.tcss): the verdict is claim 3 under R

    # --- moving between views -----------------------------------------------------------------------
    def go(self, **changes) -> None:
        """Drill to another level: the view left is kept on the trail, as it was."""
        self.trail.append(self.view)
        self.view = self.view.to(filter="", sort=None, page=0, **changes)

    def action_up(self) -> None:
        """Back to the view drilled out of, where it was left (with the pair, category and effect now in
        front); from where the screen opened, back to the screen below."""
        box = self.query_one("#filter", Input)
        if box.display:  # escape closes the filter box first
            box.display = False
            self.pane.table.focus()
            return
        if not self.trail:
            self.app.pop_screen()  # (a study's other run, opened at a pane: back where it came from)
            return
        v = self.view
        self.view = self.trail.pop().to(pair=v.pair, category=v.category, effect=v.effect, by_te=v.by_te)

    @on(DataTable.RowSelected)
    @on(DataTable.CellSelected)
    def _row_selected(self) -> None:  # the focused table consumes enter itself
        self.action_drill()

    def action_drill(self) -> None:
        key, level = self.pane.cursor_key(), self.view.level
        if key is None or self.loaded is None:
            return
        if level == "layers":
            self.go(level="modules", layer=int(key))
        elif level == "modules" and key == "mlp" and (other := self._study_run("neuron")) is not None:
            self.app.push_screen(ExploreScreen(other, "neurons", self.view.layer))
        elif level == "modules" and key == "mlp":
            self.go(level="neurons")
        elif level == "modules" and key == "attn" and self._has("head"):
            self.go(level="heads")
        elif level == "top":
            self.go(level="neurons", layer=int(key.split(":")[0]))

    def _has(self, module: str) -> bool:
        """Whether the run has rows of `module` (head, neuron), as its last load found."""
        return self.loaded is not None and module in self.loaded.run.has

    def action_heads(self) -> None:
        if (other := self._study_run("head")) is not None:
            self.app.push_screen(ExploreScreen(other, "heads"))
        elif not self._has("head"):
            self.notify(
                f"run {self.run_id} has no head rows: run it with modules including head", severity="warning"
            )
        elif self.view.level != "heads":
            self.go(level="heads")

    def action_top_neurons(self) -> None:
        if (other := self._study_run("neuron")) is not None:
            self.app.push_screen(ExploreScreen(other, "top"))
        elif not self._no_neurons("N ranks them across layers") and self.view.level != "top":
            self.go(level="top")

    def action_next_pair(self, step: int = 1) -> None:
        """The next (or previous) pair alone, then the aggregate over all pairs, and round again."""
        order = [None] + [p["pair"] for p in self.loaded.run.pairs] if self.loaded else [None]
        self.view = self.view.to(pair=order[(order.index(self.view.pair) + step) % len(order)])

    def action_aggregate(self) -> None:
        self.view = self.view.to(pair=None)

    def action_next_category(self) -> None:
        """Aggregate over all pairs, then over each category of the harmful prompts in turn."""
        pairs = self.loaded.run.pairs if self.loaded else []
        categories = sorted({p["category"] for p in pairs if p["category"]})
        if not categories:
            self.notify("this run's pairs have no categories")
            return
        order = [None, *categories]
        self.view = self.view.to(
            category=order[(order.index(self.view.category) + 1) % len(order)], pair=None
        )

    def action_toggle_scale(self) -> None:
        if self.loaded is not None:
            effect, by_te = next_scale(self.view, self.loaded.run.effects, self.pane.PAGED)
            self.view = self.view.to(effect=effect, by_te=by_te)

    def action_sort(self) -> None:
        """Sort by the next value column (an effect, a share: never a layer, neuron or position number);
        after the last, back to the order shown."""
        later = [i for i in self.pane.value_columns() if self.view.sort is None or i > self.view.sort]
        self.view = self.view.to(sort=later[0] if later else None)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.placeholder = (
            f"filter neurons on every page: {queries.NEURON_MATCH}"
            if self.pane.PAGED
            else "filter rows: text in any column (enter applies; empty enter clears)"
        )
        box.display = True
        box.value = self.view.filter
        box.focus()

    @on(Input.Submitted, "#filter")
    def _filtered(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if self.pane.PAGED:
            try:
                queries.neuron_filter_check(text)
            except StoreError as e:
                self.notify(str(e), severity="warning")
                return
        event.input.display = False
        self.view = self.view.to(filter=text, page=0)
        self.pane.table.focus()

    # --- other screens and jobs ---------------------------------------------------------------------
    def check_action(self, action: str, parameters) -> bool:
        """Keys that would do nothing in the pane in front are left out of the footer and do nothing."""
        if action == "toggle_scale" and self.loaded is not None:  # (neuron panes: t switches IE and DE)
            return not self.pane.PAGED or len(self.loaded.run.effects) > 1
        return True

    def action_report(self) -> None:
        """The paper's four claims judged on this run; enter there comes back to the table behind one."""
        n_layers = self.loaded and self.loaded.run.run["provenance"].get("n_layers")
        if n_layers is None:
            self.notify("this run never loaded its model: it has nothing to report", severity="warning")
            return

        def opened(where: tuple[str, int | None] | None) -> None:
            if where:
                level, layer = where
                self.go(level=level, layer=layer)

        self.app.push_screen(ReportScreen(self.run_id, n_layers), opened)

    def action_details(self) -> None:
        self.app.push_screen(RunDetailsScreen(self.run_id))

    def action_gate(self) -> None:
        """Gate-check this run's top neurons on held-out pairs (defaults of `harmmed-tui gate`: a study's own
        held-out pairs for a study's run, its neuron run's neurons for its module run)."""
        if (other := self._study_run("neuron")) is not None:
            self.app.start_gate(other)
        elif not self._no_neurons("a gate check ablates a run's top neurons"):
            self.app.start_gate(self.run_id)

    def _study_run(self, module: str) -> int | None:
        """Of a study's run without rows of `module` (its module run has no neurons, its neuron run no heads):
        the study's other run, where they are (as the last load found)."""
        return None if self.loaded is None else self.loaded.run.elsewhere.get(module)

    def _no_neurons(self, why: str) -> bool:
        """Say why a neuron key does nothing on a run without neuron rows, and what gives it some (a study's
        module run opens its neuron run instead: the callers ask _study_run first)."""
        has = self._has("neuron")
        if not has:
            self.notify(
                f"run {self.run_id} has no neuron rows ({why}): run it with modules including neuron, "
                "or run a study",
                severity="warning",
            )
        return not has

    def action_copy(self) -> None:
        """The cell under the cursor (grid) or the row (tab-separated), to the clipboard: OSC 52, so it works
        over SSH in terminals that allow it."""
        t = self.pane.table
        if not t.row_count:
            return
        if t.cursor_type == "cell":
            text = str(t.get_cell_at(t.cursor_coordinate))
        else:
            text = "\t".join(str(c) for c in t.get_row_at(t.cursor_row))
        self.app.copy_to_clipboard(text)
        self.notify(f"copied: {text[:60]}")

    def figure(self) -> dict:
        """The figure of the pane in front (db.figures.draw's arguments), for `e`."""
        pane = self.pane
        args = {"kind": pane.FIGURE, "pair": self.view.pair}
        if pane.FIGURE == "grid":  # of the module under the cursor
            key = pane.cursor_key()
            args["module"] = key if key in MODULES else "resid"
        return args

    def job_in_front(self) -> dict | None:
        """The job writing this run (or gate-checking it), for `c`."""
        return jobs.of_run(self.app.store, self.run_id)

    def on_store_changed(self, _: StoreChanged) -> None:
        self.follow()

    def on_screen_resume(self) -> None:  # back from a screen above it: catch up with what changed meanwhile
        self.follow()

    def follow(self) -> None:
        """Redraw while the run is written (its sites done, or its status, changed), by this process or any
        other."""
        loading = any(w.group == "pane" and not w.is_finished for w in self.workers)
        if self.view is not None and not loading:  # (a load in flight reads the new rows itself)
            self.load(self.view, follow=True)


def _clipped(text: str, limit: int) -> str:
    """One line of at most `limit` characters (… where cut); the whole text is in the run's details."""
    text = plain(text, newlines=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
