"""The database file as users have it: missing, damaged, or where it may not be written."""

import hashlib
import os
import shutil

import pytest

from harmmed_tui.db import store as store_module
from harmmed_tui.tui.cli import main


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "command", [["runs"], ["show", "1"], ["export", "1"], ["report", "1"], ["delete", "1"]]
)
def test_read_only_commands_never_create_a_database(tmp_path, monkeypatch, capsys, command):
    missing = tmp_path / "no" / "such" / "runs.db"
    monkeypatch.setenv("HARMMED_DB", str(missing))
    one_line_error(capsys, command, f"no database at {missing}")
    assert not missing.parent.exists()


@pytest.fixture
def damaged_db(stored_db) -> str:
    """The stored runs with random bytes over pages in the middle of the file."""
    size = os.path.getsize(stored_db)
    with open(stored_db, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(3 * 4096))
    return stored_db


COMMANDS = [
    ["runs"],
    ["show", "1"],
    ["export", "1", "--level", "neuron"],
    ["report", "1"],
    ["compare", "1", "2"],
    ["delete", "1"],
    ["run", "--max-pairs", "1", "--layers", "-1", "--positions", "last"],
    ["resume", "1"],
    ["gate", "1", "--top", "1", "--seeds", "1"],
]


WRITES = ("delete", "run", "resume", "gate")


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_damaged_database_is_one_line_and_never_written(_stored_db, damaged_db, capsys, command):
    """A command that writes checks the whole file first; one that reads checks the small tables and meets
    damage in the large ones where it reads them: one line, or exactly what the intact file shows (the damaged
    pages are not among those it reads). Never a partial answer, never a write."""
    before = digest(damaged_db)
    if command[0] in WRITES:
        one_line_error(capsys, [*command, "--db", damaged_db], "is damaged")
    else:
        code = main([*command, "--db", damaged_db])
        out, err = capsys.readouterr()
        if code == 2:
            assert err.count("\n") == 1 and "is damaged" in err, err
        else:
            assert code == 0 and main([*command, "--db", str(_stored_db)]) == 0
            assert out.split("db:")[0] == capsys.readouterr().out.split("db:")[0]  # (show names the file)
    assert digest(damaged_db) == before


def test_damage_in_the_runs_table_is_one_line_for_every_reader(stored_db, capsys):
    """The runs table's pages (the file's second and later small pages) overwritten: no reader shows a list."""
    import sqlite3

    conn = sqlite3.connect(stored_db)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    conn.close()
    with open(stored_db, "r+b") as f:
        f.seek((root - 1) * 4096)
        f.write(os.urandom(4096))
    before = digest(stored_db)
    for command in (["runs"], ["show", "1"], ["report", "1"]):
        one_line_error(capsys, [*command, "--db", stored_db], "is damaged")
    assert digest(stored_db) == before


@pytest.fixture
def unwritable_dir_db(stored_db, tmp_path, monkeypatch):
    """The stored runs in a directory this user may not write (as on a read-only mount): the tests run as
    root in places, where permission bits do not bind, so the directory's access answer is patched."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "runs.db"
    shutil.copy(stored_db, path)
    access = os.access
    monkeypatch.setattr(
        store_module.os,
        "access",
        lambda p, mode: False if mode == os.W_OK and str(p).startswith(str(folder)) else access(p, mode),
    )
    return str(path)


def test_a_database_in_an_unwritable_directory_is_read(unwritable_dir_db, capsys):
    for argv in (["runs"], ["show", "1"], ["export", "1", "--level", "neuron"], ["report", "1"]):
        assert main([*argv, "--db", unwritable_dir_db]) == 0, argv
        out, err = capsys.readouterr()
        assert out and "is read-only here: opened for reading only" in err
    for argv in (["delete", "1"], ["gate", "1", "--top", "1", "--seeds", "1"], ["run", "--max-pairs", "1"]):
        one_line_error(capsys, [*argv, "--db", unwritable_dir_db], "is read-only")


KILLED_WRITER = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA wal_autocheckpoint = 0")  # the committed rows stay in the log, as a killed writer leaves them
with conn:
    conn.execute("INSERT INTO runs (status, model, spec, started) SELECT status, model, spec, started FROM runs WHERE id = 2")
os._exit(9)
"""


def test_a_read_only_copy_whose_log_holds_committed_rows_says_so(stored_db, tmp_path, monkeypatch, capsys):
    """An immutable open reads the main file only: with committed rows in the -wal beside it, `runs` would list
    2 of 3 runs. It says so in one line instead, and the copy in a writable place lists all 3."""
    import subprocess
    import sys

    assert subprocess.run([sys.executable, "-c", KILLED_WRITER, stored_db]).returncode == 9
    folder = tmp_path / "ro"
    folder.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(stored_db + suffix, folder / f"runs.db{suffix}")
    access = os.access
    monkeypatch.setattr(
        store_module.os,
        "access",
        lambda p, mode: False if mode == os.W_OK and str(p).startswith(str(folder)) else access(p, mode),
    )
    for command in (["runs"], ["show", "3"]):
        one_line_error(
            capsys, [*command, "--db", str(folder / "runs.db")], "runs.db-wal that cannot be applied"
        )
    assert main(["runs", "--db", stored_db]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["3", "2", "1"]


def test_a_read_only_command_never_writes_into_an_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in (["runs"], ["show", "1"], ["export", "1"]):
        one_line_error(capsys, [*command, "--db", str(empty)], "is an empty file: no runs are stored in it")
    assert empty.stat().st_size == 0 and not list(tmp_path.glob("empty.db-*"))


def test_a_copy_taken_while_a_writer_lived_shows_no_live_writer(tmp_path):
    """This process writes a run and holds a job in runs.db; a copy of the file taken meanwhile has no writer:
    its job is not live and its run reads interrupted (and resumes), while the original's are live."""
    from harmmed_tui.db import jobs
    from harmmed_tui.db.store import Store

    original, copy = tmp_path / "runs.db", tmp_path / "copy.db"
    with Store(original) as store, jobs.Job.open(store, "run", "default"):
        run_id = store.create_run("default", "{}")
        for suffix in ("", "-wal"):
            if (src := tmp_path / f"runs.db{suffix}").exists():
                shutil.copy(src, tmp_path / f"copy.db{suffix}")
        with Store(copy, create=False) as read:
            assert jobs.live(read) == [] and read.run(run_id)["status"] == "interrupted"
        with Store(copy) as written:
            assert written.db.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
            written.claim(run_id)  # (a resume of the copy's run is not refused as "being written")
        assert len(jobs.live(store)) == 1 and store.run(run_id)["status"] == "running"


def test_a_writer_killed_after_the_store_opened_reads_interrupted(tmp_path):
    """The explorer's store opened before the writer died (kill -9): its run reads interrupted at once, as
    an open would mark it, not `running` for ever."""
    import subprocess
    import sys

    from harmmed_tui.db.store import Store

    path = tmp_path / "runs.db"
    script = (
        "import os, sys; from harmmed_tui.db.store import Store; s = Store(sys.argv[1]); "
        "s.create_run('default', '{}'); print(os.getpid(), flush=True); sys.stdin.readline(); os._exit(9)"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    writer.stdout.readline()
    with Store(path) as explorer:
        assert explorer.run(1)["status"] == "running"
        writer.communicate("\n")
        assert writer.returncode == 9
        run = explorer.run(1)
        assert run["status"] == "interrupted" and "ended before it finished" in run["error"]
        assert [r["status"] for r in explorer.runs()] == ["interrupted"]
