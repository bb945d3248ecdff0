"""RunSpec: everything that defines a mediation run, as a frozen dataclass with a JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class Effect(StrEnum):
    """The effects a run stores per site: IE always, DE where the run asked (--effects ie,de)."""

    IE = "ie"
    DE = "de"


def count(minimum: int) -> Callable[[str], int]:
    """A whole number of at least `minimum`, from text (ValueError says what is wrong)."""

    def parse(text: str) -> int:
        value = integer(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"  # (argparse names a type in its messages)
    return parse


def integer(text: str) -> int:
    """A whole number, from text."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got '{text}'") from None


def fraction(text: str) -> float:
    """A number above 0, from text."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise ValueError(f"must be more than 0, got {text}")
    return value


def names(text: str) -> tuple[str, ...]:
    """A comma list, from text."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def pair_count(text: str) -> int | None:
    """A number of pairs, or all (None)."""
    if text.strip().lower() in ("", "all"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer or all, got '{text}'") from None
    if value < 1:
        raise ValueError(f"must be at least 1, or all, got {value}")
    return value


@dataclass(frozen=True)
class Option:
    """How one RunSpec field is asked for: its command-line flag (`--name-with-dashes`) and, where it has a
    `label`, its Setup form field. Declared once, beside the field (`option`): the CLI's arguments, Setup's
    form and the mapping of an error's flag to its form field are made from it."""

    help: str
    group: str  # the CLI's argument group: model, pairs, what to measure
    name: str = ""  # the field's (RunSpec.options fills it in)
    choices: tuple[str, ...] | None = None  # a select in the form; on the command line, the only values
    more: bool = False  # ... unless other values are valid too (cuda:1; ie, de): the command line takes any
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # text -> value (the CLI's type, the form's reader)
    switch: bool = False  # a flag without a value (store_true)
    label: str | None = None  # its field in Setup's form (None: command line only)
    placeholder: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def option(default, **how) -> Any:
    return field(default=default, metadata={"option": Option(**how)})


M, P, W = "model", "pairs", "what to measure"


@dataclass(frozen=True)
class RunSpec:
    model: str = option(
        "default",
        help="hub id, local directory, .gguf file, or 'default'",
        group=M,
        label="model",
        placeholder="hub id, directory, .gguf file or default",
    )
    pairs: str = option(
        "builtin",
        help="'builtin' or a .jsonl/.json/.csv file (treatment, control)",
        group=P,
        label="pairs (builtin, file)",
    )
    harmful: str | None = option(
        None,
        metavar="SET",
        group=P,
        label="harmful set (optional)",
        help="a harmful prompt set (csv/jsonl/json/parquet, FILE:COLUMN, or builtin:advbench|jailbreakbench): "
        "the treatments, paired with --harmless, instead of --pairs",
        placeholder="csv/jsonl/json/parquet, FILE:COLUMN or builtin:advbench",
    )
    harmless: str | None = option(
        None,
        metavar="SET",
        group=P,
        label="harmless set",
        placeholder="e.g. builtin:self_instruct",
        help="a harmless prompt set (e.g. builtin:self_instruct): the controls",
    )
    pairing: str = option(
        "index",
        help="index (i-th with i-th) | random:SEED (both sets shuffled)",
        group=P,
        label="pairing",
        placeholder="index | random:SEED",
    )
    treatment: str | None = option(
        None,
        help="treatment prompt (with --control, instead of --pairs)",
        group=P,
        label="treatment (optional)",
        placeholder="a harmful prompt, typed in place of the pairs",
    )
    control: str | None = option(
        None,
        help="control prompt",
        group=P,
        label="control (optional)",
        placeholder="its benign twin, of the same token length",
    )
    max_pairs: int | None = option(
        None,
        help="use only the first N pairs (all: every pair)",
        group=P,
        parse=pair_count,
        label="max pairs",
    )
    chat_template: str = option(
        "auto",
        choices=("auto", "none", "chat"),
        group=P,
        label="chat template",
        help="auto: wrap prompts as a user turn when the tokenizer has a template; chat: require one",
    )
    align: str = option(
        "strict",
        choices=("strict", "skip", "end"),
        group=P,
        label="unequal lengths",
        help="pairs of unequal token length: strict = error, skip = drop them with a warning, end = align "
        "them from the last token (positions count from the end; 'suffix' patches the shared final tokens). "
        "Default: end for --harmful/--harmless, else strict",
    )
    metric: str = option(
        "refusal",
        help="refusal | logit-diff:A,B (tokens or #ids) | target-logprob",
        group=W,
        label="metric",
        placeholder="refusal | logit-diff:A,B | target-logprob",
    )
    modules: tuple[str, ...] = option(
        ("resid", "attn", "mlp"),
        parse=names,
        group=W,
        label="modules",
        help="comma list of resid, attn, mlp, neuron, head, direction",
        placeholder="resid,attn,mlp,neuron,head,direction",
    )
    layers: str = option("all", help="all, or 0-based indices and ranges: 0,5-7,-1", group=W, label="layers")
    positions: str = option(
        "all,*",
        group=W,
        label="positions",
        help="all | last | last:N | * | suffix | indices; '*' = every position at once, 'suffix' = the final "
        "tokens both prompts share, at once (default: all,* ; with --align end: all,suffix)",
    )
    neuron_positions: str = option(
        "last",
        group=W,
        label="neuron positions",
        help="positions of neuron sites (default: --positions when given, else last)",
    )
    method: str = option(
        "exact",
        group=W,
        label="method",
        placeholder="exact | atp | block:N",
        help="exact | atp (attribution patching: one forward + backward) | block:N (neurons in blocks of N)",
    )
    effects: tuple[str, ...] = option(
        ("ie",),
        parse=names,
        group=W,
        label="effects",
        choices=("ie", "ie,de"),
        more=True,
        help="ie, or ie,de: also each site's direct effect, the treatment run with the site held at its "
        "control value (a second patch per site)",
    )
    verify_top: int = option(
        0,
        parse=count(0),
        metavar="K",
        group=W,
        label="atp: verify top K",
        help="with atp: patch each pair's top K sites exactly too, and report the rank agreement",
    )
    device: str = option(
        "auto",
        help="auto | cpu | cuda[:N]",
        group=M,
        label="device",
        choices=("auto", "cpu", "cuda"),
        more=True,
    )
    dtype: str = option(
        "auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        group=M,
        label="dtype",
        help="the weights' dtype (auto: the checkpoint's)",
    )
    engine: str = option(
        "replay",
        choices=("replay", "hooks"),
        group=W,
        label="exact engine",
        help="exact patching by replaying only the layers and positions a patch changes (fast), or by "
        "whole forward passes with hooks (slower; for a model or transformers release the replay rejects)",
    )
    device_map: str | None = option(
        None,
        metavar="MAP",
        group=M,
        label="device map (optional)",
        help="split a model too large for one device with accelerate: auto | balanced | a JSON file "
        "mapping module names to GPU indices, 'cpu' or 'disk'",
        placeholder="auto | balanced | a JSON file: split a large model",
    )
    revision: str | None = option(None, help="hub revision (branch, tag or commit)", group=M)
    trust_remote_code: bool = option(False, switch=True, help="allow model code from the hub", group=M)
    corrupt: str | None = option(
        None,
        metavar="TEXT|tokens:LIST",
        group=P,
        help="noise contrast (causal tracing): the control run is each treatment prompt with Gaussian noise "
        "on the embeddings of these tokens (a substring of the prompt, or tokens:3,5-7)",
    )
    noise_scale: float = option(  # x the std of the embedding matrix (ROME's causal tracing)
        3.0, parse=fraction, help="noise sd, x the embeddings' sd (default 3)", group=P
    )
    noise_samples: int = option(5, parse=count(1), help="noise draws to average over (default 5)", group=P)
    jailbreak: str | None = option(
        None,
        metavar="NAME|FILE",
        group=P,
        help="wrap the prompts in a jailbreak template (refusal-suppression, prefix-injection, role-play, "
        "instruction-override, fictional-framing, or a file holding {prompt})",
    )
    jailbreak_design: str = option(
        "plain-vs-wrapped",
        choices=("plain-vs-wrapped", "wrapped-pair"),
        group=P,
        help="plain-vs-wrapped: treatment = the plain harmful prompt, control = it wrapped (where the "
        "jailbreak acts); wrapped-pair: both prompts of each pair wrapped",
    )
    allow_special_tokens: bool = option(
        False,
        switch=True,
        group=P,
        help="let special-token strings in prompts act (<|im_end|>, <|assistant|>: a forged turn, as prefill "
        "attacks do on purpose); by default prompts are text, those strings ordinary tokens",
    )
    refusal_tokens: str | None = option(
        None,
        group=W,
        help="the refusal metric's token set: a comma list of refusal openings, or 'auto' (recommended for "
        "chat models): the first tokens of the model's own judged refusals of the treatments, minus those "
        "of its answers to the controls",
    )
    answer_tokens: int = option(
        24,
        parse=count(0),
        group=W,
        help="record each pair's greedy answers (this many tokens) and judge them refusals or not (0: skip)",
    )
    require_flip: bool = option(
        False,
        switch=True,
        group=W,
        help="drop pairs whose treatment the model does not refuse, or whose control it refuses",
    )
    refusal_phrases: str | None = option(
        None, help="the refusal judge's phrases: comma list or file (default: built in)", group=W
    )
    judge: str | None = option(
        None,
        metavar="MODEL",
        group=W,
        help="judge refusals with a classifier LM (hub id, directory or .gguf) instead of the phrases",
    )
    judge_template: str = option(
        "refusal",
        metavar="NAME|FILE",
        group=W,
        help="its yes/no prompt: refusal (Yes = refused), harmbench (Yes = complied), or a file with "
        "{prompt} and {answer} (Yes = refused)",
    )
    head_positions: str | None = option(None, help="positions of head sites (default: --positions)", group=W)
    verify_generation: int = option(
        0,
        parse=count(0),
        metavar="K",
        group=W,
        help="patch each pair's top K sites by |IE| into the control prompt, generate, and record whether "
        "the judged verdict flips (the pair's answer length: --answer-tokens)",
    )
    batch_tokens: int = option(
        0, parse=count(0), help="token positions per patched forward (0: auto)", group=W
    )
    seed: int = option(0, parse=integer, help="the seed of every random choice", group=W)

    @classmethod
    def options(cls) -> list[Option]:
        """Every field's Option, in declaration order (Setup's form follows it), each knowing its name."""
        return [replace(f.metadata["option"], name=f.name) for f in dataclasses.fields(cls)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for name in ("modules", "effects"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    def replace(self, **changes) -> RunSpec:
        return dataclasses.replace(self, **changes)


def spec_from_values(given: dict[str, Any]) -> RunSpec:
    """A RunSpec from the fields given (the command line's: the rest take their defaults), the derived ones
    following the pairs' source where not given (default_align, default_positions; neurons take the positions
    given, else the last)."""
    align = given.get("align") or default_align(
        bool(given.get("harmful") or given.get("harmless") or given.get("jailbreak"))
    )
    positions = given.get("positions") or default_positions(align)
    neuron_positions = given.get("neuron_positions") or given.get("positions") or RunSpec.neuron_positions
    return RunSpec(**given | {"align": align, "positions": positions, "neuron_positions": neuron_positions})


# The defaults that follow the pairs' source, the same in the CLI and Setup: prompt sets pair prompts of any
# lengths, aligned from the end unless asked otherwise; end-aligned pairs have no `*` (every position at
# once needs equal lengths): `suffix` instead.
END_POSITIONS = "all,suffix"


def default_align(uses_sets: bool) -> str:
    return "end" if uses_sets else RunSpec.align


def default_positions(align: str) -> str:
    return END_POSITIONS if align == "end" else RunSpec.positions
