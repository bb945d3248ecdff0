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


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_damaged_database_is_one_line_and_never_written(damaged_db, capsys, command):
    before = digest(damaged_db)
    one_line_error(capsys, [*command, "--db", damaged_db], "is damaged")
    assert digest(damaged_db) == before


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
