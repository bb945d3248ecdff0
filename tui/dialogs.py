"""Modal screens: errors, help, export, the model picker."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from harmmed_tui.db import export


class ConfirmDialog(ModalScreen[bool]):
    """A question with two answers: y or the first button says yes; n, escape or the second says no."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str, no: str):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
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
C  aggregate over one category of the harmful prompts (prompt-set runs), the next, all
a  gate curve: ablate the run's top 1,5,20,100,1000 neurons on held-out pairs vs random ones
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
