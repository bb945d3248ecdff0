"""The explorer's config file: `{"theme": NAME, "keys": {BINDING_ID: "key,key"}}`.

The file is the user's: one that does not parse, or that is not a mapping, is never rewritten (their theme
and keys would be lost); values of the wrong type are ignored. Either way the explorer starts with the
defaults for what it could not use and says why, in one line per problem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from textual.binding import Binding


@dataclass
class Config:
    path: Path
    theme: str | None = None
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys, as validated
    problems: list[str] = field(default_factory=list)
    data: dict | None = field(default_factory=dict)  # the file as read; None: unreadable, never to be written

    def save_theme(self, theme: str) -> None:
        """Remember the theme, keeping whatever else the file holds; never over a file we could not read."""
        if self.data is None or self.data.get("theme") == theme:
            return
        self.data["theme"] = theme
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1) + "\n")
        except OSError:
            pass  # a read-only home must not stop the app; the theme is simply not remembered


def load(path: Path, sections: list[tuple[str, list[Binding]]]) -> Config:
    """Read and check the config: its theme, and key remaps checked against every screen's bindings."""
    config = Config(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return config
    except (OSError, UnicodeDecodeError) as e:
        config.data = None
        config.problems.append(f"config {path}: cannot be read ({e}); left as is, running with defaults")
        return config
    try:
        data = json.loads(text)
    except ValueError as e:
        config.data = None
        config.problems.append(f"config {path}: not valid JSON ({e}); left as is, running with defaults")
        return config
    if not isinstance(data, dict):
        config.data = None
        config.problems.append(
            f'config {path}: expected an object like {{"theme": ...}}, found a {type(data).__name__}; '
            "left as is, running with defaults"
        )
        return config
    config.data = data
    theme = data.get("theme")
    if theme is not None and not isinstance(theme, str):
        config.problems.append(
            f"config {path}: 'theme' must be a theme's name, not {theme!r}; using the default"
        )
    else:
        config.theme = theme
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        config.problems.append(f"config {path}: 'keys' must map binding ids to keys, not {keys!r}; ignored")
        keys = {}
    config.keys = _checked_keys(path, keys, sections, config.problems)
    return config


def _split(keys: str) -> set[str]:
    return {k.strip() for k in keys.split(",") if k.strip()}


def _checked_keys(
    path: Path, keys: dict, sections: list[tuple[str, list[Binding]]], problems: list[str]
) -> dict[str, str]:
    """The remaps that can be applied: known ids, keys given as text, and no key that another binding of
    the same screen, or of every screen, already answers to."""
    where = {b.id: name for name, bindings in sections for b in bindings if b.id}
    good = {}
    for binding_id, value in keys.items():
        if binding_id not in where:
            problems.append(
                f"config {path}: unknown key id '{binding_id}' (the help screen lists them); ignored"
            )
        elif not isinstance(value, str) or not _split(value):
            problems.append(
                f"config {path}: keys of '{binding_id}' must be text like \"ctrl+k\", not {value!r}; ignored"
            )
        else:
            good[binding_id] = value
    # every binding's keys once the remaps apply; a remap that collides is refused and the defaults stay
    for binding_id in list(good):
        mine = _split(good[binding_id])
        for name, bindings in sections:
            # a key for every screen must be free on every screen; a screen's own, there and in its tables
            if where[binding_id] != "everywhere" and name not in ("everywhere", "tables", where[binding_id]):
                continue
            for b in bindings:
                if b.id == binding_id:
                    continue
                theirs = _split(good.get(b.id, b.key) if b.id else b.key)
                if clash := mine & theirs:
                    problems.append(
                        f"config {path}: '{binding_id}' -> '{good[binding_id]}' collides with "
                        f"'{b.id or b.action}' ({', '.join(sorted(clash))}); ignored"
                    )
                    del good[binding_id]
                    break
            if binding_id not in good:
                break
    return good
