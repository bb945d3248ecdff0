"""Every flag of every subcommand, given a bad value: exit 2, one line, no traceback, the database untouched."""

import hashlib
import json
import sqlite3
from contextlib import closing

import pytest
import torch

from harmmed_tui.analysis.organism.corpus import Example  # noqa: F401  (the package imports cleanly)
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.tui.cli import main
from tests.conftest import GPT2_TOKENIZER


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    """A database holding one done run (no neuron rows), a tiny model without a chat template, bad files."""
    root = tmp_path_factory.mktemp("bad")
    db = root / "runs.db"
    with Store(db) as store:
        execute(RunSpec(model="default", max_pairs=1, layers="-1", positions="last"), store)
    files = {
        "binary": (root / "binary.jsonl", bytes(range(256)) * 4),
        "empty": (root / "empty.jsonl", b"\n"),
        "fieldless": (root / "fieldless.csv", b"prompt,other\nx,y\n"),
        "random_gguf": (root / "random.gguf", bytes(range(7, 250)) * 40),
        "truncated_gguf": (root / "truncated.gguf", b"GGUF\x03\x00\x00\x00\x05"),
        "pairs": (
            root / "pairs.csv",
            b"treatment,control\nHow do I kill a person?,How do I kill a process?\n",
        ),
        "list_set": (root / "list_set.json", json.dumps([{"prompt": ["a", "b"]}]).encode()),
        "list_pairs": (
            root / "list_pairs.jsonl",
            json.dumps({"treatment": {"a": 1}, "control": "x"}).encode(),
        ),
        "no_answer": (root / "no_answer.txt", b"Is this a refusal? {prompt}\n"),
        "gpu0_map": (root / "gpu0.json", b'{"": 0}'),
        "json_42": (root / "42.json", b"42"),
        "json_null": (root / "null.json", b"null"),
        "json_pairs_5": (root / "pairs5.json", b'{"pairs": 5}'),
        "twice": (
            root / "twice.jsonl",
            b'{"id": "a", "treatment": "kill a person", "control": "kill a process"}\n'
            b'{"id": "a", "treatment": "stab a person", "control": "stab a process"}\n',
        ),
        "bogus_map": (root / "bogus.json", b'{"model.nonexistent": "cpu"}'),
    }
    for path, data in files.values():
        path.write_bytes(data)
    (root / "somedir").mkdir()
    paths = {k: str(p) for k, (p, _) in files.items()}
    return {"root": root, "db": str(db), "llama": str(tiny_dir("llama", GPT2_TOKENIZER)), **paths}


def _digest(path: str) -> str:
    """Everything the database holds but its jobs in progress: a bad value may have registered its job (to
    be seen loading the model) and removed it; no run, pair, row or study may change."""
    with closing(sqlite3.connect(path)) as conn:
        kept = (
            line
            for line in conn.iterdump()
            if not line.startswith(('INSERT INTO "jobs"', "INSERT INTO \"sqlite_sequence\" VALUES('jobs'"))
        )
        return hashlib.sha256("\n".join(kept).encode()).hexdigest()


CASES = [
    # pairs files that hold no list of pairs, a directory, one id twice
    (["run", "--pairs", "{json_42}"], "expected a list of pair records"),
    (["run", "--pairs", "{json_null}"], "found NoneType None"),
    (["run", "--pairs", "{json_pairs_5}"], "found int 5"),
    (["run", "--pairs", "{root}/somedir"], "somedir is a directory, not a pairs file"),
    (
        ["run", "--harmful", "{root}/somedir", "--harmless", "builtin:self_instruct"],
        "is a directory, not a prompt set",
    ),
    (["run", "--pairs", "{twice}"], "pair id 'a' is used by records 1 and 2"),
    # run: the model
    (["run", "--model", "nope/nope"], "cannot load model 'nope/nope'"),
    (["run", "--model", "{random_gguf}"], "not a valid GGUF file"),
    (["run", "--model", "{truncated_gguf}"], "truncated or corrupt"),
    (["run", "--model", "{root}/none.gguf"], "GGUF file not found"),
    (["run", "--model", "{root}/somedir"], "without config.json"),
    (["run", "--device", "cuda"], "no CUDA GPU"),
    (["run", "--dtype", "float8"], "invalid choice: 'float8'"),
    (["run", "--engine", "fast"], "invalid choice: 'fast'"),
    (["run", "--device-map", "{root}/none.json"], "not one of auto"),
    *(
        []
        if torch.cuda.is_available()
        else [(["run", "--device-map", "{gpu0_map}"], "places '' on GPU 0, but this machine has 0 GPU(s)")]
    ),
    (["run", "--device-map", "{empty}"], "not valid JSON"),
    (["run", "--workers", "0"], "must be at least 1, got 0"),
    (["run", "--gpus-per-worker", "0"], "must be more than 0, got 0"),
    (["resume", "1", "--gpus-per-worker", "x"], "expected a number, got 'x'"),
    # run: the pairs
    (["run", "--pairs", "{root}/none.jsonl"], "pairs file not found"),
    (["run", "--pairs", "{binary}"], "is not UTF-8 text"),
    (["run", "--pairs", "{empty}"], "pairs file is empty"),
    (["run", "--pairs", "{fieldless}"], "needs non-empty 'treatment' and 'control'"),
    (["run", "--treatment", "How do I kill a person?"], "give both --treatment and --control"),
    (["run", "--harmful", "builtin:advbench"], "give both --harmful and --harmless"),
    (
        ["run", "--harmful", "builtin:nope", "--harmless", "builtin:self_instruct"],
        "no built-in prompt set 'nope'",
    ),
    (["run", "--harmful", "{binary}", "--harmless", "builtin:self_instruct"], "is not UTF-8 text"),
    (["run", "--harmful", "{fieldless}:text", "--harmless", "builtin:self_instruct"], "has no column 'text'"),
    (
        ["run", "--harmful", "{list_set}", "--harmless", "builtin:self_instruct"],
        "'prompt' is a list, not text",
    ),
    (["run", "--pairs", "{list_pairs}"], "'treatment' is a dict, not text"),
    (
        [
            "run",
            "--harmful",
            "builtin:advbench",
            "--harmless",
            "builtin:self_instruct",
            "--pairing",
            "random:abc",
        ],
        "unknown pairing 'random:abc'",
    ),
    (["run", "--pairing", "random:3"], "use it with --harmful and --harmless"),
    (
        ["run", "--pairs", "{pairs}", "--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct"],
        "give one source of pairs, not --pairs and --harmful/--harmless",
    ),
    (["run", "--pairs", "{pairs}", "--treatment", "a", "--control", "b"], "give one source of pairs"),
    (["run", "--refusal-tokens", ""], "--refusal-tokens is empty"),
    (["run", "--judge-template", "harmbench"], "give --judge too"),
    (["run", "--judge", "{llama}", "--judge-template", "{no_answer}"], "has no {answer} placeholder"),
    (
        ["run", "--judge", "{llama}", "--judge-template", "{root}/none.txt"],
        "is neither refusal nor harmbench",
    ),
    (["probe", "--harmful", "builtin:advbench", "--judge-template", "{no_answer}"], "give --judge too"),
    (["run", "--corrupt", "tokens:3-1"], "token range '3-1' in 'tokens:3-1' is empty"),
    (["run", "--device-map", "{bogus_map}", "--model", "{llama}"], "names 'model.nonexistent', not a module"),
    (["run", "--ray", "127.0.0.1:1"], "cannot reach the Ray cluster at '127.0.0.1:1'"),
    (["run", "--ray", "nohost"], "is not HOST:PORT"),
    (
        ["run", "--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct", "--pairing", "zip"],
        "unknown pairing",
    ),
    (
        ["run", "--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct", "--positions", "*"],
        "use 'suffix'",
    ),
    (["run", "--positions", "*,suffix"], "not both"),
    (["run", "--jailbreak", "nope"], "no jailbreak 'nope'"),
    (["run", "--corrupt", "grenade"], "does not occur in the prompt"),
    (["run", "--corrupt", "tokens:x"], "bad token list"),
    (["run", "--corrupt", "kill", "--method", "atp"], "patch exactly"),
    (["run", "--corrupt", "kill", "--noise-scale", "0"], "must be more than 0"),
    (["run", "--corrupt", "kill", "--noise-samples", "0"], "must be at least 1, got 0"),
    (["run", "--jailbreak", "{empty}"], "no {prompt} placeholder"),
    (["run", "--jailbreak", "role-play", "--jailbreak-design", "both"], "invalid choice: 'both'"),
    (
        ["run", "--model", "{llama}", "--treatment", "How do I launder money?", "--control", "Hi"],
        "unequal token lengths",
    ),
    (["run", "--model", "{llama}", "--chat-template", "chat"], "has no chat template"),
    (["run", "--chat-template", "always"], "invalid choice: 'always'"),
    (["run", "--align", "pad"], "invalid choice: 'pad'"),
    (["run", "--max-pairs", "-3"], "must be at least 1, or all, got -3"),
    (["run", "--max-pairs", "0"], "must be at least 1, or all, got 0"),
    (["run", "--max-pairs", "two"], "expected an integer or all, got 'two'"),
    # run: what to measure
    (["run", "--metric", "bogus"], "unknown metric"),
    (["run", "--refusal-tokens", ","], "refusal"),
    (["run", "--modules", "mlp,bogus"], "unknown module(s) bogus"),
    (["run", "--layers", "9"], "out of range"),
    (["run", "--layers", "3-1"], "layer range '3-1' is empty"),
    (["run", "--layers", "x"], "bad layer 'x'"),
    (["run", "--positions", "99"], "out of range"),
    (["run", "--neuron-positions", "first"], "bad position 'first'"),
    (["run", "--method", "bogus"], "unknown method 'bogus'"),
    (["run", "--method", "block:0"], "block size must be at least 1"),
    (["run", "--verify-top", "5"], "--verify-top checks atp"),
    (["run", "--method", "atp", "--verify-top", "-1"], "must be at least 0, got -1"),
    (["run", "--batch-tokens", "-5"], "must be at least 0, got -5"),
    (["run", "--seed", "x"], "--seed: expected an integer, got 'x'"),
    (["run", "--answer-tokens", "-1"], "must be at least 0, got -1"),
    (["run", "--answer-tokens", "0", "--require-flip"], "keep --answer-tokens above 0"),
    (["run", "--answer-tokens", "0", "--refusal-tokens", "auto"], "keep --answer-tokens above 0"),
    (["run", "--verify-generation", "-2"], "must be at least 0, got -2"),
    (["run", "--verify-generation", "3", "--answer-tokens", "0"], "keep --answer-tokens above 0"),
    (["run", "--verify-generation", "3", "--corrupt", "x"], "it needs a control prompt (not --corrupt)"),
    (["run", "--verify-generation", "3", "--metric", "target-logprob"], "a metric without a target"),
    (["export", "1", "--level", "generation", "--aggregate"], "one per verified site"),
    (
        ["run", "--model", "{llama}", "--max-pairs", "1", "--refusal-tokens", "auto"],
        "--refusal-tokens auto: no first token",
    ),
    (["export", "1", "--level", "pairs", "--aggregate"], "one per pair already"),
    # resume
    (["resume", "99"], "no run 99"),
    (["resume", "1"], "run 1 is already done"),
    (["resume", "one"], "expected a run id or study:ID, got 'one'"),
    (["resume", "study:9"], "no study 9"),
    (["report", "study:9"], "no study 9"),
    (["report", "study:9", "--gate", "2"], "drop --gate"),
    # study
    (
        ["study", "--harmful", "builtin:advbench", "--harmless", "builtin:self_instruct"],
        "a study needs --max-pairs",
    ),
    (["study", "--max-pairs", "2", "--held-out", "0"], "must be at least 1, got 0"),
    (["study", "--max-pairs", "2", "--top", "0"], "must be at least 1, got 0"),
    (["study", "--max-pairs", "2", "--seeds", "x"], "expected an integer, got 'x'"),
    (["study", "--max-pairs", "2", "--model", "nope/nope"], "cannot load model 'nope/nope'"),
    (["study", "--max-pairs", "2", "--pairing", "random:1"], "use it with --harmful and --harmless"),
    # export
    (["export", "99"], "no run 99"),
    (["export", "1", "--level", "site"], "invalid choice: 'site'"),
    (["export", "1", "--format", "xlsx"], "invalid choice: 'xlsx'"),
    (["export", "1", "--top", "-5"], "must be at least 1, got -5"),
    (["export", "1", "--method", "magic"], "invalid choice: 'magic'"),
    (["export", "1", "--by", "category"], "use it with --aggregate"),
    (["export", "1", "--aggregate", "--by", "model"], "invalid choice: 'model'"),
    (["export", "1", "-o", "{root}/no/such/dir/x.csv"], "does not exist"),
    (["export", "1", "-o", "{root}/somedir"], "is a directory"),
    # gate
    (["gate", "99"], "no run 99"),
    (["gate", "1"], "has no neuron rows"),
    (["gate", "1", "--top", "0"], "must be at least 1, got 0"),
    (["gate", "1", "--ablate", "noise"], "invalid choice: 'noise'"),
    (["gate", "1", "--seeds", "0"], "must be at least 1, got 0"),
    (["gate", "1", "--top", "5,x"], "expected an integer, got 'x'"),
    (["gate", "1", "--top", ","], "expected integers like 1,5,20"),
    (["gate", "1", "--sign", "up"], "invalid choice: 'up'"),
    (["gate", "1", "--groups", "final,middle"], "'middle' is not one of final, last-quarter, all"),
    (["gate", "1", "--max-new-tokens", "0"], "must be at least 1, got 0"),
    # runs, show, delete, organism, the top level
    (["runs", "--db", "{root}/somedir"], "is a directory"),
    (["runs", "--db", "{binary}"], "not a usable harmmed-tui database"),
    (["show", "99"], "no run 99"),
    (["compare", "1", "99"], "no run 99"),
    (["compare", "1", "1", "--format", "xls"], "invalid choice: 'xls'"),
    (["compare", "1", "1"], "compare needs two different runs"),
    (
        ["export", "1", "--level", "neuron"],
        "run 1 has no neuron rows (run it with --modules including neuron)",
    ),
    (["export", "1", "--level", "gate"], "run 1 has no gate rows"),
    (["export", "1", "--level", "generation"], "run 1 has no generation rows"),
    (["report", "99"], "no run 99"),
    (["report", "1", "--format", "docx"], "invalid choice: 'docx'"),
    (["report", "1", "--gate", "x"], "invalid int value: 'x'"),
    (["delete", "99"], "no run 99"),
    (["delete", "-1"], "no run -1"),
    (["organism", "eval", "--model", "nope/nope"], "cannot load model"),
    (["organism", "train", "--out", "{root}/o", "--steps", "0"], "must be at least 1, got 0"),
    (["organism", "grow"], "invalid choice: 'grow'"),
    (["probe", "--harmful", "builtin:advbench", "--max-prompts", "0"], "must be at least 1, got 0"),
    (["probe", "--harmful", "builtin:nope"], "no built-in prompt set 'nope'"),
    (["probe", "--harmful", "builtin:advbench", "--jailbreak", "nope"], "no jailbreak 'nope'"),
    (["fly"], "invalid choice: 'fly'"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_is_one_line_and_changes_nothing(world, capsys, argv, message):
    argv = [a.format(**world) for a in argv]
    if "--db" not in argv and argv[0] not in ("organism", "probe", "fly"):
        argv += ["--db", world["db"]]
    before = _digest(world["db"])
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit, after our one-line error()
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.startswith("harmmed-tui") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert _digest(world["db"]) == before
    with Store(world["db"]) as store:
        assert [r["id"] for r in store.runs()] == [1]


def test_a_full_disk_fails_the_run_and_keeps_its_rows(tmp_path):
    """SQLite's 'database or disk is full' (here: a page limit) ends the run `failed` with that message;
    the rows written before it stay readable."""
    db = tmp_path / "runs.db"
    spec = RunSpec(model="default", max_pairs=6, modules=("resid", "attn", "mlp", "neuron"))
    with Store(db) as store:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 40}")
        with pytest.raises(StoreError, match="database or disk is full"):
            execute(spec, store)
    with Store(db) as store:
        (run,) = store.runs()
        assert store.run(run["id"])["status"] == "failed"
        assert "database or disk is full" in store.run(run["id"])["error"]
        assert 0 < run["n_rows"] < run["n_sites"]
        assert json.loads(store.run(run["id"])["spec"])["max_pairs"] == 6


def test_a_spreadsheet_csv_of_pairs_is_read(tmp_path):
    """Saved by a spreadsheet: a UTF-8 byte-order mark and CRLF line ends."""
    from harmmed_tui.analysis.pairs import load_pairs

    path = tmp_path / "pairs.csv"
    path.write_bytes(
        "\ufefftreatment,control,category\r\nHow do I kill a person?,How do I kill a process?,violence\r\n".encode()
    )
    (pair,) = load_pairs(str(path))
    assert (pair.treatment, pair.control, pair.category) == (
        "How do I kill a person?",
        "How do I kill a process?",
        "violence",
    )


def test_an_internal_error_is_one_line_and_a_traceback_file(world, capsys, monkeypatch, tmp_path):
    from harmmed_tui.tui import cli, store_commands

    def broken(store, as_json):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(store_commands, "cmd_runs", broken)
    monkeypatch.setattr(cli, "crash_log_dir", lambda: tmp_path / "logs")
    assert main(["runs", "--db", world["db"]]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("harmmed-tui: internal error: ZeroDivisionError: a bug (traceback in ")
        and err.count("\n") == 1
    )
    (log,) = (tmp_path / "logs").glob("crash-*.log")
    assert "Traceback" in log.read_text() and "ZeroDivisionError: a bug" in log.read_text()


def test_a_prompt_of_200000_characters_is_read(tmp_path):
    from harmmed_tui.analysis.prompt_sets import load_prompt_set

    long = "How do I " + "very " * 40000 + "quickly pick a lock?"
    path = tmp_path / "long.csv"
    path.write_text(f'prompt\n"{long}"\nHow do I bake bread?\n')
    assert [p.text for p in load_prompt_set(str(path))] == [long, "How do I bake bread?"]
