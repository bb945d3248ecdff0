"""Loading a causal LM and its tokenizer by hub id, local directory, `.gguf` file, or `default`."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from harmmed_tui.analysis.errors import ModelLoadError
from harmmed_tui.analysis.families import Anatomy, UnsupportedModelError
from harmmed_tui.analysis.inputs import file_sha256

DEFAULT_MODEL = "default"
ORGANISM_DIR = Path(__file__).parent / "organism" / "model"


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    anatomy: Anatomy
    source: str  # what the user asked for
    resolved: str  # the path or hub id actually loaded
    revision: str | None  # hub commit, or sha256 of a gguf file
    device: torch.device
    dtype: torch.dtype

    def provenance(self) -> dict:
        a = self.anatomy
        return {
            "model": self.source,
            "resolved": self.resolved,
            "revision": self.revision,
            "family": a.family.name,
            "model_type": self.model.config.model_type,
            "n_layers": a.n_layers,
            "d_model": a.d_model,
            "d_mlp": a.d_mlp,
            "n_heads": a.n_heads,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "device_map": {k: str(v) for k, v in getattr(self.model, "hf_device_map", {}).items()} or None,
            "tokenizer": type(self.tokenizer).__name__,
            "tokenizer_name": self.tokenizer.name_or_path,
            "vocab_size": len(self.tokenizer),
            "versions": package_versions(),
        }


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("harmmed-tui", "torch", "transformers"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16 or float16)") from None


def _resolve(source: str, revision: str | None, trust_remote_code: bool) -> tuple[str, dict, str | None]:
    """(what from_pretrained loads, its keyword arguments, the revision to record) for a model spec."""
    path = ORGANISM_DIR if source == DEFAULT_MODEL else Path(source).expanduser()
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {source}")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(
                    f"{source} is not a valid GGUF file (it does not start with 'GGUF'): corrupt?"
                )
        kwargs["gguf_file"] = path.name
        return str(path.parent), kwargs, "sha256:" + file_sha256(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"'{source}' is a directory without config.json, not a Hugging Face model")
        return str(path), kwargs, None
    if revision:
        kwargs["revision"] = revision
    return source, kwargs, revision


@contextmanager
def _load_errors(source: str):
    """from_pretrained's many failures as one ModelLoadError that says what to do."""
    try:
        yield
    except ImportError as e:
        raise ModelLoadError(
            f"cannot load '{source}': {e} (GGUF needs: pip install 'harmmed-tui[gguf]')"
        ) from e
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if source.endswith(".gguf"):  # the gguf reader fails in many ways on a damaged file
            raise ModelLoadError(
                f"cannot read GGUF file '{source}': truncated or corrupt ({type(e).__name__}: {first})"
            ) from e
        if not isinstance(e, OSError | ValueError):
            raise
        raise ModelLoadError(
            f"cannot load model '{source}': not a local model directory or .gguf file, and the Hugging Face hub "
            f"has no such model or is unreachable ({first})"
        ) from e


@functools.lru_cache(maxsize=8)
def load_tokenizer_and_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """A model's tokenizer and config without its weights (cached: the Setup screen asks on every edit)."""
    resolved, kwargs, _ = _resolve(source, revision, trust_remote_code)
    with _load_errors(source):
        return AutoTokenizer.from_pretrained(resolved, **kwargs), AutoConfig.from_pretrained(
            resolved, **kwargs
        )


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device_map(device_map: str) -> str | dict:
    """accelerate's strategy name, or a JSON file mapping module names to a GPU index, 'cpu' or 'disk'."""
    if device_map in DEVICE_MAPS:
        return device_map
    path = Path(device_map).expanduser()
    try:
        mapping = json.loads(path.read_text())
    except OSError as e:
        raise ModelLoadError(
            f"device map '{device_map}': not one of {', '.join(DEVICE_MAPS)}, nor a readable file ({e.strerror})"
        ) from None
    except ValueError:
        raise ModelLoadError(f"device map file {device_map} is not valid JSON") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ModelLoadError(f"device map file {device_map} must map module names to devices")
    gpus = torch.cuda.device_count()
    for module, place in mapping.items():
        index = place if isinstance(place, int) and not isinstance(place, bool) else None
        if isinstance(place, str) and (m := re.fullmatch(r"cuda:(\d+)", place)):
            index = int(m[1])
        if index is None and place not in ("cpu", "disk"):
            raise ModelLoadError(
                f"device map file {device_map}: '{module}' -> {place!r} is not a GPU index, 'cuda:N', 'cpu' or 'disk'"
            )
        if index is not None and index >= gpus:
            raise ModelLoadError(
                f"device map file {device_map} places '{module}' on GPU {index}, but this machine has {gpus} GPU(s)"
            )
    return mapping


def _check_device_map_modules(device_map: dict, config, source: str) -> None:
    """Every module a device map names exists in the model (checked on an empty, meta-device copy)."""
    with torch.device("meta"):
        names = {name for name, _ in AutoModelForCausalLM.from_config(config).named_modules()}
    if unknown := sorted(set(device_map) - names):
        raise ModelLoadError(
            f"the device map names {', '.join(map(repr, unknown[:3]))}, not a module of {source} "
            f"(its top modules: {', '.join(sorted(n for n in names if n and '.' not in n))})"
        )


def _execution_device(model: PreTrainedModel) -> torch.device:
    """Where a model split by a device map takes its inputs: the device of its first placed module
    (accelerate computes offloaded modules on the CPU)."""
    first = next(iter(model.hf_device_map.values()))
    return torch.device(
        "cpu" if first in ("cpu", "disk") else first if isinstance(first, str) else f"cuda:{first}"
    )


def load_model(
    source: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load a model onto one device, or (device_map) split across GPUs, CPU and disk by accelerate."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    resolved, kwargs, rev = _resolve(source, revision, trust_remote_code)
    if device_map:
        # offloaded weights live in a scratch folder for the life of this process
        kwargs.update(
            device_map=resolve_device_map(device_map),
            offload_folder=tempfile.mkdtemp(prefix="harmmed-offload-"),
        )
    with _load_errors(source):
        if isinstance(kwargs.get("device_map"), dict):
            config = AutoConfig.from_pretrained(
                resolved,
                **{k: v for k, v in kwargs.items() if k in ("trust_remote_code", "revision", "gguf_file")},
            )
            _check_device_map_modules(kwargs["device_map"], config, source)
        tokenizer = AutoTokenizer.from_pretrained(
            resolved, **{k: v for k, v in kwargs.items() if k not in ("device_map", "offload_folder")}
        )
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dt, **kwargs)
    if device_map and getattr(model, "hf_device_map", None):
        dev = _execution_device(model)
    elif device_map:  # (a map that keeps everything on the CPU is applied without dispatching)
        dev = torch.device("cpu")
    else:
        model.to(dev)
    model.eval().requires_grad_(False)
    if rev is None:
        rev = getattr(model.config, "_commit_hash", None)
    try:
        anatomy = Anatomy(model)
    except UnsupportedModelError as e:
        raise ModelLoadError(str(e)) from e
    return LoadedModel(model, tokenizer, anatomy, source, resolved, rev, dev, dt)
