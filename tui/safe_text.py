"""Untrusted text (prompts, pair ids, model answers, tokens, file names) made safe to show in a terminal.

Rich and Textual read `[...]` as markup (`[/INST]` crashes a print, `[link=...]` makes a link), and a
terminal obeys the escape sequences a prompt set can carry (OSC 8 links, titles, colours) and shows bidi
controls reordered. So untrusted text is never markup: it goes into a `Text` (Rich) or a markup template's
`$variable` (Textual), or through `markup()` into a Rich console line; and `plain()` first makes every
control and format character visible as an escape (`\\x1b`, `\\u202e`)."""

from __future__ import annotations

import unicodedata

from rich.markup import escape
from rich.text import Text

# controls, format characters (bidi overrides, zero-width), line and paragraph separators, surrogates, private
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co"}
NEWLINE = "⏎"


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: object, newlines: bool = True) -> str:
    """The text with every hidden character shown as an escape; newlines kept, or shown as ⏎ where the text
    must stay on one line. Tabs become spaces."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\n" if newlines else NEWLINE)
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch) in _HIDDEN:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def markup(text: object) -> str:
    """Untrusted text to put inside a Rich markup string."""
    return escape(plain(text))


def literal(text: object, newlines: bool = False, style: str = "") -> Text:
    """Untrusted text as a Rich Text (never parsed as markup), on one line unless `newlines`."""
    return Text(plain(text, newlines), style=style)
