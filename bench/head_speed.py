"""Exact head patching: every attention head of every layer at the last positions, batched and
layer-skipping, against one full forward pass per head (TransformerLens' generic loop), in the same run.

Run: python bench/head_speed.py [--last 3]
"""

import argparse

from common import bench_pair, engine_vs_naive, gpt2_small

from harmmed_tui.analysis.patching import auto_batch_tokens
from harmmed_tui.analysis.sites import site_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--last", type=int, default=3, help="the last N positions")
    args = ap.parse_args()
    lm = gpt2_small()
    tp, metric = bench_pair(lm)
    n, a = len(tp.control_ids), lm.anatomy
    batch = auto_batch_tokens(lm)
    positions = list(range(n - args.last, n))
    sites = site_grid(range(a.n_layers), ["head"], positions, a.d_mlp, n_heads=a.n_heads)
    print(
        f"model: GPT-2-small shape ({a.n_layers} x {a.d_model}, {a.n_heads} heads of {a.d_head}), prompt {n} "
        f"tokens, batch tokens {batch}: {len(sites)} head sites"
    )
    engine_s, naive_s, err = engine_vs_naive(lm, tp, metric, sites, batch, sites)
    print(
        f"engine {engine_s:.2f} s   naive {naive_s:.1f} s (every site)   max |diff| {err:.1e}   "
        f"speed-up {naive_s / engine_s:.1f}x"
    )


if __name__ == "__main__":
    main()
