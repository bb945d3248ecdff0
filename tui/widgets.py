"""The explorer's shared widgets: tables with vim keys, heatmap cells."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

VIM_KEYS = [
    Binding("j", "cursor_down", "down", show=False),
    Binding("k", "cursor_up", "up", show=False),
    Binding("g", "scroll_top", "top", show=False),
    Binding("G", "scroll_bottom", "bottom", show=False),
]


def heat(value: float, scale: float, flips: tuple[int, int] | None = None) -> Text:
    """A grid cell on a background as strong as its share of the grid's largest |IE| (red +, blue -);
    marked ⚑ where --verify-generation patched it and the judged answer flipped (in any pair shown)."""
    share = min(abs(value) / scale, 1.0) if scale and value == value else 0.0
    r, g, b = (int(c * share) for c in ((210, 50, 50) if value > 0 else (50, 90, 230)))
    mark = "" if flips is None else "⚑" if flips[0] else "·"
    return Text(f"{value:+.3f}{mark}", style=f"{'bold white ' if share > 0.4 else ''}on rgb({r},{g},{b})")


class Table(DataTable):
    BINDINGS = VIM_KEYS
