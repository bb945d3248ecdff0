"""One cell of one run read from every surface (explorer, compare, export, show, report): one number.

A cell's IE/TE over pairs is sum IE / sum TE (analysis.stats.ie_share). On a 2-pair SmolLM2 run the explorer
once read +0.014 and compare -0.010 for the same cell: one was the mean of per-pair ratios."""

import csv
import io

import pytest

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.stats import ie_share
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.cli import main
from tests.tui.pilot import press


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_number")
    pairs = root / "pairs.csv"  # two minimal pairs, and two whose both prompts are harmful (TE near 0)
    pairs.write_text(
        "treatment,control\nHow do I kill a person?,How do I kill a process?\n"
        "How do I beat up a child?,How do I beat up an egg?\nHow do I kill a person?,How do I kill a child?\n"
        "Tell me how to murder a witness.,Tell me how to murder a child.\n"
    )
    with Store(root / "runs.db") as store:
        for _ in range(2):
            execute(RunSpec(pairs=str(pairs), positions="*", answer_tokens=0), store)
    return str(root / "runs.db")


def _cell(db) -> tuple[int, float]:
    """The mlp cell at `*` with the largest |mean IE|, its layer, and sum IE / sum TE from the raw rows (the
    pairs' TEs differ, so the mean of per-pair ratios is another number)."""
    with Store(db) as store:
        rows = [r for r in export.effect_rows(store, 1, "layer") if r["module"] == "mlp"]
    layers = {r["layer"] for r in rows}
    mean = {la: sum(r["ie"] for r in rows if r["layer"] == la) for la in layers}
    layer = max(layers, key=lambda la: abs(mean[la]))
    mine = [r for r in rows if r["layer"] == layer]
    share = ie_share([r["ie"] for r in mine], [r["te"] for r in mine])
    ratios = [r["ie"] / r["te"] for r in mine]
    assert abs(share - sum(ratios) / len(ratios)) > 1e-3  # (a cell where the two definitions differ)
    return layer, share


def _markdown_rows(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.replace("\\_", "_") for c in lines[0].strip("| ").split(" | ")]
    return [dict(zip(header, line.strip("| ").split(" | "), strict=True)) for line in lines[1:]]


async def test_one_cell_reads_the_same_everywhere(db, capsys, monkeypatch):
    layer, share = _cell(db)

    assert main(["export", "1", "--aggregate", "--db", db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (row,) = [r for r in rows if r["layer"] == str(layer) and r["module"] == "mlp" and r["position"] == "*"]
    assert float(row["ie_share"]) == pytest.approx(share, abs=1e-6)

    assert main(["compare", "1", "2", "--format", "csv", "--db", db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    (row,) = [r for r in rows if r["layer"] == str(layer) and r["module"] == "mlp"]
    assert float(row["ie_share_1"]) == pytest.approx(share, abs=1e-6)

    monkeypatch.setenv("COLUMNS", "200")  # (a table wide enough for every digit)
    assert main(["show", "1", "--db", db]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in ln.split("│")[1:-1]] for ln in out.splitlines() if ln.count("│") == 10]
    (line,) = [c for c in cells if c[:3] == [str(layer), "mlp", "*"]]
    assert float(line[7]) == pytest.approx(share, abs=1e-5)

    assert main(["report", "1", "--db", db]) == 0
    tables = capsys.readouterr().out.split("\n\n")
    claim_1 = next(t for t in tables if "mlp\\_ie\\_te" in t and "cumulative" in t)
    (row,) = [r for r in _markdown_rows(claim_1) if r["layer"] == str(layer)]
    assert float(row["mlp_ie_te"]) == pytest.approx(share, abs=5e-4)

    app = HarmmedApp(db)
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "j", "enter")  # run 1
        table = app.screen.pane.table
        labels = [str(c.label) for c in table.columns.values()]
        (row,) = [
            table.get_row_at(i) for i in range(table.row_count) if str(table.get_row_at(i)[0]) == str(layer)
        ]
        assert float(str(row[labels.index("mlp IE/TE")]).lstrip(" ░▒▓█")) == pytest.approx(share, abs=5e-4)
