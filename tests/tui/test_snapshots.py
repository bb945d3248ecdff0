"""Each screen at 80x24, on a stored run of the organism (compared with the SVGs in __snapshots__;
after an intended change: pytest tests/tui/test_snapshots.py --snapshot-update)."""

import shutil

import pytest

from harmmed_tui.analysis.gate import GateSpec
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import check_gate, execute
from harmmed_tui.db.store import Store
from harmmed_tui.tui.app import HarmmedApp
from tests.tui.pilot import press

SIZE = (80, 24)


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory):
    """Three built-in pairs, every module and neuron, and a gate check; times and paths fixed so that screens
    repeat on any machine."""
    path = tmp_path_factory.mktemp("snap") / "runs.db"
    store = Store(path)
    execute(RunSpec(max_pairs=3, modules=("resid", "attn", "mlp", "neuron")), store)
    check_gate(store, 1, GateSpec(tops=(5, 20), groups=("final", "all"), seeds=2, max_new_tokens=12))
    with store.db.conn:
        store.db.execute(
            "UPDATE runs SET started = '2026-11-23T12:00:00+00:00', finished = '2026-11-23T12:00:01+00:00', "
            "compute_s = 1.0, provenance = json_set(provenance, '$.resolved', 'analysis/organism/model', "
            "'$.tokenizer_name', 'analysis/organism/model')"  # (not this checkout's path)
        )
    store.close()
    return path


def keys(*pressed):
    """Press keys, then let deferred layout (table widths, scrolling) settle before the screenshot."""

    async def run_before(pilot):
        await press(pilot, *pressed)  # (each key's pane load ended and drawn)
        await pilot.pause(0.3)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)

    return run_before


@pytest.fixture
def app(stored_run, tmp_path):
    db = tmp_path / "runs.db"
    shutil.copy(stored_run, db)
    return HarmmedApp(str(db), RunSpec(max_pairs=2))


def test_runs_screen(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys())


def test_setup_screen(snap_compare, app):
    async def checked(pilot):
        await press(pilot, "n")
        app.screen.query_one("#model").cursor_blink = False  # a blinking cursor differs from shot to shot
        while "ok:" not in str(app.screen.query_one("#preview").render()):
            await pilot.pause(0.05)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=checked)


def test_explore_layers(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("enter"))


def test_explore_module_grid(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("enter", "G", "enter"))


def test_explore_neurons_with_gate_check(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("enter", "enter", "j", "j", "enter"))


def test_export_dialog(snap_compare, app):
    async def opened(pilot):
        await press(pilot, "enter", "e")
        app.screen.query_one("#path").value = "run1.csv"  # not the machine's working directory
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=opened)


def test_help(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("question_mark"))


@pytest.mark.parametrize("theme", ["harmmed-dark", "harmmed-light"])
def test_claims_report(snap_compare, app, theme):
    async def opened(pilot):
        app.theme = theme
        await keys("enter", "R", "j", "j", "j")(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=opened)


def test_explore_layers_light(snap_compare, app):
    async def opened(pilot):
        app.theme = "harmmed-light"
        await keys("enter")(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=opened)


def test_top_neurons_across_layers(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("enter", "N"))


def test_run_details(snap_compare, app):
    assert snap_compare(app, terminal_size=SIZE, run_before=keys("enter", "i"))
