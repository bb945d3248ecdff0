"""Runs a RunSpec into the store: the one path shared by `harmmed-tui run`, `resume` and the TUI's worker."""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.utils import logging as hf_logging

from harmmed_tui.analysis import gate, inputs, mediation
from harmmed_tui.analysis.behaviour import Behaviour
from harmmed_tui.analysis.direction import Directions, mean_difference, removed_by_layer
from harmmed_tui.analysis.errors import JobCancelled
from harmmed_tui.analysis.gate_curve import group_layers
from harmmed_tui.analysis.metrics import AUTO, Refusal, parse_metric
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import Pair, load_pairs, tokenize_pairs
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import queries
from harmmed_tui.db.jobs import Job
from harmmed_tui.db.report import study_of
from harmmed_tui.db.store import Store, StoreError

# Whatever runs models runs through here: keep transformers' warnings and download bars off the terminal
# (the explorer draws on it).
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


@dataclass
class RunOutcome:
    run_id: int
    status: str
    pairs: int
    sites: int
    elapsed_s: float  # compute time of the mediation, excluding model loading
    te: list[float]
    done: int = 0  # sites stored when it stopped (all of them when done)
    cancelled_by: str | None = None  # who stopped a cancelled run: another process, or this one

    def stopped_message(self) -> str:
        """What a cancelled run says (on stderr, with or without a terminal)."""
        return (
            f"run {self.run_id} cancelled by {self.cancelled_by or 'this process'} after {self.done:,} of "
            f"{self.sites:,} sites: resume it with harmmed-tui resume {self.run_id}"
        )


def _pair_record(tp, behaviour) -> dict:
    p = tp.pair
    judged = (
        dict(
            answer_treatment=behaviour.answer_treatment,
            answer_control=behaviour.answer_control,
            refused_treatment=behaviour.refused_treatment,
            refused_control=behaviour.refused_control,
        )
        if behaviour
        else {}
    )
    return dict(
        **judged,
        pair=tp.index,
        pair_id=p.id,
        category=p.category,
        treatment=p.treatment,
        control=p.control,
        target=p.target,
        treatment_tokens=json.dumps(tp.treatment_tokens),
        control_tokens=json.dumps(tp.control_tokens),
    )


def execute(
    spec: RunSpec,
    store: Store,
    run_id: int | None = None,
    progress: mediation.Progress | None = None,
    cancelled: mediation.Cancelled | None = None,
    lm: LoadedModel | None = None,
    on_prepared=None,
    executor=None,
    job: Job | None = None,
    on_stage=None,
    pairs_from: mediation.Stored | None = None,
) -> RunOutcome:
    """Create (or resume) a run, stream its rows into the store, and leave a final status.

    The executor computes the pairs (in this process by default, or on Ray actors); whatever it is, this
    process is the store's one writer, and the run's only one: a resume first claims the run (refused while
    another live process writes it), then computes from the pairs the run stored, with the model and judge
    files it started with. `on_prepared(run_id, plan, provenance)` is called once the run exists. The run is
    a job (db.jobs: its stage seen by every process, `job` where the caller holds one) that `cancelled` or
    any process can stop between batches: before the run exists, nothing is stored (JobCancelled).
    `on_stage(stage, done, total)` hears each stage (loading, judging answers N/M, patching sites N/M).
    `pairs_from`: a new run computes the pairs another run stored, with their judged answers and learned
    refusal tokens (a study's second run: its pairs are judged once, by the first).
    Any error marks the run `failed` with its message and is re-raised; a cancel marks it `cancelled`."""
    store.check_writable()
    executor = executor or mediation.InProcess(lm)
    with _held(store, job, "run" if run_id is None else "resume", spec.model, run_id) as job:
        if on_stage:
            job.heard.append(on_stage)

        def stop() -> bool:
            return job.cancelled() or bool(cancelled and cancelled())

        def counted(done: int, total: int) -> None:
            job.progress(done, total)
            if progress:
                progress(done, total)

        try:
            if run_id is None:
                # a run is stored only once its model has loaded and its plan checked: bad input leaves no row
                spec = inputs.resolved(spec)
                kept = {"inputs": inputs.record(spec)}
                plan, provenance = executor.prepare(spec, pairs_from, stages=job)
                if stop():
                    raise JobCancelled("cancelled before the run started computing: nothing was stored")
                run_id = store.create_run(spec.model, spec.to_json())
                job.attach(run_id)
            else:
                plan, provenance, kept = _resume(spec, store, run_id, executor, job, stop)
            job.stage("patching sites", plan.n_sites)
            with store.keep_alive(run_id):
                outcome = _stream(
                    spec, store, run_id, executor, plan, {**provenance, **kept}, counted, stop, on_prepared
                )
            if outcome.status == "cancelled" and job.cancelled():
                outcome.cancelled_by = job.cancelled_by
            return outcome
        finally:
            executor.close()


@contextmanager
def _held(store: Store, job: Job | None, kind: str, model: str, run_id: int | None):
    """The caller's job, or one of this call's own."""
    if job is not None:
        if run_id is not None:
            job.attach(run_id)
        yield job
        return
    with Job.open(store, kind, model, run_id) as job:
        yield job


def _resume(
    spec: RunSpec, store: Store, run_id: int, executor, job: Job, stop
) -> tuple[mediation.Plan, dict, dict]:
    """Claim a stored run and prepare it from what it stored; a resume that cannot start (or is cancelled
    before it computes) leaves the run as it was. Returns the plan, the model's provenance, and what the
    run's provenance keeps from its start."""
    before = store.run(run_id)
    store.claim(run_id)
    try:
        with store.keep_alive(run_id):
            old = before["provenance"]
            inputs.check_unchanged(f"run {run_id}", old.get("inputs", {}))
            plan, provenance = executor.prepare(spec, stored_pairs(store, run_id, old), stages=job)
            if old.get("revision") != provenance.get("revision"):
                raise inputs.InputChangedError(
                    f"run {run_id} cannot resume: its model {spec.model} is now revision "
                    f"{provenance.get('revision')}, not {old.get('revision')} as when the run started; rows of "
                    "two models would mix: start a new run"
                )
            if stop():
                raise JobCancelled(
                    f"resume of run {run_id} cancelled before it computed: the run is as it was"
                )
    except BaseException:
        store.release(run_id, before["status"], before["error"])
        raise
    return plan, provenance, {k: old[k] for k in ("inputs", "skipped_pairs") if k in old}


def stored_pairs(store: Store, run_id: int, provenance: dict) -> mediation.Stored:
    """A run's pairs, tokens and judged answers as it stored them (what a resume computes from)."""
    rows = store.pairs(run_id)
    return mediation.Stored(
        pairs={
            p["pair"]: Pair(
                p["treatment"], p["control"], p["pair_id"] or "", p["category"] or "", p["target"] or ""
            )
            for p in rows
        },
        tokens={p["pair"]: (p["treatment_tokens"], p["control_tokens"]) for p in rows},
        behaviour={
            p["pair"]: Behaviour(
                p["answer_treatment"],
                p["answer_control"],
                bool(p["refused_treatment"]),
                bool(p["refused_control"]),
            )
            for p in rows
            if p["answer_treatment"] is not None and p["refused_treatment"] is not None
        },
        refusal_token_ids=provenance.get("refusal_token_ids"),
        directions=stored_directions(store, run_id),
    )


def keep_directions(store: Store, run_id: int, d: Directions) -> None:
    store.set_directions(run_id, d.units.numpy(), d.norms.numpy(), d.pairs)


def stored_directions(store: Store, run_id: int) -> Directions | None:
    found = store.directions(run_id)
    if found is None:
        return None
    units, norms, pairs = found
    return Directions(torch.from_numpy(units.copy()), torch.from_numpy(norms).float(), pairs)


def _stream(spec, store, run_id, executor, plan, provenance, progress, cancelled, on_prepared) -> RunOutcome:
    done = store.done_keys(run_id)
    compute = 0.0
    try:
        provenance = {
            **provenance,
            "seed": spec.seed,
            "skipped_pairs": provenance.get("skipped_pairs", plan.skipped),  # (a resume keeps the first's)
            "method": plan.method,
            # the refusal metric's token set as used (learned from the model's answers with `auto`)
            "refusal_token_ids": getattr(plan.metric, "token_ids", None),
        }
        store.start_run(
            run_id,
            provenance,
            [_pair_record(tp, plan.behaviour.get(tp.index)) for tp in plan.pairs],
            plan.n_sites,
        )
        if plan.directions is not None:
            keep_directions(store, run_id, plan.directions)
        if on_prepared:
            on_prepared(run_id, plan, provenance)
        for result, seconds in mediation.timed(executor.run(plan, progress, cancelled, done)):
            compute += seconds
            if result.rows:
                store.add_effects(run_id, result.rows)
            elif result.generations:
                store.add_generations(run_id, result.generations)
            elif result.spearman is not None:
                store.set_pair_agreement(run_id, result.pair.index, result.spearman)
            else:
                store.set_pair_totals(
                    run_id, result.pair.index, result.m_treatment, result.m_control, result.te
                )
        # a cancel that came after the last batch leaves a complete run: done
        todo, finished = mediation.remaining(plan, store.done_keys(run_id))
        stopped = cancelled and cancelled() and any(todo.values())
        status = "cancelled" if stopped else "done"
        store.set_status(run_id, status, compute_s=compute)
    except BaseException as e:
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
        try:
            store.set_status(run_id, status, str(e), compute)
        except StoreError:
            pass  # (a full disk) the run stays `running` until the next open marks it interrupted
        raise
    # every pair's TE, those a resume did not recompute too
    stored_te = [p["te"] for p in store.pairs(run_id) if p["te"] is not None]
    return RunOutcome(run_id, status, len(plan.pairs), plan.n_sites, compute, stored_te, finished)


def check_gate(
    store: Store,
    run_id: int,
    spec: gate.GateSpec,
    heldout: str | None = None,
    lm: LoadedModel | None = None,
    note=None,
    pairs: list[Pair] | None = None,
    progress=None,
    job: Job | None = None,
) -> int:
    """Gate-check a run's top neurons on held-out pairs (by default the built-in pairs the run did not use;
    `pairs` as given, named `heldout`) with the run's own model, metric, chat template and refusal judge;
    store the check and return its id. Pairs of any lengths are aligned from the end, as in runs;
    `note(message)` hears of each held-out pair left out (identical prompts, unknown words). The check is a
    job (db.jobs) that any process can cancel; a cancelled curve stores nothing (JobCancelled)."""
    spec.check()
    store.check_writable()  # before the curve's minutes of work, not after
    study = study_of(store, run_id)
    if study and study["neurons_run"] and not queries.has_neurons(store, run_id):
        run_id = study["neurons_run"]  # a study's module run: its neurons are its neuron run's
    if study and pairs is None and heldout is None and study["held_out"]:
        pairs, heldout = held_out_pairs(study), f"study {study['id']}'s held-out pairs"
    run = store.run(run_id)
    with _held(store, job, "gate", run["model"], run_id) as job:

        def counted(done: int, total: int) -> None:
            job.progress(done, total)
            if progress:
                progress(done, total)
            if job.cancelled():
                raise JobCancelled(f"gate curve of run {run_id} cancelled: nothing was stored")

        return _check_gate(store, run, spec, heldout, lm, note, pairs, counted, job)


def held_out_pairs(study: dict) -> list[Pair]:
    """A study's held-out pairs as it stored them when it started."""
    return [
        Pair(r["treatment"], r["control"], r["id"], r["category"], r["target"]) for r in study["held_out"]
    ]


def _check_gate(store, run, spec, heldout, lm, note, pairs, progress, job) -> int:
    run_id = run["id"]
    run_spec = RunSpec.from_json(run["spec"])
    method = store.run_method(run_id)
    own = run_spec.pairs == "builtin" and run_spec.treatment is None and run_spec.harmful is None
    source = heldout or ("builtin" if own else None)
    if source is None:
        raise gate.GateError(f"run {run_id} used its own pairs: give held-out ones with --pairs")
    if not queries.has_neurons(store, run_id):
        raise gate.GateError(f"run {run_id} has no neuron rows: run it with --modules including neuron")
    used = {p["treatment"] for p in store.pairs(run_id)}
    pairs = [p for p in (pairs if pairs is not None else load_pairs(source)) if p.treatment not in used]
    if not pairs:
        raise gate.GateError(f"every pair of '{source}' was used by run {run_id}: give held-out ones")
    if lm is None:
        job.stage("loading the model")
        lm = mediation.spec_model(run_spec)
    ranked = {
        group: queries.gate_neurons(
            store, run_id, max(spec.tops), method, spec.sign, group_layers(group, lm.anatomy.n_layers)
        )
        for group in spec.groups
    }
    metric = parse_metric(run_spec.metric, lm.tokenizer, run_spec.refusal_tokens)
    if run_spec.refusal_tokens == AUTO:  # the set the run learned from its model's answers
        metric = Refusal(run["provenance"]["refusal_token_ids"])
    tokenized, skipped = tokenize_pairs(
        lm.tokenizer,
        pairs,
        run_spec.chat_template,
        "end",
        need_target=run_spec.metric == "target-logprob",
        allow_special=run_spec.allow_special_tokens,
    )
    for message in skipped:
        if note:
            note(f"held-out pair left out: {message}")
    chosen, about = _direction(store, run, run_spec, lm, metric, job)
    job.stage("gate curve: arms")
    judge = mediation.spec_judge(run_spec, lm)
    rows = gate.check(lm, metric, judge, tokenized, ranked, spec, progress, direction=chosen)
    record = {**dataclasses.asdict(spec), "pairs": source, "skipped": len(skipped), "method": method}
    return store.add_gate_check(run_id, record | {"direction": about}, ranked, rows)


def _direction(store: Store, run: dict, run_spec: RunSpec, lm, metric, job: Job):
    """The refusal direction a gate curve ablates beside the neurons: the run's (stored with it; taken from its
    own pairs the first time), at the layer whose direction removes the most TE on those pairs (never the
    held-out ones), as (unit vector, what the check records of the choice); (None, None) for a noise
    contrast, whose pairs have no control prompt."""
    if run_spec.corrupt is not None:
        return None, None
    stored = stored_pairs(store, run["id"], run["provenance"])
    own, _ = tokenize_pairs(
        lm.tokenizer,
        list(stored.pairs.values()),
        run_spec.chat_template,
        "end",
        need_target=run_spec.metric == "target-logprob",
        indices=list(stored.pairs),
        allow_special=run_spec.allow_special_tokens,
    )
    directions = stored.directions
    if directions is None:
        job.stage("the refusal direction: pairs", len(own))
        directions = mean_difference(lm, own, job.progress)
        keep_directions(store, run["id"], directions)
    job.stage("the refusal direction: choosing its layer, pairs", len(own))
    removed = removed_by_layer(lm, metric, own, directions.units, job.progress)
    layer = max(range(len(removed)), key=removed.__getitem__)
    return directions.units[layer], {"layer": layer, "removed_own": removed, "own_pairs": len(own)}
