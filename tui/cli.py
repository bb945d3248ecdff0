"""`harmmed-tui`: the TUI with no arguments, headless subcommands for everything else."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path

import platformdirs

from harmmed_tui.analysis.errors import HarmmedError, JobCancelled
from harmmed_tui.analysis.gate_curve import GROUPS, SIGNS
from harmmed_tui.analysis.sites import LAYER_MODULES
from harmmed_tui.analysis.spec import RunSpec, count, fraction
from harmmed_tui.tui.safe_text import plain

# exit codes (README): 0 done, 1 a bug (traceback file), 2 an error the user can act on, 3 cancelled or
# interrupted before it finished (what it stored resumes), 130 Ctrl-C
EXIT_CANCELLED = 3

MODEL_COMMANDS = {
    "run",
    "resume",
    "gate",
    "organism",
    "probe",
    "study",
}  # the rest only read the store: no torch for them

EPILOG = """examples:
  harmmed-tui                                   open the explorer on the embedded default model
  harmmed-tui study --harmful builtin:advbench --harmless builtin:self_instruct --max-pairs 12
                                                the paper's four claims on the default model, one command
  harmmed-tui run --model default --max-pairs 2  layer x module x position effects of two built-in pairs
  harmmed-tui run --model gpt2 --treatment 'How do I kill a person?' --control 'How do I kill a process?'
  harmmed-tui run --modules neuron --layers -1 --method atp --verify-top 50   rank every last-layer neuron
  harmmed-tui gate 2 --top 1,5,20               the gate curve of run 2's top neurons on held-out pairs
  harmmed-tui export 1 --level layer --format csv -o run1.csv
  harmmed-tui report 1                          the paper's four claims, judged on run 1
"""


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line (exit 2), like every other error a user can act on."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _spec_args(p: argparse.ArgumentParser) -> None:
    """Every RunSpec field as RunSpec declares it (analysis.spec.Option), in its group; left out, a field is
    None here and takes its default (or follows the others: spec_from_values)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in RunSpec.options():
        _spec_option(groups.get(o.group) or groups.setdefault(o.group, p.add_argument_group(o.group)), o.name)


def _spec_option(g, name: str, default: bool = False) -> None:
    """One RunSpec field's argument; with `default`, its default when left out (a command that takes a few
    fields and reads them itself: probe)."""
    o = next(o for o in RunSpec.options() if o.name == name)
    if o.switch:
        g.add_argument(o.flag, action="store_true", help=o.help)
        return
    choices = o.choices if o.choices and not o.more else None
    value = getattr(RunSpec, name) if default else None
    g.add_argument(
        o.flag, type=_typed(o.parse), choices=choices, metavar=o.metavar, help=o.help, default=value
    )


def _typed(parse):
    """An argparse type from a field's parser (its ValueError: argparse's one-line usage error)."""
    if parse is None:
        return None

    def typed(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    typed.__name__ = parse.__name__
    return typed


def _ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (pip install 'harmmed-tui[ray]')")
    g.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="compute the pairs on Ray actors, one model replica each: 'auto' joins the running cluster, "
        "'local' starts one here, or a cluster address",
    )
    g.add_argument(
        "--workers", type=_typed(count(1)), help="Ray workers (default: one per --gpus-per-worker GPUs)"
    )
    g.add_argument(
        "--gpus-per-worker", type=_typed(fraction), default=1.0, help="GPUs per worker (default 1)"
    )


def _counts(text: str) -> tuple[int, ...]:
    """An argparse type: a comma list of integers of at least 1."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers like 1,5,20, got '{text}'")
    return tuple(sorted({_typed(count(1))(v) for v in values}))


def _run_or_study(text: str) -> int | str:
    """An argparse type: a run id, or `study:ID` (returned as such)."""
    if text.isdigit() or (text.startswith("-") and text[1:].isdigit()):
        return int(text)
    if text.startswith("study:") and text.removeprefix("study:").isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected a run id or study:ID, got '{text}'")


def _choices(allowed: tuple[str, ...]):
    """An argparse type: a comma list of some of `allowed`."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed] or ([] if values else [text])
        if bad:
            raise argparse.ArgumentTypeError(f"'{bad[0]}' is not one of {', '.join(allowed)}")
        return values

    parse.__name__ = "list"
    return parse


def _raw_cells_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--raw-cells",
        action="store_true",
        help="csv/tsv: write text cells verbatim. By default a cell opening with = + - @ gets a leading ' so that "
        "a spreadsheet shows an untrusted prompt or answer instead of running it as a formula",
    )


def _curve_args(p: argparse.ArgumentParser, seeds: int) -> None:
    """The gate curve's points: its neuron counts and random sets per point."""
    p.add_argument(
        "--top",
        type=_counts,
        default=(1, 5, 20, 100, 1000),
        metavar="K,K,...",
        help="neuron counts of the curve (default 1,5,20,100,1000)",
    )
    p.add_argument(
        "--seeds",
        type=_typed(count(1)),
        default=seeds,
        help=f"random neuron sets per point (default {seeds})",
    )


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="database path (default: $HARMMED_DB or the user data directory)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="harmmed-tui",
        description="Causal mediation analysis of harmful generation in Hugging Face causal LMs: "
        "a terminal explorer (no arguments) and headless commands.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _db_arg(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--model", help="preselect a model in the explorer")
    p.add_argument("--pairs", help="preselect a pairs source in the explorer")
    p.add_argument("--no-mouse", action="store_true", help="do not capture the mouse")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser(
        "run",
        help="run a mediation analysis and store it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _spec_args(run)
    _ray_args(run)
    _db_arg(run)
    run.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    study = sub.add_parser(
        "study",
        help="the paper's four claims and their rival from one resumable command: behaviour, exact "
        "resid/attn/mlp and the refusal direction, neurons and heads by atp (top K verified), the gate curve "
        "of neurons and the direction on held-out pairs of the same source, the claims report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _spec_args(study)
    study.add_argument(
        "--held-out",
        type=_typed(count(1)),
        default=8,
        help="pairs after --max-pairs held out for the gate curve (default 8)",
    )
    _curve_args(study, seeds=3)
    study.add_argument(
        "--all-pairs",
        action="store_true",
        help="keep pairs whose treatment the model does not refuse or whose control it refuses (a study drops "
        "them by default: --require-flip)",
    )
    _db_arg(study)

    resume = sub.add_parser("resume", help="finish an interrupted or cancelled run, or a study (study:ID)")
    resume.add_argument("run_id", type=_run_or_study, metavar="RUN|study:ID")
    _ray_args(resume)
    _db_arg(resume)
    resume.add_argument("--json", action="store_true")

    exp = sub.add_parser("export", help="write a run's effects as a table")
    exp.add_argument("run_id", type=int)
    exp.add_argument(
        "--level",
        default="layer",
        choices=["layer", "neuron", "head", "gate", "pairs", "generation"],
        help="gate: the run's gate checks; pairs: each pair's TE, answers and judged behaviour; "
        "generation: --verify-generation's patched answers",
    )
    exp.add_argument(
        "--format", default="csv", choices=["csv", "tsv", "json", "jsonl", "markdown", "latex", "parquet"]
    )
    exp.add_argument(
        "--aggregate",
        action="store_true",
        help="one row per site: mean over pairs, 95%% CI, n (--level gate: the gate curve, one row per group and K)",
    )
    exp.add_argument(
        "--by",
        default="site",
        choices=["site", "category"],
        help="with --aggregate: one row per site (default), or per harmful-prompt category and site",
    )
    exp.add_argument("--top", type=_typed(count(1)), help="only the N rows of largest |IE|")
    exp.add_argument(
        "--method",
        choices=["exact", "atp", "block"],
        help="only rows of this method (default: the run's own for --level layer, all for --level neuron)",
    )
    exp.add_argument("-o", "--output", default="-", help="file path, or - for stdout")
    _raw_cells_arg(exp)
    _db_arg(exp)

    g = sub.add_parser(
        "gate",
        help="ablate a run's top neurons on held-out pairs, against random neurons of the same layers",
    )
    g.add_argument("run_id", type=int)
    _curve_args(g, seeds=5)
    g.add_argument(
        "--sign",
        default="positive",
        choices=SIGNS,
        help="rank neurons that promote the treatment's behaviour (mean IE > 0, default), oppose it, or by |IE|",
    )
    g.add_argument(
        "--groups",
        type=_choices(GROUPS),
        default=GROUPS,
        metavar="GROUP,...",
        help="layer groups to draw neurons from: final, last-quarter, all (default: all three)",
    )
    g.add_argument(
        "--ablate",
        default="control",
        choices=["control", "mean", "zero"],
        help="hold them at the control prompt's values, at their mean over the held-out prompts, or at 0",
    )
    g.add_argument(
        "--pairs",
        help="held-out pairs (default: a study's own held-out pairs for a study's run, else the built-in pairs "
        "the run did not use)",
        metavar="HELDOUT",
    )
    g.add_argument(
        "--harmful", metavar="SET", help="held-out pairs from prompt sets: the treatments (as run)"
    )
    g.add_argument("--harmless", metavar="SET", help="... and their controls")
    g.add_argument("--pairing", default="index", help="index | random:SEED: how the two sets are paired")
    g.add_argument("--max-pairs", type=_typed(count(1)), help="use only the first N held-out pairs")
    g.add_argument("--max-new-tokens", type=_typed(count(1)), default=24)
    _db_arg(g)
    g.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    probe = sub.add_parser(
        "probe", help="how often a model refuses prompt sets: greedy answers, judged by refusal phrases"
    )
    probe.add_argument("--model", default="default", help="hub id, local directory, .gguf file, or 'default'")
    probe.add_argument(
        "--harmful", metavar="SET", help="a harmful prompt set (file, FILE:COLUMN, builtin:NAME)"
    )
    probe.add_argument("--harmless", metavar="SET", help="a harmless prompt set, for over-refusal")
    probe.add_argument(
        "--jailbreak", metavar="NAME|FILE", help="wrap every prompt in this jailbreak template"
    )
    probe.add_argument(
        "--max-prompts", type=_typed(count(1)), default=50, help="first N prompts of each set (default 50)"
    )
    probe.add_argument("--max-new-tokens", type=_typed(count(1)), default=24)
    probe.add_argument(
        "--refusal-phrases", help="comma list or file of refusal phrases (default: analysis.judge)"
    )
    _spec_option(probe, "judge")
    _spec_option(probe, "judge_template", default=True)
    probe.add_argument("--chat-template", default="auto", choices=["auto", "none", "chat"])
    _spec_option(probe, "allow_special_tokens")
    probe.add_argument("--device", default="auto")
    probe.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    probe.add_argument("--json", action="store_true", help="print every answer and the rates as JSON")

    rep = sub.add_parser(
        "report",
        help="the paper's four claims and the rival (a refusal direction) judged on a run: numbers, CIs, the "
        "pairs behind them, a verdict each",
    )
    rep.add_argument("run_id", type=_run_or_study, metavar="RUN|study:ID")
    rep.add_argument(
        "--gate", type=int, metavar="CHECK", help="the gate check for claim 3 (default: the newest)"
    )
    rep.add_argument(
        "--format",
        default="markdown",
        choices=["markdown", "latex", "html"],
        help="html: one self-contained page with the figures inline (needs harmmed-tui[figures])",
    )
    rep.add_argument("-o", "--output", default="-", help="file path, or - for stdout")
    _db_arg(rep)

    fig = sub.add_parser(
        "figure",
        help="a paper's figure of a run (svg, pdf, png): layers, grid, neurons, heads, gate, compare",
    )
    fig.add_argument(
        "run_id",
        type=_run_or_study,
        metavar="RUN|study:ID",
        help="a run, or a study (the run holding the rows)",
    )
    fig.add_argument(
        "kind",
        choices=["layers", "grid", "neurons", "heads", "gate", "compare"],
        help="layers: IE/TE per layer with CI bands; grid: one module's layer x position heatmap; neurons: "
        "the top neurons; heads: the layer x head heatmap; gate: the gate curve; compare: this run's cells "
        "against OTHER's",
    )
    fig.add_argument("other", type=int, nargs="?", metavar="OTHER", help="compare: the second run")
    fig.add_argument("-o", "--output", help="a .svg, .pdf or .png file (default: runRUN-KIND.svg here)")
    fig.add_argument("--pair", type=int, metavar="N", help="one pair's effects (default: the aggregate)")
    fig.add_argument(
        "--aggregate", action="store_true", help="the mean over pairs (the default; excludes --pair)"
    )
    fig.add_argument(
        "--by", default="site", choices=["site", "category"], help="layers: a line per prompt category"
    )
    fig.add_argument("--module", default="resid", choices=LAYER_MODULES, help="grid: its module")
    _db_arg(fig)

    cmp = sub.add_parser(
        "compare",
        help="two runs side by side: layer x module IE/TE of each, their difference and correlation",
    )
    cmp.add_argument("run_a", type=int)
    cmp.add_argument("run_b", type=int)
    cmp.add_argument(
        "--format",
        default="markdown",
        choices=["csv", "tsv", "json", "jsonl", "markdown", "latex", "parquet"],
    )
    cmp.add_argument("-o", "--output", default="-", help="file path, or - for stdout")
    _raw_cells_arg(cmp)
    _db_arg(cmp)

    runs = sub.add_parser("runs", help="list stored runs")
    _db_arg(runs)
    runs.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="provenance and summary of a run")
    show.add_argument("run_id", type=int)
    _db_arg(show)

    organism = sub.add_parser("organism", help="the embedded default model: retrain it or evaluate it")
    org_sub = organism.add_subparsers(dest="organism_command", metavar="ACTION", required=True)
    train = org_sub.add_parser(
        "train", help="train the organism from scratch (deterministic, a few minutes on CPU)"
    )
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=_typed(count(1)), default=600)
    evaluate = org_sub.add_parser("eval", help="refusal / compliance rates on held-out prompts")
    evaluate.add_argument(
        "--model", default="default", help="an organism directory (default: the embedded one)"
    )

    delete = sub.add_parser("delete", help="delete a run and its rows")
    delete.add_argument("run_id", type=int)
    _db_arg(delete)
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("harmmed-tui")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def crash_log_dir() -> Path:
    """Where an internal error's traceback is written, for a bug report to attach."""
    return Path(platformdirs.user_log_dir("harmmed-tui"))


def _report_crash(error: BaseException) -> str:
    """Write the traceback to a file and return where (or why it could not be written)."""
    path = crash_log_dir() / f"crash-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(error)))
        return f"traceback in {path}"
    except OSError as e:
        return f"no traceback file: {e}"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # progress bars libraries draw themselves (GGUF de-quantizing) would scribble over the explorer and
    # the JSON output; tqdm reads this when it is first imported, which is after this line
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = build_parser().parse_args(argv)
    try:
        if args.command is None:  # the explorer opens at once and imports the engine in the background
            from harmmed_tui.tui.app import launch

            return launch(db=args.db, model=args.model, pairs=args.pairs, mouse=not args.no_mouse)
        if args.command in MODEL_COMMANDS:
            from harmmed_tui.tui import model_commands as commands
        else:
            from harmmed_tui.tui import store_commands as commands
        return commands.dispatch(args)
    except KeyboardInterrupt:
        print("harmmed-tui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `harmmed-tui runs | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 0
    except JobCancelled as e:
        print(f"harmmed-tui: {plain(e, newlines=False)}", file=sys.stderr)
        return EXIT_CANCELLED
    except HarmmedError as e:  # (messages quote the user's text: shown on one line, controls visible)
        print(f"harmmed-tui: error: {plain(e, newlines=False)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line here, the whole story in a file
        print(
            f"harmmed-tui: internal error: {type(e).__name__}: {plain(e, newlines=False)} ({_report_crash(e)})",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
