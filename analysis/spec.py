"""RunSpec: everything that defines a mediation run, as a frozen dataclass with a JSON round-trip."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum


class Effect(StrEnum):
    """The effects a run stores per site: IE always, DE where the run asked (--effects ie,de)."""

    IE = "ie"
    DE = "de"


@dataclass(frozen=True)
class RunSpec:
    model: str = "default"
    pairs: str = "builtin"  # `builtin` or a .jsonl/.json/.csv path; ignored when treatment/control are given
    corrupt: str | None = None  # noise contrast: the control run is the treatment with these tokens noised
    noise_scale: float = 3.0  # x the std of the embedding matrix (ROME's causal tracing)
    noise_samples: int = 5  # IEs are averaged over this many noise draws
    treatment: str | None = None
    control: str | None = None
    harmful: str | None = (
        None  # a prompt set (file, FILE:COLUMN or builtin:NAME): treatments, instead of pairs
    )
    harmless: str | None = None  # ... and their controls
    pairing: str = "index"  # index | random:SEED: how the two sets are paired
    jailbreak: str | None = (
        None  # a jailbreak template (analysis.jailbreaks name or file) applied to the pairs
    )
    jailbreak_design: str = "plain-vs-wrapped"  # or wrapped-pair: treatment and control both wrapped
    max_pairs: int | None = None  # use only the first N pairs of the source
    chat_template: str = "auto"  # auto | none | chat
    allow_special_tokens: bool = False  # special-token strings in prompts act (prefill attacks); else text
    align: str = (
        "strict"  # strict: unequal lengths are an error; skip: drop such pairs; end: align from the end
    )
    answer_tokens: int = 24  # each pair's greedy answers, judged (its behaviour); 0 records none
    require_flip: bool = False  # drop pairs whose treatment is not refused or whose control is
    refusal_phrases: str | None = None  # the refusal judge's phrases: comma list or file (analysis.judge)
    judge: str | None = None  # a classifier LM as the refusal judge instead (analysis.model_judge)
    judge_template: str = "refusal"  # its yes/no prompt: refusal | harmbench | a file
    metric: str = "refusal"  # refusal | logit-diff:A,B | target-logprob
    refusal_tokens: str | None = None  # comma list of refusal strings (default: analysis.metrics)
    modules: tuple[str, ...] = ("resid", "attn", "mlp")
    layers: str = "all"
    positions: str = "all,*"  # positions of resid/attn/mlp sites
    neuron_positions: str = "last"  # positions of neuron sites
    head_positions: str | None = None  # positions of head sites (None: those of resid/attn/mlp)
    effects: tuple[str, ...] = ("ie",)  # ie, or ie,de: the direct effect of every site beside its IE
    method: str = "exact"  # exact | atp | block:N
    engine: str = "replay"  # exact patching by replaying decoder layers, or by whole forwards with hooks
    verify_top: int = 0  # atp: also patch this many top sites of each pair exactly
    verify_generation: int = 0  # patch each pair's top K sites by |IE| and judge the control's answer
    device: str = "auto"
    device_map: str | None = None  # split the model with accelerate: auto | balanced | a JSON file
    dtype: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    batch_tokens: int = 0  # token positions per replayed batch; 0 picks from free memory
    seed: int = 0

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


# The defaults that follow the pairs' source, the same in the CLI and Setup: prompt sets pair prompts of any
# lengths, aligned from the end unless asked otherwise; end-aligned pairs have no `*` (every position at
# once needs equal lengths): `suffix` instead.
END_POSITIONS = "all,suffix"


def default_align(uses_sets: bool) -> str:
    return "end" if uses_sets else RunSpec.align


def default_positions(align: str) -> str:
    return END_POSITIONS if align == "end" else RunSpec.positions
