"""Two runs side by side (`harmmed-tui compare` in the explorer): the layer x module IE/TE of each, their
difference and correlation; e writes the comparison like any table."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from harmmed_tui.db import compare, export
from harmmed_tui.db.queries import model_label
from harmmed_tui.db.store import StoreError
from harmmed_tui.tui.dialogs import unique_path
from harmmed_tui.tui.safe_text import literal
from harmmed_tui.tui.widgets import Table


class CompareScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "back", id="compare.back", tooltip="back to Runs"),
        Binding("e", "export", "export", id="compare.export", tooltip="write the comparison as CSV here"),
    ]

    def __init__(self, run_a: int, run_b: int):
        super().__init__()
        self.run_a, self.run_b = run_a, run_b

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="crumb")
        yield Table(id="table", cursor_type="row")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        store = self.app.store
        a, b = store.run(self.run_a), store.run(self.run_b)
        try:
            self.rows, r, note = compare.compare(store, self.run_a, self.run_b)
        except StoreError as e:
            self.rows, r, note = [], None, str(e)
        if note:
            self.notify(note, severity="warning", timeout=10)
        corr = "n/a" if r is None else f"{r:.3f}"
        # the number first: at 80 columns the models' names are what is cut
        self.query_one("#crumb", Static).update(
            literal(
                f"Pearson r {corr} over {len(self.rows)} cells of IE/TE · run {self.run_a} "
                f"({model_label(a['model'])}) vs run {self.run_b} ({model_label(b['model'])})"
            )
        )
        t = self.query_one(Table)
        for col in (
            "layer",
            "module",
            f"run {self.run_a}",
            f"run {self.run_b}",
            f"{self.run_b} − {self.run_a}",
        ):
            t.add_column(col)
        for row in self.rows:
            values = list(row.values())
            t.add_row(str(row["layer"]), row["module"], *(t.heat(v, 1.0) for v in values[2:]))
        t.focus()

    def action_export(self) -> None:
        if not self.rows:
            return
        path = unique_path(Path.cwd(), f"compare-{self.run_a}-{self.run_b}", "csv")
        export.write(export.render(self.rows, "csv"), str(path))
        self.notify(f"wrote {len(self.rows)} rows to {path}")
