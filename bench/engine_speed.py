"""Exact layer x module x position sweep: batched, layer-skipping engine vs one forward per site.

Target (issue 2): >= 8x on a GPT-2-small-shaped random model with a ~24-token prompt, identical numbers.
Run: python bench/engine_speed.py [--naive-sample N]
"""

import argparse
import random

from common import bench_pair, engine_vs_naive, gpt2_small

from harmmed_tui.analysis.patching import auto_batch_tokens
from harmmed_tui.analysis.sites import ALL_POSITIONS, site_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--naive-sample", type=int, default=0, help="time the naive loop on N random sites (0: all)"
    )
    ap.add_argument("--batch-tokens", type=int, default=0, help="token positions per forward (0: auto)")
    args = ap.parse_args()
    lm = gpt2_small()
    tp, metric = bench_pair(lm)
    n = len(tp.control_ids)
    sites = site_grid(range(12), ["resid", "attn", "mlp"], list(range(n)) + [ALL_POSITIONS], lm.anatomy.d_mlp)
    batch = args.batch_tokens or auto_batch_tokens(lm)
    print(f"model: GPT-2-small shape (12 x 768), prompt {n} tokens, {len(sites)} sites, batch tokens {batch}")

    sample = random.Random(0).sample(sites, args.naive_sample) if args.naive_sample else sites
    engine_s, naive_s, err = engine_vs_naive(lm, tp, metric, sites, batch, sample)
    print(
        f"engine: {engine_s:.2f} s   naive: {naive_s:.2f} s ({len(sample)} sites timed)   max |diff| {err:.2e}"
    )
    print(f"speed-up: {naive_s / engine_s:.1f}x (target >= 8x)")


if __name__ == "__main__":
    main()
