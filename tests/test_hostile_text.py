"""A hostile prompt set through every command and screen: its text comes out literally, nothing crashes, and
nothing in it reaches the terminal as markup, a link or an escape sequence.

Prompts, ids and model answers are untrusted: Llama-2 prompt sets carry [INST] and [/INST], scraped sets
carry ANSI and OSC 8 sequences, bidi controls and newlines, and an id can be Rich markup."""

import json

import pytest

from harmmed_tui.tui.app import HarmmedApp
from harmmed_tui.tui.cli import main
from harmmed_tui.tui.compare_screen import CompareScreen
from harmmed_tui.tui.explore_screen import ExploreScreen
from harmmed_tui.tui.report_screen import ReportScreen
from harmmed_tui.tui.run_details import RunDetailsScreen
from tests.tui.pilot import press

OSC8 = "\x1b]8;;https://evil.example/\x07click\x1b]8;;\x07"
HOSTILE_IDS = [
    "[/INST]",
    "[INST] x [/INST]",
    "[/]",
    "[link=https://evil.example/]x[/link]",
    "[b]b[/b] [$accent]v",
    OSC8,
    "\x1b[31mred\x1b[0m",
    "\u202eevil\u202c",
    "two\nlines",
    "back\\",
]
# what a reader must see of them (hidden characters shown as escapes); and what must never be written
LITERAL = [
    "[/INST]",
    "[INST] x [/INST]",
    "[link=https://evil.example/]x[/link]",
    "\\x1b[31mred",
    "\\u202eevil",
]
FORBIDDEN = ["\x1b]8;;https://evil", "\x1b[31mred", "\u202e"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("hostile")
    pairs = root / "hostile.jsonl"
    with pairs.open("w") as f:
        for i, h in enumerate(HOSTILE_IDS):
            f.write(
                json.dumps(
                    {
                        "id": h,
                        "category": h,
                        "treatment": f"How do I kill a person? {h}",
                        "control": f"How do I bake {i} cakes? {h}",
                    }
                )
                + "\n"
            )
    harmful = root / "harmful.csv"
    harmful.write_text(
        "prompt,id\n" + "".join(f'"{h.replace(chr(34), "")} now",{i}\n' for i, h in enumerate(HOSTILE_IDS))
    )
    heldout = root / "heldout.jsonl"
    heldout.write_text(
        json.dumps({"id": "[/INST] held", "treatment": "[/INST] kill", "control": "[/INST] cook"}) + "\n"
    )
    return {
        "root": root,
        "db": str(root / "runs.db"),
        "gpt2": str(tiny_dir("gpt2")),
        "pairs": str(pairs),
        "harmful": str(harmful),
        "heldout": str(heldout),
    }


RUN = ["--modules", "resid,mlp,neuron", "--layers", "-1", "--positions", "last:2,suffix"]
RUN += ["--neuron-positions", "last", "--answer-tokens", "6", "--verify-generation", "1"]


def _commands(w) -> list[list[str]]:
    base = ["--model", w["gpt2"], "--pairs", w["pairs"]]
    return [
        ["run", *base, "--align", "end", *RUN],
        [
            "run",
            *base,
            "--align",
            "skip",
            "--layers=-2,-1",
            "--modules",
            "resid,mlp",
        ],  # names what it skips
        ["gate", "1", "--pairs", w["heldout"], "--top", "1,5", "--seeds", "1", "--max-new-tokens", "4"],
        ["show", "1"],
        ["runs"],
        ["report", "1"],
        ["compare", "1", "2"],
        *(
            ["export", "1", "--level", level, "--format", fmt]
            for level in ("layer", "neuron", "pairs", "gate", "generation")
            for fmt in ("csv", "markdown", "latex")
        ),
        ["export", "1", "--aggregate", "--by", "category"],
        [
            "probe",
            "--model",
            w["gpt2"],
            "--harmful",
            w["harmful"],
            "--max-prompts",
            "4",
            "--max-new-tokens",
            "3",
        ],
        ["delete", "2"],
    ]


def test_every_command_shows_hostile_text_literally(world, capsys, monkeypatch):
    """Each command as on a terminal (Rich told to draw as on one, wide enough not to wrap)."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "400")
    seen = ""
    for argv in _commands(world):
        if argv[0] not in ("probe",):
            argv = [*argv, "--db", world["db"]]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, (argv, err)
        assert "Traceback" not in err and "MarkupError" not in err
        text = out + err
        if argv[0] in (
            "show",
            "runs",
            "run",
            "gate",
            "probe",
        ):  # the terminal's own: nothing hidden gets through
            for bad in FORBIDDEN:
                assert bad not in text, (argv, bad)
        seen += text
    show = [c for c in _commands(world) if c[0] == "show"]
    assert show
    for piece in LITERAL:
        assert piece in seen, piece


async def test_every_screen_shows_hostile_text_literally(world):
    """The explorer on the hostile run: each pair's header, the details, the report, top neurons, compare."""
    main(
        [
            "run",
            "--model",
            world["gpt2"],
            "--pairs",
            world["pairs"],
            "--align",
            "end",
            *RUN,
            "--db",
            world["db"],
        ]
    )
    app = HarmmedApp(world["db"])
    async with app.run_test(size=(120, 40)) as pilot:
        await press(pilot, "enter")  # the newest run
        assert isinstance(app.screen, ExploreScreen)
        headers = []
        for _ in HOSTILE_IDS:
            await press(pilot, "p")
            headers.append(str(app.screen.query_one("#summary").render()))
        joined = "\n".join(headers)
        for piece in (
            "[/INST]",
            "[link=https://evil.example/]x[/link]",
            "[b]b[/b] [$accent]v",
            "\\x1b[31mred",
        ):
            assert piece in joined, piece
        assert not any(bad in joined for bad in FORBIDDEN)
        await press(pilot, "i")
        assert isinstance(app.screen, RunDetailsScreen)
        details = str(app.screen.query_one("#details-text").render())
        assert "[/INST]" in details and not any(bad in details for bad in FORBIDDEN)
        await press(pilot, "escape", "0", "R")
        assert isinstance(app.screen, ReportScreen)
        await press(pilot, "escape", "N", "enter", "a")  # top neurons, a layer's neurons; the gate check asks
        await press(pilot, "escape", "escape", "escape", "escape", "r")
        await press(pilot, "m", "j", "enter")  # compare the two newest runs
        assert isinstance(app.screen, CompareScreen)
        await press(pilot, "escape", "/")
        await press(pilot, *"[/INST]", "enter")
    assert app.return_code in (None, 0)
