"""Each pair's behaviour: the model's greedy answers to its two prompts, judged refusal or not.

A pair *flips* when the treatment is refused and the control answered: the behaviour the run explains. A
pair where the model does neither dilutes every aggregate, so runs record it (and `--require-flip` drops
such pairs before patching)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harmmed_tui.analysis.judge import PhraseJudge, behaviour_label
from harmmed_tui.analysis.model_judge import ModelJudge
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import TokenizedPair


@torch.inference_mode()
def greedy_batch(
    lm: LoadedModel, ids: list[int], max_new_tokens: int, rows: int = 1, stopping_criteria=None
) -> list[list[int]]:
    """The token ids of the model's greedy continuations of `rows` copies of one tokenized prompt (rows
    that differ only by the hooks a caller installs; no padding, they are the same length). A row that a
    stopping criterion ends is padded from there (its pad tokens are special, dropped when decoded)."""
    prompt = torch.tensor([ids], device=lm.device).expand(rows, -1)
    tok = lm.tokenizer
    out = lm.model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        stopping_criteria=stopping_criteria,
    )
    return out[:, len(ids) :].tolist()


def greedy_ids(lm: LoadedModel, ids: list[int], max_new_tokens: int) -> list[int]:
    """The token ids of the model's greedy continuation of a tokenized prompt."""
    return greedy_batch(lm, ids, max_new_tokens)[0]


def decode_answer(lm: LoadedModel, ids: list[int]) -> str:
    return lm.tokenizer.decode(ids, skip_special_tokens=True).strip()


def greedy_continuation(lm: LoadedModel, ids: list[int], max_new_tokens: int) -> str:
    """The model's greedy continuation of a tokenized prompt, as text."""
    return decode_answer(lm, greedy_ids(lm, ids, max_new_tokens))


@dataclass(frozen=True)
class Behaviour:
    answer_treatment: str
    answer_control: str
    refused_treatment: bool
    refused_control: bool
    first_treatment: int | None = None  # the first answer tokens: `--refusal-tokens auto` learns from them
    first_control: int | None = None

    @property
    def flips(self) -> bool:
        return self.refused_treatment and not self.refused_control

    @property
    def label(self) -> str:
        return behaviour_label(self.refused_treatment, self.refused_control)


def pair_behaviour(
    lm: LoadedModel, tp: TokenizedPair, judge: PhraseJudge | ModelJudge, max_new_tokens: int
) -> Behaviour:
    """Greedy answers to the treatment and control prompts (their targets left out), judged."""
    t_ids = greedy_ids(lm, tp.treatment_ids[: tp.treatment_prompt_len], max_new_tokens)
    c_ids = greedy_ids(lm, tp.control_ids[: tp.prompt_len], max_new_tokens)
    t, c = decode_answer(lm, t_ids), decode_answer(lm, c_ids)
    first = lambda ids: ids[0] if ids else None  # noqa: E731
    refused = judge.refuses(t, tp.pair.treatment), judge.refuses(c, tp.pair.control)
    return Behaviour(t, c, *refused, first(t_ids), first(c_ids))


def learned_refusal_tokens(behaviour: dict[int, Behaviour]) -> list[int]:
    """The model's own refusal openings: first tokens of its judged-refusal answers to the treatments, minus
    the first tokens of its judged-compliant answers to the controls."""
    refusing = {b.first_treatment for b in behaviour.values() if b.refused_treatment}
    answering = {b.first_control for b in behaviour.values() if not b.refused_control}
    return sorted(t for t in refusing - answering if t is not None)
