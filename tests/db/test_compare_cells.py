"""compare says which cells it compares: never one run with itself, never silently a subset."""

import pytest

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import compare
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.tui.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("compare") / "runs.db"
    with Store(db) as store:
        for layers in ("2,3", "3", "0"):
            execute(RunSpec(max_pairs=1, layers=layers, positions="*", answer_tokens=0), store)
    return str(db)


def test_runs_sharing_some_cells_are_compared_on_those_and_the_rest_is_named(runs, capsys):
    with Store(runs) as store:
        rows, _, note = compare.compare(store, 1, 2)
    assert {r["layer"] for r in rows} == {3}
    assert note == "runs 1 and 2 share 3 layer x module cells; only run 1 has layers 2 (resid, attn, mlp)"
    assert main(["compare", "1", "2", "--db", runs]) == 0
    assert f"note: {note}" in capsys.readouterr().err


def test_runs_sharing_no_cell_are_one_line_naming_both(runs):
    with (
        Store(runs) as store,
        pytest.raises(
            StoreError,
            match=r"share no layer and module to compare \(run 2: layers 3 \(resid, attn, mlp\); run 3: layers 0",
        ),
    ):
        compare.compare(store, 2, 3)
