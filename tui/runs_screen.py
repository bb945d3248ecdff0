"""Runs: the history, to open, delete or resume."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import queries
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.widgets import Table


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
