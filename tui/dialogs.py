"""Modal screens: errors, help, export, the model picker."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from harmmed_tui.db import export
from harmmed_tui.tui import keys
from harmmed_tui.tui.safe_text import literal
from harmmed_tui.tui.widgets import LineScroll


class ConfirmDialog(ModalScreen[bool]):
    """A question with two answers: y or the first button says yes; n, escape or the second says no."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str, no: str):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(literal(self.question, newlines=True))
            yield Button(f"{self.yes} (y)", id="yes", variant="error")
            yield Button(f"{self.no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # enter keeps things as they are

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ErrorDialog(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "dismiss", "close")]

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("[b]Error[/b]")
            yield Static(literal(self.message, newlines=True))
            yield Button("Close", id="close")

    @on(Button.Pressed)
    def _close(self) -> None:
        self.dismiss()


class HelpScreen(LineScroll, ModalScreen[None]):
    """Every key, generated from the screens' bindings (remapped keys as remapped), and the terms."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "close"), *LineScroll.SCROLL_KEYS]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", classes="wide"):
            yield Static(keys.help_text(getattr(self.app, "keymap", {})), id="help")


EXTENSIONS = {"markdown": "md", "latex": "tex"}


def export_path(run_id: int, level: str, fmt: str, aggregated: bool, folder: Path) -> Path:
    """run1-neuron.csv, run1-layer-aggregate.md, ...: named by what it holds, and never a file that is
    already there (run1-layer-2.csv), so that no export overwrites another silently."""
    stem = f"run{run_id}-{level}" + ("-aggregate" if aggregated else "")
    return unique_path(folder, stem, EXTENSIONS.get(fmt, fmt))


def unique_path(folder: Path, stem: str, ext: str) -> Path:
    """folder/stem.ext, or stem-2.ext, stem-3.ext, ...: the first that is not there yet."""
    path, n = folder / f"{stem}.{ext}", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.{ext}", n + 1
    return path


class ExportScreen(ModalScreen[tuple | None]):
    """Export a run's table: its level (the pane in front by default), format, per pair or aggregated,
    the top N rows by |IE|, and where; or the pane's figure (`figure`: its kind, db.figures), as svg, pdf
    or png, beside the table formats."""

    BINDINGS = [Binding("escape", "dismiss", "cancel")]
    FIGURE_TYPES = ("svg", "pdf", "png")  # (db.figures.FILE_TYPES: matplotlib loads only to draw one)

    def __init__(self, run_id: int, level: str = "layer", has_gate: bool = True, figure: str = "layers"):
        super().__init__()
        self.run_id, self.level, self.has_gate, self.figure = run_id, level, has_gate, figure

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"[b]Export run {self.run_id}[/]")
            for label, widget in (
                (
                    "level",
                    Select(
                        [(x, x) for x in export.LEVELS],
                        value=self.level,
                        id="level",
                        allow_blank=False,
                        compact=True,
                    ),
                ),
                (
                    "format",
                    Select(
                        [(x, x) for x in export.FORMATS]
                        + [(f"figure: {self.figure} ({x})", x) for x in self.FIGURE_TYPES],
                        value="csv",
                        id="format",
                        allow_blank=False,
                        compact=True,
                    ),
                ),
                (
                    "rows",
                    Select(
                        [("per pair", False), ("aggregate over pairs", True)],
                        value=False,
                        id="aggregate",
                        allow_blank=False,
                        compact=True,
                    ),
                ),
                ("top N by |IE| (blank: all)", Input("", id="top", type="integer")),
                (
                    "file",
                    Input(str(export_path(self.run_id, self.level, "csv", False, Path.cwd())), id="path"),
                ),
            ):
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    yield widget
            yield Static("", id="problem")
            yield Button("Export", id="go", variant="primary")

    @on(Select.Changed)
    def _name(self) -> None:
        """The file is named after what it will hold, in the folder the user chose."""
        v = lambda i: self.query_one(i, Select).value  # noqa: E731
        path = self.query_one("#path", Input)
        folder = Path(path.value).expanduser().parent
        if v("#format") in self.FIGURE_TYPES:  # the pane's figure
            path.value = str(unique_path(folder, f"run{self.run_id}-{self.figure}", v("#format")))
            return
        path.value = str(export_path(self.run_id, v("#level"), v("#format"), v("#aggregate"), folder))

    @on(Button.Pressed, "#go")
    @on(Input.Submitted)
    def _go(self) -> None:
        v = lambda i: self.query_one(i, Select).value  # noqa: E731
        if v("#level") == "gate" and not self.has_gate:
            self.query_one("#problem", Static).update("level gate: this run has no gate check (a in Explore)")
            return
        top = self.query_one("#top", Input).value.strip()
        if top and int(top) < 1:
            self.query_one("#problem", Static).update("top N: at least 1, or blank for every row")
            return
        path = self.query_one("#path", Input).value
        self.dismiss((v("#level"), v("#format"), v("#aggregate"), int(top) if top else None, path))


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
