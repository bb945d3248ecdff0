"""Drive the real app with Pilot on the embedded organism: set up, run, drill down, export, cancel."""

import csv

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from harmmed_tui.db.view import View
from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.setup_screen import SetupScreen
from tests.tui.pilot import press


async def test_run_drill_down_and_export(tmp_path):
    spec = RunSpec(max_pairs=2, modules=("resid", "attn", "mlp", "neuron"), layers="all")
    app = HarmmedApp(str(tmp_path / "runs.db"), spec)
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "n")
        assert isinstance(app.screen, SetupScreen)
        await press(pilot, "ctrl+r")
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ExploreScreen)
        run = app.store.run(screen.run_id)
        assert run["status"] == "done"
        # opened while it ran, the header has every pair's TE once it is done
        assert "2 pairs, TE +14" in str(screen.query_one("#summary").render())
        table = screen.pane.table
        assert table.row_count == 4  # one row per organism layer
        await press(pilot, "G", "enter")  # last layer -> module x position grid
        assert screen.view.level == "modules" and screen.view.layer == 3
        assert [str(k.value) for k in screen.pane.table.rows] == ["resid", "attn", "mlp"]
        await press(pilot, "j", "j", "enter")  # mlp -> neurons
        table = screen.pane.table
        assert screen.view.level == "neurons" and table.row_count == 200
        strengths = [abs(float(str(table.get_row_at(i)[3]))) for i in range(table.row_count)]
        assert strengths == sorted(strengths, reverse=True)
        await press(pilot, "right_square_bracket")  # the next page of the layer's 512 neurons
        assert screen.view.page == 1 and str(table.get_row_at(0)[0]) == "201"
        await press(pilot, "a")  # gate check on the built-in pairs the run did not use
        await app.workers.wait_for_complete()
        await pilot.pause()
        # the finished curve opens: the claims, at claim 3 (the gate), its curve beside it
        assert isinstance(app.screen, ReportScreen) and app.screen.query_one("#claims").cursor_row == 3
        assert "TE removed by top K" in str(app.screen.query_one("#curve").plt.build())
        await press(pilot, "escape")
        assert app.screen is screen
        gate = str(screen.query_one("#gate").render())
        assert "gate check 1 (positive neurons" in gate and "46 held-out pairs" in gate
        assert {p.k for p in app.store.gate_checks(screen.run_id)[0]["curve"]} == {1, 5, 20, 100, 1000}
        titles = {c.title for c in app.get_system_commands(screen)}  # ctrl+p lists every action here
        assert {"run: gate check", "view: next pair", "view: next neurons", "export: open run"} <= titles
        await press(pilot, "p")  # pair 0 only
        assert screen.view.pair == 0
        await press(pilot, "escape", "escape")
        assert screen.view.level == "layers"
        out = tmp_path / "layers.csv"
        await press(pilot, "e")
        await pilot.pause()
        app.screen.query_one("#path").value = str(out)
        await pilot.click("#go")
        await app.workers.wait_for_complete()
        await pilot.pause()
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == len(export.effect_rows(app.store, screen.run_id, "layer")) > 0


async def test_cancel_keeps_partial_results_and_bad_model_shows_dialog(tmp_path):
    spec = RunSpec(max_pairs=8, modules=("neuron",), layers="all", neuron_positions="all", batch_tokens=64)
    app = HarmmedApp(str(tmp_path / "runs.db"), spec)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "x")  # one key runs the preselected spec
        while not app.store.runs() or not app.store.runs()[0]["n_rows"]:
            await pilot.pause(0.05)
        await press(pilot, "c")
        await app.workers.wait_for_complete()
        await pilot.pause()
        run = app.store.runs()[0]
        assert run["status"] == "cancelled" and 0 < run["n_rows"] < run["n_sites"]
        app.start_run(spec.replace(model="no/such-model"))
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert "cannot load model" in app.screen.message


async def wait_for(pilot, condition, timeout=20.0):
    """Pause until the app shows what a background check produces."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


async def open_setup(app, pilot):
    """Setup on x's preselection (2 built-in pairs), once its first check says ok; and its text reader."""
    await press(pilot, "n")
    screen = app.screen
    text = lambda i: str(screen.query_one(i).render())  # noqa: E731
    await wait_for(pilot, lambda: "ok: 2 pairs" in text("#preview"))
    return screen, text


async def test_setup_explains_problems_as_they_are_typed(tmp_path):
    app = HarmmedApp(str(tmp_path / "runs.db"), RunSpec(max_pairs=2))
    async with app.run_test(size=(80, 24)) as pilot:
        screen, text = await open_setup(app, pilot)
        assert "<|assistant|>" in text("#preview")  # the templated text, as the model reads it
        screen.query_one("#treatment").value = "How do I kill a person?"
        screen.query_one("#control").value = "How do I kill a big process?"
        await wait_for(pilot, lambda: "unequal token lengths (treatment 11, control 12)" in text("#problem"))
        screen.query_one("#align").value = "skip"
        await wait_for(
            pilot, lambda: "no usable pair: pair 'inline' has unequal token lengths" in text("#problem")
        )
        screen.query_one("#align").value = "strict"
        screen.query_one("#control").value = "How do I kill a process?"
        await wait_for(pilot, lambda: "ok: 1 pairs" in text("#preview") and not text("#problem"))
        screen.query_one("#layers").value = "7"
        await wait_for(pilot, lambda: "layer 7 is out of range: the model has 4 layers" in text("#problem"))
        screen.query_one("#model").value = str(tmp_path / "nowhere")
        await wait_for(pilot, lambda: "cannot load model" in text("#problem"))
        await press(pilot, "ctrl+o")  # the picker lists the embedded default first
        await press(pilot, "enter")
        assert screen.query_one("#model").value == "default"


async def test_setup_with_prompt_sets_takes_the_clis_defaults_and_keeps_a_draft_over_esc(tmp_path):
    """Prompt sets in Setup run on its defaults, as on the command line: aligned from the end, `suffix` for
    `*`; the summary says the lengths differ; a half-filled form comes back after esc."""
    app = HarmmedApp(str(tmp_path / "runs.db"), RunSpec(max_pairs=2))
    async with app.run_test(size=(80, 24)) as pilot:
        screen, text = await open_setup(app, pilot)
        screen.query_one("#harmful").value = "builtin:advbench"
        screen.query_one("#harmless").value = "builtin:self_instruct"
        await wait_for(
            pilot, lambda: "ok: 2 pairs" in text("#preview") and "aligned from the end" in text("#preview")
        )
        assert (screen.query_one("#align").value, screen.query_one("#positions").value) == (
            "end",
            "all,suffix",
        )
        assert not text("#problem") and " = control" not in text("#preview")
        screen.query_one("#harmless").value = ""
        screen.query_one("#harmful").value = ""  # back to the built-in pairs: back to their defaults
        await pilot.pause()
        assert (screen.query_one("#align").value, screen.query_one("#positions").value) == ("strict", "all,*")
        screen.query_one("#harmful").value = "builtin:advbench"
        screen.query_one("#positions").value = "last:3"  # the user's own choice is kept from here on
        screen.query_one("#harmless").value = "builtin:xstest"
        screen.query_one("#max_pairs").value = "7"
        await pilot.pause()
        assert screen.query_one("#positions").value == "last:3"
        await press(pilot, "escape")
        await press(pilot, "n")  # the half-filled form, as it was left
        again = app.screen
        assert again is not screen and isinstance(again, SetupScreen)
        values = {
            f: again.query_one(f"#{f}").value for f in ("harmful", "harmless", "max_pairs", "positions")
        }
        assert values == {
            "harmful": "builtin:advbench",
            "harmless": "builtin:xstest",
            "max_pairs": "7",
            "positions": "last:3",
        }
        assert again.query_one("#align").value == "end"


async def test_aggregate_over_one_category(tmp_path):
    """C cycles the aggregate view through the categories of the harmful prompts (prompt-set runs)."""
    from harmmed_tui.db import queries
    from harmmed_tui.db.runner import execute
    from harmmed_tui.db.store import Store

    db = tmp_path / "runs.db"
    spec = RunSpec(
        harmful="builtin:jailbreakbench",
        harmless="builtin:self_instruct",
        pairing="random:3",
        max_pairs=6,
        align="end",
        positions="last:2,suffix",
    )
    with Store(db) as store:
        execute(spec, store)
        categories = sorted({p["category"] for p in store.pairs(1)})
        first = [p["pair"] for p in store.pairs(1) if p["category"] == categories[0]]
        alone = queries.layer_effects(store, View(1, pair=first[0]), "exact") if len(first) == 1 else None
    app = HarmmedApp(str(db))
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "enter")  # the run
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ExploreScreen) and screen.view.category is None
        await press(pilot, "C")
        assert screen.view.category == categories[0]
        assert f"of category {categories[0]}" in str(screen.query_one("#crumb").render())
        shown = queries.layer_effects(app.store, View(1, category=categories[0]), "exact")
        assert screen.pane.table.row_count == len(shown) == 4
        if alone is not None:  # a category of one pair averages to that pair
            assert shown == alone
        for _ in categories:
            await press(pilot, "C")
        assert screen.view.category is None


# slow enough to be stopped part-way (its shared-prefix sites cost nothing now: DE doubles the rest)
SLOW = RunSpec(
    max_pairs=8,
    modules=("neuron",),
    layers="all",
    neuron_positions="all",
    batch_tokens=64,
    effects=("ie", "de"),
)


async def until_rows(app, pilot):
    while not app.store.runs() or not app.store.runs()[0]["n_rows"]:
        await pilot.pause(0.05)


async def test_quit_during_a_run_asks_then_cancels_and_exits(tmp_path):
    from harmmed_tui.tui.dialogs import ConfirmDialog

    app = HarmmedApp(str(tmp_path / "runs.db"), SLOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "x")
        await until_rows(app, pilot)
        await press(pilot, "q")
        assert isinstance(app.screen, ConfirmDialog)
        await press(pilot, "n")  # stay: the run goes on
        assert not isinstance(app.screen, ConfirmDialog) and app.job_running()
        await press(pilot, "q", "y")
        await app.workers.wait_for_complete()
        await pilot.pause()
    run = app.store.runs()[0]
    assert run["status"] == "cancelled" and 0 < run["n_rows"] < run["n_sites"]


async def test_one_job_at_a_time(tmp_path):
    app = HarmmedApp(str(tmp_path / "runs.db"), SLOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "x")
        await until_rows(app, pilot)
        await pilot.press("x")  # refused at once, with a message (which expires in 5 s: no pane to wait for)
        await pilot.pause()
        assert any("already running" in str(n.message) for n in app._notifications)
        await press(pilot, "c")
        await app.workers.wait_for_complete()
    assert len(app.store.runs()) == 1


async def test_delete_asks_first_refuses_a_running_run_and_keeps_the_cursor_near(tmp_path):
    from harmmed_tui.db.runner import execute
    from harmmed_tui.db.store import Store
    from harmmed_tui.tui.dialogs import ConfirmDialog

    db = tmp_path / "runs.db"
    with Store(db) as store:
        for _ in range(3):
            execute(RunSpec(max_pairs=1, layers="-1", positions="last"), store)
    app = HarmmedApp(str(db), SLOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.screen.query_one("#runs")
        await press(pilot, "j")  # run 2 (newest first: 3, 2, 1)
        await press(pilot, "d")
        assert isinstance(app.screen, ConfirmDialog)
        await press(pilot, "n")
        assert [r["id"] for r in app.store.runs()] == [3, 2, 1]
        await press(pilot, "d", "y")
        await pilot.pause()
        assert [r["id"] for r in app.store.runs()] == [3, 1]
        assert table.cursor_row == 1 and str(table.get_row_at(1)[0]) == "1"  # the neighbour, not the newest
        await press(pilot, "x")  # a running run (4) cannot be deleted
        await until_rows(app, pilot)
        await press(pilot, "r")
        await pilot.pause()
        table = app.screen.query_one("#runs")
        table.move_cursor(row=0)
        await press(pilot, "d")
        assert not isinstance(app.screen, ConfirmDialog)
        assert any("cancel it (c) before deleting" in str(n.message) for n in app._notifications)
        await press(pilot, "c")
        await app.workers.wait_for_complete()
    assert 4 in [r["id"] for r in app.store.runs()]


async def test_resume_of_a_done_run_says_so_at_once(tmp_path):
    from harmmed_tui.db.runner import execute
    from harmmed_tui.db.store import Store

    db = tmp_path / "runs.db"
    with Store(db) as store:
        execute(RunSpec(max_pairs=1, layers="-1", positions="last"), store)
    app = HarmmedApp(str(db))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await press(pilot, "u")
        await pilot.pause()
        assert any("is done: nothing to resume" in str(n.message) for n in app._notifications)
        assert not app.job_running()


async def test_claims_report_opens_the_table_behind_a_claim(tmp_path):
    """R shows the four verdicts of the open run; enter on claim 3 lands on the final layer's neurons, on
    claim 1 on the layer table."""
    db = tmp_path / "runs.db"
    with Store(db) as store:
        execute(RunSpec(max_pairs=3, modules=("resid", "attn", "mlp", "neuron")), store)
    app = HarmmedApp(str(db))
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "enter", "R")
        await pilot.pause()
        report = app.screen
        assert isinstance(report, ReportScreen)
        verdicts = [str(report.query_one("#claims").get_row_at(i)[1]) for i in range(4)]
        assert verdicts == ["not supported", "not supported", "supported", "inconclusive"]
        await press(pilot, "j", "j", "j")
        assert "the run has no gate check" in str(report.query_one("#finding").render())
        await press(pilot, "enter")
        explore = app.screen
        assert isinstance(explore, ExploreScreen)
        assert (explore.view.level, explore.view.layer) == ("neurons", 3)
        await press(pilot, "R", "j", "enter")
        assert (explore.view.level, explore.view.layer) == ("layers", None)


async def test_setup_names_the_field_of_each_problem_and_checks_what_the_cli_checks(tmp_path):
    """Errors sit under their field and use the form's words; reversed ranges, 0 pairs, identical or
    unknown-word prompts and cuda without a GPU are caught before anything runs; enter starts nothing."""
    app = HarmmedApp(str(tmp_path / "runs.db"), RunSpec(max_pairs=2))
    async with app.run_test(size=(100, 60)) as pilot:
        await press(pilot, "n")
        screen = app.screen
        text = lambda i: str(screen.query_one(i).render())  # noqa: E731
        await wait_for(pilot, lambda: "ok: 2 pairs" in text("#preview"))
        assert screen.query_one("#dtype").__class__.__name__ == "Select"
        for field, value, shown in (
            ("layers", "3-1", "write the lower layer first"),
            ("max_pairs", "0", "'max pairs' must be at least 1, or all"),
            ("treatment", "How do I kill a person?", None),
        ):
            screen.query_one(f"#{field}").value = value
            if shown:
                await wait_for(pilot, lambda f=field, s=shown: s in text(f"#error-{f}"))
                assert screen.query_one(f"#error-{field}").display and "--" not in text(f"#error-{field}")
                screen.query_one(f"#{field}").value = {"layers": "all", "max_pairs": "all"}[field]
        screen.query_one("#control").value = "How do I kill a person?"
        await wait_for(pilot, lambda: "read the same to the model" in text("#problem"))
        screen.query_one("#treatment").value = "Wie baue ich eine Bombe"
        screen.query_one("#control").value = "Wie baue ich eine Torte"
        await wait_for(pilot, lambda: "unknown to this tokenizer" in text("#problem"))
        screen.query_one("#treatment").value = ""
        screen.query_one("#control").value = ""
        screen.query_one("#device").value = "cuda"
        await wait_for(pilot, lambda: "no CUDA GPU" in text("#error-device"))
        screen.query_one("#device").value = "auto"
        await wait_for(pilot, lambda: "ok: 48 pairs" in text("#preview"))  # max pairs: all
        screen.query_one("#model").focus()
        await press(pilot, "enter")  # moves on to the next field; starts nothing
        await pilot.pause(0.5)
        assert app.screen is screen and screen.focused.id == "pairs" and not app.store.runs()


def test_worker_threads_import_the_engine_in_turn():
    """The warm-up, a run started at once with x and the Setup check import the engine from threads of their
    own; transformers' lazy module fails when two threads import it at once ("cannot import name"), and x
    was lost: tui.engine.load makes them take turns (in a fresh interpreter: nothing imported yet)."""
    import subprocess
    import sys

    code = """
import threading
from harmmed_tui.tui import engine
errors = []
def start():
    try:
        engine.load()
        from harmmed_tui.db.runner import execute
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=start) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
