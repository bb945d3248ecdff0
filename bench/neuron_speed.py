"""Exact neuron patching: one layer's 3072 MLP neurons at the last position, batched and layer-skipping,
against one full forward pass per neuron (the naive loop is timed on a sample and scaled per neuron).

Target (issue 4): >= 20x on a GPT-2-small-shaped random model, identical numbers.
Run: python bench/neuron_speed.py [--layers 0,6,11] [--naive-sample N]
"""

import argparse
import random

from common import bench_pair, engine_vs_naive, gpt2_small

from harmmed_tui.analysis.patching import auto_batch_tokens
from harmmed_tui.analysis.sites import site_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", default="0,6,11", help="layers to sweep, one at a time")
    ap.add_argument("--naive-sample", type=int, default=128, help="neurons timed with the naive loop")
    args = ap.parse_args()
    lm = gpt2_small()
    tp, metric = bench_pair(lm)
    n = len(tp.control_ids)
    batch = auto_batch_tokens(lm)
    print(f"model: GPT-2-small shape (12 x 768, d_mlp 3072), prompt {n} tokens, batch tokens {batch}")
    for layer in (int(x) for x in args.layers.split(",")):
        sites = site_grid([layer], ["neuron"], [n - 1], lm.anatomy.d_mlp)
        sample = random.Random(layer).sample(sites, args.naive_sample)
        engine_s, naive_s, err = engine_vs_naive(lm, tp, metric, sites, batch, sample)
        print(
            f"layer {layer:2d}: {len(sites)} neurons  engine {engine_s:.2f} s   naive {naive_s:.1f} s "
            f"({len(sample)} timed)   max |diff| {err:.1e}   speed-up {naive_s / engine_s:.0f}x (target >= 20x)"
        )


if __name__ == "__main__":
    main()
