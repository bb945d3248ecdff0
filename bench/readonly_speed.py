"""Read-only commands (`runs`, `show`, `export`, `delete`) against `python -c "import sqlite_utils"`.

Target (issue 10): each under 0.5 s and 60 MiB peak RSS (median of 5, 2 cores); they must not import torch
or transformers. Run: python bench/readonly_speed.py [--repeat 5]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall seconds and median peak RSS (MiB) of a command, each run in a fresh process."""
    seconds, mib = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds.append(time.perf_counter() - start)
        mib.append(usage.ru_maxrss / 1024)
        assert os.waitstatus_to_exitcode(status) == 0, argv
    return statistics.median(seconds), statistics.median(mib)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tool = shutil.which("harmmed-tui", path=str(Path(sys.executable).parent)) or "harmmed-tui"
    work = Path(tempfile.mkdtemp(prefix="harmmed-bench-"))
    db = str(work / "runs.db")
    setup = [
        tool,
        "run",
        "--db",
        db,
        "--model",
        "default",
        "--max-pairs",
        "4",
        "--modules",
        "resid,attn,mlp,neuron",
    ]
    subprocess.run(setup, check=True, capture_output=True)
    subprocess.run(setup, check=True, capture_output=True)  # run 2, for `delete`
    base_s, base_mib = measure([sys.executable, "-c", "import sqlite_utils"], args.repeat)
    print(f"baseline  python -c 'import sqlite_utils': {base_s:.3f} s, {base_mib:.0f} MiB")
    commands = {
        "runs": ["runs"],
        "show": ["show", "1"],
        "export": ["export", "1", "--aggregate", "--format", "csv", "-o", str(work / "x.csv")],
        "export neuron": ["export", "1", "--level", "neuron", "-o", str(work / "n.csv")],
        "delete": ["delete", "2"],
    }
    print(f"{'command':<14} {'seconds':>8} {'x base':>7} {'MiB':>6} {'x base':>7}   target < 0.5 s, < 60 MiB")
    for name, argv in commands.items():
        repeat = 1 if name == "delete" else args.repeat
        s, mib = measure([tool, *argv, "--db", db], repeat)
        ok = "ok" if s < 0.5 and mib < 60 else "MISSED"
        print(f"{name:<14} {s:>8.3f} {s / base_s:>7.2f} {mib:>6.0f} {mib / base_mib:>7.2f}   {ok}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
