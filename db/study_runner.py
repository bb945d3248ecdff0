"""Runs a study (analysis.study) into the store, stage by stage; a killed study resumes at what is missing.

Each stage's result is linked to the study as soon as it exists: a run as soon as it is created (so a
resume finishes that run, not a new one), the gate check once it is stored. The model loads once, when the
first stage that needs it starts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import replace

from harmmed_tui.analysis import inputs, mediation
from harmmed_tui.analysis.errors import GateError, JobCancelled, NoRefusalsError
from harmmed_tui.analysis.metrics import AUTO
from harmmed_tui.analysis.pairs import Pair, tokenize_pairs
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.analysis.study import STAGES, StudySpec
from harmmed_tui.db.jobs import Job
from harmmed_tui.db.runner import check_gate, execute, held_out_pairs, stored_pairs
from harmmed_tui.db.store import Store

# (stage, what it is doing, done, total): the caller's progress line; total None while it is uncountable
Progress = Callable[[str, str, int, int | None], None]


def run_study(
    store: Store,
    spec: StudySpec | None = None,
    study_id: int | None = None,
    progress: Progress | None = None,
    note: Callable[[str], None] | None = None,
    on_stage: Callable | None = None,
) -> int:
    """Start a study (`spec`) or finish one (`study_id`); return its id. Errors mark it `failed` and are
    raised; the runs and the gate check it stored stay. `on_stage` hears the study's job (db.jobs.Heard):
    each stage of each run, with its count and ETA."""
    store.check_writable()
    say = progress or (lambda *a: None)
    model_name = spec.base.model if spec else store.study(study_id)["model"]
    with Job.open(store, "study", model_name) as job:
        if on_stage:
            job.heard.append(on_stage)
        return _study(store, spec, study_id, say, note, job)


def _study(store: Store, spec: StudySpec | None, study_id: int | None, say, note, job: Job) -> int:
    lm = None

    def model():
        nonlocal lm
        if lm is None:
            say("model", f"loading {spec.base.model}", 0, None)
            job.stage("loading the model")
            lm = mediation.spec_model(spec.base)
        return lm

    if study_id is None:
        # as for runs: a study is stored only once its model has loaded and both runs' plans check; it keeps
        # its held-out pairs and its files' fingerprints (a resume reads neither from the files again)
        spec.check()
        spec = replace(spec, base=inputs.resolved(spec.base))
        for run_spec in (spec.modules_spec(), spec.neurons_spec()):
            mediation.check_choices(run_spec)
        for run_spec in (spec.modules_spec(), spec.neurons_spec()):
            a = model().anatomy
            mediation.plan(run_spec, lm.tokenizer, a.n_layers, a.d_mlp, a.n_heads)
        held = _held_out(spec, lm, note)
        study_id = store.create_study(spec.base.model, spec.to_json(), held, inputs.record(spec.base))
    else:
        store.claim_study(study_id)
        study = store.study(study_id)
        try:
            inputs.check_unchanged(f"study {study_id}", study["inputs"], inputs.FILE_FIELDS)
        except BaseException:
            store.update_study(study_id, status="interrupted")
            raise
        spec = StudySpec.from_json(study["spec"])

    try:
        for stage in STAGES:
            study = store.study(study_id)
            started = time.perf_counter()
            if stage == "gate":
                if study["gate_check"] is None:
                    check = _gate(store, spec, study, model(), say, note, job)
                    store.update_study(study_id, gate_check=check)
            else:
                _run_stage(store, spec, study_id, stage, study[f"{stage}_run"], model, say, note, job)
                spec = StudySpec.from_json(store.study(study_id)["spec"])  # (a stage may have widened it)
            spent = store.study(study_id)["stage_s"]
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - started
            store.update_study(study_id, stage_s=spent)
        store.update_study(study_id, status="done")
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt | JobCancelled) else "failed"
        store.update_study(study_id, status=status, error=str(e) or type(e).__name__)
        raise
    return study_id


def _run_stage(
    store: Store, spec: StudySpec, study_id: int, stage: str, run_id: int | None, model, say, note, job: Job
) -> None:
    """The module or neuron run: started, finished if a killed study left it part-way, or kept if done."""
    if run_id is not None and store.run(run_id)["status"] == "done":
        return
    what = {
        "modules": "resid/attn/mlp, the direction and the heads by exact patching",
        "neurons": "every neuron by atp, top K verified",
    }
    run_spec = spec.modules_spec() if stage == "modules" else spec.neurons_spec()
    if run_id is not None:
        run_spec = RunSpec.from_json(store.run(run_id)["spec"])
    # the neuron run computes the pairs the module run kept, judged once by it
    first = store.study(study_id)["modules_run"] if stage == "neurons" and run_id is None else None
    pairs_from = stored_pairs(store, first, store.run(first)["provenance"]) if first else None
    lm = model()
    say(stage, "judging answers" if pairs_from is None else "preparing", 0, None)
    try:
        outcome = execute(
            run_spec,
            store,
            run_id,
            lm=lm,
            progress=lambda done, total: say(stage, f"{what[stage]}: sites", done, total),
            on_prepared=lambda rid, plan, provenance: store.update_study(study_id, **{f"{stage}_run": rid}),
            job=job,
            pairs_from=pairs_from,
        )
        if outcome.status == "cancelled":
            raise JobCancelled(f"study cancelled in its {stage} run {outcome.run_id}: resume it to finish")
    except NoRefusalsError as e:
        if run_id is not None or not (spec.base.require_flip or spec.base.refusal_tokens == AUTO):
            raise
        # a model that refuses none of the treatments (or no pair flips) still gets its claims 0-2 measured,
        # on every pair and the default refusal openings; claim 3 will say refusals are too rare to gate
        wider = replace(spec, base=spec.base.replace(require_flip=False, refusal_tokens=None))
        store.update_study(study_id, spec=wider.to_json())
        if note:
            note(f"{e}: the study keeps every pair and measures the default refusal openings")
        _run_stage(store, wider, study_id, stage, None, model, say, note, job)


def _held_out(spec: StudySpec, lm, note) -> list[dict]:
    """The held-out pairs (the source's next ones after the study's own) as the gate curve will read them,
    tokens included, as the study stores them when it starts."""
    first = spec.base.max_pairs
    held = mediation.spec_pairs(spec.held_out_spec())[first:]
    if not held:
        raise GateError(
            f"the study's source has no pairs after its first {first} to hold out: lower --max-pairs"
        )
    tokenized, skipped = _tokenized(spec, lm, held, list(range(first, first + len(held))))
    for message in skipped:
        if note:
            note(f"held-out pair left out: {message}")
    return [
        dict(
            pair=tp.index,
            **dataclasses.asdict(tp.pair),
            treatment_tokens=tp.treatment_tokens,
            control_tokens=tp.control_tokens,
        )
        for tp in tokenized
    ]


def _tokenized(spec: StudySpec, lm, pairs: list[Pair], indices: list[int]):
    # as the gate curve tokenizes held-out pairs: aligned from the end
    base = spec.base
    return tokenize_pairs(
        lm.tokenizer,
        pairs,
        base.chat_template,
        "end",
        base.metric == "target-logprob",
        indices=indices,
        allow_special=base.allow_special_tokens,
    )


def _gate(store: Store, spec: StudySpec, study: dict, lm, say, note, job: Job) -> int:
    """The gate curve of the neuron run's top neurons on the held-out pairs the study stored when it started
    (checked to read to the model as they did then)."""
    rows = study["held_out"] or _held_out(spec, lm, note)  # (a study from before studies kept them)
    held = held_out_pairs({"held_out": rows})
    stored = mediation.Stored(
        pairs={r["pair"]: p for r, p in zip(rows, held, strict=True)},
        tokens={r["pair"]: (r["treatment_tokens"], r["control_tokens"]) for r in rows},
        behaviour={},
    )
    tokenized, _ = _tokenized(spec, lm, held, list(stored.pairs))
    mediation.check_stored_tokens(tokenized, stored, f"study {study['id']}")
    first, last = rows[0]["pair"] + 1, rows[-1]["pair"] + 1
    label = f"pairs {first}-{last} of the study's source (held out)"
    return check_gate(
        store,
        study["neurons_run"],
        spec.gate,
        heldout=label,
        lm=lm,
        note=note,
        pairs=held,
        progress=lambda done, total: say("gate", "ablating neurons and directions: arms", done, total),
        job=job,
    )
