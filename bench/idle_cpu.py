"""The explorer idle: the CPU the app uses with a finished run open in Explore (its store watcher, one pragma
a second, and nothing redrawn), against the target of 3% of a core; and, as the baseline in the same run, the
same app idle on the Runs screen.

    python bench/idle_cpu.py [--seconds 20]

It drives the installed `harmmed-tui` in tmux at 80x24 (as a user over SSH sees it) on a stored run of the
embedded model, and reads the process's CPU time from the OS before and after a quiet spell."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store

SCRIPT = Path(sys.executable).parent / "harmmed-tui"
TARGET = 3.0  # % of one core


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def shown(session: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in tmux("capture-pane", "-t", session, "-p"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{text!r} never appeared:\n{tmux('capture-pane', '-t', session, '-p')}")
        time.sleep(0.2)


def app_process(session: str) -> psutil.Process:
    """The app's python process under the tmux pane (the shell may exec it, or run it as a child)."""
    pane = psutil.Process(int(tmux("display", "-p", "-t", session, "#{pane_pid}").strip()))
    for p in [pane, *pane.children(recursive=True)]:
        if "harmmed-tui" in " ".join(p.cmdline()):
            return p
    raise SystemExit("the app's process was not found")


def cpu_percent(process: psutil.Process, seconds: float) -> float:
    """The process's CPU time over a quiet spell, as % of one core (its threads together)."""
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return 100 * ((after.user - before.user) + (after.system - before.system)) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each quiet spell")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("needs tmux")
    root = Path(tempfile.mkdtemp(prefix="harmmed-idle-"))
    with Store(root / "runs.db") as store:
        execute(RunSpec(max_pairs=3, modules=("resid", "attn", "mlp", "neuron")), store)
    session = f"idle-{uuid.uuid4().hex[:8]}"
    env = {"HARMMED_DB": root / "runs.db", "XDG_CONFIG_HOME": root, "HF_HUB_OFFLINE": 1, "TERM": "xterm"}
    command = " ".join(f"{k}={v}" for k, v in env.items()) + f" {SCRIPT} --no-mouse"
    tmux("new-session", "-d", "-s", session, "-x", "80", "-y", "24", "-c", str(root), command)
    try:
        shown(session, "mean TE")  # (Runs, listing the run)
        process = app_process(session)
        time.sleep(5)  # the engine's warm-up import ends
        runs = cpu_percent(process, args.seconds)
        tmux("send-keys", "-t", session, "Enter")
        shown(session, "IE/TE by layer")
        time.sleep(2)
        explore = cpu_percent(process, args.seconds)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    print(f"idle on Runs (baseline): {runs:.2f}% of a core")
    print(f"idle in Explore on a finished run: {explore:.2f}% of a core (target < {TARGET}%)")
    print(f"ratio Explore / Runs: {explore / runs:.2f}x" if runs else "ratio: Runs used no CPU")
    print("met" if explore < TARGET else "NOT met")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
