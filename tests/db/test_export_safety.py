"""Exported tables carry untrusted text (prompts, ids, answers, tokens): a spreadsheet must not run it, a
markdown or LaTeX reader must read it back as written, and the file is written as a shell's `>` would."""

import csv
import io
import os
import shutil
import subprocess

import pytest
from markdown_it import MarkdownIt

from harmmed_tui.db import export
from harmmed_tui.tui.cli import main

HOSTILE = [
    '=HYPERLINK("https://evil.example","click")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\tTAB",
    "[/INST] a|b \\| c\\",
    "*bold* _em_ `code` <b>html</b> &amp; [link](https://x) ~~s~~ #",
    "line one\nline two",
    "50% of $x & #1_a {b} ~ ^ \\ [INST]",
]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised():
    rows = [{"text": h, "ie": -0.25, "n": 3} for h in HOSTILE]
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        read = list(csv.DictReader(io.StringIO(export.render(rows, fmt)), delimiter=delimiter))
        for row, h in zip(read, HOSTILE, strict=True):
            opens_formula = h[0] in "=+-@\t"
            assert row["text"] == ("'" + h if opens_formula else h)
            assert row["ie"] == "-0.25"  # numbers are numbers, negative ones too
        raw = list(
            csv.DictReader(io.StringIO(export.render(rows, fmt, formula_guard=False)), delimiter=delimiter)
        )
        assert [r["text"] for r in raw] == HOSTILE


def _markdown_cells(text: str) -> list[list[str]]:
    """The cells of a markdown table as a reader sees them (markdown-it, GFM tables), <br> as newlines."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    rows, row = [], None
    for t in tokens:
        if t.type == "tr_open":
            row = []
        elif t.type == "inline" and row is not None:
            row.append(
                "".join(
                    "\n" if c.type == "html_inline" and c.content == "<br>" else c.content
                    for c in t.children
                    if c.type in ("text", "html_inline")
                )
            )
        elif t.type == "tr_close":
            rows.append(row)
            row = None
    return rows


def test_markdown_reads_back_as_written():
    rows = [{"text": h, "ie": 0.5} for h in HOSTILE]
    cells = _markdown_cells(export.render(rows, "markdown"))
    assert cells[0] == ["text", "ie"]
    assert [c[0] for c in cells[1:]] == [h.strip() for h in HOSTILE]  # (GFM trims a cell's outer spaces)
    assert all(c[1] == "0.5" for c in cells[1:])


LATEX_SPECIALS = {
    r"\textbackslash{}": "\\",
    r"\&": "&",
    r"\%": "%",
    r"\$": "$",
    r"\#": "#",
    r"\_": "_",
    r"\{": "{",
    r"\}": "}",
    r"\textasciitilde{}": "~",
    r"\textasciicircum{}": "^",
    "{[}": "[",
    "{]}": "]",
}


def _tex_read(s: str) -> str:
    """What TeX typesets for an escaped cell: every escape back to its character, one pass."""
    import re

    return re.sub("|".join(map(re.escape, LATEX_SPECIALS)), lambda m: LATEX_SPECIALS[m.group()], s)


def test_latex_escapes_every_special_character_once():
    for h in HOSTILE:
        escaped = export.latex_escape(h)
        assert _tex_read(escaped) == h.replace("\n", " ").replace("\t", "\t")
        bare = re.sub("|".join(map(re.escape, LATEX_SPECIALS)), "", escaped)
        assert not set(bare) & set("\\&%$#_{}~^[]"), (h, escaped)


import re  # noqa: E402


@pytest.mark.skipif(not shutil.which("pdflatex"), reason="no TeX installed here: the escaped-set test stands")
def test_latex_table_compiles(tmp_path):
    rows = [{"text": h.replace("\t", " "), "ie": 0.5} for h in HOSTILE]
    doc = "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
    doc += export.render(rows, "latex") + "\\end{document}\n"
    (tmp_path / "t.tex").write_text(doc)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "t.tex"], cwd=tmp_path, capture_output=True
    )
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_export_has_the_mode_the_umask_gives(stored_db, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run1.csv"
        assert main(["export", "1", "-o", str(out), "--db", stored_db]) == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_export_keeps_an_existing_files_mode_and_writes_through_a_symlink(stored_db, tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert main(["export", "1", "-o", str(link), "--db", stored_db]) == 0
    assert link.is_symlink() and link.resolve() == real
    assert real.read_text().startswith("run_id,") and real.stat().st_mode & 0o777 == 0o640


def test_o_onto_a_device_or_fifo_writes_in_place_never_replacing_it(stored_db, tmp_path, capsys):
    """`-o /dev/null` (as root: renaming over it would replace the system's device with a file) and `-o` a
    FIFO are written as a shell's `>` writes them; both stay what they were."""
    import stat
    import threading

    assert main(["export", "1", "-o", "/dev/null", "--db", stored_db]) == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    assert main(["export", "1", "--format", "json", "-o", str(fifo), "--db", stored_db]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got and got[0].startswith(b"[")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pipe.")]  # no temp file left


@pytest.mark.parametrize("where", ["/proc/harmmed.csv", "/proc/self/status", "loop", "socket"])
def test_o_where_nothing_can_be_written_is_one_line(stored_db, tmp_path, capsys, where):
    import socket

    if where == "loop":
        (tmp_path / "a").symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(tmp_path / "a")
        where = str(tmp_path / "a")
    elif where == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(tmp_path / "s.sock"))
        where = str(tmp_path / "s.sock")
    assert main(["export", "1", "-o", where, "--db", stored_db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err and "Traceback" not in err, err


def test_o_into_a_read_only_filesystem_is_one_line(stored_db, capsys):
    """A read-only mount (here: sysfs, read-only in this container as on most) refuses the temp file."""
    target = "/sys/harmmed.csv"
    assert main(["export", "1", "-o", target, "--db", stored_db]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write {target}" in err, err
