"""The drill levels of Explore, a Pane widget each (layers, one layer's grid, neurons, top neurons, heads).

A pane is two halves. `load(store, view, run)` is pure: it reads what the View asks for, in a worker thread
(ExploreScreen.load), and returns the pane's data. `show(loaded)` draws that data into the pane's own table,
plot and legend on the UI thread. Each pane keeps its own table mounted (ExploreScreen's ContentSwitcher), so
its cursor is where it was left; its crumb, figure kind, export level and keys are class attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.widgets import Static
from textual_plotext import PlotextPlot

from harmmed_tui.analysis.sites import LAYER_MODULES
from harmmed_tui.analysis.spec import Effect, RunSpec
from harmmed_tui.db import queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.safe_text import plain
from harmmed_tui.tui.widgets import GLYPHS, Table

MODULES = LAYER_MODULES

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


@dataclass(frozen=True)
class Run:
    """What every pane's load needs of the run (read once per load, in the worker)."""

    run: dict
    spec: RunSpec
    method: str
    pairs: list[dict]
    checks: list[dict]  # its gate checks, newest first (of the neuron panes)
    answers: list[tuple]  # the newest check's first answers before and after (queries.gate_answers)
    has: frozenset[str]  # which of head and neuron rows it has
    elsewhere: dict[str, int]  # of a study's run: the study's other run, for the rows it has not

    @property
    def effects(self) -> list[Effect]:
        return [e for e in Effect if e in self.spec.effects]


@dataclass(frozen=True)
class Loaded:
    """A view, loaded: what ExploreScreen draws (its header from `run`, the pane from `data`)."""

    view: View
    run: Run
    te: float | None  # the mean TE of the pairs shown
    data: Any  # the pane's own (its load's return)
    progress: tuple  # the run's status and its job's sites done, when it was read


@dataclass(frozen=True)
class ByLayer:
    """A pane's values per layer (the layer table's modules, the heads table's heads)."""

    data: dict[int, dict]  # layer -> module or head -> the effect
    share: dict[int, dict]  # layer -> module or head -> its share of TE
    where: str  # the positions they are of


def by_layer(query, store: Store, view: View, method: str) -> ByLayer:
    """`query` (queries.layer_effects or head_grid) at the run's module-level site, every position at once
    ('*') or the shared suffix (`suffix`, of end-aligned pairs); a run without either site (--positions
    last:3) at each pair's last position, said so."""
    data, share = query(store, view, method), query(store, view, method, share=True)
    star = queries.module_level_name(store, view.run_id)
    where = "every position at once" if star == "*" else "the shared suffix at once"
    if not data:
        data, share = query(store, view, method, last=True), query(store, view, method, share=True, last=True)
        where = "the last position (no * sites)"
    return ByLayer(data, share, where)


def number(value: float | None) -> float:
    """A cell's value, NaN where there is none (no TE to divide by): shown as n/a."""
    return float("nan") if value is None else value


class Pane(Vertical):
    """One drill level: its legend, table and plot."""

    LEVEL: ClassVar[str]
    CRUMB: ClassVar[str] = ""  # after the run in the crumb ({layer}: the layer in focus)
    FIGURE: ClassVar[str]  # db.figures' kind of what it draws (`e` exports it)
    EXPORT: ClassVar[str] = "layer"  # db.export's level of its rows
    CELLS: ClassVar[bool] = False  # a cell cursor (the grid) rather than a row cursor
    PAGED: ClassVar[bool] = False  # its rows are pages read in SQL (its filter runs there too)

    def __init__(self) -> None:
        super().__init__(id=self.LEVEL, classes="pane")
        self.shown: View | None = None  # the view its table holds

    def compose(self) -> ComposeResult:
        yield Static("", classes="legend")
        with Horizontal():
            yield Table(cursor_type="cell" if self.CELLS else "row", classes="pane-table")
            yield PlotextPlot(classes="pane-plot")

    @property
    def table(self) -> Table:
        return self.query_one(Table)

    @property
    def plt(self):
        return self.query_one(PlotextPlot).plt

    def crumb(self, view: View) -> list[str]:
        return [part.format(layer=view.layer) for part in self.CRUMB.split(" > ") if part]

    @staticmethod
    def load(store: Store, view: View, run: Run) -> Any:
        raise NotImplementedError

    def draw(self, loaded: Loaded) -> None:
        """Fill the emptied table and plot, and say what the colours mean in the legend."""
        raise NotImplementedError

    def show(self, loaded: Loaded) -> None:
        """Draw a loaded view; the cursor stays where it was while the same rows are redrawn (a run streaming
        in, another pair or effect), and starts at the top on other rows."""
        view, t = loaded.view, self.table
        same_rows = self.shown is not None and _rows_of(self.shown) == _rows_of(view)
        cursor = t.cursor_coordinate if same_rows else None
        self.shown = view
        t.clear(columns=True)
        self.plt.clear_data()
        self.plt.clear_figure()
        self.draw(loaded)
        self._filter_and_sort(view)
        self.query_one(PlotextPlot).refresh()
        if cursor is not None and cursor.row < t.row_count:
            t.move_cursor(row=cursor.row, column=cursor.column)

    def legend(self, text: str | Content) -> None:
        self.query_one(".legend", Static).update(text)

    def scale_legend(self, loaded: Loaded, where: str = "", method: str = "") -> None:
        """What the colours mean at this view's effect and scale, and what `t` shows next; where the values
        are (said unless every position at once) and by which method, where the pane names it."""
        view, te = loaded.view, loaded.te
        said = [f"at {where}"] if where and not where.startswith("every") else []
        said += [f"{method} patching"] if method else []
        at = "".join(f"{part} · " for part in said)
        effect, by_te = next_scale(view, loaded.run.effects, self.PAGED)
        after = f"t: {effect.upper()}{'/TE' if by_te else ''}"
        name = view.effect.upper()
        if view.by_te and te:
            self.legend(
                f"{at}colour: {name}/TE (TE {te:+.3f}), [red]red +[/] [blue]blue −[/], full at ±1 · {after}"
            )
        else:
            self.legend(
                f"{at}colour: {name}, each row by its largest |{name}|, [red]red +[/] [blue]blue −[/] · {after}"
            )

    def _filter_and_sort(self, view: View) -> None:
        """Keep the rows holding the filter text; sort by the chosen column, largest first."""
        t, notes = self.table, []
        if view.filter and self.PAGED:  # (filtered in SQL across every page: db.queries.top_neurons)
            notes.append(Content.from_markup("filter '$text' (every page)", text=plain(view.filter)))
        elif view.filter:
            needle = view.filter.casefold()
            for row in list(t.rows):
                if not any(needle in str(c).casefold() for c in t.get_row(row)):
                    t.remove_row(row)
            notes.append(
                Content.from_markup("filter '$text': $n rows", text=plain(view.filter), n=str(t.row_count))
            )
        if view.sort is not None and view.sort < len(t.columns):
            column = list(t.columns)[view.sort]

            def value(cell) -> tuple:
                text = str(cell).lstrip(GLYPHS).rstrip("⚑·").lstrip("#")
                try:  # (effects: the strongest either way is what people look for)
                    return (0, -abs(float(text)))
                except ValueError:
                    return (1, text)

            t.sort(column, key=value)
            notes.append(Content(f"sorted by |{t.columns[column].label}| (s: next)"))
        if notes:
            self.legend(Content(" · ").join([*notes, Content("/ filter")]))

    def value_columns(self) -> list[int]:
        """The columns `s` sorts by: effects and shares, never a layer, neuron or position number."""
        labels = [str(c.label) for c in self.table.columns.values()]
        return [i for i, label in enumerate(labels) if label.split(" ")[0] not in NOT_VALUES]

    def cursor_key(self) -> str | None:
        t = self.table
        return t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value if t.row_count else None


def _rows_of(view: View) -> tuple:
    """What decides a table's rows (not their values): a cursor is kept across views that share it."""
    return view.run_id, view.layer, view.page, view.filter, view.sort


def scales(view: View, effects: list[Effect], paged: bool) -> list[tuple[Effect, bool]]:
    """What `t` cycles through: (effect, by TE); the direct effect where the run stored it. The neuron panes
    show both scales at once: there it switches the effect only."""
    by_te = (view.by_te,) if paged else (True, False)
    return [(e, b) for e in effects for b in by_te]


def next_scale(view: View, effects: list[Effect], paged: bool) -> tuple[Effect, bool]:
    order = scales(view, effects, paged)
    here = (view.effect, view.by_te)
    return order[(order.index(here) + 1) % len(order)] if here in order else order[0]
