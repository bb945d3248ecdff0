"""The explorer's shared widgets: tables with vim keys, heatmap cells, tokens as a person reads them."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.color import Color
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from harmmed_tui.db import jobs
from harmmed_tui.db.queries import model_label
from harmmed_tui.tui.safe_text import literal

VIM_KEYS = [
    Binding("enter", "select_cursor", "open", id="table.open"),  # (DataTable's own is not in the footer)
    Binding("j", "cursor_down", "down", show=False),
    Binding("k", "cursor_up", "up", show=False),
    Binding("h", "cursor_left", "left", show=False),
    Binding("l", "cursor_right", "right", show=False),
    Binding("g", "scroll_top", "top", show=False),
    Binding("G", "scroll_bottom", "bottom", show=False),
    Binding("ctrl+d", "page_down", "page down", show=False),
    Binding("ctrl+u", "page_up", "page up", show=False),
]

POSITIVE, NEGATIVE = (210, 50, 50), (50, 90, 230)
GLYPHS = " ░▒▓█"  # the 16-colour fallback: shading by strength, the sign in the terminal's own red and blue


def compact(count: str) -> str:
    """A count as a narrow column shows it, abbreviated, never cut: 9,999 stays, 186,560 is 187k, 4,161,960
    is 4.2M (text that is not a count is kept)."""
    if not count.isdigit() or int(count) < 10_000:
        return count
    n = int(count)
    if n < 999_500:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.1f}M" if n < 9_950_000 else f"{n / 1e6:.0f}M"


def heat(
    value: float,
    scale: float,
    base: tuple[int, int, int] = (0, 0, 0),
    glyphs: bool = False,
    mark: str = "",
) -> Text:
    """A grid cell: red for +, blue for -, as strong as |value| / scale, blended from the theme's background
    `base` (so that zero is the background, in light themes too); with `glyphs`, for terminals of 16
    colours, a shading glyph, and the number in the terminal's red or blue."""
    share = min(abs(value) / scale, 1.0) if scale and value == value else 0.0
    text = f"{value:+.3f}{mark}" if value == value else "   n/a"
    if glyphs:
        sign = ("bold " if share > 0.4 else "") + ("red" if value > 0 else "blue")
        return Text(GLYPHS[round(share * (len(GLYPHS) - 1))] + text, style=sign if share > 0.02 else "")
    target = POSITIVE if value > 0 else NEGATIVE
    r, g, b = (round(c0 + (c1 - c0) * share) for c0, c1 in zip(base, target, strict=True))
    bold = "bold white " if share > 0.4 else ""
    return Text(text, style=f"{bold}on rgb({r},{g},{b})" if share > 0.02 else "")


class Table(DataTable):
    BINDINGS = VIM_KEYS

    def __init__(self, *args, **kwargs):
        # the cursor's background wins over a heat cell's, so the cursor stays visible on a hot cell
        super().__init__(*args, cursor_background_priority="css", **kwargs)

    def clear(self, columns: bool = False):
        """Emptied to be filled again: DataTable widens its columns when idle and then repaints only some
        rows (the first ones kept the widths of the table before: seen at 80x24 going from a module grid to
        its neurons), so paint every row once the widths are set."""
        self.set_timer(0.1, self.refresh)
        return super().clear(columns)

    def add_row(self, *cells, **kwargs):
        """Text cells are the user's or the model's (prompts, ids, tokens): shown literally, never as markup."""
        return super().add_row(*(literal(c) if isinstance(c, str) else c for c in cells), **kwargs)

    def heat(self, value: float, scale: float, mark: str = "") -> Text:
        """A heat cell for this app's theme and terminal: blended from the theme's background, or shading
        glyphs in a terminal of 16 colours (or none)."""
        base = Color.parse(self.app.current_theme.background).rgb
        glyphs = self.app.console.color_system in ("standard", "windows", None)
        return heat(value, scale, base, glyphs, mark)


class JobsLine(Static):
    """The status line: what every job in progress is doing (this process's and any other's that writes the
    same database), with its ETA where the work is countable; hidden while nothing runs."""

    SHOWN = 2  # jobs shown; more are counted

    def on_mount(self) -> None:
        self.jobs: list[dict] = []
        self.refresh_jobs()  # (and again as the app's store watcher says: HarmmedApp.watch_store)

    def refresh_jobs(self) -> None:
        self.jobs = jobs.live(self.app.store)
        lines = [f"▶ {job_label(j)}: {j['text']}" for j in self.jobs[: self.SHOWN]]
        if lines and len(lines[0]) + 13 <= self.size.width - 2:  # the hint where it fits on the line
            lines[0] += "  (c cancels)"
        if len(self.jobs) > self.SHOWN:
            lines[-1] += f"  (+{len(self.jobs) - self.SHOWN} more)"
        self.display = bool(lines)
        self.update(literal("\n".join(lines), newlines=True))


def job_label(job: dict) -> str:
    """A job as the status line and the cancel notice name it: `run 12 (model)`, `new run (model)`, ..."""
    model, run = model_label(job["model"]), job["run_id"]
    if job["kind"] == "study":
        return f"study ({model})" + ("" if run is None else f", run {run}")
    if run is None:
        return f"new run ({model})"
    what = {"run": "run", "resume": "resume of run", "gate": "run"}[job["kind"]]  # (a gate's stage says gate)
    return f"{what} {run} ({model})"


class LineScroll:
    """j/k scroll a screen's text by a line, g/G to its ends, as in the tables (help, run details)."""

    SCROLL_KEYS = [
        Binding("j", "scroll(1)", "down", show=False),
        Binding("k", "scroll(-1)", "up", show=False),
        Binding("g", "scroll_end(0)", "top", show=False),
        Binding("G", "scroll_end(1)", "bottom", show=False),
    ]

    def action_scroll(self, lines: int) -> None:
        self.query_one(VerticalScroll).scroll_relative(y=lines, animate=False)

    def action_scroll_end(self, bottom: int) -> None:
        box = self.query_one(VerticalScroll)
        (box.scroll_end if bottom else box.scroll_home)(animate=False)
