"""The headless subcommands: rich output on a terminal, plain or JSON when piped."""

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
    TimeRemainingColumn,
)
from rich.table import Table

from analysis.families import UnsupportedModelError
from analysis.gate import GateError, GateSpec
from analysis.metrics import MetricError
from analysis.models import ModelLoadError
from analysis.pairs import PairsError
from analysis.sites import SiteError
from analysis.spec import RunSpec
from db import export
from db.store import Store, StoreError
from tui import queries
from tui.runner import check_gate, execute

USER_ERRORS = (
    ModelLoadError,
    PairsError,
    MetricError,
    SiteError,
    StoreError,
    UnsupportedModelError,
    GateError,
)


def spec_from_args(a) -> RunSpec:
    return RunSpec(
        model=a.model,
        pairs=a.pairs,
        treatment=a.treatment,
        control=a.control,
        max_pairs=a.max_pairs,
        chat_template=a.chat_template,
        align=a.align,
        metric=a.metric,
        refusal_tokens=a.refusal_tokens,
        modules=tuple(m.strip() for m in a.modules.split(",") if m.strip()),
        layers=a.layers,
        positions=a.positions or RunSpec.positions,
        # neurons are many: they take the last position unless positions are asked for
        neuron_positions=a.neuron_positions or a.positions or RunSpec.neuron_positions,
        method=a.method,
        verify_top=a.verify_top,
        device=a.device,
        dtype=a.dtype,
        revision=a.revision,
        trust_remote_code=a.trust_remote_code,
        batch_tokens=a.batch_tokens,
        seed=a.seed,
    )


def _execute(spec: RunSpec, store: Store, as_json: bool, run_id: int | None = None) -> int:
    err = Console(stderr=True)
    interactive = err.is_terminal and not as_json
    bar = Progress(
        TextColumn("[bold]patching"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sites"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not interactive,
    )
    task = bar.add_task("sites", total=None)

    def on_prepared(rid, prep):
        for message in prep.skipped:
            err.print(f"[yellow]skipped:[/] {message}")
        if interactive:
            err.print(
                f"run {rid}: {prep.lm.source} ({prep.lm.anatomy.family.name}, {prep.lm.anatomy.n_layers} layers) "
                f"on {prep.lm.device}, {len(prep.pairs)} pairs, {prep.n_sites} sites"
            )

    with bar:
        outcome = execute(
            spec,
            store,
            run_id,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
            on_prepared=on_prepared,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "run_id": outcome.run_id,
                    "db": str(store.path),
                    "status": outcome.status,
                    "pairs": outcome.pairs,
                    "sites": outcome.sites,
                    "elapsed_s": round(outcome.elapsed_s, 4),
                    "te": outcome.te,
                }
            )
        )
    elif interactive:
        _print_summary(store, outcome.run_id)
    else:
        print(outcome.run_id)
    return 0


def _print_summary(store: Store, run_id: int) -> None:
    con = Console()
    pairs = Table(title=f"run {run_id}: total effect per pair")
    for col in ("pair", "id", "treatment", "control", "TE"):
        pairs.add_column(col, justify="right" if col in ("pair", "TE") else "left")
    stored = store.pairs(run_id)
    for p in stored:
        pairs.add_row(
            str(p["pair"]),
            p["pair_id"],
            p["treatment"],
            p["control"],
            f"{p['te']:.4f}" if p["te"] is not None else "",
        )
    con.print(pairs)
    rhos = [p["atp_spearman"] for p in stored if p["atp_spearman"] is not None]
    if rhos:
        con.print(
            f"atp vs exact on each pair's verified top sites: Spearman rho mean {sum(rhos) / len(rhos):.3f} "
            f"(min {min(rhos):.3f}, max {max(rhos):.3f}, {len(rhos)} pairs)"
        )
    top = export.table(store, run_id, "layer", aggregated=True, top=10)
    if top:
        t = Table(title="top sites by |mean IE| over pairs")
        columns = ("layer", "module", "position", "token", "ie_mean", "ci_low", "ci_high", "n")
        for col in columns:
            t.add_column(col, justify="right")
        for r in top:
            t.add_row(*(export.format_value(r[c]) for c in columns))
        con.print(t)
    print_gate(store, run_id)
    con.print(f"run id: {run_id}   db: {store.path}")


def cmd_runs(store: Store, as_json: bool) -> int:
    runs = store.runs()
    if as_json or not sys.stdout.isatty():
        print(
            json.dumps(runs)
            if as_json
            else "\n".join(
                f"{r['id']}\t{r['status']}\t{r['model']}\t{r['n_pairs']}\t{r['n_sites']}\t{r['started']}"
                for r in runs
            )
        )
        return 0
    t = Table(title=f"runs in {store.path}")
    for col in (*queries.RUN_COLUMNS, "compute s"):
        t.add_column(col)
    for r in runs:
        t.add_row(*queries.run_cells(r), f"{r['compute_s']:.1f}")
    Console().print(t)
    return 0


def cmd_show(store: Store, run_id: int) -> int:
    run = store.run(run_id)
    con = Console()
    con.print(f"[bold]run {run_id}[/]  status: {run['status']}  model: {run['model']}")
    if run["error"]:
        con.print(f"error: {run['error']}")
    prov = dict(run["provenance"])
    template = prov.pop("chat_template", None)
    for k, v in prov.items():
        con.print(f"  {k}: {v}")
    con.print(f"  chat template: {'(none)' if not template else repr(template[:80]) + '...'}")
    con.print(f"  spec: {run['spec']}")
    con.print(f"  started {run['started']}, finished {run['finished']}, compute {run['compute_s']:.2f} s")
    _print_summary(store, run_id)
    return 0


def cmd_gate(store: Store, a) -> int:
    spec = GateSpec(a.top, a.ablate, a.seeds, a.generate, a.max_new_tokens)
    check_id = check_gate(store, a.run_id, spec, a.pairs)
    if a.json:
        print(
            json.dumps(
                {"run_id": a.run_id, "check_id": check_id, **store.gate_checks(a.run_id)[0]["summary"]}
            )
        )
    else:
        print_gate(store, a.run_id, check_id)
    return 0


def print_gate(store: Store, run_id: int, check_id: int | None = None) -> None:
    """A gate check's verdict and its generations (the newest check when no id is given)."""
    checks = [c for c in store.gate_checks(run_id) if check_id in (None, c["id"])]
    if not checks:
        return
    c, con = checks[0], Console()
    s, spec = c["summary"], c["spec"]
    t = Table(
        title=f"gate check {c['id']} of run {run_id}: top {spec['top']} neurons ({len(c['neurons'])} units), "
        f"ablated to {spec['ablate']}, on {s['pairs']} held-out pairs ({spec['pairs']})"
    )
    for col in ("neurons", "metric shift", "share of TE removed"):
        t.add_column(col, justify="right")
    share = lambda v: "" if v is None else f"{v:.1%}"  # noqa: E731
    t.add_row("top", f"{s['top_shift']:+.4f}", share(s["top_removed"]))
    t.add_row(
        f"random ({s['seeds']} seeds)",
        f"{s['random_shift']:+.4f} ± {s['random_sd']:.4f}",
        share(s["random_removed"]),
    )
    con.print(t)
    con.print("neurons (layer:unit): " + " ".join(f"{layer}:{unit}" for layer, unit in c["neurons"][:40]))
    for pair_id, arm, before, after in store.gate_generations(c["id"]):
        con.print(f"[bold]{pair_id}[/] {arm}:\n  before: {before!r}\n  after:  {after!r}", highlight=False)


def cmd_organism(a) -> int:
    from analysis.models import load_model
    from analysis.organism import train

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


def dispatch(a) -> int:
    if a.command == "organism":
        return cmd_organism(a)
    store = Store(a.db)
    if a.command == "run":
        return _execute(spec_from_args(a), store, a.json)
    if a.command == "resume":
        return _execute(RunSpec.from_json(store.run(a.run_id)["spec"]), store, a.json, run_id=a.run_id)
    if a.command == "export":
        rows = export.table(store, a.run_id, a.level, a.aggregate, a.top, a.method)
        export.write(export.render(rows, a.format), a.output)
        if a.output != "-":
            print(f"wrote {len(rows)} rows to {Path(a.output).resolve()}", file=sys.stderr)
        return 0
    if a.command == "gate":
        return cmd_gate(store, a)
    if a.command == "runs":
        return cmd_runs(store, a.json)
    if a.command == "show":
        return cmd_show(store, a.run_id)
    if a.command == "delete":
        store.delete_run(a.run_id)
        print(f"deleted run {a.run_id}", file=sys.stderr)
        return 0
    raise AssertionError(a.command)
