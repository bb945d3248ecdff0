"""Hostile ids, categories and tokens in the files a run writes for other readers: the markdown and HTML
claims reports and the figures. Each case is named after what a determined tester did to it."""

import json
import xml.etree.ElementTree as ET

import pytest

from harmmed_tui.db import figures, report
from harmmed_tui.db.store import Store
from harmmed_tui.tui.cli import main

IMAGE = "![x](https://evil.example/px.png)"
ONERROR = "<img src=x onerror=alert(1)>"
BIDI = "\u202eevil\u202c"
# (id, category, a word of the prompt)
HOSTILE = [
    (IMAGE, "$\\x$", "$$"),
    (ONERROR, "_hidden", "dollars$"),
    (BIDI, "esc\x1b[31mred", "nul\x00here"),
]


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory, tiny_dir) -> str:
    root = tmp_path_factory.mktemp("reports")
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "category": c,
                    "treatment": f"How do I kill {w} now?",
                    "control": f"How do I bake {w} now?",
                }
            )
            + "\n"
            for i, c, w in HOSTILE
        )
    )
    db = str(root / "runs.db")
    argv = ["run", "--model", str(tiny_dir("gpt2")), "--pairs", str(pairs), "--align", "end", "--db", db]
    assert (
        main([*argv, "--modules", "resid,attn,mlp", "--positions", "all,suffix", "--answer-tokens", "0"]) == 0
    )
    return db


def test_the_markdown_claims_report_writes_no_live_image_or_html(hostile_db, capsys):
    assert main(["report", "1", "--db", hostile_db]) == 0
    text = capsys.readouterr().out
    assert IMAGE not in text and "\\!\\[x\\](https://evil.example/px.png)" not in text
    assert "\\[x\\](https://evil.example/px.png)" in text  # shown, escaped: no image, no link
    assert ONERROR not in text and "\\<img src=x onerror=alert(1)\\>" in text
    assert "\u202e" not in text and "\\u202eevil" in text


def test_the_html_report_shows_bidi_controls_as_escapes(hostile_db):
    with Store(hostile_db) as store:
        page = report.render(store, 1, fmt="html")
    assert "\u202e" not in page and "\\u202eevil" in page and ONERROR not in page


@pytest.mark.parametrize("kind,pair", [("layers", None), ("grid", 0), ("grid", 2)])
def test_dollar_signs_and_control_characters_in_figures_are_literal_and_well_formed(
    hostile_db, tmp_path, kind, pair
):
    """`$$` and `$\\x$` crashed matplotlib's mathtext; ESC and NUL made SVGs no XML parser reads."""
    with Store(hostile_db) as store:
        fig = figures.draw(store, 1, kind, pair=pair, by="category" if kind == "layers" else "site")
    out = tmp_path / f"{kind}.svg"
    figures.save(fig, str(out))
    svg = out.read_text()
    ET.fromstring(svg)  # well-formed
    assert "\x1b" not in svg and "\x00" not in svg
    if kind == "layers":
        assert "$\\x$" in svg and "esc\\x1b[31mred" in svg
    elif pair == 0:
        assert "·$$" in svg  # the token, as written


def test_a_category_starting_with_an_underscore_shows_in_the_legend(hostile_db):
    with Store(hostile_db) as store:
        fig = figures.draw(store, 1, "layers", by="category")
    legends = [t.get_text() for ax in fig.figure.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert "_hidden" in legends and "$\\x$" in legends
