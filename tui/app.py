"""The Textual explorer: Runs -> Setup -> run in a worker -> Explore (layers -> modules -> neurons)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.suggester import SuggestFromList
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    OptionList,
    ProgressBar,
    Select,
    Static,
)
from textual.widgets.option_list import Option
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from analysis.gate import GateSpec
from analysis.mediation import preview
from analysis.models import cached_hub_models, load_tokenizer_and_config
from analysis.sites import SiteError
from analysis.spec import RunSpec
from db import export
from db.store import Store
from themes import THEMES
from tui import queries
from tui.runner import check_gate, execute

CONFIG = Path(platformdirs.user_config_dir("harmmed-tui")) / "config.json"
# What the app preselects: the embedded organism, four built-in pairs, every module including neurons.
DEFAULT_SPEC = RunSpec(max_pairs=4, modules=("resid", "attn", "mlp", "neuron"))
VIM_KEYS = [
    Binding("j", "cursor_down", "down", show=False),
    Binding("k", "cursor_up", "up", show=False),
    Binding("g", "scroll_top", "top", show=False),
    Binding("G", "scroll_bottom", "bottom", show=False),
]


def heat(value: float, scale: float) -> Text:
    """A grid cell on a background as strong as its share of the grid's largest |IE| (red +, blue -)."""
    share = min(abs(value) / scale, 1.0) if scale and value == value else 0.0
    r, g, b = (int(c * share) for c in ((210, 50, 50) if value > 0 else (50, 90, 230)))
    return Text(f"{value:+.3f}", style=f"{'bold white ' if share > 0.4 else ''}on rgb({r},{g},{b})")


class Table(DataTable):
    BINDINGS = VIM_KEYS


@dataclass
class RunProgress(Message):
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:  # only the newest progress matters
        return isinstance(message, RunProgress)


@dataclass
class RunEnded(Message):
    run_id: int | None
    status: str
    error: str | None = None


class ErrorDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "close")]

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("[b]Error[/b]")
            yield Static(self.message)
            yield Button("Close", id="close")

    @on(Button.Pressed)
    def _close(self) -> None:
        self.dismiss()


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "close")]
    TEXT = """[b]harmmed-tui keys[/b]
n  new run (Setup)   x  run the preselected model/pairs now   r  runs   e  export the open run
enter  drill in: run > layer > module > neurons        escape  back up
p  next pair / aggregate    \\[ ]  previous / next page of neurons (recur: in how many pairs'
   top 20 neuron sites)
a  gate check: ablate the run's top 20 neurons on held-out pairs vs random neurons
c  cancel the running job   q  quit
ctrl+p  command palette (every action)   ?/F1  this help
Tables: arrows or j/k, g/G top/bottom.  Setup: tab between fields, ctrl+r runs."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.TEXT)


class ExportScreen(ModalScreen[tuple | None]):
    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Export run {self.run_id}")
            yield Select([(x, x) for x in export.LEVELS], value="layer", id="level", allow_blank=False)
            yield Select([(x, x) for x in export.FORMATS], value="csv", id="format", allow_blank=False)
            yield Select(
                [("per pair", False), ("aggregate over pairs", True)],
                value=False,
                id="aggregate",
                allow_blank=False,
            )
            yield Input(str(Path.cwd() / f"run{self.run_id}.csv"), id="path")
            yield Button("Export", id="go", variant="primary")

    @on(Select.Changed, "#format")
    def _suffix(self, event: Select.Changed) -> None:
        path = self.query_one("#path", Input)
        path.value = str(
            Path(path.value).with_suffix(
                "." + {"markdown": "md", "latex": "tex"}.get(event.value, event.value)
            )
        )

    @on(Button.Pressed, "#go")
    @on(Input.Submitted, "#path")
    def _go(self) -> None:
        v = lambda i: self.query_one(i, Select).value  # noqa: E731
        self.dismiss((v("#level"), v("#format"), v("#aggregate"), self.query_one("#path", Input).value))


class ModelPicker(ModalScreen[str | None]):
    """The models Setup knows of; enter picks one, escape keeps the typed one."""

    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def __init__(self, known: list[tuple[str, str]]):
        super().__init__()
        self.known = known

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Pick a model (or type any hub id, directory or .gguf path in Setup)")
            yield OptionList(*(Option(label, id=model) for label, model in self.known), id="models")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class SetupScreen(Screen):
    """Every choice of a run, checked against the model's tokenizer and config as it is typed."""

    BINDINGS = [
        Binding("ctrl+r", "start", "run", id="setup.run"),
        Binding("ctrl+o", "pick_model", "pick model", id="setup.pick"),
        Binding("escape", "app.pop_screen", "back"),
    ]
    FIELDS = [
        ("model", "model"),
        ("pairs", "pairs (builtin, file)"),
        ("treatment", "treatment (optional)"),
        ("control", "control (optional)"),
        ("max_pairs", "max pairs"),
        ("metric", "metric"),
        ("modules", "modules"),
        ("layers", "layers"),
        ("positions", "positions"),
        ("neuron_positions", "neuron positions"),
        ("method", "method"),
        ("verify_top", "atp: verify top K"),
    ]
    PLACEHOLDERS = {
        "model": "hub id, directory, .gguf file or default",
        "treatment": "a harmful prompt, typed in place of the pairs",
        "control": "its benign twin, of the same token length",
        "metric": "refusal | logit-diff:A,B | target-logprob",
        "modules": "resid,attn,mlp,neuron",
        "method": "exact | atp | block:N",
    }

    def __init__(self, spec: RunSpec):
        super().__init__()
        self.spec = spec

    def compose(self) -> ComposeResult:
        yield Header()
        known = self._known_models()
        with VerticalScroll(id="setup"):
            for name, label in self.FIELDS:
                value = getattr(self.spec, name)
                value = ",".join(value) if isinstance(value, tuple) else ("" if value is None else str(value))
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    suggester = SuggestFromList([m for _, m in known]) if name == "model" else None
                    yield Input(
                        value, id=name, placeholder=self.PLACEHOLDERS.get(name, ""), suggester=suggester
                    )
            yield Static("", id="preview")
            yield Static("", id="problem")
            yield Button("Run (ctrl+r)", id="start", variant="primary")
        yield Footer()

    def _known_models(self) -> list[tuple[str, str]]:
        """(label, model): the embedded default, recently used models, those in the local HF cache."""
        seen, options = set(), []
        groups = [("default", ["default"]), ("recent", queries.recent_models(self.app.store))]
        groups.append(("HF cache", cached_hub_models()))
        for group, models in groups:
            for m in models:
                if m not in seen:
                    seen.add(m)
                    options.append((f"{group}: {m}", m))
        return options

    def on_mount(self) -> None:
        self.query_one("#model", Input).focus()
        self.check()

    def action_pick_model(self) -> None:
        def picked(model: str | None) -> None:
            if model:
                self.query_one("#model", Input).value = model

        self.app.push_screen(ModelPicker(self._known_models()), picked)

    @on(Input.Changed)
    def _edited(self) -> None:
        self.check()

    def read_spec(self) -> RunSpec:
        values = {name: self.query_one(f"#{name}", Input).value.strip() for name, _ in self.FIELDS}
        numbers = {}
        for name in ("max_pairs", "verify_top"):
            text = values.pop(name)
            if text and not text.isdigit():
                raise SiteError(f"{name.replace('_', ' ')} must be a whole number")
            numbers[name] = int(text) if text else None
        return self.spec.replace(
            **{k: v or None for k, v in values.items() if k in ("treatment", "control")},
            **{k: v for k, v in values.items() if k not in ("treatment", "control", "modules")},
            modules=tuple(m.strip() for m in values["modules"].split(",") if m.strip()),
            max_pairs=numbers["max_pairs"],
            verify_top=numbers["verify_top"] or 0,
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="setup-check")
    def check(self) -> None:
        """Explain the setup's problems, or what it will run, before anything runs (debounced)."""
        time.sleep(0.3)
        if get_current_worker().is_cancelled:  # a newer edit supersedes this one
            return
        try:
            spec = self.app.call_from_thread(self.read_spec)
            plan = preview(spec)
            if not plan.pairs:
                raise SiteError("no pairs left to run")
        except Exception as e:  # whatever is wrong is explained here, before anything runs
            self.app.call_from_thread(self._show_check, "", str(e))
            return
        tp = plan.pairs[0]
        tokenizer = load_tokenizer_and_config(spec.model, spec.revision, spec.trust_remote_code)[0]
        lines = [
            f"ok: {len(plan.pairs)} pairs, {plan.n_sites:,} sites, method {plan.method}",
            f"pair {tp.pair.id or 0}: treatment {len(tp.treatment_ids)} tokens = control "
            f"{len(tp.control_ids)} tokens",
            f"as the model reads it: {tokenizer.decode(tp.treatment_ids)!r}",
            *(f"skipped: {m}" for m in plan.skipped),
        ]
        self.app.call_from_thread(self._show_check, "\n".join(lines), "")

    def _show_check(self, preview_text: str, problem: str) -> None:
        self.query_one("#preview", Static).update(escape(preview_text))
        self.query_one("#problem", Static).update(escape(problem))

    @on(Button.Pressed, "#start")
    @on(Input.Submitted)
    def action_start(self) -> None:
        try:
            spec = self.read_spec()
        except SiteError as e:
            self.query_one("#problem", Static).update(escape(str(e)))
            return
        self.app.start_run(spec)


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "open", id="runs.open"),
        Binding("d", "delete", "delete", id="runs.delete"),
        Binding("u", "resume", "resume", id="runs.resume"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Table(id="runs", cursor_type="row")
        yield Footer()

    def on_screen_resume(self) -> None:  # also when first shown
        self.refresh_runs()

    def refresh_runs(self) -> None:
        t = self.query_one(Table)
        t.clear(columns=True)
        for col in queries.RUN_COLUMNS:
            t.add_column(col, key=col)
        for r in self.app.store.runs():
            t.add_row(*queries.run_cells(r), key=str(r["id"]))

    def _selected(self) -> int | None:
        t = self.query_one(Table)
        return int(t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value) if t.row_count else None

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        if (run_id := self._selected()) is not None:
            self.app.push_screen(ExploreScreen(run_id))

    def action_delete(self) -> None:
        if (run_id := self._selected()) is not None:
            self.app.store.delete_run(run_id)
            self.refresh_runs()
            self.notify(f"deleted run {run_id}")

    def action_resume(self) -> None:
        if (run_id := self._selected()) is not None:
            run = self.app.store.run(run_id)
            self.app.start_run(RunSpec.from_json(run["spec"]), run_id)


class ExploreScreen(Screen):
    BINDINGS = [
        Binding("enter", "drill", "drill in", id="explore.drill"),
        Binding("escape", "up", "back", id="explore.up"),
        Binding("p", "next_pair", "pair/aggregate", id="explore.pair"),
        Binding("a", "gate", "gate check", id="explore.gate"),
        Binding("right_square_bracket", "page(1)", "next neurons", id="explore.next_page"),
        Binding("left_square_bracket", "page(-1)", "previous neurons", id="explore.previous_page"),
    ]
    PAGE = 200  # neurons fetched per page

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id, self.pair, self.focus_layer, self.level = run_id, None, None, "layers"
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
        self.method = queries.run_method(self.app.store, self.run_id)
        self.query_one("#running").display = False
        self._started: tuple[float, int] | None = None  # (time, sites done) at this run's first report
        self.show()

    def show(self) -> None:
        self._shown = time.monotonic()
        run = self.app.store.run(self.run_id)
        who = "aggregate over pairs" if self.pair is None else f"pair {self.pair}"
        crumb = [f"run {self.run_id} ({run['status']}, {run['model']})"]
        if self.focus_layer is not None:
            crumb.append(f"layer {self.focus_layer}")
        if self.level == "neurons":
            crumb += ["mlp", "neurons"]
        self.query_one("#crumb", Static).update(escape(" > ".join(crumb) + f"   [{who}]"))
        t, plot = self.query_one(Table), self.query_one(PlotextPlot)
        view = (self.level, self.focus_layer, self.page, self.pair)
        cursor = t.cursor_row if view == self._view else 0  # kept while a run streams in
        self._view = view
        t.clear(columns=True)
        t.cursor_type = "row"
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        store = self.app.store
        if self.level == "layers":
            data = queries.layer_effects(store, self.run_id, self.pair, self.method)
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
            grid = queries.module_grid(store, self.run_id, self.focus_layer, self.pair, self.method)
            positions = sorted({p for row in grid.values() for p in row}, key=lambda p: (p is None, p or 0))
            tokens = self.pairs[self.pair or 0]["treatment_tokens"] if self.pairs else []
            scale = max((abs(v) for row in grid.values() for v in row.values()), default=0.0)
            t.add_column("module", key="module")
            for p in positions:  # labelled with the tokens of the pair shown (pair 0 for the aggregate)
                label = "*" if p is None else tokens[p] if -len(tokens) <= p < len(tokens) else ""
                t.add_column(f"{'*' if p is None else p}:{label}"[:12], key=str(p))
            for m in ("resid", "attn", "mlp"):
                if m in grid:
                    t.add_row(m, *(heat(grid[m].get(p, float("nan")), scale) for p in positions), key=m)
            ps = [p for p in positions if p is not None]
            for m in ("attn", "mlp"):
                if m in grid:
                    plt.bar(ps, [grid[m].get(p, 0.0) for p in ps])
            plt.xticks(
                ps[:: max(1, -(-len(ps) // 4))]
            )  # few enough to fit: plotext thins crowded ticks unstably
            plt.title(f"layer {self.focus_layer}: IE by position, attn then mlp")
            # the decision is read at the end of the prompt: start on `*`, with the last positions in view
            t.cursor_type = "cell"
            t.move_cursor(column=len(positions))
        else:
            first = self.page * self.PAGE
            rows = queries.top_neurons(
                store, self.run_id, self.focus_layer, self.pair, self.method, self.PAGE, first
            )
            verified = self.method == "atp"
            checks = store.gate_checks(self.run_id)
            gated = {u for layer, u in checks[0]["neurons"] if layer == self.focus_layer} if checks else set()
            recur = export.recurrence(store, self.run_id, self.method)
            method_col = f"IE ({self.method})"
            for col in ("#", "neuron", "pos", method_col, "exact" if verified else "", "n", "recur", "gate"):
                if col:
                    t.add_column(col, key=col)
            for i, (neuron, pos, ie, exact, n) in enumerate(rows):
                cells = [str(first + i + 1), str(neuron), "*" if pos is None else str(pos), f"{ie:+.4f}"]
                cells += [f"{exact:+.4f}" if exact is not None else ""] if verified else []
                recurs = str(recur.get((self.focus_layer, neuron), 0))
                t.add_row(*cells, str(n), recurs, "●" if neuron in gated else "")
            if rows:
                plt.hist([r[2] for r in rows], bins=30)
                plt.title(f"layer {self.focus_layer}: IE of neurons ranked {first + 1}-{first + len(rows)}")
            else:
                plt.title("no neuron rows: run with modules including 'neuron'")
        plot.refresh()
        self._show_gate()
        if cursor < t.row_count:
            t.move_cursor(row=cursor)
        t.focus()

    def _show_gate(self) -> None:
        box = self.query_one("#gate", Static)
        checks = self.app.store.gate_checks(self.run_id) if self.level == "neurons" else []
        box.display = bool(checks)
        if checks:
            rows = self.app.store.db.execute(
                "SELECT pair_id, text_before, text_after FROM gate_rows WHERE check_id = ? AND arm = 'top' "
                "AND text_after IS NOT NULL ORDER BY pair LIMIT 1",
                [checks[0]["id"]],
            ).fetchall()
            texts = [f"\n{pid}: {before!r} -> {after!r}" for pid, before, after in rows]
            box.update(queries.gate_verdict(checks[0]) + "".join(texts))

    def action_gate(self) -> None:
        """Gate-check this run's top neurons on held-out pairs (defaults of `harmmed-tui gate`)."""
        self.app.run_gate(self.run_id, GateSpec())

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
        if self.level == "neurons" and (step > 0 or self.page > 0):
            self.page = (
                self.page + step if step < 0 or self.query_one(Table).row_count == self.PAGE else self.page
            )
            self.show()

    def action_next_pair(self) -> None:
        order = [None] + [p["pair"] for p in self.pairs]
        self.pair = order[(order.index(self.pair) + 1) % len(order)]
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
        if time.monotonic() - self._shown > 1.0:  # rows stream in: refresh the pane, at most once a second
            self.show()


class HarmmedApp(App):
    TITLE = "harmmed-tui"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("n", "new_run", "new run", id="app.new"),
        Binding("x", "run_now", "run preselected", id="app.run_now"),
        Binding("r", "runs", "runs", id="app.runs"),
        Binding("e", "export", "export", id="app.export"),
        Binding("c", "cancel", "cancel run", id="app.cancel"),
        Binding("question_mark,f1", "help", "help", id="app.help"),
        Binding("q", "quit", "quit", id="app.quit"),
    ]

    def __init__(self, db: str | None = None, spec: RunSpec | None = None):
        super().__init__()
        self.store = Store(db)
        self.spec = spec or DEFAULT_SPEC
        self._cancel = threading.Event()

    def on_mount(self) -> None:
        for theme in THEMES:
            self.register_theme(theme)
        self.theme = self._saved_theme()
        self.push_screen(RunsScreen())

    def _saved_theme(self) -> str:
        try:
            name = json.loads(CONFIG.read_text()).get("theme", "harmmed-dark")
        except (OSError, ValueError):
            name = "harmmed-dark"
        return name if name in self.available_themes else "harmmed-dark"

    def watch_theme(self, theme: str) -> None:
        try:
            CONFIG.parent.mkdir(parents=True, exist_ok=True)
            CONFIG.write_text(json.dumps({"theme": theme}))
        except OSError:
            pass  # a read-only home must not stop the app; the theme is simply not remembered

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield SystemCommand("run: new run", "open Setup", self.action_new_run)
        yield SystemCommand(
            "run: preselected", "run the preselected model and pairs now", self.action_run_now
        )
        yield SystemCommand("run: cancel", "cancel the running job", self.action_cancel)
        if isinstance(screen, ExploreScreen):
            yield SystemCommand(
                "run: gate check", "ablate the run's top neurons on held-out pairs", screen.action_gate
            )
            yield SystemCommand(
                "view: next pair", "one pair, the next, or the aggregate", screen.action_next_pair
            )
            yield SystemCommand(
                "view: next neurons", "the next page of neurons", lambda: screen.action_page(1)
            )
            yield SystemCommand("view: back", "up one level", screen.action_up)
        if isinstance(screen, RunsScreen):
            yield SystemCommand("run: resume", "finish the selected run", screen.action_resume)
            yield SystemCommand("view: delete run", "delete the selected run", screen.action_delete)
        yield SystemCommand("view: runs", "run history", self.action_runs)
        yield SystemCommand("export: open run", "export the open run's table", self.action_export)
        yield SystemCommand("view: help", "keys", self.action_help)

    def action_new_run(self) -> None:
        self.push_screen(SetupScreen(self.spec))

    def action_run_now(self) -> None:
        """One key from start-up to a run: the preselected model and pairs, as Setup would start them."""
        self.start_run(self.spec)

    def action_runs(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_cancel(self) -> None:
        if self.workers:
            self._cancel.set()
            self.notify("cancelling after the current batch")

    def action_export(self) -> None:
        screen = self.screen
        if not isinstance(screen, ExploreScreen):
            self.notify("open a run first (r, then enter)")
            return
        run_id = screen.run_id

        def chosen(choice) -> None:
            if choice:
                self.export_table(run_id, *choice)

        self.push_screen(ExportScreen(run_id), chosen)

    @work(thread=True, exclusive=False, exit_on_error=False, group="export")
    def export_table(self, run_id: int, level: str, fmt: str, aggregated: bool, path: str) -> None:
        store = Store(self.store.path)
        try:
            rows = export.table(store, run_id, level, aggregated)
            export.write(export.render(rows, fmt), path)
            self.call_from_thread(self.notify, f"wrote {len(rows)} rows to {path}")
        except Exception as e:  # shown in a dialog, never as a traceback
            self.call_from_thread(self.push_screen, ErrorDialog(str(e)))
        finally:
            store.close()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def run_gate(self, run_id: int, spec: GateSpec) -> None:
        self.call_from_thread(
            self.notify, f"gate check of run {run_id}: top {spec.top} neurons on held-out pairs"
        )
        store = Store(self.store.path)
        try:
            check_gate(store, run_id, spec)
            self.post_message(RunEnded(run_id, "gate-checked"))
        except Exception as e:  # shown in a dialog, never as a traceback
            self.post_message(RunEnded(run_id, "failed", str(e)))
        finally:
            store.close()

    def start_run(self, spec: RunSpec, run_id: int | None = None) -> None:
        self.spec = spec
        self._cancel.clear()
        self.run_mediation(spec, run_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def run_mediation(self, spec: RunSpec, run_id: int | None) -> None:
        store = Store(self.store.path)  # sqlite connections belong to their thread
        started: list[int] = []

        def on_prepared(rid, prep):
            started.append(rid)
            self.call_from_thread(self._open_run, rid)

        try:
            outcome = execute(
                spec,
                store,
                run_id,
                progress=lambda d, t: self.post_message(RunProgress(d, t)),
                cancelled=self._cancel.is_set,
                on_prepared=on_prepared,
            )
            self.post_message(RunEnded(outcome.run_id, outcome.status))
        except Exception as e:
            self.post_message(RunEnded(started[0] if started else None, "failed", str(e)))
        finally:
            store.close()

    def _open_run(self, run_id: int) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self.push_screen(ExploreScreen(run_id))

    def on_run_progress(self, message: RunProgress) -> None:
        if isinstance(self.screen, ExploreScreen):
            self.screen.on_run_progress(message)

    def on_run_ended(self, message: RunEnded) -> None:
        if message.error:
            self.push_screen(ErrorDialog(message.error))
            return
        self.notify(f"run {message.run_id} {message.status}")
        if isinstance(self.screen, ExploreScreen):
            self.screen.query_one("#running").display = False
            self.screen.show()


def launch(
    db: str | None = None, model: str | None = None, pairs: str | None = None, mouse: bool = True
) -> int:
    spec = DEFAULT_SPEC.replace(**{k: v for k, v in (("model", model), ("pairs", pairs)) if v})
    HarmmedApp(db, spec).run(mouse=mouse)
    return 0
