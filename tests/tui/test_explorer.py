"""The explorer's numbers and habits, one behaviour per test, on stored runs of the embedded organism."""

import shutil

import pytest
from textual_plotext import PlotextPlot

from harmmed_tui.analysis.sites import readable
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.dialogs import ExportScreen, export_path
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.run_details import RunDetailsScreen
from harmmed_tui.tui.widgets import heat
from tests.tui.pilot import press

SIZE = (100, 30)


@pytest.fixture(scope="module")
def _stored(tmp_path_factory):
    """Run 1: three pairs, every module and neuron. Run 2: neurons only (the gate recipe)."""
    path = tmp_path_factory.mktemp("explorer") / "runs.db"
    with Store(path) as store:
        execute(RunSpec(max_pairs=3, modules=("resid", "attn", "mlp", "neuron")), store)
        execute(RunSpec(max_pairs=2, modules=("neuron",), layers="all"), store)
    return path


@pytest.fixture
def db(_stored, tmp_path):
    return str(shutil.copy(_stored, tmp_path / "runs.db"))


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def legend(app) -> str:
    """The legend of the pane in front."""
    return str(app.screen.pane.query_one(".legend").render())


def cells(table, row: int) -> list[str]:
    return [str(c) for c in table.get_row_at(row)]


async def test_header_says_metric_method_pairs_and_te_with_its_ci(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")  # run 1 (the runs are newest first)
        summary = text(app, "#summary")
        assert "metric refusal" in summary and "method exact" in summary
        assert "3 pairs, TE +14.5" in summary and "95% CI" in summary


async def test_pair_view_shows_its_prompts_te_and_behaviour(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "p")
        summary = text(app, "#summary")
        assert "How do I kill a person?" in summary and "How do I kill a process?" in summary
        assert "TE +14.366" in summary and "flips" in summary


async def test_a_failed_run_shows_its_error(db):
    with Store(db) as store, store.db.conn:
        store.db.execute("UPDATE runs SET status = 'failed', error = 'CUDA out of memory' WHERE id = 1")
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        assert "failed: CUDA out of memory" in text(app, "#summary")


async def test_layer_table_has_ie_and_ie_over_te_and_t_toggles_the_colouring(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        table = app.screen.pane.table
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[:4] == ["layer", "resid IE/TE", "attn IE/TE", "mlp IE/TE"]
        assert labels[4:] == ["resid IE", "attn IE", "mlp IE"]
        assert cells(table, 0)[1] == "+1.000"  # resid at layer 0, every position: the whole TE
        assert "colour: IE/TE" in legend(app)
        await press(pilot, "t")
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[1] == "resid IE" and "each row by its largest |IE|" in legend(app)


async def test_sixteen_colour_terminals_get_shading_glyphs(db, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        assert cells(app.screen.pane.table, 0)[1] == "█+1.000"


def test_tokens_read_as_a_person_reads_them():
    assert readable("ĠHello") == "·Hello" and readable("Ċ") == "⏎" and readable("▁the") == "·the"
    assert readable("<0x0A>") == "\\x0a" and readable("plain") == "plain"


def test_heat_cells_start_from_the_background_and_fall_back_to_glyphs():
    light = (250, 250, 247)
    assert heat(0.0, 1.0, light).style == ""  # zero is the background itself, in a light theme too
    assert "on rgb(210,50,50)" in str(heat(1.0, 1.0, light).style)
    assert str(heat(0.5, 1.0, glyphs=True)).startswith("▒") and str(heat(-1.0, 1.0, glyphs=True)) == "█-1.000"
    # in 16 colours the sign is the terminal's own red or blue, as the legend says (the glyph is strength)
    assert heat(0.253, 1.0, glyphs=True).style == "red" and heat(-0.253, 1.0, glyphs=True).style == "blue"
    assert heat(-0.9, 1.0, glyphs=True).style == "bold blue" and heat(0.0, 1.0, glyphs=True).style == ""


async def test_p_and_shift_p_cycle_pairs_both_ways_and_0_jumps_to_the_aggregate(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        explore = app.screen
        await press(pilot, "P")
        assert explore.view.pair == 2
        await press(pilot, "P", "P")
        assert explore.view.pair == 0
        await press(pilot, "0")
        assert explore.view.pair is None


async def test_a_neuron_only_run_opens_on_the_top_neurons_across_layers(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "enter")  # run 2
        explore = app.screen
        assert explore.view.level == "top" and "top neurons across layers" in text(app, "#crumb")
        table = explore.pane.table
        assert (
            table.row_count > 0 and str(table.columns[next(iter(list(table.columns)[1:2]))].label) == "layer"
        )
        strengths = [abs(float(cells(table, i)[4])) for i in range(table.row_count)]
        assert strengths == sorted(strengths, reverse=True)
        layer = int(cells(table, 3)[1])
        await press(pilot, "j", "j", "j", "enter")  # into that neuron's layer
        assert (explore.view.level, explore.view.layer) == ("neurons", layer)
        await press(pilot, "escape")
        assert explore.view.level == "top" and table.cursor_row == 3


async def test_going_back_keeps_your_place(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        explore = app.screen
        table = explore.pane.table
        await press(pilot, "j", "j", "enter")  # layer 2
        assert explore.view.layer == 2
        await press(pilot, "escape")
        assert explore.view.level == "layers" and table.cursor_row == 2
        await press(pilot, "enter")
        grid = explore.pane.table  # (each level's pane keeps its own table, and its cursor)
        grid.move_cursor(row=2, column=0)  # mlp
        await press(pilot, "enter")
        assert explore.view.level == "neurons"
        await press(pilot, "escape")
        assert explore.view.level == "modules" and grid.cursor_row == 2


async def test_i_opens_the_run_details(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "i")
        await pilot.pause()
        assert isinstance(app.screen, RunDetailsScreen)
        shown = str(app.screen.query_one("#details-text").render())
        assert "spec:" in shown and "total effect per pair" in shown and "violence-00" in shown
        await press(pilot, "escape")
        assert isinstance(app.screen, ExploreScreen)


async def test_runs_screen_shows_runs_started_elsewhere_within_two_seconds(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#runs")
        assert table.row_count == 2
        labels = [str(c.label) for c in table.columns.values()]
        assert {"modules", "method", "metric", "compute"} <= set(labels)
        with Store(db) as other:  # another process's run, as a CLI in another shell would add it
            other.create_run("default", RunSpec().to_json())
        await pilot.pause(2.5)
        assert table.row_count == 3 and cells(table, 0)[1] == "running"


async def test_an_empty_database_says_what_x_will_run(tmp_path):
    app = HarmmedApp(str(tmp_path / "new.db"))
    async with app.run_test(size=SIZE):
        hint = text(app, "#hint")
        assert "No runs yet" in hint and "the embedded default model on builtin pairs (first 4)" in hint
        assert (
            "resid,attn,mlp,neuron at all,*" in hint and hint.split("x runs ")[1][:40] in app.screen.sub_title
        )


async def test_x_keeps_its_preselection_after_a_resume(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        before = app.spec
        with Store(db) as store, store.db.conn:
            store.db.execute("UPDATE runs SET status = 'cancelled' WHERE id = 2")
        await press(pilot, "u")  # resume run 2 (neurons only, 2 pairs)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.spec == before


async def test_export_from_the_runs_screen_names_files_by_level(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "e")  # run 1, highlighted in Runs
        dialog = app.screen
        assert isinstance(dialog, ExportScreen) and dialog.run_id == 1
        assert dialog.query_one("#path").value == str(tmp_path / "run1-layer.csv")
        dialog.query_one("#top").value = "5"
        await pilot.click("#go")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert len((tmp_path / "run1-layer.csv").read_text().splitlines()) == 1 + 5
        await press(pilot, "e")
        assert app.screen.query_one("#path").value == str(tmp_path / "run1-layer-2.csv")  # never overwrites


async def test_export_defaults_to_the_pane_in_front_and_refuses_a_missing_gate_check(db, tmp_path):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "enter", "e")  # run 2 opens on its top neurons
        dialog = app.screen
        assert dialog.query_one("#level").value == "neuron"
        assert dialog.query_one("#path").value.endswith("run2-neuron.csv")
        dialog.query_one("#level").value = "gate"
        await pilot.pause()
        await pilot.click("#go")
        assert app.screen is dialog and "no gate check" in text(app, "#problem")


def test_export_paths_hold_the_level_and_aggregation(tmp_path):
    assert export_path(3, "neuron", "markdown", True, tmp_path) == tmp_path / "run3-neuron-aggregate.md"
    (tmp_path / "run3-neuron-aggregate.md").touch()
    assert export_path(3, "neuron", "markdown", True, tmp_path).name == "run3-neuron-aggregate-2.md"


def test_readme_key_table_is_the_help_screens():
    from pathlib import Path

    from harmmed_tui.tui import keys

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert keys.markdown_table() in readme


async def test_help_lists_every_key_and_defines_the_terms(db):
    from harmmed_tui.tui import keys

    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "question_mark")
        shown = text(app, "#help")
        for where, key, what, _ in keys.rows():
            assert what in shown, (where, key)
        for term in ("IE/TE", "recur", "gate", "flips"):
            assert term in shown
        assert "delete the run (asks first)" in shown and "ctrl+o" in shown


async def test_keys_remapped_in_the_config_file(db, config_dir):
    import json

    (config_dir / "config.json").write_text(
        json.dumps({"theme": "harmmed-light", "keys": {"explore.report": "v"}})
    )
    from harmmed_tui.tui.report_screen import ReportScreen

    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "harmmed-light"
        await press(pilot, "j", "enter", "v")
        assert isinstance(app.screen, ReportScreen)
        await press(pilot, "escape", "question_mark")
        assert "v              the paper's four claims" in text(app, "#help")
    assert json.loads((config_dir / "config.json").read_text())["keys"] == {"explore.report": "v"}


async def test_slash_filters_the_table_in_front(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "N")
        table = app.screen.pane.table
        neuron = cells(table, 5)[2]
        await press(pilot, "slash", *neuron, "enter")
        assert 0 < table.row_count < 200 and all(
            neuron in " ".join(cells(table, i)) for i in range(table.row_count)
        )
        assert f"filter '{neuron}'" in legend(app)
        await press(pilot, "slash", "ctrl+u", "enter")  # an empty filter shows every row again
        assert table.row_count == 200


async def test_s_cycles_the_sort_column(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "s", "s", "s")  # layers: the third column, mlp IE/TE
        table = app.screen.pane.table
        values = [abs(float(cells(table, i)[3])) for i in range(table.row_count)]
        assert values == sorted(values, reverse=True) and "sorted by |mlp IE/TE|" in legend(app)
        await press(pilot, *["s"] * 5)  # past the last column: the order shown
        assert [cells(table, i)[0] for i in range(table.row_count)] == ["0", "1", "2", "3"]


async def test_y_copies_the_row_or_the_cell(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "y")
        assert app.clipboard.startswith("0\t+1.000")
        await press(pilot, "enter", "y")  # the grid: the cell under the cursor, `*` of resid
        assert app.clipboard == "+1.000"


async def test_m_marks_a_run_and_enter_on_another_compares_them(db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from harmmed_tui.tui.compare_screen import CompareScreen

    with Store(db) as store:
        execute(RunSpec(max_pairs=2, modules=("resid", "attn", "mlp"), positions="*"), store)  # run 3
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "m")  # run 3 marked: the row says so
        runs = app.screen.query_one("#runs")
        assert cells(runs, 0)[0] == "3 ◆" and cells(runs, 2)[0] == "1"
        await press(pilot, "j", "j", "enter")  # then run 1
        screen = app.screen
        assert isinstance(screen, CompareScreen) and (screen.run_a, screen.run_b) == (3, 1)
        table = screen.query_one("#table")
        assert table.row_count == 4 * 3 and "Pearson r" in text(app, "#crumb")
        await press(pilot, "e")
        assert len((tmp_path / "compare-3-1.csv").read_text().splitlines()) == 1 + 12
        await press(pilot, "escape")  # the mark went with the comparison: enter opens a run again
        assert cells(runs, 0)[0] == "3"
        await press(pilot, "enter")
        assert isinstance(app.screen, ExploreScreen)


async def test_keys_that_do_nothing_in_a_pane_leave_its_footer(db):
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")
        footer = lambda: {b.binding.action for b in app.screen.active_bindings.values() if b.enabled}  # noqa: E731
        assert "toggle_scale" in footer() and "page(1)" not in footer()
        await press(pilot, "N")
        assert "toggle_scale" not in footer() and "page(1)" in footer()


async def test_a_long_prompt_keeps_the_header_to_two_lines_at_80x24(db):
    """A 900-character prompt once filled the screen: the header is two lines at most, the prompts cut with
    an ellipsis, and the table stays in view; the whole prompt is under i."""
    long = "How do I kill a person? " + "Please answer in full detail, step by step. " * 20
    with Store(db) as store, store.db.conn:
        store.db.execute("UPDATE pairs SET treatment = ? WHERE run_id = 1 AND pair = 0", [long])
    app = HarmmedApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "j", "enter", "p")
        summary = app.screen.query_one("#summary")
        assert summary.region.height <= 2 and "How do I kill a person? Please answer i…" in text(
            app, "#summary"
        )
        table = app.screen.pane.table
        assert table.row_count > 0 and table.region.height >= 4
        await press(pilot, "i")
        details = " ".join(text(app, "#details-text").split())
        assert " ".join(long.split()[:30]) in details


async def test_a_run_without_module_level_sites_opens_on_its_last_position(tmp_path):
    """--positions last:3 (the README's GGUF example shape) once opened on an empty table and plot."""
    db = str(tmp_path / "runs.db")
    with Store(db) as store:
        execute(RunSpec(max_pairs=2, positions="last:3", answer_tokens=0), store)
        rows = [r for r in export.effect_rows(store, 1, "layer") if r["module"] == "mlp" and r["layer"] == 2]
        n = {p["pair"]: len(p["control_tokens"]) for p in store.pairs(1)}
        last = [r["ie"] for r in rows if r["position"] == n[r["pair"]] - 1]
    app = HarmmedApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "enter")
        table = app.screen.pane.table
        assert table.row_count == 4 and legend(app).startswith("at the last position (no * sites)")
        labels = [str(c.label) for c in table.columns.values()]
        assert float(cells(table, 2)[labels.index("mlp IE")].lstrip(" ░▒▓█")) == pytest.approx(
            sum(last) / len(last), abs=5e-4
        )
        await press(pilot, "N", "a")  # no neuron rows: each key says why, instead of nothing
        messages = [str(n.message) for n in app._notifications]
        assert sum("run 1 has no neuron rows" in m for m in messages) == 2


async def test_at_80x24_titles_fit_the_gate_summary_is_two_lines_and_claims_0_2_have_no_empty_plot(db):
    """What a user reads at 80x24: the plot's title is drawn (plotext drops one wider than the plot), a
    gate check's summary takes two lines whatever it holds, and only claim 3 has a plot beside it."""
    from harmmed_tui.analysis.gate import GateSpec
    from harmmed_tui.db.runner import check_gate
    from harmmed_tui.tui.report_screen import ReportScreen

    with Store(db) as store:
        check_gate(store, 1, GateSpec(tops=(1, 5), seeds=1, max_new_tokens=4))
    app = HarmmedApp(db)
    async with app.run_test(size=(80, 24)) as pilot:
        await press(pilot, "j", "enter")  # run 1
        screen = app.screen
        plot = screen.pane.query_one(PlotextPlot)
        assert "IE/TE by layer" in plot.plt.build() and screen.pane.query_one(PlotextPlot).size.width >= 30
        await press(pilot, "N")
        gate = screen.query_one("#gate")
        assert gate.display and gate.size.height == 2 and text(app, "#gate").startswith("gate check 1")
        assert "page 1 of " in legend(app)
        await press(pilot, "R")
        report = app.screen
        assert isinstance(report, ReportScreen)
        for claim in range(4):  # the gate curve beside claim 3, the finding full width beside the others
            assert report.query_one("#curve").display == (claim == 3)
            await press(pilot, "j")


async def test_e_offers_the_figure_of_the_pane_in_front(db, tmp_path):
    """On the module x position grid of layer 3, with the cursor on mlp: e's format list has the pane's
    figure beside the table formats; it writes that grid, of that module, as an svg."""
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter")  # run 1
        await press(pilot, "G", "enter", "j", "j")  # layer 3's grid, on the mlp row
        await press(pilot, "e")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ExportScreen)
        labels = [str(label) for label, _ in dialog.query_one("#format")._options]
        assert "figure: grid (svg)" in labels and "csv" in labels
        dialog.query_one("#format").value = "svg"
        await pilot.pause()
        path = dialog.query_one("#path").value
        assert path.endswith("run1-grid.svg")
        dialog.query_one("#path").value = str(tmp_path / "grid.svg")
        await pilot.click("#go")
        await app.workers.wait_for_complete()
        await pilot.pause()
    text = (tmp_path / "grid.svg").read_text()
    assert "mlp IE/TE by layer and position" in text and "harmmed-tui run 1" in text


async def test_slash_filters_neurons_on_every_page_and_s_sorts_values_only(db):
    """On the neuron panes `/` names neurons (3:223, 223, or 3:) and is answered in SQL across every page,
    so ] pages through the filtered neurons; `s` sorts by an effect, never by a layer or neuron number."""
    app = HarmmedApp(db)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "j", "enter", "N", "slash", *"0:", "enter")
        table = app.screen.pane.table
        first = [cells(table, i) for i in range(table.row_count)]
        assert table.row_count == 200 and {c[1] for c in first} == {"0"}  # layer 0 only, a full page
        assert "filter '0:' (every page)" in legend(app)
        await press(pilot, "right_square_bracket")
        page_2 = [cells(table, i) for i in range(table.row_count)]
        assert page_2 and {c[1] for c in page_2} == {"0"} and page_2[0][0] == "201"
        await press(pilot, "slash", "ctrl+u", *"x9", "enter")  # names no neuron: said, the filter kept
        assert "name neurons as 223" in str(list(app._notifications)[-1].message)
        await press(pilot, "escape", "s")
        assert "sorted by |IE" in legend(app)
