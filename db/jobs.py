"""Jobs in progress, as every process that opens the database sees them.

A run, a resume, a gate curve or a study registers a job before it loads its model, says what it is doing
(its stage, and done/total where the work is countable), and removes the job when it ends. The explorer
lists the jobs of every process (a CLI run in another shell is in Runs within a refresh, long before its run
row exists) and asks one to stop by setting its cancel flag, which the job reads between batches."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

from harmmed_tui.db.store import HOST, Store

WRITE_EVERY_S = 0.5  # progress is written, and the cancel flag read, at most this often


class Job:
    """This process's job, while a `with` block (`Job.open`) runs it. Use it from the store's thread."""

    def __init__(self, store: Store, job_id: int):
        self.store, self.id = store, job_id
        self._written = self._read = 0.0
        self._cancel = False
        self.cancelled_by: str | None = None  # who asked it to stop: `process 123 on host`, or this one
        self._first: int | None = None  # done at this stage's first report
        self._text, self._started = "starting", time.time()
        # this process's own listeners (the CLI's progress line): a Heard at each stage and report
        self.heard: list = []

    @classmethod
    @contextmanager
    def open(cls, store: Store, kind: str, model: str, run_id: int | None = None):
        store.check_writable()
        now = time.time()
        with store.db.conn:
            cur = store.db.execute(
                "INSERT INTO jobs (kind, model, run_id, pid, host, heartbeat, stage, stage_started, db_file) "
                "VALUES (?, ?, ?, ?, ?, ?, 'starting', ?, ?)",
                [kind, model, run_id, os.getpid(), HOST, now, now, store.file_id],
            )
        job = cls(store, cur.lastrowid)
        try:
            with store.renewing(
                "UPDATE jobs SET heartbeat = ? WHERE id = ? AND pid = ? AND host = ?", job.id
            ):
                yield job
        finally:
            with store.db.conn:
                store.db.execute("DELETE FROM jobs WHERE id = ?", [job.id])

    def stage(self, text: str, total: int | None = None) -> None:
        """A new stage: `total` where its work is countable (then `progress` counts it)."""
        self._first, self._text, self._started = None, text, time.time()
        self._tell(0 if total else None, total)
        self._write(
            "stage = ?, done = ?, total = ?, first_done = NULL, stage_started = ?",
            text,
            0 if total else None,
            total,
            self._started,
        )

    def progress(self, done: int, total: int) -> None:
        first = self._first is None
        if first:
            self._first = done
        self._tell(done, total)
        if first:
            self._write("done = ?, total = ?, first_done = ?", done, total, done)
        elif done >= total or time.monotonic() - self._written >= WRITE_EVERY_S:
            self._write("done = ?, total = ?", done, total)

    def _tell(self, done: int | None, total: int | None) -> None:
        elapsed = time.time() - self._started
        heard = Heard(self._text, done, total, elapsed, remaining(elapsed, self._first, done, total))
        for listener in self.heard:
            listener(heard)

    def attach(self, run_id: int) -> None:
        """The job's run exists now (a new run, once its model loaded and its plan checked)."""
        self._write("run_id = ?", run_id)

    def cancelled(self) -> bool:
        """Whether any process asked this job to stop (read at most every WRITE_EVERY_S)."""
        now = time.monotonic()
        if not self._cancel and now - self._read >= WRITE_EVERY_S:
            self._read = now
            sql = "SELECT cancel, cancelled_by FROM jobs WHERE id = ?"
            row = self.store.db.execute(sql, [self.id]).fetchone()
            self._cancel = bool(row and row[0])
            self.cancelled_by = row and row[1]
        return self._cancel

    def _write(self, assignments: str, *values) -> None:
        self._written = time.monotonic()
        with self.store.db.conn:
            self.store.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values, self.id])


@dataclass(frozen=True)
class Heard:
    """A job's stage as this process's listeners hear it: the CLI's progress line and its cost estimate."""

    stage: str
    done: int | None  # countable progress (None while the stage is not countable)
    total: int | None
    elapsed_s: float  # since the stage began
    left_s: float | None  # the ETA (remaining), once work was counted in this stage


def remaining(elapsed: float, first_done: int | None, done: int | None, total: int | None) -> float | None:
    """A stage's ETA, the one every surface shows (the CLI, Runs, Explore): its elapsed time over the work
    counted since its first report (a resume starts part-way), times the work left; None until work is
    counted, or once it is all done."""
    if not total or done is None or done >= total:
        return None
    counted = done - (first_done or 0)
    return elapsed / counted * (total - done) if counted > 0 else None


def live(store: Store) -> list[dict]:
    """Every job in progress whose process is alive, newest first, each with `text`: what it is doing."""
    rows = store.db.query("SELECT * FROM jobs ORDER BY id DESC")
    return [{**job, "text": describe(job)} for job in rows if store.alive(job)]


def of_run(store: Store, run_id: int) -> dict | None:
    """The live job writing a run, if any."""
    return next((j for j in live(store) if j["run_id"] == run_id), None)


def describe(job: dict, now: float | None = None) -> str:
    """A job's stage as the screens and the CLI show it: `patching 120/400, 1:05 left`, `loading the model
    12 s`; `cancelling` once asked to stop."""
    if job["cancel"]:
        return "cancelling"
    elapsed = (now or time.time()) - job["stage_started"]
    done, total = job["done"], job["total"]
    if not total:
        return f"{job['stage']} {duration(elapsed)}"
    text = f"{job['stage']} {done:,}/{total:,}"
    if (left := remaining(elapsed, job["first_done"], done, total)) is not None:
        text += f", {duration(left)} left"
    return text


def request_cancel(store: Store, job_id: int) -> None:
    """Ask a job (of any process) to stop after its current batch; what it stored stays and resumes. The job
    learns who asked (this process)."""
    with store.db.conn:
        store.db.execute(
            "UPDATE jobs SET cancel = 1, cancelled_by = ? WHERE id = ?",
            [f"process {os.getpid()} on {HOST}", job_id],
        )


def duration(seconds: float) -> str:
    """`12 s`, `1:05`, `1:02:03`."""
    s = max(1, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
