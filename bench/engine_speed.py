"""Exact layer x module x position sweep: batched, layer-skipping engine vs one forward per site.

Target (issue 2): >= 8x on a GPT-2-small-shaped random model with a ~24-token prompt, identical numbers.
Run: python bench/engine_speed.py [--naive-sample N]
"""

import argparse
import random

from common import Timer, bench_pair, gpt2_small, naive_sweep

from analysis.patching import PairPatcher, auto_batch_tokens
from analysis.sites import ALL_POSITIONS, site_grid


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

    with Timer() as fast:
        patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites})
        got = {}
        for chunk, ie in patcher.effects(sites, batch):
            got.update(zip(chunk, ie.tolist(), strict=True))
    sample = random.Random(0).sample(sites, args.naive_sample) if args.naive_sample else sites
    with Timer() as slow:
        ref = naive_sweep(lm, tp.treatment_ids, tp.control_ids, metric, sample)
    naive_s = slow.s * len(sites) / len(sample)
    err = max(abs(got[s] - ref[s]) for s in sample)
    print(
        f"engine: {fast.s:.2f} s   naive: {naive_s:.2f} s ({len(sample)} sites timed)   max |diff| {err:.2e}"
    )
    print(f"speed-up: {naive_s / fast.s:.1f}x (target >= 8x)")


if __name__ == "__main__":
    main()
