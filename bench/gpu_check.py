"""GPU paths CI cannot run: half precision, batch sizing from free memory, a model split over several GPUs.

A maintainer with GPUs runs `python bench/gpu_check.py` (`--device cpu` rehearses it anywhere). Output: one
line per check, tab-separated, `check  setting  value  verdict` with verdict `ok` or `FAILED`; exit status 1
if any check failed. The checks:
- engine-agreement: replay vs hooks engine, max |IE difference| / |TE| over a layer x module grid, per dtype
  (bound: 1e-4 in float32, 2e-2 in float16/bfloat16);
- batch-tokens: auto_batch_tokens' choice, and the peak memory of its largest batch against free memory
  (bound: under half of what was free);
- device-map: with two or more GPUs, a model split `balanced` against the same model on one GPU (bound 1e-3).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as T  # noqa: E402
from common import SHARED  # noqa: E402

from harmmed_tui.analysis.metrics import parse_metric  # noqa: E402
from harmmed_tui.analysis.models import load_model  # noqa: E402
from harmmed_tui.analysis.pairs import Pair, tokenize_pair  # noqa: E402
from harmmed_tui.analysis.patching import PairPatcher, auto_batch_tokens  # noqa: E402
from harmmed_tui.analysis.sites import ALL_POSITIONS, site_grid  # noqa: E402

PAIR = Pair(
    "Explain in detail, step by step, how I could quietly kill a person in my small town without anyone noticing",
    "Explain in detail, step by step, how I could quietly kill a process in my small town without anyone noticing",
)
CONFIGS = {
    "gpt2-small": lambda: T.GPT2Config(),
    "llama-1b": lambda: T.LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
}
BOUND = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}
failed = False


def report(check: str, setting: str, value: str, ok: bool) -> None:
    global failed
    failed |= not ok
    print(f"{check}\t{setting}\t{value}\t{'ok' if ok else 'FAILED'}", flush=True)


def build(root: Path, name: str) -> str:
    out = root / name
    tokenizer = T.AutoTokenizer.from_pretrained(SHARED / "gpt2_tokenizer")
    config = CONFIGS[name]()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def effects(lm, sites, engine, batch_tokens):
    tp = tokenize_pair(lm.tokenizer, PAIR, 0, "none")
    metric = parse_metric("logit-diff:#40,#1849", lm.tokenizer).bind(tp)
    patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites}, engine)
    out = {}
    for chunk, ie in patcher.effects(sites, batch_tokens):
        out.update(zip(chunk, ie.float().tolist(), strict=True))
    return patcher.te.item(), out


def grid(lm):
    n = len(tokenize_pair(lm.tokenizer, PAIR, 0, "none").control_ids)
    return site_grid(range(lm.anatomy.n_layers), ["resid", "attn", "mlp"], [n - 1, n - 4, ALL_POSITIONS], 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (try --device cpu to rehearse)")
        return 0
    root = Path(tempfile.mkdtemp(prefix="harmmed-gpu-"))
    dtypes = ["float32", "bfloat16"] + (["float16"] if args.device.startswith("cuda") else [])
    for name in CONFIGS:
        path = build(root, name)
        for dtype in dtypes:
            lm = load_model(path, device=args.device, dtype=dtype)
            sites = grid(lm)
            batch = auto_batch_tokens(lm)
            te, replay = effects(lm, sites, "replay", batch)
            _, hooks = effects(lm, sites, "hooks", batch)
            worst = max(abs(replay[s] - hooks[s]) for s in sites) / max(abs(te), 1e-6)
            report("engine-agreement", f"{name} {dtype}", f"{worst:.2e}", worst <= BOUND[lm.dtype])
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
                free, _ = torch.cuda.mem_get_info(lm.device)
                torch.cuda.reset_peak_memory_stats(lm.device)
                base = torch.cuda.memory_allocated(lm.device)
                effects(lm, sites, "replay", batch)
                peak = torch.cuda.max_memory_allocated(lm.device) - base
                ok = peak < free / 2
                report(
                    "batch-tokens",
                    f"{name} {dtype}",
                    f"{batch} tokens, peak {peak / 2**30:.2f} of {free / 2**30:.1f} GiB free",
                    ok,
                )
            del lm
        if torch.cuda.device_count() >= 2 and args.device.startswith("cuda"):
            whole = load_model(path, device="cuda:0", dtype="float32")
            te, want = effects(whole, grid(whole), "replay", 512)
            del whole
            split = load_model(path, dtype="float32", device_map="balanced")
            _, got = effects(split, grid(split), "replay", 512)
            worst = max(abs(got[s] - want[s]) for s in want) / max(abs(te), 1e-6)
            gpus = sorted({str(d) for d in split.model.hf_device_map.values()})
            report("device-map", f"{name} balanced over {','.join(gpus)}", f"{worst:.2e}", worst <= 1e-3)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
