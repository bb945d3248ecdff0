"""The explorer never silent or stale while a job runs, whichever process runs it: Runs lists a run still
loading its model, the status line says every job's stage, Explore follows a run another process writes,
and `c` cancels that process's run."""

import asyncio

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import jobs
from harmmed_tui.db.jobs import Job
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.explore_screen import ExploreScreen
from tests.db.test_jobs import LONG, cli_run, wait_for_job
from tests.tui.pilot import press

SIZE = (80, 24)


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def row(table, index: int) -> list[str]:
    return [str(c) for c in table.get_row_at(index)]


async def test_a_job_still_loading_its_model_is_a_row_and_a_status_line(tmp_path):
    db = tmp_path / "runs.db"
    with Store(db) as store:
        execute(RunSpec(max_pairs=1, modules=("resid",), layers="-1"), store)
    with Store(db) as other, Job.open(other, "run", "/models/SmolLM2-135M-Instruct.Q4_1.gguf") as job:
        job.stage("loading the model")
        app = HarmmedApp(str(db))
        async with app.run_test(size=SIZE) as pilot:
            table = app.screen.query_one("#runs")
            assert row(table, 0)[0] == "…" and row(table, 0)[1].startswith("loading the model ")
            assert row(table, 0)[2] == "SmolLM2-135M-Instruct.Q4_1.gguf"
            assert row(table, 1)[:2] == ["1", "done"]
            line = text(app, "#jobs")
            assert line.startswith("▶ new run (SmolLM2-135M-Instruct.Q4_1.gguf): loading the model")
            await press(pilot, "enter")  # nothing to open yet: said so
            assert "still loading its model" in str(list(app._notifications)[-1].message)
            job.stage("judging answers", 8)
            job.progress(3, 8)
            await pilot.pause(1.3)
            assert row(table, 0)[1].startswith("judging answers 3/8") and "judging answers 3/8" in text(
                app, "#jobs"
            )
            await press(pilot, "c")  # cancels the job under the cursor, another process's
            assert "cancelling new run (SmolLM2-135M-Instruct.Q4_1.gguf)" in str(
                list(app._notifications)[-1].message
            )
            await asyncio.sleep(0.6)
            assert job.cancelled()
            await pilot.pause(1.3)
            assert row(table, 0)[1] == "cancelling"
    async with HarmmedApp(str(db)).run_test(size=SIZE) as pilot:  # the job ended: no row, no status line
        assert not pilot.app.screen.query_one("#jobs").display
        assert row(pilot.app.screen.query_one("#runs"), 0)[:2] == ["1", "done"]


async def test_explore_follows_a_cli_run_and_c_cancels_it(tmp_path):
    db = tmp_path / "runs.db"
    process = cli_run(db, *LONG)
    try:
        job = wait_for_job(db, lambda j: j["stage"] == "patching sites" and (j["done"] or 0) > 0)
        app = HarmmedApp(str(db))
        async with app.run_test(size=SIZE) as pilot:
            table = app.screen.query_one("#runs")
            assert row(table, 0)[0] == str(job["run_id"]) and row(table, 0)[1].startswith("patching sites")
            await press(pilot, "enter")
            screen = app.screen
            assert isinstance(screen, ExploreScreen)
            assert f"run {job['run_id']} (running" in text(app, "#crumb")
            assert f"▶ run {job['run_id']} (default): patching sites" in text(app, "#jobs")
            first = screen.pane.table.row_count
            rows_before = app.store.run(job["run_id"])
            await press(pilot, "c")
            assert f"cancelling run {job['run_id']} (default)" in str(list(app._notifications)[-1].message)
            assert process.wait(timeout=120) == 3  # the CLI process stopped at its next batch: cancelled
            await pilot.pause(1.5)
            # not stale: the header, the status line and the table follow what the other process stored
            assert f"run {job['run_id']} (cancelled" in text(app, "#crumb")
            assert not screen.query_one("#jobs").display
            assert screen.pane.table.row_count >= first > 0
            assert "pairs, TE" in text(app, "#summary") and rows_before["status"] == "running"
    finally:
        process.kill()
    with Store(db) as store:
        assert store.run(job["run_id"])["status"] == "cancelled" and jobs.live(store) == []
