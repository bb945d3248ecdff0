"""A run killed with SIGKILL leaves a valid database and resumes to the same rows; a reader in another
process sees a writing run's rows stream in (WAL); a full disk on export loses nothing."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harmmed_tui.db import export
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.tui.cli import main

# Many small batches on the organism, so that a run is still writing when the test acts on it.
SPEC = ["--max-pairs", "2", "--modules", "neuron", "--layers", "2-3", "--neuron-positions", "all"]
SPEC += ["--batch-tokens", "48"]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harmmed_tui.tui.cli", *args], capture_output=True, text=True, check=True
    )


def start_run(db) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harmmed_tui.tui.cli", "run", "--db", str(db), *SPEC, "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def effects(db, run_id: int) -> dict:
    store = Store(db)
    sql = "SELECT pair, layer, module, position, neuron, method, ie FROM effects WHERE run_id = ?"
    return {r[:6]: r[6] for r in store.db.execute(sql, [run_id])}


def rows_so_far(store: Store) -> int:
    return store.db.execute("SELECT COUNT(*) FROM effects").fetchone()[0]


def test_sigkill_then_resume_ends_with_the_uninterrupted_rows(tmp_path):
    killed_db, clean_db = tmp_path / "killed.db", tmp_path / "clean.db"
    proc = start_run(killed_db)
    while not killed_db.exists():
        time.sleep(0.05)
    store = Store(killed_db)
    while rows_so_far(store) < 2000:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store.close()

    store = Store(killed_db)  # opening marks the run whose process died
    run = store.runs()[0]
    assert run["status"] == "interrupted" and 0 < run["n_rows"] < run["n_sites"], run
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = json.loads(cli("resume", str(run["id"]), "--db", str(killed_db), "--json").stdout)
    assert resumed["status"] == "done"

    clean = json.loads(cli("run", "--db", str(clean_db), *SPEC, "--json").stdout)
    got, want = effects(killed_db, run["id"]), effects(clean_db, clean["run_id"])
    assert got.keys() == want.keys() and len(want) == clean["sites"]
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5
    assert Store(killed_db).run(run["id"])["status"] == "done"


def test_a_reader_process_sees_rows_stream_in_while_a_run_writes(tmp_path):
    db = tmp_path / "runs.db"
    proc = start_run(db)
    while not db.exists():
        time.sleep(0.05)
    reader = Store(db)  # this test process is the second one: reads never block on the writer
    seen = []
    while proc.poll() is None:
        seen.append(rows_so_far(reader))
        reader.runs()
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    seen.append(rows_so_far(reader))
    assert seen == sorted(seen), "row counts went backwards"
    assert len({n for n in seen if 0 < n < seen[-1]}) >= 3, "saw no intermediate states"
    assert seen[-1] == json.loads(out)["sites"] and reader.runs()[0]["status"] == "done"


def test_full_disk_on_export_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_text("an earlier export\n")

    def no_space(fd, *args, **kwargs):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export.os, "fdopen", no_space)  # what a full disk does to the write
    with pytest.raises(StoreError, match="No space left on device"):
        export.write("run_id,pair\n1,0\n", str(target))
    assert target.read_text() == "an earlier export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temp file left behind


def test_a_read_only_database_is_read_and_never_written(tmp_path, monkeypatch, capsys):
    db = tmp_path / "runs.db"
    run = json.loads(cli("run", "--db", str(db), "--max-pairs", "1", "--layers", "0", "--json").stdout)
    Store(db).close()  # checkpoint, so that the database is one file
    before = db.read_bytes()
    db.chmod(0o444)
    if os.geteuid() == 0:  # root writes through file modes: make the permission check answer as for users
        real = os.access
        monkeypatch.setattr(
            "harmmed_tui.db.store.os.access", lambda p, mode: mode != os.W_OK and real(p, mode)
        )
    rid = str(run["run_id"])
    assert main(["export", rid, "--db", str(db), "--format", "jsonl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == run["sites"]
    assert main(["runs", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "done"
    for argv in (["run", "--db", str(db), "--layers", "0"], ["delete", rid, "--db", str(db)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is read-only" in err and len(err.splitlines()) == 1, err
    assert db.read_bytes() == before
