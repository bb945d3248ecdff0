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
from harmmed_tui.analysis.sites import LAYER_MODULES, MODULES
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


def _count(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse


class Parser(argparse.ArgumentParser):
    """Usage mistakes are one line (exit 2), like every other error a user can act on."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="default", help="hub id, local directory, .gguf file, or 'default'")
    g.add_argument("--revision", help="hub revision (branch, tag or commit)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
    g.add_argument(
        "--device-map",
        metavar="MAP",
        help="split a model too large for one device with accelerate: auto | balanced | a JSON file "
        "mapping module names to GPU indices, 'cpu' or 'disk'",
    )
    g = p.add_argument_group("pairs")
    g.add_argument(
        "--pairs", default="builtin", help="'builtin' or a .jsonl/.json/.csv file (treatment, control)"
    )
    g.add_argument(
        "--harmful",
        metavar="SET",
        help="a harmful prompt set (csv/jsonl/json/parquet, FILE:COLUMN, or builtin:advbench|jailbreakbench): "
        "the treatments, paired with --harmless, instead of --pairs",
    )
    g.add_argument(
        "--harmless", metavar="SET", help="a harmless prompt set (e.g. builtin:self_instruct): the controls"
    )
    g.add_argument(
        "--pairing", default="index", help="index (i-th with i-th) | random:SEED (both sets shuffled)"
    )
    g.add_argument(
        "--jailbreak",
        metavar="NAME|FILE",
        help="wrap the prompts in a jailbreak template (refusal-suppression, prefix-injection, role-play, "
        "instruction-override, fictional-framing, or a file holding {prompt})",
    )
    g.add_argument(
        "--jailbreak-design",
        default="plain-vs-wrapped",
        choices=["plain-vs-wrapped", "wrapped-pair"],
        help="plain-vs-wrapped: treatment = the plain harmful prompt, control = it wrapped (where the "
        "jailbreak acts); wrapped-pair: both prompts of each pair wrapped",
    )
    g.add_argument(
        "--corrupt",
        metavar="TEXT|tokens:LIST",
        help="noise contrast (causal tracing): the control run is each treatment prompt with Gaussian noise "
        "on the embeddings of these tokens (a substring of the prompt, or tokens:3,5-7)",
    )
    g.add_argument(
        "--noise-scale", type=_fraction, default=3.0, help="noise sd, x the embeddings' sd (default 3)"
    )
    g.add_argument(
        "--noise-samples", type=_count(1), default=5, help="noise draws to average over (default 5)"
    )
    g.add_argument("--treatment", help="treatment prompt (with --control, instead of --pairs)")
    g.add_argument("--control", help="control prompt")
    g.add_argument("--max-pairs", type=_count(1), help="use only the first N pairs")
    g.add_argument(
        "--chat-template",
        default="auto",
        choices=["auto", "none", "chat"],
        help="auto: wrap prompts as a user turn when the tokenizer has a template; chat: require one",
    )
    _special_arg(g)
    g.add_argument(
        "--align",
        choices=["strict", "skip", "end"],
        help="pairs of unequal token length: strict = error, skip = drop them with a warning, end = align "
        "them from the last token (positions count from the end; 'suffix' patches the shared final tokens). "
        "Default: end for --harmful/--harmless, else strict",
    )
    g = p.add_argument_group("what to measure")
    g.add_argument(
        "--metric", default="refusal", help="refusal | logit-diff:A,B (tokens or #ids) | target-logprob"
    )
    g.add_argument(
        "--refusal-tokens",
        help="the refusal metric's token set: a comma list of refusal openings, or 'auto' (recommended for "
        "chat models): the first tokens of the model's own judged refusals of the treatments, minus those "
        "of its answers to the controls",
    )
    g.add_argument(
        "--answer-tokens",
        type=_count(0),
        default=24,
        help="record each pair's greedy answers (this many tokens) and judge them refusals or not (0: skip)",
    )
    g.add_argument(
        "--require-flip",
        action="store_true",
        help="drop pairs whose treatment the model does not refuse, or whose control it refuses",
    )
    g.add_argument(
        "--refusal-phrases", help="the refusal judge's phrases: comma list or file (default: built in)"
    )
    _judge_args(g)
    g.add_argument("--modules", default="resid,attn,mlp", help=f"comma list of {', '.join(MODULES)}")
    g.add_argument("--layers", default="all", help="all, or 0-based indices and ranges: 0,5-7,-1")
    g.add_argument(
        "--positions",
        help="all | last | last:N | * | suffix | indices; '*' = every position at once, 'suffix' = the final "
        "tokens both prompts share, at once (default: all,* ; with --align end: all,suffix)",
    )
    g.add_argument(
        "--neuron-positions", help="positions of neuron sites (default: --positions when given, else last)"
    )
    g.add_argument("--head-positions", help="positions of head sites (default: --positions)")
    g.add_argument(
        "--method",
        default="exact",
        help="exact | atp (attribution patching: one forward + backward) | block:N (neurons in blocks of N)",
    )
    g.add_argument(
        "--effects",
        default="ie",
        help="ie, or ie,de: also each site's direct effect, the treatment run with the site held at its "
        "control value (a second patch per site)",
    )
    g.add_argument(
        "--engine",
        default="replay",
        choices=["replay", "hooks"],
        help="exact patching by replaying only the layers and positions a patch changes (fast), or by "
        "whole forward passes with hooks (slower; for a model or transformers release the replay rejects)",
    )
    g.add_argument(
        "--verify-top",
        type=_count(0),
        default=0,
        metavar="K",
        help="with atp: patch each pair's top K sites exactly too, and report the rank agreement",
    )
    g.add_argument(
        "--verify-generation",
        type=_count(0),
        default=0,
        metavar="K",
        help="patch each pair's top K sites by |IE| into the control prompt, generate, and record whether "
        "the judged verdict flips (the pair's answer length: --answer-tokens)",
    )
    g.add_argument(
        "--batch-tokens", type=_count(0), default=0, help="token positions per patched forward (0: auto)"
    )
    g.add_argument("--seed", type=int, default=0)


def _ray_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster (pip install 'harmmed-tui[ray]')")
    g.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="compute the pairs on Ray actors, one model replica each: 'auto' joins the running cluster, "
        "'local' starts one here, or a cluster address",
    )
    g.add_argument("--workers", type=_count(1), help="Ray workers (default: one per --gpus-per-worker GPUs)")
    g.add_argument("--gpus-per-worker", type=_fraction, default=1.0, help="GPUs per worker (default 1)")


def _counts(text: str) -> tuple[int, ...]:
    """An argparse type: a comma list of integers of at least 1."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected integers like 1,5,20, got '{text}'")
    return tuple(sorted({_count(1)(v) for v in values}))


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


def _special_arg(g) -> None:
    g.add_argument(
        "--allow-special-tokens",
        action="store_true",
        help="let special-token strings in prompts act (<|im_end|>, <|assistant|>: a forged turn, as prefill "
        "attacks do on purpose); by default prompts are text, those strings ordinary tokens",
    )


def _judge_args(g) -> None:
    g.add_argument(
        "--judge",
        metavar="MODEL",
        help="judge refusals with a classifier LM (hub id, directory or .gguf) instead of the phrases",
    )
    g.add_argument(
        "--judge-template",
        default="refusal",
        metavar="NAME|FILE",
        help="its yes/no prompt: refusal (Yes = refused), harmbench (Yes = complied), or a file with "
        "{prompt} and {answer} (Yes = refused)",
    )


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


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
        "--seeds", type=_count(1), default=seeds, help=f"random neuron sets per point (default {seeds})"
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
        type=_count(1),
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
    exp.add_argument("--top", type=_count(1), help="only the N rows of largest |IE|")
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
    g.add_argument("--max-pairs", type=_count(1), help="use only the first N held-out pairs")
    g.add_argument("--max-new-tokens", type=_count(1), default=24)
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
        "--max-prompts", type=_count(1), default=50, help="first N prompts of each set (default 50)"
    )
    probe.add_argument("--max-new-tokens", type=_count(1), default=24)
    probe.add_argument(
        "--refusal-phrases", help="comma list or file of refusal phrases (default: analysis.judge)"
    )
    _judge_args(probe)
    probe.add_argument("--chat-template", default="auto", choices=["auto", "none", "chat"])
    _special_arg(probe)
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
    train.add_argument("--steps", type=_count(1), default=600)
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
