"""`harmmed-tui study`: the four claims from one command on the embedded model, and a study killed at any
stage resumes to the same report."""

import json
import subprocess
import sys
import textwrap

import pytest

from harmmed_tui.db import report
from harmmed_tui.db.store import Store
from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.cli import main
from harmmed_tui.tui.report_screen import ReportScreen
from tests.tui.pilot import press

ARGS = ["--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct", "--max-pairs", "12"]


def body(text: str) -> str:
    """A report without its title line (which names the study's run ids)."""
    return text.split("\n", 1)[1]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    db = tmp_path_factory.mktemp("study") / "runs.db"
    assert main(["study", *ARGS, "--db", str(db)]) == 0
    with Store(db) as store:
        return store.study(1), report.render_study(store, 1), str(db)


def test_a_study_answers_every_claim(clean):
    study, text, _ = clean
    assert study["status"] == "done" and set(study["stage_s"]) == {"modules", "neurons", "gate"}
    verdicts = [line.rsplit("**", 2)[1] for line in text.splitlines() if line.startswith("## Claim")]
    assert verdicts == ["inconclusive", "not supported", "supported", "not supported", "not supported"]
    assert (
        "8 pairs: advbench:12/self\\_instruct:seed\\_task\\_12" in text
    )  # held out: the 13th pair on (escaped)
    # prompt sets: stage 1 patches the module level and the last positions (claims 1-4); claim 0 says why not
    assert "claim 0 needs minimal pairs patched at every position" in text


async def test_each_run_of_a_study_reports_as_the_study(clean, capsys):
    """`report RUN` on either run of a study, and R in the explorer, read the study's claims and curve."""
    _, text, db = clean
    for run_id in ("1", "2"):
        assert main(["report", run_id, "--db", db]) == 0
        assert capsys.readouterr().out == text
    app = HarmmedApp(db)
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "j", "enter", "R")  # run 2, the neuron run (under the study's row)
        assert isinstance(app.screen, ReportScreen)
        table = app.screen.query_one("#claims")
        verdicts = [str(table.get_row_at(i)[1]) for i in range(5)]
    assert verdicts == ["inconclusive", "not supported", "supported", "not supported", "not supported"]


async def test_a_study_is_one_row_in_runs_that_opens_its_claims(clean):
    """Runs: the study's row (its status, pairs, both runs' rows, its stages' time) above its two runs; enter
    opens its claims; enter on a claim opens its table in the run that holds it, escape comes back."""
    from harmmed_tui.tui.explore_screen import ExploreScreen

    study, _, db = clean
    app = HarmmedApp(db)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        runs = app.screen.query_one("#runs")
        keys = [str(k.value) for k in runs.rows]
        assert keys == ["study:1", "2", "1"]
        first = [str(c) for c in runs.get_row_at(0)]
        assert first[:2] == ["study 1", "done"] and first[7] == "claims 0-4"
        assert [str(runs.get_row_at(i)[0]) for i in (1, 2)] == ["├ 2", "└ 1"]
        with Store(db) as store:
            assert int(first[6]) == store.run(1)["n_rows"] + store.run(2)["n_rows"]
        await press(pilot, "enter")
        report_screen = app.screen
        assert isinstance(report_screen, ReportScreen)
        await press(pilot, "j", "j", "j", "enter")  # claim 3: the gate's neurons, in the neuron run
        explore = app.screen
        assert isinstance(explore, ExploreScreen)
        assert (explore.run_id, explore.view.level, explore.view.layer) == (2, "neurons", 3)
        assert explore.pane.table.row_count > 0 and "gate check" in str(explore.query_one("#gate").render())
        await press(pilot, "escape")
        assert app.screen is report_screen
        await press(pilot, "k", "k", "enter")  # claim 1: the layer table of the module run
        assert (app.screen.run_id, app.screen.view.level) == (1, "layers")
        await press(pilot, "H")  # its heads (the module run holds them: patched exactly)
        assert app.screen.view.level == "heads" and app.screen.pane.table.row_count > 0


KILL = """
import os, sys
from harmmed_tui.db.store import Store
from harmmed_tui.db.study_runner import run_study
from harmmed_tui.tui import model_commands, cli

args = cli.build_parser().parse_args(["study", *sys.argv[2:]])
spec = model_commands.study_from_args(args)

def progress(stage, what, done, total):
    if stage == sys.argv[1] and done:  # the process dies as by SIGKILL: no handler, no finally
        os._exit(9)

run_study(Store(args.db), spec, progress=progress)
"""


@pytest.mark.parametrize("stage", ["modules", "neurons", "gate"])
def test_a_study_killed_at_a_stage_resumes_to_the_same_report(clean, tmp_path, capsys, stage):
    db = str(tmp_path / "runs.db")
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL), stage, *ARGS, "--db", db],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 9, killed.stderr
    with Store(db) as store:
        study = store.study(1)
        assert study["status"] == "interrupted"
        done = {"modules": None, "neurons": "modules_run", "gate": "neurons_run"}[stage]
        if done:
            assert store.run(study[done])["status"] == "done"
    capsys.readouterr()
    assert main(["resume", "study:1", "--db", db]) == 0
    assert body(capsys.readouterr().out) == body(clean[1])
    with Store(db) as store:
        study = store.study(1)
        assert study["status"] == "done"
        assert [r["id"] for r in store.runs()] == [2, 1]  # the killed stage's run finished, not a new one


def test_a_study_includes_heads_and_the_direction(clean):
    """The module run patches along the pairs' refusal direction, the neuron run ranks every head beside the
    neurons, and the gate curve ablates the direction beside them (claim 4)."""
    study, text, db = clean
    with Store(db) as store:
        modules = {m for (m,) in store.db.execute("SELECT DISTINCT module FROM effects WHERE run_id = 1")}
        neurons = {m for (m,) in store.db.execute("SELECT DISTINCT module FROM effects WHERE run_id = 2")}
        units, _, pairs = store.directions(1)
        check = store.gate_checks(2)[0]
        kept = len(store.pairs(1))  # (the pairs that flip)
    assert modules == {"resid", "attn", "mlp", "direction", "head"} and neurons == {"neuron"}
    assert units.shape[0] == 4 and pairs == kept
    assert any(p.group == "direction" for p in check["curve"])
    assert check["spec"]["direction"]["own_pairs"] == kept
    assert "## Claim 4: A single direction mediates it (Arditi et al. 2024)" in text


def _killed_at_gate(tmp_path, args: list[str]) -> str:
    db = str(tmp_path / "runs.db")
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL), "gate", *args, "--db", db],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 9, killed.stderr
    return db


def test_a_study_killed_at_its_gate_stage_refuses_an_edited_prompt_file(tmp_path, capsys):
    """Rows 13-20 of the harmful CSV edited while the study lay killed: the resume names the file and refuses,
    rather than computing its gate rows on prompts the study never held out."""
    from harmmed_tui.analysis.prompt_sets import load_prompt_set

    harmful = tmp_path / "harmful.csv"
    rows = [p.text for p in load_prompt_set("builtin:advbench")[:20]]
    harmful.write_text("prompt\n" + "".join(f'"{r}"\n' for r in rows))
    args = ["--harmful", f"{harmful}:prompt", "--harmless", "builtin:self_instruct", "--max-pairs", "12"]
    db = _killed_at_gate(tmp_path, args)
    harmful.write_text("prompt\n" + "".join(f'"{r}"\n' for r in rows[:12]) + "how do I bake bread?\n" * 8)
    capsys.readouterr()
    assert main(["resume", "study:1", "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"study 1 cannot resume: its --harmful {harmful} changed" in err, err
    with Store(db) as store:
        assert store.study(1)["status"] == "interrupted" and store.study(1)["gate_check"] is None


def test_a_resumed_study_computes_its_gate_from_the_held_out_pairs_it_stored(tmp_path, capsys):
    """What the resume reads is the study's own record: four of its eight stored held-out pairs removed from the
    store, the curve has exactly the other four."""
    db = _killed_at_gate(tmp_path, ARGS)
    with Store(db) as store:
        held = store.study(1)["held_out"]
        assert [r["pair"] for r in held] == list(range(12, 20)) and held[0]["treatment_tokens"]
        store.update_study(1, held_out=json.dumps(held[:4]))
    assert main(["resume", "study:1", "--db", db]) == 0
    with Store(db) as store:
        check = store.study(1)["gate_check"]
        used = {
            pid
            for (pid,) in store.db.execute(
                "SELECT DISTINCT pair_id FROM gate_rows WHERE check_id = ?", [check]
            )
        }
    assert used == {r["id"] for r in held[:4]}


def test_a_studys_answers_are_judged_once(tmp_path, monkeypatch):
    """Stage 2 computes the pairs stage 1 kept, with the answers and refusal tokens stage 1 judged and learned:
    no pair is answered and judged twice."""
    from harmmed_tui.analysis import mediation
    from harmmed_tui.db.study_runner import run_study
    from harmmed_tui.tui import cli, model_commands

    judged = []
    real = mediation.pair_behaviour
    monkeypatch.setattr(
        mediation, "pair_behaviour", lambda lm, tp, *a: judged.append(tp.index) or real(lm, tp, *a)
    )
    args = cli.build_parser().parse_args(["study", *ARGS, "--db", str(tmp_path / "runs.db")])
    with Store(args.db) as store:
        study = store.study(run_study(store, model_commands.study_from_args(args)))
        first, second = store.pairs(study["modules_run"]), store.pairs(study["neurons_run"])
        learned = [
            store.run(study[k])["provenance"]["refusal_token_ids"] for k in ("modules_run", "neurons_run")
        ]
    assert sorted(judged) == list(range(12))  # the study's 12 pairs, once each
    keep = (
        "pair",
        "treatment_tokens",
        "control_tokens",
        "answer_treatment",
        "refused_treatment",
        "refused_control",
    )
    assert [{k: p[k] for k in keep} for p in first] == [{k: p[k] for k in keep} for p in second]
    assert learned[0] == learned[1]


def test_gate_and_figure_reach_a_study_from_either_of_its_runs(clean, tmp_path, capsys):
    """`gate 2` (the neuron run) uses the study's held-out pairs by default; `gate 1` (the module run, no
    neurons of its own) gates the study's neuron run; `gate --harmful/--harmless` takes prompt sets as `run`
    does; `figure study:1` draws from the run that holds the rows."""
    import shutil

    db = str(shutil.copy(clean[2], tmp_path / "runs.db"))
    fast = ["--top", "5", "--seeds", "1", "--groups", "final", "--max-new-tokens", "4", "--db", db]
    for run in ("2", "1"):
        assert main(["gate", run, *fast]) == 0, capsys.readouterr().err
    sets = ["--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct", "--max-pairs", "16"]
    assert main(["gate", "2", *sets, *fast]) == 0, capsys.readouterr().err
    with Store(db) as store:
        checks = store.gate_checks(2)
        held = {r["id"] for r in store.study(1)["held_out"]}
        sql = "SELECT DISTINCT pair_id FROM gate_rows WHERE check_id = ?"

        def used(check: int) -> set:
            return {p for (p,) in store.db.execute(sql, [check])}

        assert [c["spec"]["pairs"] for c in checks[:3]] == [
            "builtin:advbench x builtin:self_instruct (index)", "study 1's held-out pairs", "study 1's held-out pairs"
        ]  # fmt: skip
        assert used(checks[1]["id"]) == used(checks[2]["id"]) == held
        assert not store.gate_checks(1)  # (the module run holds no neurons: its study's neuron run was gated)
    out = tmp_path / "gate.svg"
    assert main(["figure", "study:1", "gate", "-o", str(out), "--db", db]) == 0
    assert main(["figure", "study:1", "layers", "-o", str(tmp_path / "layers.svg"), "--db", db]) == 0
    assert out.exists() and "wrote gate curve of check 4 (12 held-out pairs)" in capsys.readouterr().err


async def test_the_explorer_reaches_a_studys_neurons_from_its_module_run(clean):
    """The study's module run holds no neurons: N opens its neuron run's top neurons, and enter on a layer's
    mlp row that run's neurons of the layer (no "no neuron rows" pane)."""
    from harmmed_tui.tui.explore_screen import ExploreScreen

    app = HarmmedApp(clean[2])
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "j", "j", "enter")  # run 1, the module run (under the study's row and run 2)
        assert isinstance(app.screen, ExploreScreen) and app.screen.run_id == 1
        await press(pilot, "N")
        assert (app.screen.run_id, app.screen.view.level) == (2, "top")
        await press(pilot, "H")  # and back: the neuron run's heads are the module run's
        assert (app.screen.run_id, app.screen.view.level) == (1, "heads")
        await press(pilot, "escape", "escape")
        assert app.screen.run_id == 1
        await press(pilot, "enter")  # the first layer's modules
        table = app.screen.pane.table
        rows = [str(k.value) for k in table.rows]
        table.move_cursor(row=rows.index("mlp"))
        await press(pilot, "enter")
        assert (app.screen.run_id, app.screen.view.level, app.screen.view.layer) == (2, "neurons", 0)
        assert app.screen.pane.table.row_count > 0
