"""The read-only commands start instantly: none of them imports torch or transformers."""

import subprocess
import sys

import pytest

CHECK = """import sys
from harmmed_tui.tui.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "tokenizers"})
assert not heavy, f"imported {heavy}"
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["runs", "--json"],
        ["show", "1"],
        ["export", "1", "--aggregate", "--format", "markdown"],
        ["export", "1", "--level", "neuron", "--format", "parquet", "-o", "{tmp}/n.parquet"],
        ["export", "1", "--level", "gate", "--format", "json"],
        ["compare", "1", "2", "--format", "csv"],
        ["report", "1", "--format", "latex"],
        ["report", "1", "--format", "html", "-o", "{tmp}/r.html"],
        ["figure", "1", "layers", "-o", "{tmp}/f.svg"],
        ["figure", "1", "gate", "-o", "{tmp}/g.pdf"],
        ["export", "1", "--level", "gate", "--aggregate"],
        ["delete", "2"],
    ],
    ids=lambda argv: " ".join(argv[:3]),
)
def test_readonly_command_imports_no_torch(stored_db, tmp_path, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = subprocess.run(
        [sys.executable, "-c", CHECK, *argv, "--db", stored_db], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
