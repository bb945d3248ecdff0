"""The files a run reads (pairs, prompt sets, templates, phrase lists, the model), resolved and fingerprinted.

A run stores its spec with absolute paths, so `resume` works from any directory, and each input file's
sha256 in its provenance. A resume computes from the pairs the run stored, never from the files again; the
files it still needs (the model, the judge's template and phrases) must be the ones the run started with."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from harmmed_tui.analysis.errors import HarmmedError
from harmmed_tui.analysis.spec import RunSpec

# spec fields that may name a file; which values are names rather than files is each reader's business
FILE_FIELDS = ("model", "pairs", "harmful", "harmless", "jailbreak", "judge", "judge_template")
FILE_FIELDS += ("refusal_phrases", "device_map")
# what a resume still reads from its files (the pairs, wrapped or not, come from the store)
RESUME_NEEDS = ("model", "judge", "judge_template", "refusal_phrases")
HASHED_WHOLE_MAX = 64 << 20  # a model directory's larger files (weights) are fingerprinted by size and mtime
# the files of a model directory that loading it reads (a README added beside them changes nothing)
MODEL_FILES = (
    ".json",
    ".safetensors",
    ".bin",
    ".pt",
    ".model",
    ".txt",
    ".tiktoken",
    ".gguf",
    ".py",
    ".jinja",
)


class InputChangedError(HarmmedError):
    """A file a run depends on is not the one it started with."""


def _split_column(value: str) -> tuple[Path, str]:
    """`FILE:COLUMN` as (FILE, ':COLUMN'); anything else as (the path, '')."""
    path = Path(value).expanduser()
    if not path.exists() and ":" in value and not value.startswith("builtin:"):
        head, _, column = value.rpartition(":")
        if head and "/" not in column and "\\" not in column:
            return Path(head).expanduser(), ":" + column
    return path, ""


def local_file(field: str, value: str | None) -> tuple[Path, str] | None:
    """The local file or directory a spec field names, with any `:COLUMN` suffix; None for names
    (builtin sets, shipped templates, hub ids, comma lists)."""
    if not value or value.startswith("builtin:") or (field == "pairs" and value == "builtin"):
        return None
    path, column = (
        _split_column(value) if field in ("harmful", "harmless") else (Path(value).expanduser(), "")
    )
    is_model = field in ("model", "judge")
    if path.is_file() or (is_model and path.is_dir()):
        return path, column
    return None


def resolved(spec: RunSpec) -> RunSpec:
    """The spec with every file it names made absolute (the stored spec; `resume` may run elsewhere)."""
    changes = {}
    for field in FILE_FIELDS:
        if found := local_file(field, getattr(spec, field)):
            path, column = found
            changes[field] = str(path.resolve()) + column
    return spec.replace(**changes)


def file_sha256(path: Path) -> str:
    """A file's sha256, read once per version of the file in a process: a run's inputs, its model's revision
    and a resume's check all hash the same (possibly multi-GB) model file."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """sha256 of a file; of a model directory, sha256 over the names and contents of the files a load reads
    (size and mtime for files over 64 MiB: hashing gigabytes of weights on every resume would cost more than
    the check is worth)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MODEL_FILES):
        stat = f.stat()
        content = file_sha256(f) if stat.st_size <= HASHED_WHOLE_MAX else f"{stat.st_size}:{stat.st_mtime_ns}"
        h.update(f"{f.relative_to(path)}\0{content}\0".encode())
    return h.hexdigest()


def record(spec: RunSpec) -> dict[str, dict]:
    """{field: {path, sha256}} for every local file a (resolved) spec reads: the run's provenance keeps it."""
    out = {}
    for field in FILE_FIELDS:
        if found := local_file(field, getattr(spec, field)):
            out[field] = {"path": str(found[0]), "sha256": fingerprint(found[0])}
    return out


def check_unchanged(what: str, recorded: dict[str, dict], fields: tuple[str, ...] = RESUME_NEEDS) -> None:
    """Refuse a resume (of `what`: `run 3`, `study 1`) whose files among `fields` (by default the model, judge
    and judge files) are not the ones it started with."""
    for field in fields:
        if field not in recorded:
            continue
        path = Path(recorded[field]["path"])
        flag = "--" + field.replace("_", "-")
        if not path.exists():
            raise InputChangedError(
                f"{what} cannot resume: its {flag} {path} is gone (a resume needs the same file)"
            )
        if (now := fingerprint(path)) != recorded[field]["sha256"]:
            raise InputChangedError(
                f"{what} cannot resume: its {flag} {path} changed since it started (sha256 "
                f"{recorded[field]['sha256'][:12]}, now {now[:12]}); results of two different "
                "inputs would mix: start a new one"
            )
