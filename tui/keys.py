"""Every key of the explorer, read from the screens' bindings: the help screen and the README's key table are
generated here, so they cannot drift from what the keys do. Keys with a binding id can be remapped in the
config file (`{"keys": {"explore.report": "ctrl+k"}}`), which Textual applies with `App.set_keymap`."""

from __future__ import annotations

from textual.binding import Binding

# the terms the tables use, defined once for the help screen
GLOSSARY = (
    ("TE", "total effect: metric(treatment) - metric(control), per pair"),
    (
        "IE",
        "indirect effect of a site: metric(control run with the site at its treatment value) - metric(control)",
    ),
    (
        "IE/TE",
        "the share of the total effect that flows through the site: one pair's IE / TE (ie_norm in per-pair "
        "exports); over pairs, sum IE / sum TE (ie_share in aggregate exports, compare, show and the report)",
    ),
    ("recur", "in how many pairs the neuron is among that pair's 20 strongest neuron sites"),
    ("gate", "the neuron's rank in the newest gate check (its curve ablated the top K)"),
    ("flips", "--verify-generation: pairs whose judged answer flipped with the site patched / pairs checked"),
    ("⚑ ·", "on a grid cell: its patched answer flipped in some pair shown (⚑) or in none (·)"),
)


def sections() -> list[tuple[str, list[Binding]]]:
    """(where, bindings) for every screen, in the order a user meets them."""
    from harmmed_tui.tui.app import HarmmedApp
    from harmmed_tui.tui.compare_screen import CompareScreen
    from harmmed_tui.tui.explore_screen import ExploreScreen
    from harmmed_tui.tui.panes.neurons import NeuronsPane
    from harmmed_tui.tui.report_screen import ReportScreen
    from harmmed_tui.tui.run_details import RunDetailsScreen
    from harmmed_tui.tui.runs_screen import RunsScreen
    from harmmed_tui.tui.setup_screen import SetupScreen
    from harmmed_tui.tui.widgets import VIM_KEYS

    palette = Binding("ctrl+p", "command_palette", "palette", tooltip="every action, searchable (Textual's)")
    return [
        ("everywhere", [*HarmmedApp.BINDINGS, palette]),
        ("Runs", RunsScreen.BINDINGS),
        ("Setup", SetupScreen.BINDINGS),
        ("Explore", ExploreScreen.BINDINGS),
        ("Explore's neuron panes", NeuronsPane.BINDINGS),
        ("Claims report", ReportScreen.BINDINGS),
        ("Run details", RunDetailsScreen.BINDINGS),
        ("Compare", CompareScreen.BINDINGS),
        ("tables", VIM_KEYS),
    ]


def key_text(binding: Binding, keymap: dict[str, str] | None = None) -> str:
    """A binding's keys as the user presses them (after any remapping)."""
    keys = (keymap or {}).get(binding.id or "", binding.key)
    names = {"question_mark": "?", "right_square_bracket": "]", "left_square_bracket": "[", "escape": "esc"}
    return " / ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))


def rows(keymap: dict[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """(where, keys, what it does, binding id or '') for every binding."""
    return [
        (where, key_text(b, keymap), b.tooltip or b.description, b.id or "")
        for where, bindings in sections()
        for b in bindings
    ]


def markdown_table() -> str:
    """The README's key table."""
    lines = ["| where | keys | what it does | id (to remap) |", "|---|---|---|---|"]
    lines += [
        f"| {where} | `{keys}` | {what} | {f'`{id_}`' if id_ else ''} |" for where, keys, what, id_ in rows()
    ]
    return "\n".join(lines)


def help_text(keymap: dict[str, str] | None = None) -> str:
    """The help screen (Rich markup): keys per screen, then the glossary."""
    out, last = [], None
    for where, keys, what, id_ in rows(keymap):
        if where != last:
            out.append(f"\n[b]{where}[/b]")
            last = where
        out.append(
            f"  {keys.replace('[', chr(92) + '['):<14} {what}" + (f"  [dim]{id_}[/dim]" if id_ else "")
        )
    out.append("\n[b]terms[/b]")
    out += [f"  {term:<6} {meaning}" for term, meaning in GLOSSARY]
    return "\n".join(out).strip()
