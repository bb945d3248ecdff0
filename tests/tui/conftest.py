import pytest


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """The app's remembered theme goes to a temporary config, never the user's."""
    monkeypatch.setattr("harmmed_tui.tui.app.CONFIG", tmp_path / "config.json")
