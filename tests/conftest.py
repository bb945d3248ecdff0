"""Shared fixtures: real tokenizers from ../shared/data and random tiny models of each supported family."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# the figure cache (db.figures.cached_svg) of the tests' own, never the user's
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="harmmed-tests-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers as T  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_TOKENIZER = SHARED / "gpt2_tokenizer"
SMOLLM_TOKENIZER = SHARED / "smollm2_135m_instruct_tokenizer"

_SMALL = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=48)
_GQA = dict(_SMALL, num_key_value_heads=2)
TINY_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_inner=48, n_positions=128),
    "gpt_neox": lambda: T.GPTNeoXConfig(**_SMALL),
    "llama": lambda: T.LlamaConfig(**_GQA),
    "mistral": lambda: T.MistralConfig(**_GQA),
    "qwen2": lambda: T.Qwen2Config(**_GQA),
    "qwen3": lambda: T.Qwen3Config(**_GQA, head_dim=8),
    "gemma2": lambda: T.Gemma2Config(**_GQA, head_dim=8),
    "gemma3": lambda: T.Gemma3TextConfig(**_GQA, head_dim=8),
    "phi3": lambda: T.Phi3Config(**_GQA, pad_token_id=0),
    "olmo2": lambda: T.Olmo2Config(**_GQA),
}


def make_tiny_model_dir(root: Path, family: str, tokenizer_dir: Path = GPT2_TOKENIZER, seed: int = 0) -> Path:
    """Save a random-init float32 tiny model of `family` with a real tokenizer, loadable by path."""
    out = root / f"{family}-{tokenizer_dir.name}"
    if out.exists():
        return out
    tokenizer = T.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = TINY_CONFIGS[family]()
    config.vocab_size = len(tokenizer)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, attr, None) is not None:
            setattr(config, attr, 0)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than init so that effects are far from numerical noise
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_dir(models_root):
    def make(family: str, tokenizer_dir: Path = GPT2_TOKENIZER) -> Path:
        return make_tiny_model_dir(models_root, family, tokenizer_dir)

    return make


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "runs.db"


def copy_tokenizer(dst: Path, src: Path = SMOLLM_TOKENIZER) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
