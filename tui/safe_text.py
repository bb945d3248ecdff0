"""Untrusted text (prompts, pair ids, model answers, tokens, file names) made safe to show in a terminal.

Rich and Textual read `[...]` as markup (`[/INST]` crashes a print, `[link=...]` makes a link), and a
terminal obeys the escape sequences a prompt set can carry (OSC 8 links, titles, colours) and shows bidi
controls reordered. So untrusted text is never markup: it goes into a `Text` (Rich) or a markup template's
`$variable` (Textual), or through `markup()` into a Rich console line; and `plain()` first makes every
control and format character visible as an escape (`\\x1b`, `\\u202e`)."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text

from harmmed_tui.db.visible import NEWLINE, plain

__all__ = ["NEWLINE", "literal", "markup", "plain"]


def markup(text: object) -> str:
    """Untrusted text to put inside a Rich markup string."""
    return escape(plain(text))


def literal(text: object, newlines: bool = False, style: str = "") -> Text:
    """Untrusted text as a Rich Text (never parsed as markup), on one line unless `newlines`."""
    return Text(plain(text, newlines), style=style)
