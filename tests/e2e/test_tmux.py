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

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from harmmed_tui.tui.setup_screen import SetupScreen

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


def start(tmp_path, width: int = 100, height: int = 30, term: str = "xterm-256color") -> str:
    name = f"harmmed-{uuid.uuid4().hex[:8]}"
    env = {
        "HARMMED_DB": tmp_path / "runs.db",
        "XDG_CONFIG_HOME": tmp_path / "config",
        "HF_HUB_OFFLINE": 1,
        "TERM": term,
    }
    command = " ".join(f"{k}={v}" for k, v in env.items()) + f" {SCRIPT} --no-mouse"
    tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), "-c", str(tmp_path), command)
    return name


def typed(session, *keys: str) -> None:
    """Keys at a person's pace: a burst can outrun the focus moves of the keys before it."""
    for key in keys:
        tmux("send-keys", "-t", session, key)
        time.sleep(0.15)


def ended(session, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def quit_and_cancel(name: str) -> float:
    """q while a job runs, then yes to cancel it and quit: the seconds from the answer to the app's end."""
    tmux("send-keys", "-t", name, "q")
    wait_for(name, "Cancel it and quit?")
    asked = time.monotonic()
    tmux("send-keys", "-t", name, "y")
    assert ended(name, 20), f"the app did not quit; the screen shows:\n{screen(name)}"
    return time.monotonic() - asked


@pytest.fixture
def session(tmp_path):
    name = start(tmp_path)
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_keys_run_the_default_and_export_a_table(session, tmp_path):
    assert SCRIPT.exists() and os.access(SCRIPT, os.X_OK)
    wait_for(session, "mean TE")  # the Runs screen of an empty database
    time.sleep(1)  # (a key sent while the terminal still answers Textual's start-up queries can be lost)
    tmux("send-keys", "-t", session, "x")  # run the preselected organism and built-in pairs
    shown = wait_for(session, "run 1 (done, default)")
    assert "layer" in shown and "mlp" in shown
    tmux("send-keys", "-t", session, "e")
    wait_for(session, "Export run 1")
    tmux("send-keys", "-t", session, "Tab", "Tab", "Tab", "Enter")  # level, format, aggregate: defaults
    wait_for(session, "wrote")
    out = tmp_path / "run1-layer.csv"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(export.effect_rows(Store(tmp_path / "runs.db"), 1, "layer")) > 0
    tmux("send-keys", "-t", session, "q")
    assert ended(session, 20), f"q did not quit; the screen shows:\n{screen(session)}"


def test_quit_during_a_run_asks_then_cancels_it_and_exits_at_once(tmp_path):
    """At 80x24 in a 16-colour terminal: a long run (every neuron at every position of 48 prompt-set pairs) is
    going; q asks,
    y cancels and quits within a second or two, and the run is left cancelled, its rows kept."""
    name = start(tmp_path, 80, 24, "xterm")
    try:
        wait_for(name, "No runs yet")
        time.sleep(1)
        tmux("send-keys", "-t", name, "n")
        wait_for(name, "neuron positions      last")
        time.sleep(1)  # Setup's first check of its preselection settles
        fields = [f for f, _ in SetupScreen.FIELDS]
        # prompt sets: the prompts differ from their first token on, so no position is known in advance
        # (minimal pairs share all but their last tokens: a run of them ends within seconds)
        typed(name, *["Tab"] * fields.index("harmful"), "builtin:advbench", "Tab", "builtin:self_instruct")
        wait_for(name, "builtin:self_instruct")
        typed(name, *["Tab"] * (fields.index("max_pairs") - fields.index("harmless")), "C-u", "48")
        wait_for(name, "max pairs             48")
        typed(name, *["Tab"] * (fields.index("neuron_positions") - fields.index("max_pairs")), "C-u")
        wait_for(name, "no positions given")  # the emptied field's check, and its line, settle first
        typed(name, "all")
        wait_for(name, "neuron positions      all")
        tmux("send-keys", "-t", name, "C-r")
        # streaming, in Explore (on Setup, whose preview also counts sites, q is a letter typed in a field)
        wait_for(name, "run 1 (running")
        quit_s = quit_and_cancel(name)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    with Store(tmp_path / "runs.db") as store:
        (run,) = store.runs()
        assert run["status"] == "cancelled" and 0 < run["n_rows"] < run["n_sites"]
    assert quit_s < 5, quit_s


def test_delete_asks_first_and_no_keeps_the_run(tmp_path):
    with Store(tmp_path / "runs.db") as store:
        execute(RunSpec(max_pairs=1, layers="0"), store)
        execute(RunSpec(max_pairs=1, layers="0"), store)
    name = start(tmp_path, 80, 24)
    try:
        wait_for(name, "mean TE")
        time.sleep(1)
        tmux("send-keys", "-t", name, "d")  # on run 2, the newest
        wait_for(name, "Delete run 2")
        tmux("send-keys", "-t", name, "n")
        time.sleep(0.5)
        with Store(tmp_path / "runs.db") as store:
            assert [r["id"] for r in store.runs()] == [2, 1]
        tmux("send-keys", "-t", name, "d")
        wait_for(name, "Delete run 2")
        tmux("send-keys", "-t", name, "y")
        wait_for(name, "deleted run 2")
        with Store(tmp_path / "runs.db") as store:
            assert [r["id"] for r in store.runs()] == [1]
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_a_cli_run_shows_while_it_loads_is_followed_and_c_cancels_it(tmp_path):
    """Items 2-4 of the explorer on real work, at 80x24 in a 16-colour terminal: a run started by a CLI in
    another shell is a `…` row with its stage before its run row exists, then its run with `patching sites
    N/M, m:ss left`; Explore on it follows it (the status line), `c` there cancels the CLI's run, and the
    header says so at once, the table keeping what was stored."""
    from tests.db.test_jobs import LONG, cli_run

    name = start(tmp_path, 80, 24, "xterm")
    process = None
    try:
        wait_for(name, "No runs yet")
        process = cli_run(tmp_path / "runs.db", *LONG)
        deadline = time.monotonic() + 60
        while not any(s in (shown := screen(name)) for s in ("loading the model", "judging answers")):
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert "…" in shown and "▶ new run (default):" in shown
        wait_for(name, "patching sites")
        shown = wait_for(name, " left")
        tmux("send-keys", "-t", name, "Enter")
        shown = wait_for(name, "run 1 (running, default)")
        assert "▶ run 1 (default): patching sites" in shown
        tmux("send-keys", "-t", name, "c")
        wait_for(name, "cancelling run 1 (default)")
        assert process.wait(timeout=60) == 3  # cancelled: not 0
        shown = wait_for(name, "run 1 (cancelled, default)", timeout=10)
        assert "layer" in shown
        # the status line goes at the watcher's next tick: the run's status is committed before its job ends
        deadline = time.monotonic() + 5
        while "▶" in (shown := screen(name)):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        if process:
            process.kill()
    with Store(tmp_path / "runs.db") as store:
        (run,) = store.runs()
        assert run["status"] == "cancelled" and 0 < run["n_rows"] < run["n_sites"]
