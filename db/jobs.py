"""Jobs in progress, as every process that opens the database sees them.

A run, a resume, a gate curve or a study registers a job before it loads its model, says what it is doing
(its stage, and done/total where the work is countable), and removes the job when it ends. The explorer
lists the jobs of every process (a CLI run in another shell is in Runs within a refresh, long before its run
row exists) and asks one to stop by setting its cancel flag, which the job reads between batches."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

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
        self._text = "starting"
        # this process's own listeners (the CLI's progress line): (stage, done, total) at each stage and report
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
        self._first, self._text = None, text
        self._tell(0 if total else None, total)
        self._write(
            "stage = ?, done = ?, total = ?, first_done = NULL, stage_started = ?",
            text,
            0 if total else None,
            total,
            time.time(),
        )

    def progress(self, done: int, total: int) -> None:
        self._tell(done, total)
        if self._first is None:
            self._first = done
            self._write("done = ?, total = ?, first_done = ?", done, total, done)
        elif done >= total or time.monotonic() - self._written >= WRITE_EVERY_S:
            self._write("done = ?, total = ?", done, total)

    def _tell(self, done: int | None, total: int | None) -> None:
        for listener in self.heard:
            listener(self._text, done, total)

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
        return f"{job['stage']} {_duration(elapsed)}"
    text = f"{job['stage']} {done:,}/{total:,}"
    if (counted := done - (job["first_done"] or 0)) > 0 and done < total:
        text += f", {_duration(elapsed / counted * (total - done))} left"
    return text


def request_cancel(store: Store, job_id: int) -> None:
    """Ask a job (of any process) to stop after its current batch; what it stored stays and resumes. The job
    learns who asked (this process)."""
    with store.db.conn:
        store.db.execute(
            "UPDATE jobs SET cancel = 1, cancelled_by = ? WHERE id = ?",
            [f"process {os.getpid()} on {HOST}", job_id],
        )


def _duration(seconds: float) -> str:
    """`12 s`, `1:05`, `1:02:03`."""
    s = max(1, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
