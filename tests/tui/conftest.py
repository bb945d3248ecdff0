import os
import time

import pytest

# Screens as a 256-colour terminal draws them, whatever terminal runs the tests (Textual reads these when an
# app is created; a test of the 16-colour fallback sets TERM=xterm itself).
os.environ["TERM"] = "xterm-256color"
os.environ.pop("NO_COLOR", None)
os.environ.pop("TEXTUAL_COLOR_SYSTEM", None)
os.environ["TZ"] = "UTC"  # the Runs screen shows local times
time.tzset()


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """The app's remembered theme goes to a temporary config, never the user's."""
    monkeypatch.setattr("harmmed_tui.tui.app.CONFIG", tmp_path / "config.json")
    return tmp_path
