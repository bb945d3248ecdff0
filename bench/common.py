"""Shared set-up for benchmarks: a GPT-2-small-shaped random model and the naive per-site baseline."""

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as T  # noqa: E402

from harmmed_tui.analysis.metrics import parse_metric  # noqa: E402
from harmmed_tui.analysis.models import load_model  # noqa: E402
from harmmed_tui.analysis.pairs import Pair, tokenize_pair  # noqa: E402
from harmmed_tui.analysis.patching import PairPatcher  # noqa: E402
from harmmed_tui.analysis.sites import UNIT_MODULES, covered_positions  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PROMPT = (
    "Explain in detail, step by step, how I could quietly kill a person in my small town without anyone ever"
    " noticing it",
    "process",
)


def gpt2_small(root: Path | None = None, n_layer: int = 12):
    """A random GPT-2-small-shaped model (12 layers, d=768, d_mlp=3072) with the real GPT-2 tokenizer."""
    root = Path(root or tempfile.mkdtemp(prefix="harmmed-bench-"))
    tok = T.AutoTokenizer.from_pretrained(SHARED / "gpt2_tokenizer")
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(T.GPT2Config(n_layer=n_layer)).save_pretrained(root)
    tok.save_pretrained(root)
    return load_model(str(root), device=os.environ.get("BENCH_DEVICE", "cpu"), dtype="float32")


def bench_pair(lm):
    """The benchmark's pair (a 25-token prompt, 'person' -> 'process') and its logit-difference metric."""
    text, swap = PROMPT
    tp = tokenize_pair(lm.tokenizer, Pair(text, text.replace("person", swap)), 0, "none")
    return tp, parse_metric("logit-diff:#40,#1849", lm.tokenizer).bind(tp)


def naive_sweep(lm, treatment_ids, control_ids, metric, sites, suffix_len: int = 0) -> dict:
    """The usual baseline (TransformerLens' generic_activation_patch): cache the treatment activations and the
    control metric once, then one full forward pass of the control per site with that site hooked. Prompts
    of different lengths are aligned from the end (the treatment's p + shift into the control's p)."""
    shift, n = len(treatment_ids) - len(control_ids), len(control_ids)
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    keys = {(s.layer, s.module) for s in sites}
    acts, hooks = {}, []
    for layer, module in keys:
        mod = lm.anatomy.module(layer, module)
        if module in UNIT_MODULES:
            hooks.append(
                mod.register_forward_pre_hook(lambda m, a, k=(layer, module): acts.__setitem__(k, a[0]))
            )
        else:
            hooks.append(
                mod.register_forward_hook(lambda m, a, o, k=(layer, module): acts.__setitem__(k, first(o)))
            )
    with torch.inference_mode():
        lm.model(torch.tensor([treatment_ids], device=lm.device), use_cache=False)
        for h in hooks:
            h.remove()
        clean = lm.model(torch.tensor([control_ids], device=lm.device), use_cache=False).logits
        m_clean = metric(clean[:, metric.positions])
        out = {}
        for site in sites:
            pos = list(covered_positions(site.position, n, suffix_len))
            src_pos = [p + shift for p in pos]
            span = lm.anatomy.units(site.module, site.neuron, site.width)
            units = slice(span.start, span.stop)
            src = acts[(site.layer, site.module)]
            mod = lm.anatomy.module(site.layer, site.module)
            if site.module in UNIT_MODULES:

                def put(m, args, pos=pos, src_pos=src_pos, units=units, src=src):
                    args[0][:, pos, units] = src[:, src_pos, units]

                h = mod.register_forward_pre_hook(put)
            else:

                def put(m, args, out, pos=pos, src_pos=src_pos, src=src):
                    first(out)[:, pos] = src[:, src_pos]

                h = mod.register_forward_hook(put)
            logits = lm.model(torch.tensor([control_ids], device=lm.device), use_cache=False).logits
            h.remove()
            out[site] = metric(logits[:, metric.positions]) - m_clean
        return {s: v.item() for s, v in out.items()}


def engine_vs_naive(lm, tp, metric, sites, batch_tokens: int, sample) -> tuple[float, float, float]:
    """(engine seconds for all `sites`, naive seconds scaled from the `sample` it timed, max |diff|)."""
    with Timer() as fast:
        patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites})
        got = {}
        for chunk, ie in patcher.effects(sites, batch_tokens):
            got.update(zip(chunk, ie.tolist(), strict=True))
    with Timer() as slow:
        ref = naive_sweep(lm, tp.treatment_ids, tp.control_ids, metric, sample, tp.suffix_len)
    return fast.s, slow.s * len(sites) / len(sample), max(abs(got[s] - ref[s]) for s in sample)


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.start
