"""A run's details, one key from its tables: what `harmmed-tui show` prints (settings, provenance, each
pair's TE and behaviour, top sites, the gate check), scrollable."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from harmmed_tui.tui import store_commands
from harmmed_tui.tui.widgets import LineScroll


class RunDetailsScreen(LineScroll, Screen):
    BINDINGS = [
        Binding("escape,i", "app.pop_screen", "back", id="details.back", tooltip="back"),
        *LineScroll.SCROLL_KEYS,
    ]

    def __init__(self, run_id: int):
        super().__init__()
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="details"):
            yield Static(id="details-text")
        yield Footer()

    def on_mount(self) -> None:
        con = Console(file=io.StringIO(), width=max(60, self.size.width - 2), color_system="truecolor")
        with con.capture() as captured:
            store_commands.show_run(self.app.store, self.run_id, con)
        self.query_one("#details-text", Static).update(Text.from_ansi(captured.get()))
        self.query_one(VerticalScroll).focus()
