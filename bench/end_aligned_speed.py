"""End-aligned layer x module x position grid over AdvBench x Self-Instruct pairs: the engine against one
forward per site (the per-site hooks loop), in the same run.

GPT-2-small-shaped random model with the real GPT-2 tokenizer; positions last:8 and `suffix` (the prompts'
shared final tokens) at every layer and module. Run: python bench/end_aligned_speed.py [--pairs 3]
"""

import argparse

from common import SHARED, engine_vs_naive, gpt2_small

from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.pairs import tokenize_pair
from harmmed_tui.analysis.patching import auto_batch_tokens
from harmmed_tui.analysis.prompt_sets import build_pairs
from harmmed_tui.analysis.sites import parse_positions, site_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    lm = gpt2_small()
    harmful = str(SHARED / "refusal_direction" / "raw" / "advbench.csv")
    harmless = str(SHARED / "self_instruct" / "seed_tasks.jsonl")
    batch = auto_batch_tokens(lm)
    total_engine = total_naive = 0.0
    for i, pair in enumerate(build_pairs(harmful, harmless, "random:0", args.pairs)):
        # a question mark ends both prompts: the shared suffix is the "?" and "\n" the model reads last
        pair = pair.__class__(pair.treatment + "?\n", pair.control + "?\n", pair.id)
        tp = tokenize_pair(lm.tokenizer, pair, i, "none", align="end")
        metric = parse_metric("logit-diff:#40,#1849", lm.tokenizer).bind(tp)
        aligned = min(tp.prompt_len, tp.treatment_prompt_len)
        positions = parse_positions("last:8,suffix", tp.prompt_len, aligned, tp.suffix_len)
        sites = site_grid(range(12), ["resid", "attn", "mlp"], positions, lm.anatomy.d_mlp)
        engine_s, naive_s, err = engine_vs_naive(lm, tp, metric, sites, batch, sites)
        total_engine, total_naive = total_engine + engine_s, total_naive + naive_s
        print(
            f"pair {pair.id}: {len(tp.treatment_ids)} vs {len(tp.control_ids)} tokens, suffix {tp.suffix_len}, "
            f"{len(sites)} sites: engine {engine_s:.2f} s, naive {naive_s:.2f} s, max |diff| {err:.1e}"
        )
    print(f"speed-up over {args.pairs} pairs: {total_naive / total_engine:.1f}x")


if __name__ == "__main__":
    main()
