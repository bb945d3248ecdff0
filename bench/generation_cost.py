"""What the generation steps cost per pair, against that pair's exact layer x module x position grid measured
in the same run (the cost a run pays anyway):
- behaviour: the two greedy answers every run judges (--answer-tokens 24);
- verify: --verify-generation K, the top K sites patched into the control prompt, one batched generate;
- gate: one held-out pair of the default gate curve (5 K x 3 groups x (1 + 5 seeds) = 90 arms: one batched
  forward and one batched generate), and one arm alone times the arms (what batching saves).

GPT-2-small-shaped random model with the real GPT-2 tokenizer; a random model never stops early, so every
answer is the full 24 tokens. Run: python bench/generation_cost.py [--pairs 3] [--verify 10]
"""

import argparse
import time

import torch
from common import SHARED, gpt2_small

from harmmed_tui.analysis import gate
from harmmed_tui.analysis.behaviour import greedy_batch, pair_behaviour
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.pairs import tokenize_pair
from harmmed_tui.analysis.patching import PairPatcher, auto_batch_tokens
from harmmed_tui.analysis.prompt_sets import build_pairs
from harmmed_tui.analysis.sites import parse_positions, site_grid

TOKENS = 24


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def one_arm(lm, tp, bound, arm) -> float:
    """Seconds for one arm alone: its ablated forward for the metric and its ablated generate."""
    masks = {}
    for layer, unit in arm.neurons:
        masks.setdefault(layer, torch.zeros(1, lm.anatomy.d_mlp, dtype=torch.bool))[0, unit] = True
    values = {layer: torch.zeros(1, lm.anatomy.d_mlp) for layer in masks}
    ids = torch.tensor([tp.treatment_ids])
    start = time.perf_counter()
    with torch.inference_mode(), gate.Ablation(lm, masks, values):
        bound(lm.model(ids, use_cache=False, logits_to_keep=1).logits)
    with gate.Ablation(lm, masks, values):
        greedy_batch(lm, tp.treatment_ids, TOKENS)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--verify", type=int, default=10)
    args = ap.parse_args()
    lm = gpt2_small()
    metric = parse_metric("logit-diff:#40,#1849", lm.tokenizer)
    harmful = str(SHARED / "refusal_direction" / "raw" / "advbench.csv")
    harmless = str(SHARED / "self_instruct" / "seed_tasks.jsonl")
    judge, batch = PhraseJudge(), auto_batch_tokens(lm)
    d_mlp = lm.anatomy.d_mlp
    ranked = {
        "final": [(11, u) for u in range(1000)],
        "last-quarter": [(9 + u % 3, u) for u in range(1000)],
        "all": [(u % 12, u) for u in range(1000)],
    }
    spec = gate.GateSpec(max_new_tokens=TOKENS)
    arms = gate.arms(ranked, spec, d_mlp)
    totals = dict.fromkeys(("grid", "behaviour", "verify", "gate", "gate_one_by_one"), 0.0)
    for i, pair in enumerate(build_pairs(harmful, harmless, "random:0", args.pairs)):
        # a question mark ends both prompts: the shared suffix is the "?" and "\n" the model reads last
        pair = pair.__class__(pair.treatment + "?\n", pair.control + "?\n", pair.id)
        tp = tokenize_pair(lm.tokenizer, pair, i, "none", align="end")
        bound = metric.bind(tp)
        aligned = min(tp.prompt_len, tp.treatment_prompt_len)
        positions = parse_positions("last:8,suffix", tp.prompt_len, aligned, tp.suffix_len)
        sites = site_grid(range(12), ["resid", "attn", "mlp"], positions, d_mlp)

        def grid(tp=tp, bound=bound, sites=sites):
            patcher = PairPatcher(lm, tp, bound, {(s.layer, s.module) for s in sites})
            return {
                s: v
                for chunk, ie in patcher.effects(sites, batch)
                for s, v in zip(chunk, ie.tolist(), strict=True)
            }

        grid_s, ie = timed(grid)
        behaviour_s, _ = timed(lambda tp=tp: pair_behaviour(lm, tp, judge, TOKENS))
        top = sorted((s for s in ie if s.module != "resid" or s.position >= 0), key=lambda s: -abs(ie[s]))
        patcher = PairPatcher(lm, tp, bound, {(s.layer, s.module) for s in top[: args.verify]}, "hooks")
        verify_s, _ = timed(
            lambda patcher=patcher, top=top: patcher.patched_answers(top[: args.verify], TOKENS)
        )
        # a held-out prompt of the same shape (its own control: the cost does not depend on the values held)
        heldout = tokenize_pair(
            lm.tokenizer, pair.__class__(pair.treatment, pair.treatment), i, "none", allow_same=True
        )
        gate_s, _ = timed(lambda heldout=heldout: gate.check(lm, metric, judge, [heldout], ranked, spec))
        one_s = one_arm(lm, heldout, metric.bind(heldout), arms[len(arms) // 2])
        for key, value in zip(
            totals, (grid_s, behaviour_s, verify_s, gate_s, one_s * len(arms)), strict=True
        ):
            totals[key] += value
        print(
            f"pair {pair.id}: grid of {len(sites)} sites {grid_s:.2f} s; behaviour {behaviour_s:.2f} s; "
            f"verify {args.verify} {verify_s:.2f} s; gate {len(arms)} arms {gate_s:.2f} s "
            f"(one arm alone {one_s:.3f} s)"
        )
    n = args.pairs
    grid = totals["grid"] / n
    print(f"\nper pair, against its exact grid ({grid:.2f} s = 1.00x):")
    print(
        f"  behaviour (2 answers of {TOKENS} tokens):      {totals['behaviour'] / n:.2f} s  {totals['behaviour'] / n / grid:.2f}x"
    )
    print(
        f"  --verify-generation {args.verify} (batched):        {totals['verify'] / n:.2f} s  {totals['verify'] / n / grid:.2f}x"
    )
    print(
        f"  gate curve, one held-out pair ({len(arms)} arms):  {totals['gate'] / n:.2f} s  {totals['gate'] / n / grid:.2f}x"
    )
    print(
        f"  the same arms one at a time:             {totals['gate_one_by_one'] / n:.2f} s  "
        f"{totals['gate_one_by_one'] / n / grid:.2f}x  (batching: {totals['gate_one_by_one'] / totals['gate']:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
