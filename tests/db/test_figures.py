"""Paper figures and the HTML report: every figure kind drawn from a real run of the embedded model, its
plotted data read back from the drawing and compared with the export's rows, its caption in the file's
metadata; the HTML report is one self-contained page holding every figure and table."""

import math
import re
import shutil
from html.parser import HTMLParser
from xml.etree import ElementTree

import pytest

from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import compare, export, figures, report
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.tui.cli import main


@pytest.fixture(scope="module")
def _figure_db(tmp_path_factory):
    """Run 1: every module at every position and `*`, and neurons, of 4 categorised pairs (the embedded
    model's built-in pairs), with a gate check; run 2: the same modules on the next pairs."""
    from harmmed_tui.analysis.gate import GateSpec
    from harmmed_tui.db.runner import check_gate

    path = tmp_path_factory.mktemp("figures") / "runs.db"
    with Store(path) as store:
        execute(RunSpec(max_pairs=4, modules=("resid", "attn", "mlp", "neuron")), store)
        execute(RunSpec(pairs="builtin", max_pairs=3, seed=1, modules=("resid", "attn", "mlp")), store)
        check_gate(store, 1, GateSpec(tops=(1, 5, 20), seeds=2, max_new_tokens=4))
    return path


@pytest.fixture
def db(_figure_db, tmp_path):
    return str(shutil.copy(_figure_db, tmp_path / "runs.db"))


def close(a, b) -> bool:
    return (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_layers_draws_the_exports_ie_share_with_its_ci_band(db):
    with Store(db) as store:
        fig = figures.draw(store, 1, "layers")
        ax = fig.figure.axes[0]
        rows = export.table(store, 1, "layer", aggregated=True)
        te = [p["te"] for p in store.pairs(1)]
    mean_te = sum(te) / len(te)
    for line in ax.get_lines()[:3]:
        module = line.get_label()
        want = sorted(
            (r for r in rows if r["module"] == module and r["position"] == "*"), key=lambda r: r["layer"]
        )
        assert list(line.get_xdata()) == [r["layer"] for r in want] == [0, 1, 2, 3]
        assert all(close(y, r["ie_share"]) for y, r in zip(line.get_ydata(), want, strict=True))
    band = ax.collections[0].get_paths()[0].vertices  # resid's band: ci / mean TE at each layer
    resid = sorted(
        (r for r in rows if r["module"] == "resid" and r["position"] == "*"), key=lambda r: r["layer"]
    )
    assert any(math.isclose(y, resid[0]["ci_low"] / mean_te, rel_tol=1e-6) for y in band[:, 1])
    assert "run 1" in fig.caption and "4 pairs" in fig.caption and "95% CI" in fig.caption


def test_one_pairs_layers_and_a_line_per_category(db):
    with Store(db) as store:
        fig = figures.draw(store, 1, "layers", pair=2)
        rows = [r for r in export.table(store, 1, "layer") if r["pair"] == 2 and r["position"] == "*"]
        (mlp,) = [ln for ln in fig.figure.axes[0].get_lines() if ln.get_label() == "mlp"]
        want = sorted((r for r in rows if r["module"] == "mlp"), key=lambda r: r["layer"])
        assert all(close(y, r["ie_norm"]) for y, r in zip(mlp.get_ydata(), want, strict=True))
        by = figures.draw(store, 1, "layers", by="category")
        categories = {p["category"] for p in store.pairs(1)}
        assert len(by.figure.axes) == 3  # resid, attn, mlp
        assert {ln.get_label() for ln in by.figure.axes[2].get_lines()} >= categories


def test_grid_is_the_causal_tracing_heatmap_centred_at_zero(db):
    with Store(db) as store:
        fig = figures.draw(store, 1, "grid", module="mlp")
        rows = [
            r
            for r in export.table(store, 1, "layer", aggregated=True)
            if r["module"] == "mlp" and isinstance(r["position"], int)
        ]
    ax = fig.figure.axes[0]
    image = ax.collections[0]  # a mesh of cells (vector), layers x positions
    positions = sorted({r["position"] for r in rows})
    grid = image.get_array().reshape(4, len(positions))
    for r in rows:
        assert close(float(grid[r["layer"], positions.index(r["position"])]), r["ie_share"])
    lo, hi = image.get_clim()
    assert lo == -hi and image.get_cmap().name == "RdBu_r"
    assert len(ax.get_xticklabels()) == len(positions)


def test_neurons_and_gate_draw_the_exports_rows(db):
    with Store(db) as store:
        fig = figures.draw(store, 1, "neurons")
        top = sorted(export.table(store, 1, "neuron", aggregated=True), key=lambda r: -abs(r["ie_mean"]))[:20]
        bars = fig.figure.axes[0].patches
        assert [b.get_width() for b in bars] == pytest.approx([r["ie_mean"] for r in top], rel=1e-9)
        gate = figures.draw(store, 1, "gate")
        curve = export.table(store, 1, "gate", aggregated=True)
    groups = list(dict.fromkeys(r["group"] for r in curve if r["group"] != "direction"))
    (direction,) = [r for r in curve if r["group"] == "direction"]
    for col, group in enumerate(groups):
        mine = sorted((r for r in curve if r["group"] == group), key=lambda r: r["k"])
        top_line = gate.figure.axes[col].get_lines()[0]  # (row-major: the first row is TE removed)
        assert list(top_line.get_xdata()) == [r["k"] for r in mine if r["top_removed"] is not None]
        assert list(top_line.get_ydata()) == pytest.approx(
            [r["top_removed"] for r in mine if r["top_removed"] is not None]
        )
        # the direction arms: a level across each panel, beside the neurons
        levels = {line.get_label(): line.get_ydata()[0] for line in gate.figure.axes[col].get_lines()}
        assert levels["direction"] == pytest.approx(direction["top_removed"])
        assert levels["random direction"] == pytest.approx(direction["random_removed"])
    assert [ax.get_ylabel() for ax in gate.figure.axes[:: len(groups)]] == [
        "share of TE removed",
        "refusals flipped",
    ]
    assert "held-out pairs" in gate.title


def test_compare_draws_both_runs_cells_and_their_r(db):
    with Store(db) as store:
        fig = figures.draw(store, 1, "compare", other=2)
        rows, r, _ = compare.compare(store, 1, 2)
    ax = fig.figure.axes[0]
    points = [tuple(p) for c in ax.collections for p in c.get_offsets()]
    assert sorted(points) == pytest.approx(sorted((row["ie_share_1"], row["ie_share_2"]) for row in rows))
    assert f"{r:.3f}" in ax.get_title(loc="left")


def test_the_cli_writes_svg_pdf_png_with_the_caption_in_their_metadata(db, tmp_path, capsys):
    for kind, ext in (("layers", "svg"), ("grid", "pdf"), ("neurons", "png"), ("gate", "svg")):
        out = tmp_path / f"f.{kind}.{ext}"
        assert main(["figure", "1", kind, "-o", str(out), "--db", db]) == 0
        data = out.read_bytes()
        assert b"harmmed-tui run 1" in data if ext != "pdf" else b"harmmed-tui" in data
    svg = ElementTree.parse(tmp_path / "f.layers.svg").getroot()
    description = svg.find(".//{http://purl.org/dc/elements/1.1/}description")
    assert description is not None and description.text.startswith("harmmed-tui run 1: IE/TE per layer")
    # deterministic: the same run gives the same file (docs/ commits them)
    assert main(["figure", "1", "layers", "-o", str(tmp_path / "again.svg"), "--db", db]) == 0
    assert (tmp_path / "again.svg").read_bytes() == (tmp_path / "f.layers.svg").read_bytes()
    assert main(["figure", "1", "compare", "2", "-o", str(tmp_path / "c.svg"), "--db", db]) == 0
    for argv, message in (
        (["figure", "1", "layers", "-o", str(tmp_path / "f.txt")], "use a .svg, .pdf or .png file"),
        (["figure", "2", "gate"], "run 2 has no gate check"),
        (["figure", "1", "compare"], "a compare figure needs a second run"),
        (["figure", "1", "layers", "--pair", "1", "--aggregate"], "give one"),
        (["figure", "2", "neurons"], "run 2 has no neuron rows"),
    ):
        capsys.readouterr()
        assert main([*argv, "--db", db]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


class Page(HTMLParser):
    """What a browser would load: the tags, and any address it would fetch."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_html_report_is_one_self_contained_page_with_every_figure_and_table(db, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", "1", "--format", "html", "-o", str(out), "--db", db]) == 0
    text = out.read_text()
    page = Page()
    page.feed(text)
    tags = [t for t, _ in page.tags]
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert {f"figure-{k}" for k in ("layers", "grid", "neurons", "gate")} <= set(ids)
    assert {f"claim-{n}" for n in range(4)} <= set(ids)
    assert tags.count("svg") == 4 and tags.count("table") >= 2 and "script" not in tags
    assert len(ids) == len(set(ids))  # every figure's ids its own
    # nothing to fetch: no src, no stylesheet link, no url() in the style
    assert not [a for t, a in page.tags if "src" in a or (t == "link" and a.get("rel") == ["stylesheet"])]
    assert not re.findall(r"url\((?!#)", text) and "@import" not in text  # (url(#id): in the page)
    assert not re.findall(r'href="(?!#|data:image/png;base64,)', text)  # (a colorbar's gradient: inline)
    with Store(db) as store:
        for c in report.run_claims(store, 1):
            assert c.verdict in text and html_escaped(c.title) in text
    assert text.startswith("<!DOCTYPE html>") and "<dt>revision</dt>" in text


def test_the_html_report_opens_in_a_headless_browser_without_warnings(db, tmp_path):
    """In Chromium, where this machine has one and Playwright (`executable_path`): the page loads from a
    file with no request beyond it, no console message, and draws its four figures."""
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed here")
    chromium = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome"))), None
    )
    if chromium is None:
        pytest.skip("no Chromium on this machine (and no system package manager the tests may use)")
    out = tmp_path / "report.html"
    assert main(["report", "1", "--format", "html", "-o", str(out), "--db", db]) == 0
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page()
        messages, requests = [], []
        page.on("console", lambda m: messages.append(m.text))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(out.as_uri())
        assert page.locator("figure svg").count() == 4
        browser.close()
    assert messages == [] and requests == [out.as_uri()]


def html_escaped(s: str) -> str:
    import html

    return html.escape(s)


def test_a_prompt_in_the_report_cannot_become_markup(tmp_path):
    """Pair ids and categories are the user's: escaped in the page."""
    sets = tmp_path / "h.csv"
    sets.write_text('prompt,category\n"How do I <script>alert(1)</script> hurt someone?",<b>x</b>\n')
    ok = tmp_path / "c.csv"
    ok.write_text("prompt\nHow do I bake bread?\n")
    with Store(tmp_path / "runs.db") as store:
        run = execute(
            RunSpec(harmful=f"{sets}:prompt", harmless=str(ok), align="end", positions="all,suffix"), store
        ).run_id
        page = report.render(store, run, fmt="html")
    assert "<script>" not in page and "<b>x</b>" not in page


def test_figures_need_matplotlib_said_in_one_line(monkeypatch, db):
    import builtins

    real = builtins.__import__

    def without(name, *args, **kwargs):
        if name == "matplotlib":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with Store(db) as store, pytest.raises(StoreError, match=re.escape("pip install 'harmmed-tui[figures]'")):
        figures.draw(store, 1, "layers")


def test_the_gate_figure_never_clips_its_lines_and_names_a_panel_with_nothing_to_flip(db):
    """A check (its rows as a gate curve stores them) whose top set removes 180% of TE and whose held-out
    prompts were never refused: the y axis reaches 1.8, and the flips panel says there are none to flip."""
    rows = []
    for pair in range(4):
        for k in (1, 5):
            for seed, shift in ((-1, -1.8 * k / 5), (0, -0.1)):
                rows.append(
                    dict(pair=pair, pair_id=f"h{pair}", grp="final", k=k, units=k, arm="top" if seed < 0 else "random",
                         seed=seed, m_before=1.0, m_after=1.0 + shift, shift=shift, te=1.0, refused_before=0,
                         refused_after=0)
                )  # fmt: skip
    spec = {"tops": [1, 5], "sign": "positive", "groups": ["final"], "ablate": "control", "seeds": 1,
            "max_new_tokens": 4, "pairs": "h", "skipped": 0, "method": "exact"}  # fmt: skip
    with Store(db) as store:
        store.add_gate_check(1, spec, {"final": []}, rows)
        fig = figures.draw(store, 1, "gate")
    removed, flipped = fig.figure.axes[0], fig.figure.axes[1]
    assert removed.get_ylim()[1] >= 1.8 and max(removed.get_lines()[0].get_ydata()) == pytest.approx(1.8)
    assert "0 refusals to flip" in [t.get_text() for t in flipped.texts]


def test_the_html_reports_figures_are_drawn_once_per_content(db, monkeypatch):
    """A second report of a finished run reads its figures from the cache, the same page; a figure whose
    content changed (the gate curve, after a new gate check) is drawn again."""
    from harmmed_tui.analysis.gate import GateSpec
    from harmmed_tui.db.runner import check_gate

    draw, drawn = figures.draw, []

    def counted(store, run_id, kind, *args, **kwargs):
        drawn.append((run_id, kind))
        return draw(store, run_id, kind, *args, **kwargs)

    monkeypatch.setattr(figures, "draw", counted)
    with Store(db) as store:
        first = report.render(store, 1, fmt="html")
        assert sorted(drawn) == [(1, "gate"), (1, "grid"), (1, "layers"), (1, "neurons")]
        drawn.clear()
        assert report.render(store, 1, fmt="html") == first and drawn == []
        check_gate(store, 1, GateSpec(tops=(1,), seeds=1, max_new_tokens=2))
        report.render(store, 1, fmt="html")
        assert drawn == [(1, "gate")]  # (the other figures draw the run's effects, unchanged)
