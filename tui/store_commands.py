"""The commands that only read or delete stored runs: `runs`, `show`, `export`, `compare`, `delete`.

They must start instantly, so nothing here (or below it) imports torch or transformers: a test and
bench/readonly_speed.py keep it so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harmmed_tui.analysis import stats
from harmmed_tui.analysis.sites import readable
from harmmed_tui.analysis.spec import RunSpec
from harmmed_tui.db import compare, export, jobs, queries, report
from harmmed_tui.db.store import Store, StoreError
from harmmed_tui.tui.safe_text import literal, markup, plain


def print_summary(store: Store, run_id: int, con: Console) -> None:
    pairs = Table(title=f"run {run_id}: total effect per pair")
    for col in ("pair", "id", "treatment", "control", "TE", "behaviour"):
        pairs.add_column(col, justify="right" if col in ("pair", "TE") else "left")
    stored = store.pairs(run_id)
    for p in stored:
        pairs.add_row(
            str(p["pair"]),
            literal(p["pair_id"]),
            literal(p["treatment"], newlines=True),
            literal(p["control"], newlines=True),
            f"{p['te']:.4f}" if p["te"] is not None else "",
            export.stored_behaviour(p),
        )
    con.print(pairs)
    print_answers(stored, con)
    judged = [b for p in stored if (b := export.stored_behaviour(p))]
    if judged and (off := [b for b in judged if b != "flips"]):
        con.print(
            f"[yellow]{len(off)} of {len(judged)} pairs do not flip[/] (treatment refused, control answered): "
            "they dilute the aggregates; --require-flip drops them"
        )
    flips = store.db.execute(
        "SELECT COUNT(*), SUM(flips) FROM generations WHERE run_id = ?", [run_id]
    ).fetchone()
    if flips[0]:
        con.print(
            f"--verify-generation: {flips[1]} of {flips[0]} top sites, patched into the control prompt, flip "
            "its judged answer (export --level generation lists them)"
        )
    rhos = [p["atp_spearman"] for p in stored if p["atp_spearman"] is not None]
    if rhos:
        con.print(
            f"atp vs exact on each pair's verified top sites: Spearman rho mean {sum(rhos) / len(rhos):.3f} "
            f"(min {min(rhos):.3f}, max {max(rhos):.3f}, {len(rhos)} pairs)"
        )
    top = export.table(store, run_id, "layer", aggregated=True, top=10)
    if top:
        t = Table(title="top sites by |mean IE| over pairs")
        columns = ("layer", "module", "position", "token", "ie_mean", "ci_low", "ci_high", "ie_share", "n")
        for col in columns:
            t.add_column(col, justify="right")
        for r in top:  # tokens as the explorer's grid shows them (· space, ⏎ newline)
            cells = [export.format_value(r[c]) for c in columns]
            t.add_row(
                *(literal(readable(v) if c == "token" else v) for c, v in zip(columns, cells, strict=True))
            )
        con.print(t)
    print_gate(store, run_id, con=con)
    con.print(literal(f"run id: {run_id}   db: {store.path}"))


def print_answers(stored: list[dict], con: Console) -> None:
    """Each pair's prompts in full and the model's greedy answers to them, with the judge's verdicts."""
    if not any(p["answer_treatment"] is not None for p in stored):
        return
    con.print("[bold]each pair's prompts and the model's greedy answers[/] (judged: refused or answered)")
    verdict = {None: "not judged", 0: "answered", 1: "refused"}
    for p in stored:
        con.print(literal(f"pair {p['pair']} ({p['pair_id']}): {export.stored_behaviour(p)}"), style="bold")
        for side in ("treatment", "control"):
            con.print(literal(f"  {side}: {p[side]}", newlines=True))
            answer = p[f"answer_{side}"]
            con.print(literal(f"    answer ({verdict[p[f'refused_{side}']]}): {answer!r}"), highlight=False)


def print_gate(store: Store, run_id: int, check_id: int | None = None, con: Console | None = None) -> None:
    """A gate check's curve, its verdict, and an answer before and after ablating the top set (the newest
    check when no id is given)."""
    checks = [c for c in store.gate_checks(run_id) if check_id in (None, c["id"])]
    if not checks:
        return
    c, con = checks[0], con or Console()
    spec, curve = c["spec"], c["curve"]
    pairs = curve[0].pairs if curve else 0
    t = Table(
        title=f"gate check {c['id']} of run {run_id}: {spec['sign']} neurons held at {spec['ablate']}, "
        f"{pairs} held-out pairs ({markup(spec['pairs'])}), top vs random ({spec['seeds']} seeds, mean ± sd)"
    )
    columns = ("group", "K", "units", "TE removed: top", "random", "flipped: top", "random")
    for col in columns:
        t.add_column(col, justify="right", no_wrap=col == "group")
    for p in curve:
        t.add_row(
            p.group,
            str(p.k),
            str(p.units),
            stats.percent(p.top_removed),
            stats.percent(p.random_removed, p.random_removed_sd),
            f"{stats.percent(p.top_flipped)} of {p.refused}",
            stats.percent(p.random_flipped, p.random_flipped_sd),
        )
    con.print(t)
    con.print(literal(queries.gate_verdict(c)), highlight=False)
    for pair_id, group, k, before, after in queries.gate_answers(store, c, 3):
        con.print(
            f"[bold]{markup(pair_id)}[/] top {k} ({group}):\n  before: {markup(repr(before))}\n"
            f"  after:  {markup(repr(after))}",
            highlight=False,
        )


NO_ROWS_HINT = {
    "neuron": " (run it with --modules including neuron)",
    "gate": " (harmmed-tui gate RUN makes a gate check)",
    "generation": " (run it with --verify-generation K)",
}


def write(data: str | bytes, output: str) -> None:
    """A table to its file, or to stdout; to a terminal, the text of prompts and answers cannot send it
    escape sequences (piped, it is written as stored)."""
    if output == "-" and isinstance(data, str) and sys.stdout.isatty():
        data = plain(data)
    export.write(data, output)


def cmd_runs(store: Store, as_json: bool) -> int:
    """The history as the Runs screen shows it (a job still loading its model first, a job's stage as the
    status of the run it writes); JSON: every stored field of each run, and `job`, the stage of the live job
    writing it (null if none)."""
    if as_json:
        working = {j["run_id"]: j["text"] for j in jobs.live(store)}
        print(json.dumps([{**r, "job": working.get(r["id"])} for r in store.runs()]))
        return 0
    rows = queries.history(store)
    if not sys.stdout.isatty():
        print("\n".join("\t".join(plain(c, newlines=False) for c in cells) for _, cells in rows))
        return 0
    t = Table(title=f"runs in {store.path}")
    for col in queries.RUN_COLUMNS:
        t.add_column(col)
    for _, cells in rows:
        t.add_row(*map(literal, cells))
    Console().print(t)
    return 0


def cmd_show(store: Store, run_id: int) -> int:
    show_run(store, run_id, Console())
    return 0


def show_run(store: Store, run_id: int, con: Console) -> None:
    """What `harmmed-tui show` prints (and the explorer's run details): settings, provenance, pairs, top
    sites, the gate check."""
    run = store.run(run_id)
    con.print(f"[bold]run {run_id}[/]  status: {run['status']}  model: {markup(run['model'])}")
    if run["error"]:
        con.print(literal(f"error: {run['error']}"))
    prov = dict(run["provenance"])
    template = prov.pop("chat_template", None)
    files = prov.pop("inputs", {})
    for k, v in prov.items():
        con.print(literal(f"  {k}: {v}"))
    for flag, f in files.items():  # (what a resume checks)
        con.print(literal(f"  input --{flag.replace('_', '-')}: {f['path']} (sha256 {f['sha256'][:12]})"))
    con.print(literal(f"  chat template: {'(none)' if not template else repr(template[:80]) + '...'}"))
    acting = RunSpec.from_json(run["spec"]).allow_special_tokens
    con.print(
        "  special-token strings in prompts: "
        + ("act (--allow-special-tokens)" if acting else "text (ordinary tokens: no forged turns)")
    )
    con.print(literal(f"  spec: {run['spec']}"))
    con.print(f"  started {run['started']}, finished {run['finished']}, compute {run['compute_s']:.2f} s")
    print_summary(store, run_id, con)


def cmd_export(store: Store, a) -> int:
    rows = export.table(store, a.run_id, a.level, a.aggregate, a.top, a.method, a.by)
    if not rows:
        raise StoreError(
            f"run {a.run_id} has no {a.level} rows{NO_ROWS_HINT.get(a.level, '')}: nothing to export"
        )
    write(export.render(rows, a.format, formula_guard=not a.raw_cells), a.output)
    if a.top and a.level != "layer" and (methods := {r.get("method") for r in rows}) and len(methods) == 1:
        (method,) = methods
        others = set(export.run_methods(store, a.run_id, a.level)) - {method}
        if not a.method and others:
            print(
                f"note: the top {a.top} ranked by the {method} rows (--method {sorted(others)[0]} for the others)",
                file=sys.stderr,
            )
    if a.output != "-":
        print(f"wrote {len(rows)} rows to {Path(a.output).resolve()}", file=sys.stderr)
    return 0


def cmd_compare(store: Store, a) -> int:
    rows, r, note = compare.compare(store, a.run_a, a.run_b)
    if note:
        print(f"note: {note}", file=sys.stderr)
    write(export.render(rows, a.format, formula_guard=not a.raw_cells), a.output)
    correlation = "n/a" if r is None else f"{r:.3f}"
    print(
        f"runs {a.run_a} and {a.run_b}: {len(rows)} layer x module cells, Pearson r of IE/TE {correlation}",
        file=sys.stderr,
    )
    return 0


def cmd_report(store: Store, a) -> int:
    if isinstance(a.run_id, str):  # study:ID
        if a.gate is not None:
            raise StoreError("a study's report uses the study's own gate check: drop --gate")
        write(report.render_study(store, int(a.run_id.removeprefix("study:")), a.format), a.output)
    else:
        write(report.render(store, a.run_id, a.gate, a.format), a.output)
    if a.output != "-":
        what = a.run_id if isinstance(a.run_id, str) else f"run {a.run_id}"
        print(f"wrote the claims report of {what} to {Path(a.output).resolve()}", file=sys.stderr)
    return 0


def cmd_figure(store: Store, a) -> int:
    from harmmed_tui.db import figures  # (matplotlib: only for this command)

    if a.pair is not None and a.aggregate:
        raise StoreError("--pair draws one pair and --aggregate the mean over pairs: give one")
    if isinstance(a.run_id, str):  # study:ID: the run that holds the figure's rows
        study = store.study(int(a.run_id.removeprefix("study:")))
        held = "neurons_run" if a.kind in ("neurons", "gate") else "modules_run"
        if study[held] is None:
            raise StoreError(
                f"{a.run_id} has no {held.replace('_', ' ')} yet: resume it (harmmed-tui resume {a.run_id})"
            )
        a.run_id = study[held]
    fig = figures.draw(store, a.run_id, a.kind, a.pair, a.by, a.module, a.other)
    kind = a.kind if a.other is None else f"{a.kind}-{a.other}"
    output = a.output or f"run{a.run_id}-{kind}.svg"
    figures.save(fig, output)
    print(f"wrote {fig.title} to {Path(output).resolve()}", file=sys.stderr)
    return 0


def cmd_delete(store: Store, run_id: int) -> int:
    store.delete_run(run_id)
    print(f"deleted run {run_id}", file=sys.stderr)
    return 0


def dispatch(a) -> int:
    with Store(a.db, create=False) as opened, opened.reading() as store:
        if store.read_only and a.command != "delete":
            print(f"note: {store.path} is read-only here: opened for reading only", file=sys.stderr)
        if a.command == "runs":
            return cmd_runs(store, a.json)
        if a.command == "show":
            return cmd_show(store, a.run_id)
        if a.command == "export":
            return cmd_export(store, a)
        if a.command == "compare":
            return cmd_compare(store, a)
        if a.command == "report":
            return cmd_report(store, a)
        if a.command == "figure":
            return cmd_figure(store, a)
        if a.command == "delete":
            return cmd_delete(store, a.run_id)
    raise AssertionError(a.command)
