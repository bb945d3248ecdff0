"""Attribution patching over every neuron of every layer (and resid/attn/mlp at every position), in
forward-pass equivalents: its time divided by one plain forward of the same prompt, both measured here.

Target (issue 4): at most 4 forward-pass equivalents on a GPT-2-small-shaped random model.
Run: python bench/atp_cost.py [--repeat N]
"""

import argparse
import statistics

import torch
from common import Timer, bench_pair, gpt2_small

from harmmed_tui.analysis.attribution import Attribution
from harmmed_tui.analysis.sites import site_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=7, help="timings per side; the median is reported")
    args = ap.parse_args()
    lm = gpt2_small()
    tp, metric = bench_pair(lm)
    n = len(tp.control_ids)
    layers = range(lm.anatomy.n_layers)
    neurons = site_grid(layers, ["neuron"], list(range(n)), lm.anatomy.d_mlp)
    grid = neurons + site_grid(layers, ["resid", "attn", "mlp"], list(range(n)), lm.anatomy.d_mlp)
    ids = torch.tensor([tp.control_ids], device=lm.device)

    def forward():
        with torch.inference_mode():
            lm.model(ids, use_cache=False)

    def estimate(sites):  # forward + forward + backward: the AtP IE of every site, as one table
        return Attribution(lm, tp, metric, sites)

    def read_out(sites):  # and the per-site values the run stores (Python work per site, as exact has)
        Attribution(lm, tp, metric, sites).effects(sites)

    sides = {"forward": forward, "neurons": lambda: estimate(neurons), "all sites": lambda: estimate(grid)}
    sides["all sites, read out"] = lambda: read_out(grid)
    for fn in sides.values():  # warm-up
        fn()
    times = {name: [] for name in sides}
    for _ in range(args.repeat):  # interleaved, so that machine noise hits every side alike
        for name, fn in sides.items():
            with Timer() as t:
                fn()
            times[name].append(t.s)
    fwd = statistics.median(times["forward"])
    print(
        f"model: GPT-2-small shape (12 x 768, d_mlp 3072), prompt {n} tokens; one forward {fwd * 1e3:.1f} ms"
    )
    counts = {"neurons": len(neurons), "all sites": len(grid), "all sites, read out": len(grid)}
    for name, count in counts.items():
        s = statistics.median(times[name])
        print(
            f"atp, {name}: {count} sites in {s * 1e3:.0f} ms = {s / fwd:.2f} forward equivalents (target <= 4)"
        )


if __name__ == "__main__":
    main()
