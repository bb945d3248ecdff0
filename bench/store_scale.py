"""The store at scale: insert a synthetic run of about 10^6 neuron rows (GPT-2-small shape: 12 layers x 3072
neurons, 28 pairs, plus a layer x module x position grid) the way a run streams them, then time each query
the explorer issues on it.

Targets: every drill-down query answers in under 100 ms on that table (issue 3); the read-only commands
(`runs`, `show`, `report`, `export`) answer in under 0.5 s on a store of 4M rows (`--pairs 110`), printed
beside the whole-file quick_check every open ran before (the baseline, measured on the same file); the HTML
report within 3x the markdown report's time (issue 29).
Run: python bench/store_scale.py [--pairs 28]
"""

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from harmmed_tui.db import export, queries
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.cli import main as cli

LAYERS, NEURONS, POSITIONS, BATCH = 12, 3072, 26, 8192


def synthetic_rows(pair: int, rng: random.Random):
    last = POSITIONS - 1
    for layer in range(LAYERS):
        for module in ("resid", "attn", "mlp"):
            for position in [*range(POSITIONS), -1]:
                yield dict(
                    pair=pair,
                    layer=layer,
                    module=module,
                    position=position,
                    neuron=-1,
                    width=1,
                    method="exact",
                    token="t",
                    ie=rng.gauss(0, 1),
                )
        for neuron in range(NEURONS):
            yield dict(
                pair=pair,
                layer=layer,
                module="neuron",
                position=last,
                neuron=neuron,
                width=1,
                method="exact",
                token="t",
                ie=rng.gauss(0, 0.05) * (10 if neuron % 97 == 0 else 1),
            )


def timed(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=28)
    args = ap.parse_args()
    path = Path(tempfile.mkdtemp(prefix="harmmed-bench-")) / "runs.db"
    store = Store(path)
    run_id = store.create_run("synthetic", "{}")
    tokens = json.dumps(["t"] * POSITIONS)
    pairs = [
        dict(
            pair=p,
            pair_id=f"p{p}",
            treatment="a",
            control="b",
            treatment_tokens=tokens,
            control_tokens=tokens,
        )
        for p in range(args.pairs)
    ]
    store.start_run(run_id, {"method": "exact", "n_layers": LAYERS, "d_mlp": NEURONS}, pairs, 0)
    rng = random.Random(0)
    n, start = 0, time.perf_counter()
    for p in range(args.pairs):
        store.set_pair_totals(run_id, p, 1.0, -1.0, 2.0)
        batch = []
        for row in synthetic_rows(p, rng):
            batch.append(row)
            if len(batch) == BATCH:
                store.add_effects(run_id, batch)
                n, batch = n + len(batch), []
        store.add_effects(run_id, batch)
        n += len(batch)
    insert_s = time.perf_counter() - start
    summary_s = timed(lambda: store.set_status(run_id, "done"), repeat=1)
    size = path.stat().st_size / 2**20
    print(f"inserted {n:,} rows in {insert_s:.1f} s: {n / insert_s:,.0f} rows/s ({size:.0f} MiB on disk)")
    print(f"the run's end (status, row count, neuron summary): {summary_s:.1f} s, once")

    checks = {
        "runs list (Runs screen)": lambda: store.runs(),
        "layers pane: IE per layer x module": lambda: queries.layer_effects(store, View(run_id), "exact"),
        "layers pane, one pair": lambda: queries.layer_effects(store, View(run_id, pair=3), "exact"),
        "module x position grid of a layer": lambda: queries.module_grid(
            store, View(run_id, "modules", 7), "exact"
        ),
        "neurons of a layer by |IE|, page 1": lambda: queries.top_neurons(
            store, View(run_id, "neurons", 11), "exact"
        ),
        "neurons of a layer by |IE|, page 6": lambda: queries.top_neurons(
            store, View(run_id, "neurons", 11, page=5), "exact"
        ),
        "neurons of a layer, one pair": lambda: queries.top_neurons(
            store, View(run_id, "neurons", 11, pair=3), "exact"
        ),
        "top neurons across layers, page 1": lambda: queries.top_neurons(store, View(run_id, "top"), "exact"),
        "top neurons across layers, one pair": lambda: queries.top_neurons(
            store, View(run_id, "top", pair=3), "exact"
        ),
        "neurons recurring across pairs": lambda: export.recurrence(store, run_id, "exact"),
    }
    worst = 0.0
    for name, fn in checks.items():
        s = timed(fn)
        worst = max(worst, s)
        print(f"{name:42s} {s * 1e3:7.1f} ms")
    print(f"slowest drill-down query: {worst * 1e3:.1f} ms (target < 100 ms)")
    # not a drill-down: read once per gate check, whose ablations cost far more
    gate_s = timed(
        lambda: queries.gate_neurons(store, run_id, 20, "exact", "positive", list(range(LAYERS))), repeat=3
    )
    print(f"{'top 20 neurons of the whole run (gate check)':42s} {gate_s * 1e3:7.1f} ms")
    store.close()
    read_only_commands(path, run_id)


def read_only_commands(path: Path, run_id: int) -> None:
    """Each read-only command, in this process (imports warm), against what the whole-file check cost."""
    with Store(path, create=False) as store:
        check_s = timed(store.check_integrity, repeat=1)
    print(f"baseline: the whole-file quick_check every open ran before: {check_s:.2f} s")
    commands = {
        "runs": ["runs"],
        "show": ["show", str(run_id)],
        "report": ["report", str(run_id)],
        "export --level layer --aggregate": ["export", str(run_id), "--aggregate", "-o", os.devnull],
    }
    took = {}
    for name, argv in commands.items():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            s = took[name] = timed(lambda argv=argv: cli([*argv, "--db", str(path)]), repeat=3)
        print(f"{name:42s} {s:6.2f} s (target < 0.5 s; {check_s / s:.1f}x less than the check alone)")
    # the HTML report: its first rendering draws the figures (matplotlib), later ones read them from the
    # cache by content (db.figures.cached_svg): within 3x the markdown report
    out = path.with_name("report.html")
    argv = ["report", str(run_id), "--format", "html", "-o", str(out), "--db", str(path)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        drawn_s = timed(lambda: cli(argv), repeat=1)
        cached_s = timed(lambda: cli(argv), repeat=3)
    markdown = took["report"]
    print(
        f"{'report --format html, figures drawn':42s} {drawn_s:6.2f} s ({drawn_s / markdown:.0f}x the markdown report)"
    )
    print(
        f"{'report --format html, figures cached':42s} {cached_s:6.2f} s ({cached_s / markdown:.1f}x; target < 3x)"
    )


if __name__ == "__main__":
    main()
