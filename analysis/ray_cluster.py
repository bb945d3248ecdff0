"""Pairs computed by Ray actors, one model replica each; rows come back to the caller, the store's one writer.

Ray schedules the actors on the cluster's GPUs (or CPUs), restarts one that dies, and carries each pair's
results back as a stream of batches. The driver (RayExecutor.run) hands out pairs one at a time, so fast
workers take more of them; a pair whose worker died is handed out again with the sites already received
marked done, so that only its missing sites are computed. Nothing here knows about the store: the caller
writes what run() yields (db.runner.execute), exactly as for an in-process run.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from harmmed_tui.analysis import mediation
from harmmed_tui.analysis.errors import ClusterError, HarmmedError
from harmmed_tui.analysis.models import load_tokenizer_and_config
from harmmed_tui.analysis.sites import Site
from harmmed_tui.analysis.spec import RunSpec

PAIR_ATTEMPTS = 3  # a pair that kills its worker this many times fails the run (e.g. out of memory)
ACTOR_RESTARTS = 3
RESTART_TIMEOUT_S = 600  # a restarted worker reloads its model


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("running on Ray needs ray: pip install 'harmmed-tui[ray]'") from None
    return ray


class PairWorker:
    """A Ray actor: one model replica, computing whole pairs (or their missing sites) on request."""

    def __init__(self, spec: RunSpec, stored: mediation.Stored | None):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.executor = mediation.InProcess()
        self.plan, self.provenance = self.executor.prepare(spec, stored)
        self.prep = self.executor.prep

    def describe(self) -> tuple[dict, int, dict, object]:
        return self.provenance, os.getpid(), self.plan.behaviour, self.plan.directions

    def run_pair(self, index: int, done: set) -> Iterator[mediation.PairResult]:
        tp = next(tp for tp in self.prep.pairs if tp.index == index)
        yield from mediation.run_pair(self.prep, tp, mediation.pair_todo(self.prep, index, done))


@dataclass
class RayExecutor:
    """Computes a run's pairs on `workers` Ray actors of `gpus_per_worker` GPUs each.

    address: `local` starts a Ray instance on this machine; `auto` joins the running cluster (RAY_ADDRESS or
    the one `ray start` left on this node); anything else is a cluster address. workers=0 takes one per
    `gpus_per_worker` GPUs of the cluster, or one on a cluster without GPUs."""

    address: str = "auto"
    workers: int = 0
    gpus_per_worker: float = 1.0

    def prepare(
        self,
        spec: RunSpec,
        stored: mediation.Stored | None = None,
        stages: mediation.Stages = mediation.QUIET,
    ) -> tuple[mediation.Plan, dict]:
        ray = _ray()
        mediation.check_choices(spec)  # a typo fails here, before any replica loads
        stages.stage("joining the Ray cluster")
        self._connect(ray)
        gpus = ray.cluster_resources().get("GPU", 0)
        per_worker = self.gpus_per_worker if gpus else 0
        n = self.workers or (int(gpus // self.gpus_per_worker) if gpus else 1)
        if n < 1:
            raise ClusterError(
                f"the cluster has {gpus:g} GPUs: too few for {self.gpus_per_worker:g} per worker"
            )
        actor = ray.remote(num_cpus=1, num_gpus=per_worker, max_restarts=ACTOR_RESTARTS)(PairWorker)
        stages.stage(f"loading the model on {n} Ray workers, judging answers")
        self.actors = [actor.remote(spec, stored) for _ in range(n)]
        described = self._get(ray, [a.describe.remote() for a in self.actors])
        self.pids = [pid for _, pid, _, _ in described]
        # the plan is the replicas' own: the same spec, tokenizer and shape give the same plan everywhere,
        # and the first replica's judged answers (greedy, so every replica's) give the same pairs
        plan = mediation.with_behaviour(
            mediation.plan(spec, *self._shape(spec, described[0][0]), stored), described[0][2], stored
        )
        # (every replica takes the direction from the same pairs with the same model: the first one's is stored)
        plan = replace(plan, directions=described[0][3])
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        cluster = {
            "address": self.address,
            "nodes": nodes,
            "gpus": gpus,
            "workers": n,
            "gpus_per_worker": per_worker,
        }
        return plan, {**described[0][0], "cluster": cluster}

    def _connect(self, ray) -> None:
        if ray.is_initialized():
            return
        if self.address not in ("local", "auto"):
            _reachable(self.address)
        # Ray's own logging stays off the user's terminal (the explorer draws on it); its errors come back
        # as one ClusterError
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        try:
            if self.address == "local":
                ray.init(include_dashboard=False, **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"cannot join the Ray cluster at '{self.address}': {first}") from None

    @staticmethod
    def _shape(spec: RunSpec, provenance: dict):
        tokenizer, _ = load_tokenizer_and_config(spec.model, spec.revision, spec.trust_remote_code)
        return tokenizer, provenance["n_layers"], provenance["d_mlp"], provenance["n_heads"]

    @staticmethod
    def _get(ray, refs):
        """ray.get, with a replica's own user error (a model that does not load) raised as itself."""
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise _user_error(e) from None

    def run(self, plan, progress=None, cancelled=None, done=frozenset()) -> Iterator[mediation.PairResult]:
        ray = _ray()
        todo_by_pair, finished = mediation.remaining(plan, done)
        received = set(done)  # sites this run has in the store; a retried pair skips them
        pending = [tp.index for tp in plan.pairs if todo_by_pair[tp.index]]
        attempts = dict.fromkeys(pending, 0)
        lock, stop, results = threading.Lock(), threading.Event(), queue.Queue()
        if progress:
            progress(finished, plan.n_sites)

        def next_pair() -> tuple[int, set] | None:
            with lock:
                if stop.is_set() or not pending:
                    return None
                index = pending.pop(0)
                attempts[index] += 1
                return index, {k for k in received if k[0] == index}

        def back_up(actor) -> bool:
            """Wait while Ray restarts a worker (it reloads its model); False if it does not come back."""
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    ray.get(actor.describe.remote())
                    return True
                except ray.exceptions.RayActorError:  # calls fail while it restarts
                    time.sleep(0.5)
            return False

        def serve(actor) -> None:
            """One thread per actor: stream its pairs' batches into `results` (only the caller writes)."""
            while (job := next_pair()) is not None:
                index, pair_done = job
                try:
                    for ref in actor.run_pair.options(num_returns="streaming").remote(index, pair_done):
                        result = ray.get(ref)
                        with lock:  # before a retry of this pair is handed out, it knows what arrived
                            received.update(mediation.site_key(index, *_site_of(r)) for r in result.rows)
                        results.put(("result", result))
                        if stop.is_set():
                            return
                except ray.exceptions.RayActorError:  # the worker died: Ray restarts it; redo what is missing
                    with lock:
                        if attempts[index] >= PAIR_ATTEMPTS:
                            error = ClusterError(f"pair {index} killed its Ray worker {PAIR_ATTEMPTS} times")
                            results.put(("error", error))
                            return
                        pending.insert(0, index)
                    if not back_up(actor):  # out of restarts: the other workers finish the run
                        break
                except Exception as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
                    results.put(("error", e))
                    return
            results.put(("idle", None))

        threads = [threading.Thread(target=serve, args=(a,), daemon=True) for a in self.actors]
        for t in threads:
            t.start()
        busy = len(threads)
        try:
            while busy:
                try:
                    kind, item = results.get(timeout=0.2)
                except queue.Empty:
                    kind = None
                if cancelled and cancelled():
                    return
                if kind == "idle":
                    busy -= 1
                elif kind == "error":
                    raise _user_error(item)
                elif kind == "result":
                    yield item
                    finished = min(finished + len(item.rows), plan.n_sites)  # (an atp pair redone whole)
                    if progress and item.rows:
                        progress(finished, plan.n_sites)
        finally:
            stop.set()

    def close(self) -> None:
        ray = _ray()
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []


CONNECT_TIMEOUT_S = 10.0


def _reachable(address: str) -> None:
    """A cluster address must answer within CONNECT_TIMEOUT_S: ray.init retries an unreachable one for many
    minutes, printing as it goes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address '{address}' is not HOST:PORT (or local, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ClusterError(f"cannot reach the Ray cluster at '{address}' ({reason})") from None


def _user_error(error: Exception) -> Exception:
    """What a worker's failure means to the user: its own user error (Ray wraps it, or an actor that died
    creating wraps it once more), else one line naming the failure."""
    for candidate in (
        error,
        getattr(error, "cause", None),
        getattr(getattr(error, "error", None), "cause", None),
    ):
        if isinstance(candidate, HarmmedError):
            return candidate
    return ClusterError(f"a Ray worker failed: {str(error).strip().splitlines()[-1]}")


def _site_of(row: dict):
    """(Site, method) of an effect row, to key it as mediation.site_key does."""
    return Site(row["layer"], row["module"], row["position"], row["neuron"], row["width"]), row["method"]
