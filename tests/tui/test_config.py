"""The config file is the user's: never rewritten when it did not parse, bad values ignored with a word, and
no remap may take a key another binding answers to."""

import json

import pytest

from harmmed_tui.tui.app import HarmmedApp
from tests.tui.pilot import press

SIZE = (100, 30)

CASES = [
    ('{"theme": "harmmed-light", "keys": {', "not valid JSON"),
    ('["harmmed-light"]', "expected an object"),
    ('{"keys": {"explore.report": 7}}', "keys of 'explore.report' must be text"),
    ('{"keys": {"runs.delete": 5}}', "keys of 'runs.delete' must be text"),
    ('{"keys": ["x"]}', "'keys' must map binding ids to keys"),
    ('{"theme": 3}', "'theme' must be a theme's name"),
    ('{"theme": "solarized-neon"}', "no theme 'solarized-neon'"),
    ('{"keys": {"explore.nope": "v"}}', "unknown key id 'explore.nope'"),
    ('{"keys": {"app.quit": "x"}}', "'app.quit' -> 'x' collides with 'app.run_now' (x)"),
    ('{"keys": {"explore.report": "q"}}', "'explore.report' -> 'q' collides with 'app.quit' (q)"),
    ('{"keys": {"explore.report": "j"}}', "'explore.report' -> 'j' collides with 'cursor_down' (j)"),
]


@pytest.mark.parametrize(("content", "problem"), CASES, ids=[c for c, _ in CASES])
async def test_a_bad_config_starts_with_defaults_says_why_and_is_kept(tmp_path, config_dir, content, problem):
    path = config_dir / "config.json"
    path.write_text(content)
    app = HarmmedApp(str(tmp_path / "runs.db"))
    async with app.run_test(size=SIZE) as pilot:
        messages = [str(n.message) for n in app._notifications]
        assert any(problem in m for m in messages), messages
        assert app.theme in ("harmmed-dark", "harmmed-light")
        app.theme = (
            "harmmed-light" if app.theme == "harmmed-dark" else "harmmed-dark"
        )  # (remembered, if it may be)
        await press(pilot, "q")  # quit still quits: no remap took its key
    assert app.return_code is not None
    written = path.read_text()
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        assert written == content  # never rewritten
    else:  # the theme remembered, and everything else the user wrote kept as written
        assert {k: v for k, v in json.loads(written).items() if k != "theme"} == {
            k: v for k, v in data.items() if k != "theme"
        }
