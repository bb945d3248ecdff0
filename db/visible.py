"""Untrusted text (prompts, pair ids, categories, model answers, tokens, file names) with every hidden
character made visible: a control or format character (ESC, NUL, a bidi override, a zero-width space) is shown
as its escape (`\\x1b`, `\\u202e`), never obeyed, by a terminal, a figure's SVG or a report's reader."""

from __future__ import annotations

import unicodedata

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
