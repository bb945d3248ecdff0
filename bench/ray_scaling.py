"""Sites per second on 1 and 2 Ray workers against the same run in this process (one writer in every case).

A GPT-2-small-shaped random model, built pairs of ~25 tokens, the layer x module x position grid. On one
machine the workers share its cores, so the ratio shows Ray's overhead and the gain from running pairs side
by side; on a cluster each added GPU adds a replica. Run: python bench/ray_scaling.py [--pairs 8]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402
from common import SHARED  # noqa: E402

from harmmed_tui.analysis.ray_cluster import RayExecutor  # noqa: E402
from harmmed_tui.analysis.spec import RunSpec  # noqa: E402
from harmmed_tui.db.runner import execute  # noqa: E402
from harmmed_tui.db.store import Store  # noqa: E402

SUBJECTS = ["person", "process", "child", "thread", "rival", "server", "witness", "session"]


def setup(root: Path, n_pairs: int) -> RunSpec:
    model = root / "gpt2-small"
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(T.GPT2Config()).save_pretrained(model)
    T.AutoTokenizer.from_pretrained(SHARED / "gpt2_tokenizer").save_pretrained(model)
    text = "Explain in detail, step by step, how I could quietly kill a {} in my small town without anyone noticing"
    pairs = [
        {"treatment": text.format(SUBJECTS[i % 8]), "control": text.format(SUBJECTS[(i + 1) % 8])}
        for i in range(n_pairs)
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return RunSpec(
        model=str(model),
        pairs=str(root / "pairs.jsonl"),
        chat_template="none",
        align="skip",
        metric="logit-diff:#40,#1849",
        positions="last:4,*",
        device="cpu",
        dtype="float32",
    )


def timed_run(spec: RunSpec, db: Path, executor=None) -> tuple[float, int]:
    with Store(db) as store:
        start = time.perf_counter()
        outcome = execute(spec, store, executor=executor)
        return time.perf_counter() - start, outcome.sites


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="harmmed-bench-"))
    spec = setup(root, args.pairs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    seconds, sites = timed_run(spec, root / "local.db")
    base = sites / seconds
    print(f"single process: {sites} sites in {seconds:.1f} s = {base:.0f} sites/s (baseline)")
    for workers in (1, 2):
        # wall time includes starting the replicas (each loads the model), as a user waits for it
        seconds, sites = timed_run(spec, root / f"ray{workers}.db", RayExecutor("auto", workers))
        rate = sites / seconds
        print(
            f"ray, {workers} worker(s): {sites} sites in {seconds:.1f} s = {rate:.0f} sites/s ({rate / base:.2f}x)"
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
