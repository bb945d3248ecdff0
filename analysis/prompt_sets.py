"""Published prompt sets (AdvBench, HarmBench, JailbreakBench, StrongREJECT, XSTest, Self-Instruct, ...) and
the pairs built from a harmful and a harmless one.

A set is a csv, jsonl, json or parquet file, or `builtin:NAME` for one shipped in analysis/data/sets (their
sources and licences: SOURCE.md there). The prompt column is found among the names these sets use, or given
as `FILE:COLUMN`; so are the category, target and id columns. Pairs from two sets differ in length, so they
are run end-aligned (`--align end`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from harmmed_tui.analysis.errors import PairsError
from harmmed_tui.analysis.pairs import Pair, read_csv

SETS_DIR = Path(__file__).parent / "data" / "sets"
# name -> (file, the rows it keeps: column -> value)
BUILTIN_SETS = {
    "advbench": ("advbench.csv", {}),
    "jailbreakbench": ("jailbreakbench.csv", {}),
    "self_instruct": ("self_instruct.jsonl", {}),
    "xstest_safe": ("xstest.csv", {"label": "safe"}),  # safe prompts that look unsafe: over-refusal
    "xstest_unsafe": ("xstest.csv", {"label": "unsafe"}),  # their unsafe contrasts
}
# in order of preference: JailbreakBench has both `Goal` (the request) and `Behavior` (a short label)
PROMPT_COLUMNS = (
    "prompt",
    "goal",
    "Goal",
    "forbidden_prompt",
    "instruction",
    "Behavior",
    "behavior",
    "question",
)
CATEGORY_COLUMNS = ("category", "Category", "SemanticCategory", "type")
TARGET_COLUMNS = ("target", "Target")
ID_COLUMNS = ("id", "BehaviorID", "behavior_id")
PAIRINGS = "index | random:SEED"


@dataclass(frozen=True)
class Prompt:
    text: str
    id: str  # `set:row id`, so that a pair names where each of its prompts came from
    category: str = ""
    target: str = ""


def _path_and_column(source: str) -> tuple[Path, str, str | None, dict]:
    """(file, set name, prompt column or None, rows kept) from `FILE`, `FILE:COLUMN`, `builtin:NAME`."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_SETS:
            raise PairsError(f"no built-in prompt set '{name}' (built in: {', '.join(BUILTIN_SETS)})")
        file, keep = BUILTIN_SETS[name]
        return SETS_DIR / file, name, None, keep
    path, column = Path(source).expanduser(), None
    if not path.exists() and (m := re.fullmatch(r"(.+):([^:/\\]+)", source)):
        path, column = Path(m[1]).expanduser(), m[2]
    if path.is_dir():
        raise PairsError(f"{source} is a directory, not a prompt set file")
    if not path.is_file():
        raise PairsError(f"prompt set not found: {source}")
    return path, path.stem, column, {}


def _records(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise PairsError("reading parquet needs pyarrow: pip install 'harmmed-tui[parquet]'") from None
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises many kinds on a damaged file
            raise PairsError(f"{path} is not a readable parquet file ({type(e).__name__})") from None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PairsError(f"{path} is not UTF-8 text (a binary file?)") from None
    try:
        if suffix == ".csv":
            return read_csv(text, path)
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            return (
                data
                if isinstance(data, list)
                else next((v for v in data.values() if isinstance(v, list)), [])
            )
    except json.JSONDecodeError as e:
        raise PairsError(f"{path}: invalid JSON ({e})") from None
    raise PairsError(f"unsupported prompt set type '{suffix}' (use .csv, .jsonl, .json or .parquet): {path}")


def _pick(columns, wanted: tuple[str, ...]) -> str | None:
    return next((c for c in wanted if c in columns), None)


def load_prompt_set(source: str) -> list[Prompt]:
    """The prompts of one set, with their ids, categories and (AdvBench, JailbreakBench) targets."""
    path, name, column, keep = _path_and_column(source)
    records = [
        r for r in _records(path) if isinstance(r, dict) and all(r.get(k) == v for k, v in keep.items())
    ]
    if not records:
        raise PairsError(f"prompt set {source} has no records")
    columns = records[0].keys()
    given = column is not None
    column = column or _pick(columns, PROMPT_COLUMNS)
    if column not in columns and given:
        raise PairsError(
            f"prompt set {source} has no column '{column}' (its columns: {', '.join(map(str, columns))})"
        )
    if column not in columns:
        raise PairsError(
            f"prompt set {source}: no prompt column ({', '.join(PROMPT_COLUMNS)}) among {', '.join(map(str, columns))}; "
            "name it as FILE:COLUMN"
        )
    category, target, ident = (_pick(columns, c) for c in (CATEGORY_COLUMNS, TARGET_COLUMNS, ID_COLUMNS))
    prompts = []
    for i, r in enumerate(records):
        for field in (column, category, target, ident):
            if field and isinstance(r.get(field), list | dict):
                raise PairsError(
                    f"prompt set {source}: record {i + 1}'s '{field}' is a {type(r[field]).__name__}, not text"
                )
        text = str(r.get(column) or "").strip()
        if text:
            prompts.append(
                Prompt(
                    text,
                    f"{name}:{r[ident] if ident and r.get(ident) not in (None, '') else i}",
                    str(r.get(category) or "") if category else "",
                    str(r.get(target) or "") if target else "",
                )
            )
    if not prompts:
        raise PairsError(f"prompt set {source}: every '{column}' is empty")
    return prompts


def check_pairing(pairing: str) -> None:
    if pairing != "index" and not re.fullmatch(r"random:\d+", pairing):
        raise PairsError(f"unknown pairing '{pairing}' (use {PAIRINGS})")


def build_pairs(
    harmful: str, harmless: str, pairing: str = "index", max_pairs: int | None = None
) -> list[Pair]:
    """Pairs (harmful treatment, harmless control): the i-th of each set (`index`), or both sets shuffled with
    a seed (`random:SEED`, so that --max-pairs is a random sample). A pair's id names both prompts
    (`advbench:12/self_instruct:seed_task_3`); its category and target are the harmful side's."""
    treatments, controls = load_prompt_set(harmful), load_prompt_set(harmless)
    if pairing.startswith("random:") and pairing.removeprefix("random:").isdigit():
        rng = random.Random(int(pairing.removeprefix("random:")))
        treatments, controls = rng.sample(treatments, len(treatments)), rng.sample(controls, len(controls))
    else:
        check_pairing(pairing)
    pairs = [
        Pair(t.text, c.text, id=f"{t.id}/{c.id}", category=t.category, target=t.target)
        for t, c in zip(treatments, controls, strict=False)
    ]
    return pairs[:max_pairs] if max_pairs else pairs
