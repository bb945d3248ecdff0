"""The commands that load a model: `run`, `resume`, `gate` and `organism` (rich output on a terminal,
plain or JSON when piped)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from harmmed_tui.analysis.errors import PairsError
from harmmed_tui.analysis.gate import GateSpec
from harmmed_tui.analysis.mediation import known_sites, spec_pairs
from harmmed_tui.analysis.pairs import load_pairs
from harmmed_tui.analysis.spec import RunSpec, spec_from_values
from harmmed_tui.analysis.study import CLAIM_0_NEEDS, SET_POSITIONS, StudySpec
from harmmed_tui.db import report
from harmmed_tui.db.jobs import Heard, duration
from harmmed_tui.db.runner import check_gate, execute
from harmmed_tui.db.store import Store
from harmmed_tui.db.study_runner import run_study
from harmmed_tui.tui import store_commands
from harmmed_tui.tui.cli import EXIT_CANCELLED
from harmmed_tui.tui.safe_text import literal, markup, plain


def spec_from_args(a) -> RunSpec:
    """The RunSpec of a run's (or a study's) arguments: every field RunSpec declares, those left out taking
    their defaults or following the others (spec_from_values)."""
    given = {o.name: v for o in RunSpec.options() if (v := getattr(a, o.name)) is not None and v is not False}
    return spec_from_values(given)


def executor_from_args(a):
    """Ray actors when --ray is given, else this process."""
    if not a.ray:
        return None
    from harmmed_tui.analysis.ray_cluster import RayExecutor

    return RayExecutor(a.ray, a.workers or 0, a.gpus_per_worker)


class StageLine:
    """A job's progress on the terminal (a run's, a study's): its stage, its count, and the job's ETA, the
    one the explorer shows (db.jobs.remaining); and, once a countable stage's first work is timed, what the
    stage will cost, on a line of its own (with cheaper positions where a patching stage would take over
    half an hour)."""

    SAY_S, LONG_S = 10.0, 1800.0  # a stage's cost is said from 10 s; cheaper positions offered from 30 min

    def __init__(self, err: Console, interactive: bool, cheaper: str = ""):
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}"),
            console=err,
            disable=not interactive,
        )
        self.task = self.bar.add_task("starting", total=None, left="")
        self.err, self.cheaper, self.prefix, self.told = err, cheaper, "", set()

    def __call__(self, h: Heard) -> None:
        stage = f"{self.prefix}: {h.stage}" if self.prefix else h.stage
        if markup(stage) != self.bar.tasks[0].description:  # a new stage: its own clock and count
            self.bar.reset(self.task, description=markup(stage), total=h.total, left="")
        left = "" if h.left_s is None else f"{duration(h.left_s)} left"
        self.bar.update(self.task, completed=h.done or 0, total=h.total, left=left)
        whole = h.elapsed_s + (h.left_s or 0)
        if h.left_s is not None and whole >= self.SAY_S and stage not in self.told:
            self.told.add(stage)
            self.bar.console.print(
                f"{markup(stage)}: {h.total:,} in all, about {duration(whole)} (estimated from the first "
                f"{h.done:,} in {duration(h.elapsed_s)})",
                highlight=False,
            )
            if whole > self.LONG_S and h.stage == "patching sites" and self.cheaper:
                self.bar.console.print(f"[yellow]over 30 minutes:[/] {self.cheaper}", highlight=False)


def cheaper_positions(spec: RunSpec) -> str:
    """What would answer the same claims for less, when a plan patches every position."""
    if "all" not in spec.positions.split(","):
        return ""
    level = "suffix" if spec.align == "end" else "*"
    return (
        f"--positions last:4,{level} patches the module level ({level}) and the last 4 positions, which answer "
        "claims 1-3 with a fraction of the sites; claim 0 needs every position of minimal pairs"
    )


def _execute(spec: RunSpec, store: Store, a, run_id: int | None = None) -> int:
    as_json = a.json
    err = Console(stderr=True)
    interactive = err.is_terminal and not as_json
    line = StageLine(err, interactive, cheaper_positions(spec))

    def on_prepared(rid, plan, provenance):
        for message in plan.skipped:
            err.print(f"[yellow]skipped:[/] {markup(message)}")
        where = provenance["device"]
        if cluster := provenance.get("cluster"):
            where = f"{cluster['workers']} Ray workers on {cluster['nodes']} node(s)"
        known = sum(len(known_sites(tp, plan.sites[tp.index])[0]) for tp in plan.pairs)
        err.print(
            f"run {rid}: {markup(provenance['model'])} ({provenance['family']}, {provenance['n_layers']} "
            f"layers) on {where}, {len(plan.pairs)} pairs, {plan.n_sites:,} sites"
            + (f" ({known:,} known without a forward pass: identical in both runs)" if known else ""),
            highlight=False,
        )

    with line.bar:
        outcome = execute(
            spec,
            store,
            run_id,
            on_prepared=on_prepared,
            on_stage=line,
            executor=executor_from_args(a),
        )
    cancelled = outcome.status == "cancelled"
    if cancelled:  # scripts that chain `run && export` must not export part of a run
        print(f"harmmed-tui: {plain(outcome.stopped_message(), newlines=False)}", file=sys.stderr)
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": outcome.run_id,
                    "db": str(store.path),
                    "status": outcome.status,
                    "pairs": outcome.pairs,
                    "sites": outcome.sites,
                    "sites_done": outcome.done,
                    "elapsed_s": round(outcome.elapsed_s, 4),
                    "te": outcome.te,
                }
            )
        )
    elif cancelled:
        return EXIT_CANCELLED
    elif interactive:
        store_commands.print_summary(store, outcome.run_id, Console())
    else:
        print(outcome.run_id)
    return EXIT_CANCELLED if cancelled else 0


def cmd_gate(store: Store, a) -> int:
    spec = GateSpec(a.top, a.sign, a.groups, a.ablate, a.seeds, a.max_new_tokens)
    err = Console(stderr=True)
    heldout, pairs = a.pairs, None
    if a.harmful or a.harmless:  # held-out pairs from prompt sets, paired as a run pairs them
        if a.pairs:
            raise PairsError("give held-out --pairs or --harmful/--harmless prompt sets, not both")
        sets = RunSpec(harmful=a.harmful, harmless=a.harmless, pairing=a.pairing, max_pairs=a.max_pairs)
        pairs, heldout = spec_pairs(sets), f"{a.harmful} x {a.harmless} ({a.pairing})"
    elif a.max_pairs and a.pairs:
        pairs = load_pairs(a.pairs)[: a.max_pairs]
    check_id = check_gate(
        store,
        a.run_id,
        spec,
        heldout,
        note=lambda m: err.print(f"[yellow]skipped:[/] {markup(m)}", highlight=False),
        pairs=pairs,
    )
    # (a study's module run is gated through its neuron run, which holds the neurons)
    (run_id,) = store.db.execute("SELECT run_id FROM gate_checks WHERE id = ?", [check_id]).fetchone()
    if a.json:
        check = store.gate_checks(run_id)[0]
        print(
            json.dumps(
                {"run_id": run_id, "check_id": check_id, "curve": [p.as_dict() for p in check["curve"]]}
            )
        )
    else:
        store_commands.print_gate(store, run_id, check_id)
    return 0


def cmd_organism(a) -> int:
    from harmmed_tui.analysis.models import load_model
    from harmmed_tui.analysis.organism import train

    if a.organism_command == "train":
        out = train.train(Path(a.out), seed=a.seed, steps=a.steps, log=lambda m: print(m, file=sys.stderr))
        print(f"saved to {out}", file=sys.stderr)
        source = str(out)
    else:
        source = a.model
    lm = load_model(source, device="cpu", dtype="float32")
    rates = train.evaluate(lm.model, lm.tokenizer)
    t = Table(title=f"organism {source}: held-out behaviour")
    for col in ("prompts", "n", "wanted", "rate"):
        t.add_column(col)
    for kind, wanted in (("harmful", "refuse"), ("benign", "comply"), ("jailbreak", "comply")):
        t.add_row(kind, str(rates[f"n_{kind}"]), wanted, f"{rates[kind]:.1%}")
    Console().print(t)
    return 0


def cmd_probe(a) -> int:
    from harmmed_tui.analysis.errors import PairsError
    from harmmed_tui.analysis.jailbreaks import load_jailbreak
    from harmmed_tui.analysis.model_judge import check_template, make_judge
    from harmmed_tui.analysis.models import load_model
    from harmmed_tui.analysis.probe import probe, refusal_rates
    from harmmed_tui.analysis.prompt_sets import load_prompt_set

    if a.judge_template != "refusal":
        if not a.judge:
            raise PairsError(
                f"--judge-template {a.judge_template} is the --judge model's prompt: give --judge too"
            )
        check_template(a.judge_template)
    sources = {k: v for k, v in (("harmful", a.harmful), ("harmless", a.harmless)) if v}
    if not sources:
        raise PairsError("give --harmful and/or --harmless prompt sets to probe")
    sets = {kind: load_prompt_set(source)[: a.max_prompts] for kind, source in sources.items()}
    jailbreak = load_jailbreak(a.jailbreak) if a.jailbreak else None
    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    judge = make_judge(a.refusal_phrases, a.judge, a.judge_template, str(lm.device), a.dtype)
    rows = probe(lm, sets, judge, a.chat_template, a.max_new_tokens, jailbreak, a.allow_special_tokens)
    rates = refusal_rates(rows)
    if a.json:
        print(json.dumps({"model": a.model, "jailbreak": a.jailbreak, "rates": rates, "answers": rows}))
        return 0
    t = Table(
        title=f"{markup(a.model)}: refusals judged by {markup(judge.description)}"
        + (f", inside {markup(jailbreak.name)}" if jailbreak else "")
    )
    for col in ("set", "category", "prompts", "refused", "rate"):
        t.add_column(col, justify="right" if col in ("prompts", "refused", "rate") else "left")
    for r in rates:
        t.add_row(
            literal(f"{r['set']} ({sources[r['set']]})" if not r["category"] else ""),
            literal(r["category"] or "all"),
            str(r["n"]),
            str(r["refused"]),
            f"{r['rate']:.0%}",
        )
    con = Console()
    con.print(t)
    for r in rows[:3] + [r for r in rows if r["set"] == "harmless"][:2]:
        verdict = "refused" if r["refused"] else "answered"
        con.print(f"[bold]{markup(r['id'])}[/] {verdict}: {markup(repr(r['answer']))}", highlight=False)
    return 0


def study_from_args(a) -> StudySpec:
    base = spec_from_args(a)
    learned = base.metric == "refusal" and base.refusal_tokens is None  # the model's own refusal openings
    base = base.replace(
        require_flip=not a.all_pairs, refusal_tokens="auto" if learned else base.refusal_tokens
    )
    gate = GateSpec(tops=a.top, seeds=a.seeds, max_new_tokens=base.answer_tokens or 24)
    return StudySpec(base, a.held_out, a.verify_top or 20, a.positions, gate)


def cmd_study(store: Store, a, study_id: int | None = None) -> int:
    """A study, with its job's progress line (each run's stages, counts and ETA) and each stage's cost."""
    err = Console(stderr=True)
    spec = None if study_id is not None else study_from_args(a)
    base = (spec or StudySpec.from_json(store.study(study_id)["spec"])).modules_spec()
    line = StageLine(err, err.is_terminal and not getattr(a, "json", False), cheaper_positions(base))
    if spec:
        spec.check()  # (a bad choice is one line, before any note)
    if spec and base.positions == SET_POSITIONS:
        err.print(
            f"note: prompt sets: stage 1 patches --positions {SET_POSITIONS} (claims 1-4); {CLAIM_0_NEEDS}"
        )

    def progress(stage: str, what: str, done: int, total: int | None) -> None:
        line.prefix = stage

    with line.bar:
        study_id = run_study(
            store,
            spec,
            study_id,
            progress,
            note=lambda m: err.print(f"[yellow]skipped:[/] {markup(m)}"),
            on_stage=line,
        )
    study = store.study(study_id)
    times = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in study["stage_s"].items())
    print(
        f"study {study_id} done ({times}): runs {study['modules_run']} and {study['neurons_run']}, gate check "
        f"{study['gate_check']}",
        file=sys.stderr,
    )
    store_commands.write(report.render_study(store, study_id), "-")
    return 0


def dispatch(a) -> int:
    if a.command == "organism":
        return cmd_organism(a)
    if a.command == "probe":
        return cmd_probe(a)
    with Store(a.db) as store:
        if a.command == "run":
            return _execute(spec_from_args(a), store, a)
        if a.command == "study":
            return cmd_study(store, a)
        if a.command == "resume" and isinstance(a.run_id, str):
            return cmd_study(store, a, int(a.run_id.removeprefix("study:")))
        if a.command == "resume":
            return _execute(RunSpec.from_json(store.run(a.run_id)["spec"]), store, a, run_id=a.run_id)
        if a.command == "gate":
            return cmd_gate(store, a)
    raise AssertionError(a.command)
