"""The SQLite store of runs, pairs and effect rows (sqlite-utils; one Store per thread)."""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import platformdirs
import sqlite_utils

from harmmed_tui.analysis import gate_curve
from harmmed_tui.analysis.errors import StoreError
from harmmed_tui.db.schema import MIGRATIONS, SCHEMA_VERSION, statements

STATUSES = ("running", "done", "cancelled", "failed", "interrupted")
# checked whole by every read-only command (store.reading); effects, gate_rows and neuron_summary are checked
# where read
SMALL_TABLES = ("schema_version", "runs", "pairs", "studies", "jobs", "gate_checks", "directions")

# a check's rows in the order it ran them: layer group (its direction arms last), K, pair, then the top set
# before the random ones
GATE_ROWS = """SELECT * FROM gate_rows WHERE check_id = ?
    ORDER BY CASE grp WHEN 'final' THEN 0 WHEN 'last-quarter' THEN 1 WHEN 'all' THEN 2 ELSE 3 END, k, pair, seed"""
# a run's neuron_summary rows, computed when it stops running (and again after a resume)
NEURON_SUMMARY = """
    INSERT INTO neuron_summary (run_id, method, layer, pos, neuron, width, mean_ie, n, te_sum, mean_de)
    SELECT e.run_id, e.method, e.layer, CASE WHEN e.position < 0 THEN NULL ELSE e.position - p.n END AS pos,
           e.neuron, MAX(e.width), AVG(e.ie), COUNT(*), SUM(p.te), AVG(e.de)
    FROM effects e JOIN (SELECT pair, json_array_length(control_tokens) AS n, te FROM pairs WHERE run_id = ?) p
         ON p.pair = e.pair
    WHERE e.run_id = ? AND e.module = 'neuron' GROUP BY e.method, e.layer, pos, e.neuron"""
GENERATION_KEY = ("run_id", "pair", "layer", "module", "position", "neuron")
EFFECT_COLUMNS = (
    "run_id", "pair", "module", "layer", "position", "neuron", "method", "width", "token", "ie", "de"
)  # fmt: skip


DEAD_WRITER = "the process running it ended before it finished"


def damaged(path: Path, problem: str) -> str:
    return (
        f"{path} is damaged ({problem}): nothing was read or written; restore it from a backup, or save "
        f"what is readable with: sqlite3 {path} .recover"
    )


def default_db_path() -> Path:
    """$HARMMED_DB, else runs.db in the platform's user data directory."""
    env = os.environ.get("HARMMED_DB")
    return Path(env) if env else Path(platformdirs.user_data_dir("harmmed-tui")) / "runs.db"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


HOST = socket.gethostname()
LEASE_RENEW_S = 15.0
# a writer on another host (a database on a shared disk) is taken for dead once its heartbeat is this old;
# on this host, its process id says
LEASE_EXPIRES_S = 120.0


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process its parent has not reaped (a zombie) still answers signals
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): the signal said it exists
        return True


def file_id(path: Path) -> str | None:
    """The identity of a database file (device and inode): a copy of it is another file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def writer_alive(row: dict, db_file: str | None = None) -> bool:
    """Whether the process that holds a running run (a job, a study) still does: on this host, its pid is alive
    and it writes this very file (`db_file`: a copy of the database taken while the writer lived is written by
    no one); on another host (rows without a host are this one's, from before hosts were kept), its heartbeat
    is recent."""
    if row.get("host") in (None, HOST):
        recorded = row.get("db_file")
        if recorded and db_file and recorded != db_file:
            return False
        return _pid_alive(row.get("pid"))
    return time.time() - (row.get("heartbeat") or 0) < LEASE_EXPIRES_S


def describe_writer(run: dict) -> str:
    where = "" if run.get("host") in (None, HOST) else f" on {run['host']}"
    return f"process {run.get('pid')}{where}"


def _writes(method):
    """Marks a Store method that writes: on a read-only database it is one clear error, not a crash."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        self.check_writable()
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as e:  # a full disk, a locked or vanished file: the write is undone
            raise StoreError(f"cannot write to {self.path}: {e}") from e

    return checked


class Store:
    """One connection; create one per thread. Opening migrates the schema and marks dead runs interrupted.

    `create=False` (the read-only commands) never creates a file or directory, and never writes: an empty file
    stays empty, a dead writer's run reads `interrupted` without being marked so. A database we may not write
    (the file, or its directory: WAL keeps files beside it) is opened read-only, and immutable where not even
    SQLite's shared-memory file can be made; one whose write-ahead log still holds rows an immutable open
    would not see is refused, never shown in part. A writable open runs quick_check before anything writes
    (seconds on a store of millions of rows, so the read-only commands skip it; `check_integrity` runs it on
    demand): a damaged file is one clear error, and nothing is ever written into it."""

    def __init__(self, path: str | Path | None = None, create: bool = True):
        self.path = Path(path) if path else default_db_path()
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a database file")
        if not create and not self.path.exists():
            raise StoreError(
                f"no database at {self.path}: nothing has been run there yet (runs are stored by "
                "harmmed-tui run or the explorer; --db or HARMMED_DB choose another)"
            )
        if not create and self.path.stat().st_size == 0:
            raise StoreError(f"{self.path} is an empty file: no runs are stored in it (nothing was written)")
        self.writes = create  # the read-only commands' opens write nothing, even to a writable file
        directory_writable = os.access(self.path.parent, os.W_OK) if self.path.parent.exists() else True
        self.read_only = self.path.exists() and not (os.access(self.path, os.W_OK) and directory_writable)
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # timeout= is sqlite's busy timeout: a reader waits for the writer instead of failing
            if self.read_only:
                mode = "mode=ro" if directory_writable else "immutable=1"
                if mode == "immutable=1":
                    self._refuse_unapplied_log()
                target, uri = f"{self.path.resolve().as_uri()}?{mode}", True
            else:
                target, uri = self.path, False
            self.db = sqlite_utils.Database(
                sqlite3.connect(target, uri=uri, timeout=30, check_same_thread=True)
            )
            self.db.execute("PRAGMA foreign_keys = ON")
            # WAL with synchronous=NORMAL: a killed process loses nothing committed; only a power cut can
            # drop the last transactions, never corrupt the file
            self.db.execute("PRAGMA synchronous = NORMAL")
            self._checked = False
            self._migrate()
            self.file_id = file_id(self.path)  # (the file exists once migrated)
            self._mark_interrupted()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable harmmed-tui database ({e})") from None

    def _refuse_unapplied_log(self) -> None:
        """An immutable open reads the main file only: committed rows still in a killed writer's write-ahead
        log (or a hot rollback journal) would be missing without a word."""
        for suffix in ("-wal", "-journal"):
            log = self.path.with_name(self.path.name + suffix)
            if log.is_file() and log.stat().st_size > 0:
                raise StoreError(
                    f"{self.path} has changes in {log.name} that cannot be applied in a read-only directory "
                    "(its writer ended before folding them in): the store would show only part of its runs. "
                    f"Copy {self.path.name} and {log.name} together to a writable directory and open the copy"
                )

    def check_integrity(self, table: str | None = None) -> None:
        """quick_check of the whole file, or of one table and its indexes."""
        pragma = f"PRAGMA quick_check({table})" if table else "PRAGMA quick_check(3)"
        try:
            problems = [r[0] for r in self.db.execute(pragma).fetchall()]
        except sqlite3.DatabaseError as e:  # (a page too damaged to walk)
            problems = [str(e)]
        if problems != ["ok"]:
            first = " ".join(problems[0].replace("*** in database main ***", "").split())
            raise StoreError(damaged(self.path, first[:120]))
        self._checked = self._checked or table is None

    def check_writable(self) -> None:
        """Refuse a write to a read-only database, and to a damaged one: the whole file is checked before this
        store's first write (a store only read is checked where it is read: `reading`)."""
        if self.read_only:
            raise StoreError(f"{self.path} is read-only: its runs can be listed, shown and exported only")
        if not self._checked:
            self.check_integrity()

    def check_tables(self) -> None:
        for table in SMALL_TABLES:
            self.check_integrity(table)

    @contextmanager
    def reading(self):
        """A read-only command's reads: the small tables checked at once, and a damaged page met on the way in
        the large ones (effects: millions of rows, seconds to check whole) is the same one-line error."""
        self.check_tables()
        try:
            yield self
        except sqlite3.DatabaseError as e:
            raise StoreError(damaged(self.path, str(e)[:120])) from None

    # --- schema -------------------------------------------------------------------------------
    def _version(self) -> int:
        if "schema_version" not in self.db.table_names():
            if self.db.table_names():
                raise StoreError(
                    f"{self.path} is a SQLite database of another program (no schema_version table)"
                )
            return 0
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        return row[0] if row else 0

    def _check_version(self) -> int:
        version = self._version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this harmmed-tui understands "
                f"({SCHEMA_VERSION}); upgrade harmmed-tui"
            )
        return version

    def _migrate(self) -> None:
        if self._check_version() == SCHEMA_VERSION:
            return
        if self.read_only:
            raise StoreError(
                f"{self.path} is read-only and has an older schema: make it writable to upgrade it"
            )
        self.check_writable()
        if self.db.journal_mode != "wal":
            self.db.enable_wal()
        # One transaction, taken before reading the version: a crash leaves the old schema intact, and
        # two processes opening a new database at once migrate it once (the second waits, then sees it done).
        # Foreign keys are off meanwhile, so that rebuilding a table does not cascade into its children.
        conn = self.db.conn
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._immediate():
                version = self._check_version()
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                for statement in statements("".join(MIGRATIONS[version:])):
                    conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def _immediate(self):
        """One write transaction, its lock taken before its first read: what it reads, no other writer can
        change before it commits (a migration, a claim, a summary)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def alive(self, row: dict) -> bool:
        """Whether a run's, job's or study's writer still writes this database (store.writer_alive)."""
        return writer_alive(row, self.file_id)

    def _mark_interrupted(self) -> None:
        if self.read_only or not self.writes:
            return
        rows = self.db.query("SELECT id, pid, host, heartbeat, db_file FROM runs WHERE status = 'running'")
        for run_id in [r["id"] for r in rows if not self.alive(r)]:
            self.set_status(run_id, "interrupted", error=DEAD_WRITER)
        dead = [
            r["id"]
            for r in self.db.query("SELECT id, pid, host, heartbeat, db_file FROM jobs")
            if not self.alive(r)
        ]
        if dead:
            with self.db.conn:
                self.db.execute(f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(dead))})", dead)

    # --- runs and their writers -----------------------------------------------------------------
    @_writes
    def create_run(self, model: str, spec_json: str) -> int:
        with self.db.conn:
            cur = self.db.execute(
                "INSERT INTO runs (status, model, spec, started, pid, host, heartbeat, db_file) "
                "VALUES ('running', ?, ?, ?, ?, ?, ?, ?)",
                [model, spec_json, now(), os.getpid(), HOST, time.time(), self.file_id],
            )
        return cur.lastrowid

    @_writes
    def claim(self, run_id: int) -> str:
        """Make this process the writer of a stored run (to resume it) and return its status before. One
        writer per run: a run whose writer is alive is refused; a dead writer's run is taken over. Reading
        and taking happen in one write transaction, so of two resumes at once, one is refused."""
        with self._immediate() as conn:
            run = self.run(run_id)
            if run["status"] == "done":
                raise StoreError(f"run {run_id} is already done")
            if run["status"] == "running" and run["pid"] != os.getpid():
                raise StoreError(
                    f"run {run_id} is being written by {describe_writer(run)}: wait for it to end, or cancel "
                    "it there, then resume"
                )
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, host = ?, heartbeat = ?, db_file = ?, "
                "error = NULL, finished = NULL WHERE id = ?",
                [os.getpid(), HOST, time.time(), self.file_id, run_id],
            )
        return run["status"]

    @_writes
    def release(self, run_id: int, status: str, error: str | None) -> None:
        """Give back a claimed run unchanged but for its error (a resume that could not start)."""
        with self.db.conn:
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, finished = ? WHERE id = ?",
                [status, error, now(), run_id],
            )

    @contextmanager
    def keep_alive(self, run_id: int):
        """Renew this process's heartbeat on a run while the block runs, so that a writer busy loading a model
        is never taken for dead."""
        with self.renewing("UPDATE runs SET heartbeat = ? WHERE id = ? AND pid = ? AND host = ?", run_id):
            yield

    @contextmanager
    def renewing(self, sql: str, row_id: int):
        """Run `sql` (heartbeat, id, pid, host) every LEASE_RENEW_S while the block runs, from a thread of its
        own with its own connection (this one belongs to the caller's thread)."""
        stop = threading.Event()

        def beat() -> None:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                while not stop.wait(LEASE_RENEW_S):
                    with conn:
                        conn.execute(sql, [time.time(), row_id, os.getpid(), HOST])
            except sqlite3.Error:
                pass  # the job's own writes report a database gone bad
            finally:
                conn.close()

        thread = threading.Thread(target=beat, name=f"harmmed-lease-{row_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @_writes
    def start_run(self, run_id: int, provenance: dict, pairs: list[dict], n_sites: int) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE runs SET provenance = ?, n_pairs = ?, n_sites = ?, status = 'running', pid = ?, "
                "host = ?, db_file = ?, finished = NULL, error = NULL WHERE id = ?",
                [json.dumps(provenance), len(pairs), n_sites, os.getpid(), HOST, self.file_id, run_id],
            )
            self.db["pairs"].upsert_all([{"run_id": run_id, **p} for p in pairs], pk=("run_id", "pair"))

    @_writes
    def set_status(self, run_id: int, status: str, error: str | None = None, compute_s: float | None = None):
        assert status in STATUSES
        with self.db.conn:
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, finished = CASE WHEN ? = 'running' THEN NULL ELSE ? END, "
                "compute_s = compute_s + COALESCE(?, 0), summarised = 0, "
                "n_rows = (SELECT COUNT(*) FROM effects WHERE run_id = ?) WHERE id = ?",
                [status, error, status, now(), compute_s, run_id, run_id],
            )
        if status != "running":  # after the status, in its own transaction: a full disk keeps the status
            self.summarise(run_id)

    @_writes
    def summarise(self, run_id: int) -> None:
        """Store the run's neuron sites averaged over its pairs (what the aggregate neuron panes and the gate
        ranking read)."""
        with self._immediate() as conn:  # (two summaries at once, from two processes, must not both insert)
            conn.execute("DELETE FROM neuron_summary WHERE run_id = ?", [run_id])
            conn.execute(NEURON_SUMMARY, [run_id, run_id])
            conn.execute("UPDATE runs SET summarised = 1 WHERE id = ?", [run_id])

    @_writes
    def set_pair_totals(
        self, run_id: int, pair: int, m_treatment: float, m_control: float, te: float
    ) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE pairs SET m_treatment = ?, m_control = ?, te = ? WHERE run_id = ? AND pair = ?",
                [m_treatment, m_control, te, run_id, pair],
            )

    @_writes
    def set_pair_agreement(self, run_id: int, pair: int, spearman: float | None) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE pairs SET atp_spearman = ? WHERE run_id = ? AND pair = ?", [spearman, run_id, pair]
            )

    @_writes
    def add_effects(self, run_id: int, rows: list[dict]) -> None:
        """One transaction per batch; a site computed again (a resumed atp pair) replaces its row."""
        marks = ", ".join("?" * len(EFFECT_COLUMNS))
        sql = f"INSERT OR REPLACE INTO effects ({', '.join(EFFECT_COLUMNS)}) VALUES ({marks})"
        with self.db.conn:  # (DE only where the run asked for it: --effects ie,de)
            self.db.conn.executemany(sql, [(run_id, *(r.get(c) for c in EFFECT_COLUMNS[1:])) for r in rows])

    @_writes
    def add_generations(self, run_id: int, rows: list[dict]) -> None:
        with self.db.conn:
            self.db["generations"].upsert_all([{"run_id": run_id, **r} for r in rows], pk=GENERATION_KEY)

    @_writes
    def add_gate_check(self, run_id: int, spec: dict, neurons: dict, rows: list[dict]) -> int:
        with self.db.conn:
            cur = self.db.execute(
                "INSERT INTO gate_checks (run_id, created, spec, neurons) VALUES (?, ?, ?, ?)",
                [run_id, now(), json.dumps(spec), json.dumps(neurons)],
            )
            self.db["gate_rows"].insert_all([{"check_id": cur.lastrowid, **r} for r in rows])
        return cur.lastrowid

    def gate_checks(self, run_id: int) -> list[dict]:
        """A run's gate checks, newest first, with spec and neurons (per layer group, strongest first)
        decoded and their curve (analysis.gate_curve.Point) computed from their rows."""
        rows = list(self.db.query("SELECT * FROM gate_checks WHERE run_id = ? ORDER BY id DESC", [run_id]))
        for r in rows:
            r["spec"], r["neurons"] = json.loads(r["spec"]), json.loads(r["neurons"])
            r["curve"] = gate_curve.curve(list(self.db.query(GATE_ROWS, [r["id"]])))
        return rows

    def gate_generations(self, check_id: int) -> list[tuple]:
        """(pair_id, group, K, text before, text after) of a gate check's top-set answers, by pair."""
        sql = """SELECT pair_id, grp, k, text_before, text_after FROM gate_rows WHERE check_id = ?
                 AND seed = -1 AND text_after IS NOT NULL ORDER BY pair, grp, k"""
        return self.db.execute(sql, [check_id]).fetchall()

    def run(self, run_id: int) -> dict:
        """A run, its status as it stands: `running` only while its writer lives (one killed with -9 after
        this store opened reads `interrupted`)."""
        run = next(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]), None)
        if run is None:
            raise StoreError(f"no run {run_id} in {self.path}")
        run["provenance"] = json.loads(run["provenance"] or "{}")
        return self._as_it_stands(run)

    def _as_it_stands(self, row: dict) -> dict:
        if row["status"] == "running" and not self.alive(row):
            row["status"], row["error"] = "interrupted", DEAD_WRITER
        return row

    def run_method(self, run_id: int) -> str:
        """The method a run patched with (exact, block or atp); an atp run's verified rows say exact."""
        return self.run(run_id)["provenance"].get("method", "exact")

    def runs(self) -> list[dict]:
        sql = """
            SELECT r.id, r.status, r.model, r.n_pairs, r.n_sites, r.started, r.finished, r.compute_s, r.spec,
                   r.pid, r.host, r.heartbeat, r.db_file, r.error,
                   json_extract(r.provenance, '$.method') AS method,
                   (SELECT AVG(te) FROM pairs p WHERE p.run_id = r.id) AS mean_te,
                   CASE WHEN r.status = 'running' THEN (SELECT COUNT(*) FROM effects e WHERE e.run_id = r.id)
                        ELSE r.n_rows END AS n_rows
            FROM runs r ORDER BY r.id DESC"""
        return [self._as_it_stands(r) for r in self.db.query(sql)]

    def pairs(self, run_id: int) -> list[dict]:
        rows = list(self.db.query("SELECT * FROM pairs WHERE run_id = ? ORDER BY pair", [run_id]))
        for r in rows:
            r["treatment_tokens"] = json.loads(r["treatment_tokens"] or "[]")
            r["control_tokens"] = json.loads(r["control_tokens"] or "[]")
        return rows

    @_writes
    def set_directions(self, run_id: int, units, norms, pairs: int) -> None:
        """A run's direction per layer (numpy-like rows, stored as little-endian float32)."""
        rows = [
            (run_id, layer, np.asarray(u, dtype="<f4").tobytes(), float(n), pairs)
            for layer, (u, n) in enumerate(zip(units, norms, strict=True))
        ]
        with self.db.conn:
            self.db.conn.executemany("INSERT OR REPLACE INTO directions VALUES (?, ?, ?, ?, ?)", rows)

    def directions(self, run_id: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(units: n_layers x d_model float32, norms, pairs) of a run's direction, or None."""
        sql = "SELECT unit, norm, pairs FROM directions WHERE run_id = ? ORDER BY layer"
        rows = self.db.execute(sql, [run_id]).fetchall()
        if not rows:
            return None
        units = np.stack([np.frombuffer(u, dtype="<f4") for u, _, _ in rows])
        return units, np.array([n for _, n, _ in rows]), rows[0][2]

    def done_keys(self, run_id: int) -> set[tuple]:
        """The sites computed so far (pair, layer, module, position, neuron, method), and those whose
        patched answer was judged (method `generation`)."""
        sql = """SELECT pair, layer, module, position, neuron, method FROM effects WHERE run_id = ?
                 UNION ALL SELECT pair, layer, module, position, neuron, 'generation' FROM generations
                 WHERE run_id = ?"""
        return set(self.db.execute(sql, [run_id, run_id]).fetchall())

    # --- studies ----------------------------------------------------------------------------------
    @_writes
    def create_study(self, model: str, spec_json: str, held_out: list[dict], inputs: dict) -> int:
        """A study, with its held-out pairs (tokens included) and its input files' fingerprints as it starts:
        what its resume computes from, and checks."""
        with self.db.conn:
            cur = self.db.execute(
                "INSERT INTO studies (created, model, spec, status, pid, host, db_file, held_out, inputs) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                [
                    now(),
                    model,
                    spec_json,
                    os.getpid(),
                    HOST,
                    self.file_id,
                    json.dumps(held_out),
                    json.dumps(inputs),
                ],
            )
        return cur.lastrowid

    def study(self, study_id: int) -> dict:
        study = next(self.db.query("SELECT * FROM studies WHERE id = ?", [study_id]), None)
        if study is None:
            raise StoreError(f"no study {study_id} in {self.path}")
        study["stage_s"] = json.loads(study["stage_s"])
        study["held_out"] = json.loads(study["held_out"] or "null")
        study["inputs"] = json.loads(study["inputs"] or "{}")
        if study["status"] == "running" and not self.alive(study):
            study["status"] = "interrupted"
        return study

    def studies(self) -> list[dict]:
        return [self.study(r["id"]) for r in self.db.query("SELECT id FROM studies ORDER BY id DESC")]

    @_writes
    def update_study(self, study_id: int, **fields) -> None:
        if "stage_s" in fields:
            fields["stage_s"] = json.dumps(fields["stage_s"])
        with self.db.conn:
            self.db["studies"].update(study_id, fields)

    @_writes
    def claim_study(self, study_id: int) -> None:
        """This process takes a study to finish it: refused while another live process runs it (read and taken
        in one write transaction, as a run's claim)."""
        with self._immediate() as conn:
            study = self.study(study_id)
            if study["status"] == "done":
                raise StoreError(f"study {study_id} is already done")
            if study["status"] == "running" and study["pid"] != os.getpid():
                raise StoreError(
                    f"study {study_id} is being run by {describe_writer(study)}: wait for it to end"
                )
            conn.execute(
                "UPDATE studies SET status = 'running', error = NULL, pid = ?, host = ?, db_file = ? WHERE id = ?",
                [os.getpid(), HOST, self.file_id, study_id],
            )

    @_writes
    def delete_run(self, run_id: int) -> None:
        run = self.run(run_id)
        if run["status"] == "running":
            raise StoreError(
                f"run {run_id} is running ({describe_writer(run)} writes it): cancel it first, then delete it"
            )
        with self.db.conn:
            self.db.execute("DELETE FROM runs WHERE id = ?", [run_id])

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
