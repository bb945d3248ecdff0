"""The Textual explorer: Runs -> Setup -> run in a worker -> Explore (layers -> modules -> neurons)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import platformdirs
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen

from harmmed_tui.analysis.errors import JobCancelled
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export, jobs
from harmmed_tui.db.store import HOST, Store
from harmmed_tui.themes import THEMES
from harmmed_tui.tui import config, engine
from harmmed_tui.tui import keys as keymod
from harmmed_tui.tui.dialogs import ConfirmDialog, ErrorDialog, ExportScreen, HelpScreen
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.messages import RunEnded, StoreChanged
from harmmed_tui.tui.panes.neurons import NeuronsPane
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.runs_screen import RunsScreen
from harmmed_tui.tui.safe_text import plain
from harmmed_tui.tui.setup_screen import SetupScreen
from harmmed_tui.tui.widgets import JobsLine, job_label

CONFIG = Path(platformdirs.user_config_dir("harmmed-tui")) / "config.json"
# What the app preselects: the embedded organism, four built-in pairs, every module including neurons.
DEFAULT_SPEC = RunSpec(max_pairs=4, modules=("resid", "attn", "mlp", "neuron"))


WATCH_S = 1.0  # how often the store is looked at: runs of any process appear and move within this


class HarmmedApp(App):
    TITLE = "harmmed-tui"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        # shown in the footer only where a screen says so (see RunsScreen): every screen's footer has room for
        # its own keys, then ? and q
        Binding("n", "new_run", "new run", id="app.new", show=False, tooltip="set up a new run (Setup)"),
        Binding(
            "x",
            "run_now",
            "run preselected",
            id="app.run_now",
            show=False,
            tooltip="run the preselected run now",
        ),
        Binding("r", "runs", "runs", id="app.runs", show=False, tooltip="the run history"),
        Binding(
            "e", "export", "export", id="app.export", tooltip="export the open or highlighted run's table"
        ),
        Binding(
            "c",
            "cancel",
            "cancel job",
            id="app.cancel",
            show=False,
            tooltip="cancel the job of the run in front (any process's), else this one's",
        ),
        Binding("question_mark,f1", "help", "help", id="app.help", tooltip="this help"),
        Binding("q", "quit", "quit", id="app.quit", tooltip="quit (asks first while a job runs)"),
    ]

    def __init__(self, db: str | None = None, spec: RunSpec | None = None):
        super().__init__()
        self.store = Store(db)
        self.store.check_tables()  # (the whole file is checked before this app's first write)
        self.spec = spec or DEFAULT_SPEC
        self._quitting = False  # the user chose to cancel the running job and quit
        self.quit_while_loading = False  # ... before its run existed: launch() need not wait for the load
        self.setup_draft: dict[str, str] | None = None  # a Setup form left with esc, shown again by n

    def on_mount(self) -> None:
        for theme in THEMES:
            self.register_theme(theme)
        # the theme and keys of the config file, as far as they are valid (problems said, the file kept)
        self.config = config.load(CONFIG, keymod.sections())
        theme = self.config.theme or "harmmed-dark"
        if theme not in self.available_themes:
            self.config.problems.append(f"config {CONFIG}: no theme '{theme}'; using harmmed-dark")
            theme = "harmmed-dark"
        self.theme = theme
        self.keymap = self.config.keys  # (the help screen lists the ids' keys as remapped)
        self.set_keymap(self.keymap)
        for problem in self.config.problems:
            self.notify(problem, severity="warning", timeout=10)
        self.push_screen(RunsScreen())
        self.warm_up()
        self._data_version, self._live = None, ()
        self.set_interval(WATCH_S, self.watch_store)

    def watch_store(self) -> None:
        """The app's one watcher of the store: when another connection committed (SQLite's data_version: a
        CLI run in another shell, this app's own workers) or a job is live (its clock moves), the screen in
        front hears it (StoreChanged) and its status line is redrawn. Idle on a finished run: one pragma a
        second, nothing redrawn."""
        version = self.store.db.execute("PRAGMA data_version").fetchone()[0]
        live = tuple(j["id"] for j in jobs.live(self.store))  # (a job whose process died leaves this set)
        if version == self._data_version and live == self._live == ():
            return
        self._data_version, self._live = version, live
        for line in self.screen.query(JobsLine):
            line.refresh_jobs()
        self.screen.post_message(StoreChanged())

    def notify(self, message: str, *, markup: bool = False, **kwargs) -> None:
        """Every notification is literal text: many carry a user's prompt, id, path or error."""
        super().notify(plain(message), markup=markup, **kwargs)

    def watch_theme(self, theme: str) -> None:
        if hasattr(self, "config"):
            self.config.save_theme(theme)

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
                "view: next category",
                "aggregate over one category's pairs, the next, or all",
                screen.action_next_category,
            )
            if isinstance(pane := screen.pane, NeuronsPane):  # (the paged panes)
                yield SystemCommand(
                    "view: next neurons", "the next page of neurons", lambda: pane.action_page(1)
                )
            yield SystemCommand(
                "view: claims report", "the paper's four claims judged on this run", screen.action_report
            )
            yield SystemCommand("view: filter rows", "keep the rows holding a text", screen.action_filter)
            yield SystemCommand(
                "view: sort", "sort by the next column (largest |value| first)", screen.action_sort
            )
            yield SystemCommand(
                "view: top neurons", "the top neurons across layers", screen.action_top_neurons
            )
            yield SystemCommand(
                "view: IE or IE/TE", "show and colour IE/TE or IE", screen.action_toggle_scale
            )
            yield SystemCommand("view: run details", "settings, provenance, answers", screen.action_details)
            yield SystemCommand("view: back", "up one level", screen.action_up)
        if isinstance(screen, RunsScreen):
            yield SystemCommand("run: resume", "finish the selected run", screen.action_resume)
            yield SystemCommand(
                "view: mark to compare", "enter on another run compares them", screen.action_mark
            )
            yield SystemCommand("view: delete run", "delete the selected run", screen.action_delete)
        yield SystemCommand("view: runs", "run history", self.action_runs)
        yield SystemCommand("export: open run", "export the open run's table", self.action_export)
        yield SystemCommand("view: help", "keys", self.action_help)

    def describe_spec(self) -> str:
        """What `x` runs, in a line: model, pairs, modules and positions."""
        s = self.spec
        source = (
            f"{s.harmful} x {s.harmless}"
            if s.harmful
            else "one typed pair"
            if s.treatment is not None
            else f"{s.pairs} pairs"
        )
        limit = f" (first {s.max_pairs})" if s.max_pairs else ""
        model = "the embedded default model" if s.model == "default" else s.model
        return f"{model} on {source}{limit}: {','.join(s.modules)} at {s.positions}"

    def action_new_run(self) -> None:
        self.push_screen(SetupScreen(self.spec, self.setup_draft))

    def action_run_now(self) -> None:
        """One key from start-up to a run: the preselected model and pairs, as Setup would start them."""
        self.start_run(self.spec)

    def action_runs(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def own_jobs(self) -> list[dict]:
        return [j for j in jobs.live(self.store) if j["pid"] == os.getpid() and j["host"] == HOST]

    def action_cancel(self) -> None:
        """Cancel the job of the run in front (Explore's run, the row highlighted in Runs), whichever process
        runs it on this machine or another writing the same database; with none in front, this app's own."""
        in_front = getattr(self.screen, "job_in_front", lambda: None)()
        job = in_front or next(iter(self.own_jobs()), None)
        if job is None:
            self.notify("nothing to cancel: no job runs here or on the run in front")
            return
        jobs.request_cancel(self.store, job["id"])
        self.notify(
            f"cancelling {job_label(job)} ({job['stage']}) after its current batch; what it stored stays"
        )

    def action_export(self) -> None:
        """Export the open run's table (level: the pane in front) or its figure, or the run highlighted in
        Runs."""
        screen = self.screen
        figure = {}  # what the pane in front draws (db.figures.draw's arguments)
        if isinstance(screen, ExploreScreen):
            run_id = screen.run_id
            level, figure = screen.pane.EXPORT, screen.figure()
        elif isinstance(screen, RunsScreen) and (run_id := screen.selected()) is not None:
            level = "layer"
        else:
            self.notify("no run to export: open or highlight one first")
            return
        figure = {"kind": "layers", **figure}

        def chosen(choice) -> None:
            if choice:
                self.export_table(run_id, *choice, figure=figure)

        has_gate = bool(self.store.gate_checks(run_id))
        self.push_screen(ExportScreen(run_id, level, has_gate, figure["kind"]), chosen)

    @work(thread=True, exclusive=False, exit_on_error=False, group="export")
    def export_table(
        self, run_id: int, level: str, fmt: str, aggregated: bool, top: int | None, path: str, figure: dict
    ) -> None:
        try:
            with Store(self.store.path) as store:  # sqlite connections belong to their thread
                if fmt in ExportScreen.FIGURE_TYPES:
                    from harmmed_tui.db import figures

                    drawn = figures.draw(store, run_id, **figure)
                    figures.save(drawn, path)
                    self.call_from_thread(self.notify, f"wrote {drawn.title} to {path}")
                    return
                rows = export.table(store, run_id, level, aggregated, top)
            export.write(export.render(rows, fmt), path)
            self.call_from_thread(self.notify, f"wrote {len(rows)} rows to {path}")
        except Exception as e:  # shown in a dialog, never as a traceback
            self.call_from_thread(self.push_screen, ErrorDialog(str(e)))

    @work(thread=True, exit_on_error=False, group="warm-up")
    def warm_up(self) -> None:
        """Import the engine (torch, transformers: seconds) while the user looks at the runs."""
        engine.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def run_gate(self, run_id: int) -> None:
        """Gate-check a run's top neurons on held-out pairs, with `harmmed-tui gate`'s defaults."""
        engine.load()
        from harmmed_tui.analysis.gate import GateSpec
        from harmmed_tui.db.runner import check_gate

        spec = GateSpec()
        self.call_from_thread(
            self.notify,
            f"gate curve of run {run_id}: top {','.join(map(str, spec.tops))} neurons on held-out pairs",
        )
        try:
            with Store(self.store.path) as store:
                check_gate(store, run_id, spec)
            self.post_message(RunEnded(run_id, "gate-checked"))
        except JobCancelled:
            self.post_message(RunEnded(run_id, "cancelled"))
        except Exception as e:  # shown in a dialog, never as a traceback
            self.post_message(RunEnded(run_id, "failed", str(e)))

    def job_running(self) -> bool:
        """Whether a run or a gate check is in progress (one at a time: they share the model and the CPU)."""
        return any(w.group == "runs" and not w.is_finished for w in self.workers)

    def _busy(self) -> bool:
        """Refuse a second job at once, saying why."""
        if self.job_running():
            self.notify("a job is already running: wait for it, or cancel it with c", severity="warning")
            return True
        return False

    def start_run(self, spec: RunSpec, run_id: int | None = None, ray: str | None = None) -> None:
        """Run (or resume) a spec here, or on the Ray cluster at `ray`."""
        if self._busy():
            return
        self.notify(f"{'resuming run ' + str(run_id) if run_id else 'starting a run'}: loading {spec.model}")
        self.run_mediation(spec, run_id, ray)

    def start_gate(self, run_id: int) -> None:
        if not self._busy():
            self.run_gate(run_id)

    async def action_quit(self) -> None:
        """Quit; while a job runs, first ask whether to cancel it (a cancelled run can be resumed)."""
        if not self.job_running():
            self.exit()
            return

        def chosen(cancel: bool | None) -> None:
            if not cancel:
                return
            own = self.own_jobs()
            for job in own:
                jobs.request_cancel(self.store, job["id"])
            if all(j["run_id"] is None for j in own):  # still loading: nothing stored to wait for
                self.quit_while_loading = True
                self.exit()
                return
            self._quitting = True
            self.notify("cancelling after the current batch, then quitting")

        question = (
            "A job is running. Cancel it and quit? (A cancelled run keeps its rows and can be resumed.)"
        )
        self.push_screen(ConfirmDialog(question, "Cancel it and quit", "Stay"), chosen)

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def run_mediation(self, spec: RunSpec, run_id: int | None, ray: str | None = None) -> None:
        started: list[int] = []

        def on_prepared(rid, plan, provenance):
            started.append(rid)
            if run_id is None:  # a new run that loaded and checked: what x runs from now on
                self.call_from_thread(setattr, self, "spec", spec)
            self.call_from_thread(self._open_run, rid)

        try:
            engine.load()
            from harmmed_tui.analysis.ray_cluster import RayExecutor
            from harmmed_tui.db.runner import execute

            with Store(self.store.path) as store:
                outcome = execute(
                    spec, store, run_id, on_prepared=on_prepared, executor=RayExecutor(ray) if ray else None
                )
            self.post_message(RunEnded(outcome.run_id, outcome.status))
        except JobCancelled as e:
            self.post_message(RunEnded(run_id, "cancelled", note=str(e)))
        except Exception as e:
            self.post_message(RunEnded(started[0] if started else None, "failed", str(e)))

    def _open_run(self, run_id: int) -> None:
        """The run that just started, in Explore; not over a question being answered (q's "Cancel it and
        quit?" asked while the model loaded): once it is answered."""
        if isinstance(self.screen, ModalScreen):
            if not self._quitting:
                self.set_timer(0.25, lambda: self._open_run(run_id))
            return
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self.push_screen(ExploreScreen(run_id))

    def on_run_ended(self, message: RunEnded) -> None:
        if self._quitting:
            self.exit()
            return
        if message.error:
            self.push_screen(ErrorDialog(message.error))
            return
        if message.note:
            self.notify(message.note)
            return
        self.notify(f"run {message.run_id} {message.status}")
        if isinstance(self.screen, ExploreScreen):  # at once, not at its next refresh
            self.screen.follow()
        if message.status == "gate-checked":  # the curve, where the claims are judged (claim 3)
            n_layers = self.store.run(message.run_id)["provenance"]["n_layers"]
            self.push_screen(ReportScreen(message.run_id, n_layers, claim=3))


def launch(
    db: str | None = None, model: str | None = None, pairs: str | None = None, mouse: bool = True
) -> int:
    spec = DEFAULT_SPEC.replace(**{k: v for k, v in (("model", model), ("pairs", pairs)) if v})
    app = HarmmedApp(db, spec)
    # our own loop: app.run returns once the terminal is restored, where asyncio.run would first wait for
    # every worker thread (one may be inside a model's load for many seconds)
    loop = asyncio.new_event_loop()
    try:
        app.run(mouse=mouse, loop=loop)
    except KeyboardInterrupt:  # ctrl+c from a terminal that sends SIGINT: no traceback
        pass
    if app.quit_while_loading:  # the job's thread is still inside the model's load, with nothing to store
        os._exit(0)
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    return 0
