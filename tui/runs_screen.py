"""Runs: the history, to open, delete or resume."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import jobs, queries
from harmmed_tui.tui.compare_screen import CompareScreen
from harmmed_tui.tui.dialogs import ConfirmDialog
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.messages import StoreChanged
from harmmed_tui.tui.widgets import JobsLine, Table, compact

MARK = "◆"  # beside the id of the run marked to compare


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "open", id="runs.open", tooltip="open the run in Explore"),
        Binding("n", "app.new_run", "new", id="runs.new", tooltip="set up a new run"),
        Binding(
            "x",
            "app.run_now",
            "run",
            id="runs.run_now",
            tooltip="run the preselected run (named in the title bar)",
        ),
        Binding(
            "u",
            "resume",
            "resume",
            id="runs.resume",
            tooltip="resume an interrupted, cancelled or failed run",
        ),
        Binding(
            "m",
            "mark",
            "mark",
            id="runs.mark",
            tooltip="mark the run to compare: enter on another then opens the two side by side",
        ),
        Binding("d", "delete", "delete", id="runs.delete", tooltip="delete the run (asks first)"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="hint")
        yield JobsLine(id="jobs")
        yield Table(id="runs", cursor_type="row")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self._shown: list | None = None
        self.marked: int | None = None  # a run to compare with the next one opened

    def on_screen_resume(self) -> None:  # also when first shown
        self.refresh_runs()

    def on_store_changed(self, _: StoreChanged) -> None:
        self.refresh_runs()

    def refresh_runs(self) -> None:
        """Redraw the history when it changed, keeping the cursor on the same row index (a neighbour after
        a delete). Jobs still loading their model (any process's) come first, as `…` rows."""
        rows = queries.history(self.app.store)
        hint = self.query_one("#hint", Static)
        hint.display = not rows
        hint.update(f"No runs yet. x runs {self.app.describe_spec()}; n sets up another run first.")
        self.sub_title = f"x: {self.app.describe_spec()}"
        if [rows, self.marked] == self._shown:
            return
        self._shown = [rows, self.marked]
        t = self.query_one(Table)
        row = t.cursor_row
        t.clear(columns=True)
        for col in queries.RUN_COLUMNS:
            t.add_column(col, key=col)
        counts = {queries.RUN_COLUMNS.index(c) for c in ("pairs", "rows")}
        for key, cells in rows:  # the run marked to compare shows its mark beside its id
            label = f"{cells[0]} {MARK}" if key == str(self.marked) else cells[0]
            shown = [compact(c) if i in counts else c for i, c in enumerate(cells)]
            t.add_row(label, *shown[1:], key=key)
        if t.row_count:
            t.move_cursor(row=min(row, t.row_count - 1))

    def _selected_key(self) -> str | None:
        t = self.query_one(Table)
        return t.coordinate_to_cell_key(t.cursor_coordinate).row_key.value if t.row_count else None

    def selected(self) -> int | None:
        """The highlighted run's id (None on a job still loading its model)."""
        key = self._selected_key()
        return int(key) if key and key.isdigit() else None

    def job_in_front(self) -> dict | None:
        """The job of the highlighted row, for `c`: a job loading its model, or the one writing the run."""
        key = self._selected_key()
        if key is None:
            return None
        if key.startswith("job:"):
            return next((j for j in jobs.live(self.app.store) if f"job:{j['id']}" == key), None)
        return jobs.of_run(self.app.store, int(key))

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def _study(self) -> dict | None:
        """The highlighted study (its row, above its runs)."""
        key = self._selected_key()
        return self.app.store.study(int(key.split(":")[1])) if key and key.startswith("study:") else None

    def action_open(self) -> None:
        if (study := self._study()) is not None:
            self._open_study(study)
            return
        if (run_id := self.selected()) is None:
            if self._selected_key():
                self.notify("this run is still loading its model: it opens once its first rows are stored")
            return
        if self.marked is not None and self.marked != run_id:
            self.app.push_screen(CompareScreen(self.marked, run_id))
            self.marked = None  # one comparison per mark: the next enter opens a run again
            self.refresh_runs()
        else:
            self.app.push_screen(ExploreScreen(run_id))

    def _open_study(self, study: dict) -> None:
        """A study opens on its claims; enter on one opens the table behind it, in the run that holds it."""
        from harmmed_tui.tui.report_screen import ReportScreen

        run_id = study["modules_run"] or study["neurons_run"]
        n_layers = self.app.store.run(run_id)["provenance"].get("n_layers") if run_id else None
        if n_layers is None:
            self.notify(f"study {study['id']} has no run with a loaded model yet: nothing to report")
            return
        self.app.push_screen(ReportScreen(run_id, n_layers))

    def action_mark(self) -> None:
        if (run_id := self.selected()) is None:
            return
        self.marked = None if run_id == self.marked else run_id
        self.notify(
            f"run {run_id} marked: enter on another run compares the two (m again unmarks)"
            if self.marked is not None
            else "unmarked"
        )
        self.refresh_runs()

    def action_delete(self) -> None:
        if (run_id := self.selected()) is None:
            return
        run = self.app.store.run(run_id)
        if run["status"] == "running" or self.job_in_front():
            self.notify(
                f"run {run_id} is being written: cancel it (c) before deleting it", severity="warning"
            )
            return

        def chosen(yes: bool | None) -> None:
            if yes:
                self.app.store.delete_run(run_id)
                self.refresh_runs()
                self.notify(f"deleted run {run_id}")

        question = f"Delete run {run_id} ({run['model']}, {run['n_rows']:,} rows)? This cannot be undone."
        self.app.push_screen(ConfirmDialog(question, "Delete", "Keep"), chosen)

    def action_resume(self) -> None:
        if (study := self._study()) is not None and study["status"] != "done":
            self.notify(f"a study resumes from the shell: harmmed-tui resume study:{study['id']}")
            return
        if (run_id := self.selected()) is None:
            return
        run = self.app.store.run(run_id)
        if run["status"] in ("done", "running"):
            self.notify(f"run {run_id} is {run['status']}: nothing to resume", severity="warning")
            return
        self.app.start_run(RunSpec.from_json(run["spec"]), run_id)
