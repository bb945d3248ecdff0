"""Runs on a local Ray cluster (2 CPU workers) equal single-process runs, and survive killed workers and drivers."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from harmmed_tui.analysis.ray_cluster import RayExecutor
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import export
from harmmed_tui.db.runner import execute
from harmmed_tui.db.store import Store
from tests.conftest import SMOLLM_TOKENIZER

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def rows(db, run_id=1) -> dict:
    """(pair, layer, module, position, neuron, head, method, effect) -> IE or DE, and each pair's TE, of a
    stored run: its layer, neuron and head rows."""
    with Store(db) as store:
        effects = [
            r for level in ("layer", "neuron", "head") for r in export.effect_rows(store, run_id, level)
        ]
        te = {p["pair"]: p["te"] for p in store.pairs(run_id)}
    keys = ("pair", "layer", "module", "position", "neuron", "head", "method")
    keyed = {(*(r.get(k) for k in keys), e): r[e] for r in effects for e in ("ie", "de") if e in r}
    assert len(keyed) == len(effects) * (1 + ("de" in effects[0]))
    return {"effects": keyed, "te": te}


def assert_same(got, want):
    """Equal to 1e-6 of the pair's |TE|: float32 sums in another thread's order differ by ~4e-7 of TE."""
    assert got["effects"].keys() == want["effects"].keys()
    for key, ie in want["effects"].items():
        assert abs(got["effects"][key] - ie) <= 1e-6 * max(1.0, abs(want["te"][key[0]])), key
    assert got["te"] == pytest.approx(want["te"], rel=1e-6, abs=1e-6)


def single_process(tmp_path, spec) -> dict:
    """The same run in this process, on one thread as each replica runs (so float32 sums round alike)."""
    db = tmp_path / "local.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(db) as store:
            execute(spec, store)
    finally:
        torch.set_num_threads(threads)
    return rows(db)


SPECS = {
    "default": RunSpec(
        max_pairs=5, modules=("resid", "attn", "mlp", "neuron", "head", "direction"), positions="last:3,*"
    ),
    "llama": RunSpec(
        max_pairs=3,
        modules=("resid", "mlp", "neuron", "head", "direction"),
        method="atp",
        verify_top=10,
        effects=("ie", "de"),
    ),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_ray_rows_equal_single_process(cluster, tmp_path, tiny_dir, name):
    spec = SPECS[name]
    if name == "llama":
        spec = spec.replace(model=str(tiny_dir("llama", SMOLLM_TOKENIZER)))
    db = tmp_path / "ray.db"
    with Store(db) as store:
        outcome = execute(spec, store, executor=RayExecutor(workers=2))
        prov = store.run(outcome.run_id)["provenance"]
    assert outcome.status == "done"
    assert prov["cluster"]["workers"] == 2 and prov["cluster"]["nodes"] == 1
    assert_same(rows(db), single_process(tmp_path, spec))
    with Store(db) as store, Store(tmp_path / "local.db") as local:  # one direction, the replicas' own
        assert (store.directions(1)[0] == local.directions(1)[0]).all()


def test_a_killed_worker_is_restarted_and_redoes_only_its_missing_sites(cluster, tmp_path):
    spec = SPECS["default"]
    executor = RayExecutor(workers=2)
    killed = []

    def progress(done, total):
        if done and not killed:  # rows have arrived: kill one replica mid-run
            killed.append(executor.pids[0])
            os.kill(executor.pids[0], signal.SIGKILL)

    db = tmp_path / "ray.db"
    with Store(db) as store:
        outcome = execute(spec, store, progress=progress, executor=executor)
        assert outcome.status == "done" and killed
        assert store.runs()[0]["n_rows"] == outcome.sites
    assert_same(rows(db), single_process(tmp_path, spec))


def test_a_killed_driver_leaves_the_run_interrupted_and_resume_finishes_it(cluster, tmp_path):
    spec = SPECS["default"].replace(max_pairs=8)
    db = tmp_path / "ray.db"
    cli = [sys.executable, "-m", "harmmed_tui.tui.cli"]
    args = [
        "--max-pairs",
        "8",
        "--modules",
        ",".join(spec.modules),
        "--positions",
        "last:3,*",
        "--neuron-positions",
        "last",
    ]
    ray_args = ["--ray", cluster, "--workers", "2", "--db", str(db)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen([*cli, "run", *args, *ray_args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if db.exists():
            with Store(db) as store:
                runs = store.runs()
                if runs and runs[0]["n_rows"] > 0:
                    break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    with Store(db) as store:
        run = store.runs()[0]
        assert run["status"] == "interrupted" and 0 < run["n_rows"] < run["n_sites"]
    subprocess.run([*cli, "resume", "1", *ray_args], env=env, check=True, capture_output=True)
    with Store(db) as store:
        assert store.runs()[0]["status"] == "done"
    assert_same(rows(db), single_process(tmp_path, spec))


def test_cancel_stops_the_workers_and_resume_finishes(cluster, tmp_path):
    spec = SPECS["default"]
    db = tmp_path / "ray.db"
    with Store(db) as store:
        seen = []
        outcome = execute(
            spec,
            store,
            progress=lambda done, total: seen.append(done),
            cancelled=lambda: any(seen),  # cancel once the first rows have arrived
            executor=RayExecutor(workers=2),
        )
        assert outcome.status == "cancelled"
        assert 0 < store.runs()[0]["n_rows"] < outcome.sites
        assert execute(spec, store, run_id=outcome.run_id, executor=RayExecutor(workers=2)).status == "done"
    assert_same(rows(db), single_process(tmp_path, spec))
