"""Runs a RunSpec into the store: the one path shared by `harmmed-tui run`, `resume` and the TUI's worker."""

from __future__ import annotations

import json
from dataclasses import dataclass

from analysis import mediation
from analysis.models import LoadedModel
from analysis.spec import RunSpec
from db.store import Store


@dataclass
class RunOutcome:
    run_id: int
    status: str
    pairs: int
    sites: int
    elapsed_s: float  # compute time of the mediation, excluding model loading
    te: list[float]


def _pair_record(tp) -> dict:
    p = tp.pair
    return dict(
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
) -> RunOutcome:
    """Create (or resume) a run, stream its rows into the store, and leave a final status.

    Any error marks the run `failed` with its message and is re-raised; a cancel marks it `cancelled`."""
    if run_id is None:
        run_id = store.create_run(spec.model, spec.to_json())
    done = store.done_keys(run_id)
    compute = 0.0
    te: dict[int, float] = {}
    try:
        prep = mediation.prepare(spec, lm)
        provenance = {
            **prep.lm.provenance(),
            "seed": spec.seed,
            "chat_template": getattr(prep.lm.tokenizer, "chat_template", None)
            if spec.chat_template != "none"
            else None,
            "chat_template_mode": spec.chat_template,
            "skipped_pairs": prep.skipped,
            "method": prep.method,
        }
        store.start_run(run_id, provenance, [_pair_record(tp) for tp in prep.pairs], prep.n_sites)
        if on_prepared:
            on_prepared(run_id, prep)
        for result, seconds in mediation.timed(mediation.run(prep, progress, cancelled, done)):
            compute += seconds
            if result.rows:
                store.add_effects(run_id, result.rows)
            elif result.spearman is not None:
                store.set_pair_agreement(run_id, result.pair.index, result.spearman)
            else:
                store.set_pair_totals(
                    run_id, result.pair.index, result.m_treatment, result.m_control, result.te
                )
                te[result.pair.index] = result.te
        status = "cancelled" if cancelled and cancelled() else "done"
        store.set_status(run_id, status, compute_s=compute)
    except BaseException as e:
        store.set_status(
            run_id, "cancelled" if isinstance(e, KeyboardInterrupt) else "failed", str(e), compute
        )
        raise
    return RunOutcome(run_id, status, len(prep.pairs), prep.n_sites, compute, [te[k] for k in sorted(te)])
