"""Jobs in progress as every process sees them (db.jobs): a CLI run is listed while its model loads, its stage
and ETA as it patches, and another process cancels it (between batches, or before it computes anything)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harmmed_tui.analysis.errors import JobCancelled
from harmmed_tui.analysis.gate import GateSpec
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import jobs, queries
from harmmed_tui.db.jobs import Job
from harmmed_tui.db.runner import check_gate, execute
from harmmed_tui.db.store import HOST, Store

SCRIPT = Path(sys.executable).parent / "harmmed-tui"
# a run of the embedded model long enough (about a minute on 2 cores) to be seen and cancelled part-way
LONG = [
    "--max-pairs",
    "40",
    "--modules",
    "resid,attn,mlp,neuron",
    "--layers",
    "all",
    "--neuron-positions",
    "all",
]


def cli_run(db: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [str(SCRIPT), "run", "--db", str(db), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_job(db: Path, ready, timeout: float = 120) -> dict:
    """The first live job that `ready(job)` accepts, read as another process would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with Store(db) as store:
                found = [j for j in jobs.live(store) if ready(j)]
            if found:
                return found[0]
        time.sleep(0.05)
    raise AssertionError("no such job appeared")


def test_a_cli_run_is_listed_while_loading_then_cancelled_part_way_by_another_process(tmp_path):
    db = tmp_path / "runs.db"
    process = cli_run(db, *LONG)
    try:
        loading = wait_for_job(db, lambda j: j["run_id"] is None)
        assert loading["kind"] == "run" and loading["pid"] == process.pid
        with Store(db) as store:  # in the history before its run row exists: a `…` row with its stage
            key, cells = queries.history(store)[0]
        assert key == f"job:{loading['id']}" and cells[0] == "…" and cells[2] == "default"
        assert cells[1].split()[0] in ("starting", "loading", "judging")
        # (its known sites count as done at once; its ETA comes with the first computed ones)
        patching = wait_for_job(db, lambda j: j["stage"] == "patching sites" and " left" in j["text"])
        with Store(db) as store:
            _, cells = queries.history(store)[0]
            assert cells[0] == str(patching["run_id"]) and cells[1].startswith("patching sites ")
            assert " left" in cells[1]  # an ETA, once the work is countable
            jobs.request_cancel(store, patching["id"])
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    # not 0, no summary: `run && export` must not export part of a run; stderr says who stopped it and where
    assert process.returncode == 3 and out == b""
    err = " ".join(err.decode().split())
    with Store(db) as store:
        run = store.run(patching["run_id"])
        assert run["status"] == "cancelled" and 0 < run["n_rows"] < run["n_sites"]
        said = f"run {run['id']} cancelled by process {os.getpid()} on {HOST} after {run['n_rows']:,} of {run['n_sites']:,} sites"
        assert said in err, err
        assert jobs.live(store) == [] and store.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_cancel_while_the_model_loads_stores_nothing(tmp_path):
    db = tmp_path / "runs.db"
    process = cli_run(db, "--max-pairs", "2")
    try:
        loading = wait_for_job(db, lambda j: j["run_id"] is None)
        with Store(db) as store:
            jobs.request_cancel(store, loading["id"])
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 3
    assert "cancelled before the run started computing: nothing was stored" in " ".join(err.decode().split())
    with Store(db) as store:
        assert store.runs() == [] and jobs.live(store) == []


def test_a_resume_cancelled_before_it_computes_leaves_the_run_as_it_was(tmp_path):
    spec = RunSpec(max_pairs=2, modules=("resid",), layers="-1")
    with Store(tmp_path / "runs.db") as store:
        calls = iter(range(10**9))
        run_id = execute(spec, store, cancelled=lambda: next(calls) >= 2).run_id
        before = store.run(run_id)
        assert before["status"] == "cancelled"
        with pytest.raises(JobCancelled, match="the run is as it was"):
            execute(spec, store, run_id, cancelled=lambda: True)
        after = store.run(run_id)
        assert (after["status"], after["n_rows"], after["error"]) == ("cancelled", before["n_rows"], None)


def test_a_cancel_after_the_last_batch_leaves_a_done_run(tmp_path):
    """A cancel that arrives once every site is stored (quitting at the very end) does not make a complete
    run `cancelled` (whose resume would load the model to compute nothing)."""
    finished = []
    with Store(tmp_path / "runs.db") as store:
        outcome = execute(
            RunSpec(max_pairs=2, modules=("resid", "mlp"), layers="-1"),
            store,
            progress=lambda done, total: finished.append(done == total),
            cancelled=lambda: bool(finished and finished[-1]),
        )
        assert finished[-1] and outcome.status == "done" and store.run(outcome.run_id)["status"] == "done"


def test_a_gate_curve_is_a_job_that_any_process_cancels_storing_nothing(stored_db):
    with Store(stored_db) as store, Store(stored_db) as other:

        def cancel_it(done, total):
            assert [j["kind"] for j in jobs.live(other)] == ["gate"]
            assert jobs.live(other)[0]["stage"] == "gate curve: arms"
            jobs.request_cancel(other, jobs.live(other)[0]["id"])

        n = len(store.gate_checks(1))
        with pytest.raises(JobCancelled, match="gate curve of run 1 cancelled: nothing was stored"):
            check_gate(store, 1, GateSpec(tops=(1, 5), seeds=1, max_new_tokens=4), progress=cancel_it)
        assert len(store.gate_checks(1)) == n and jobs.live(store) == []


def test_a_dead_process_job_is_not_listed_and_is_cleared(tmp_path):
    db = tmp_path / "runs.db"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    with Store(db) as store, Job.open(store, "run", "m") as job:
        store.db.execute("UPDATE jobs SET pid = ? WHERE id = ?", [int(dead.stdout), job.id])
        store.db.conn.commit()
        assert jobs.live(store) == []
        with Store(db) as reopened:  # opening a database clears dead writers' jobs
            assert reopened.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0


def test_what_a_job_says():
    job = dict(stage="patching sites", done=None, total=None, first_done=None, stage_started=100.0, cancel=0)
    assert jobs.describe(job, now=112.4) == "patching sites 12 s"
    job.update(done=300, total=1200, first_done=100)
    # 200 sites in 20 s counted from the stage's first report (a resume starts part-way): 900 more in 1:30
    assert jobs.describe(job, now=120.0) == "patching sites 300/1,200, 1:30 left"
    assert jobs.describe({**job, "done": 1200}, now=120.0) == "patching sites 1,200/1,200"
    assert jobs.describe({**job, "cancel": 1}, now=120.0) == "cancelling"


def test_the_cli_hears_every_stage_with_its_count_not_patching_0_of_unknown(tmp_path):
    """While a run judges its pairs' answers, its progress line says so, with a count: the stages heard in
    order, each counted where its work is."""
    heard: list[tuple] = []
    with Store(tmp_path / "runs.db") as store:
        outcome = execute(
            RunSpec(max_pairs=3, layers="-1", positions="last"),
            store,
            on_stage=lambda h: heard.append((h.stage, h.done, h.total)),
        )
    stages = list(dict.fromkeys(stage for stage, _, _ in heard))
    assert stages == ["loading the model", "loading the judge", "judging answers", "patching sites"]
    assert ("judging answers", 3, 3) in heard
    assert heard[-1] == ("patching sites", outcome.sites, outcome.sites)
