"""The installed `harmmed-tui` console script in a real terminal (tmux): keys in, screen out, a run completes
and an export file appears."""

import csv
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harmmed_tui.db import export
from harmmed_tui.db.store import Store

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
SCRIPT = Path(sys.executable).parent / "harmmed-tui"


def tmux(*args) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen(session) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def wait_for(session, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen shows:\n{screen(session)}")


@pytest.fixture
def session(tmp_path):
    name = f"harmmed-{uuid.uuid4().hex[:8]}"
    env = {"HARMMED_DB": tmp_path / "runs.db", "XDG_CONFIG_HOME": tmp_path / "config", "HF_HUB_OFFLINE": 1}
    command = " ".join(f"{k}={v}" for k, v in env.items()) + f" {SCRIPT} --no-mouse"
    tmux("new-session", "-d", "-s", name, "-x", "100", "-y", "30", "-c", str(tmp_path), command)
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_keys_run_the_default_and_export_a_table(session, tmp_path):
    assert SCRIPT.exists() and os.access(SCRIPT, os.X_OK)
    wait_for(session, "mean TE")  # the Runs screen of an empty database
    tmux("send-keys", "-t", session, "x")  # run the preselected organism and built-in pairs
    shown = wait_for(session, "run 1 (done, default)")
    assert "layer" in shown and "mlp" in shown
    tmux("send-keys", "-t", session, "e")
    wait_for(session, "Export run 1")
    tmux("send-keys", "-t", session, "Tab", "Tab", "Tab", "Enter")  # level, format, aggregate: defaults
    wait_for(session, "wrote")
    out = tmp_path / "run1.csv"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(export.effect_rows(Store(tmp_path / "runs.db"), 1, "layer")) > 0
    tmux("send-keys", "-t", session, "q")
    deadline = time.monotonic() + 20
    while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"q did not quit; the screen shows:\n{screen(session)}"
        time.sleep(0.2)
