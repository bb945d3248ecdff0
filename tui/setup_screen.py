"""Setup: every choice of a run, checked as it is typed."""

from __future__ import annotations

import re
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from harmmed_tui.analysis.hub_cache import cached_hub_models
from harmmed_tui.analysis.sites import SiteError
from harmmed_tui.analysis.spec import RunSpec, default_align, default_positions
from harmmed_tui.db import queries
from harmmed_tui.tui import engine
from harmmed_tui.tui.dialogs import ModelPicker
from harmmed_tui.tui.safe_text import literal


class SetupScreen(Screen):
    """Every choice of a run, checked against the model's tokenizer and config as it is typed."""

    BINDINGS = [
        Binding("ctrl+r", "start", "run", id="setup.run", tooltip="start the run"),
        Binding(
            "ctrl+o",
            "pick_model",
            "pick model",
            id="setup.pick",
            tooltip="pick a model: the default, recent ones, the local Hugging Face cache",
        ),
        Binding("escape", "app.pop_screen", "back", id="setup.back", tooltip="back, starting nothing"),
    ]
    # the form: every RunSpec field with a label, as RunSpec declares it (analysis.spec.Option)
    OPTIONS = {o.name: o for o in RunSpec.options() if o.label}
    FIELDS = [(name, o.label) for name, o in OPTIONS.items()]
    RAY = "auto | local | address; empty: compute here"  # where to compute: not part of the run's spec
    # words that tie an error without a flag in it to its field
    KEYWORDS = (
        ("model", "model"),
        ("module", "modules"),
        ("effect", "effects"),
        ("position", "positions"),
        ("layer", "layers"),
        ("metric", "metric"),
        ("refusal", "metric"),
        ("template", "chat_template"),
        ("pair", "pairs"),
    )

    def __init__(self, spec: RunSpec, draft: dict[str, str] | None = None):
        """`draft`: the fields as a form left with esc held them (kept by the app, shown again)."""
        super().__init__()
        self.spec = spec
        self.draft = draft or {}
        self.labels = dict(self.FIELDS)

    def compose(self) -> ComposeResult:
        yield Header()
        self.known = self._known_models()  # read once: the HF cache scan touches the disk
        with VerticalScroll(id="setup"):
            for name, label in self.FIELDS:
                value = getattr(self.spec, name)
                value = ",".join(value) if isinstance(value, tuple) else ("" if value is None else str(value))
                value = self.draft.get(name, value)
                with Horizontal(classes="field"):
                    yield Label(label, classes="label")
                    yield self._field(name, value)
                yield Static("", id=f"error-{name}", classes="field-error")
            with Horizontal(classes="field"):  # where to compute, not part of the run's spec
                yield Label("Ray cluster (optional)", classes="label")
                yield Input(self.draft.get("ray", ""), id="ray", placeholder=self.RAY)
            yield Static("", id="preview")
            yield Static("", id="problem")
            yield Button("Run (ctrl+r)", id="start", variant="primary")
        yield Footer()

    def _field(self, name: str, value: str) -> Input | Select:
        """A select for a fixed choice, else a text input (the model's with the known models suggested)."""
        if choices := self.OPTIONS[name].choices:
            options = [(c, c) for c in (choices if value in choices else (*choices, value))]
            return Select(options, value=value, id=name, allow_blank=False, compact=True)
        suggester = SuggestFromList([m for _, m in self.known]) if name == "model" else None
        if name == "max_pairs" and not value:
            value = "all"
        return Input(value, id=name, placeholder=self.OPTIONS[name].placeholder, suggester=suggester)

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
        # the values the form would choose itself: they follow the pairs' source until the user changes them
        sets = bool(self._value("harmful") or self._value("harmless"))
        self._chosen = {"align": default_align(sets), "positions": default_positions(self._value("align"))}
        self.check()

    def action_pick_model(self) -> None:
        def picked(model: str | None) -> None:
            if model:
                self.query_one("#model", Input).value = model

        self.app.push_screen(ModelPicker(self.known), picked)

    @on(Input.Changed)
    @on(Select.Changed)
    def _edited(self, event: Input.Changed | Select.Changed) -> None:
        if event.control.id in ("harmful", "harmless", "align"):
            self._follow_source()
        # what was typed, kept for the next Setup if this one is left with esc (a started run clears it)
        self.app.setup_draft = {name: self._value(name) for name in [*self.labels, "ray"]}
        self.check()

    def _follow_source(self) -> None:
        """The CLI's defaults for the pairs' source (analysis.spec): prompt sets are aligned from the end, and
        end-aligned runs take `suffix` for `*`; a value the user chose is kept."""
        sets = bool(self._value("harmful") or self._value("harmless"))
        for name in ("align", "positions"):
            value = default_align(sets) if name == "align" else default_positions(self._value("align"))
            if self._value(name) == self._chosen[name]:  # still the form's own choice
                self.query_one(f"#{name}").value = self._chosen[name] = value

    def _value(self, name: str) -> str:
        return str(self.query_one(f"#{name}").value).strip()

    def read_spec(self) -> RunSpec:
        """The form's spec: each field read by its own parser (a wrong value is its flag's one line, shown
        at its field); an empty optional field is None, an empty number the field's default."""
        values = {}
        for name, o in self.OPTIONS.items():
            text, default = self._value(name), getattr(RunSpec, name)
            if o.parse is not None:
                try:
                    values[name] = o.parse(text) if text or not isinstance(default, int) else default
                except ValueError as e:
                    raise SiteError(f"{o.flag} {e}") from None
            else:
                values[name] = text or (None if default is None else text)
        return self.spec.replace(**values)

    @work(thread=True, exclusive=True, exit_on_error=False, group="setup-check")
    def check(self) -> None:
        """Explain the setup's problems, or what it will run, before anything runs (debounced)."""
        time.sleep(0.3)
        if get_current_worker().is_cancelled:  # a newer edit supersedes this one
            return
        # torch and transformers load here, off the UI thread (tui.runner also quiets transformers' logging)
        engine.load()
        from harmmed_tui.analysis.mediation import preview
        from harmmed_tui.analysis.models import load_tokenizer_and_config

        try:
            spec = self.app.call_from_thread(self.read_spec)
            plan = preview(spec)
            if spec.device.startswith("cuda"):
                import torch

                if not torch.cuda.is_available():
                    raise SiteError("--device cuda: this machine has no CUDA GPU (choose auto or cpu)")
        except Exception as e:  # whatever is wrong is explained here, before anything runs
            self.app.call_from_thread(self._show_check, "", str(e))
            return
        tp = plan.pairs[0]
        tokenizer = load_tokenizer_and_config(spec.model, spec.revision, spec.trust_remote_code)[0]
        n_t, n_c = len(tp.treatment_ids), len(tp.control_ids)
        lengths = (
            f"{n_t} tokens = control {n_c}"
            if n_t == n_c
            else f"{n_t} tokens, control {n_c}, aligned from the end"
        )
        lines = [
            f"ok: {len(plan.pairs)} pairs, {plan.n_sites:,} sites, method {plan.method}",
            f"pair {tp.pair.id or 0}: treatment {lengths}",
            f"as the model reads it: {tokenizer.decode(tp.treatment_ids)!r}",
            *(f"skipped: {m}" for m in plan.skipped),
        ]
        self.app.call_from_thread(self._show_check, "\n".join(lines), "")

    def _field_of(self, problem: str) -> tuple[str | None, str]:
        """The field a problem is about, and the problem in the form's words: fields, not CLI flags."""
        flags = {f"--{name.replace('_', '-')}": name for name in self.labels}
        flags |= {"--positions": "positions", "--pairs": "pairs", "--refusal-tokens": "metric"}
        field = next((flags[f] for f in re.findall(r"--[a-z-]+", problem) if f in flags), None)
        text = re.sub(r"--[a-z-]+", lambda m: f"'{self.labels.get(flags.get(m[0], ''), m[0])}'", problem)
        if field is None:
            lower = problem.lower()
            field = next((f for word, f in self.KEYWORDS if word in lower), None)
        return field, text

    def _show_check(self, preview_text: str, problem: str) -> None:
        field, text = self._field_of(problem) if problem else (None, "")
        for name in self.labels:
            box = self.query_one(f"#error-{name}", Static)
            box.display = name == field
            box.update(literal(text) if name == field else "")
        self.query_one("#preview", Static).update(literal(preview_text, newlines=True))
        where = f"{self.labels[field]}: " if field else ""
        self.query_one("#problem", Static).update(literal(where + text, newlines=True) if text else "")

    @on(Input.Submitted)
    def _next_field(self) -> None:
        """Enter moves on, as in a form: only ctrl+r (or the button) starts a run."""
        self.focus_next()

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        try:
            spec = self.read_spec()
        except SiteError as e:
            self.query_one("#problem", Static).update(literal(str(e), newlines=True))
            return
        self.app.setup_draft = None  # the next Setup starts from x's preselection
        self.app.start_run(spec, ray=self.query_one("#ray", Input).value.strip() or None)
