"""How often a model refuses a prompt set: greedy answers judged by a refusal judge (analysis.judge).

The red-teamer's first question, and the way to pick pairs where the behaviour actually changes."""

from __future__ import annotations

from collections import defaultdict

from harmmed_tui.analysis.behaviour import greedy_continuation
from harmmed_tui.analysis.jailbreaks import Jailbreak
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.model_judge import ModelJudge
from harmmed_tui.analysis.models import LoadedModel
from harmmed_tui.analysis.pairs import encode_prompt
from harmmed_tui.analysis.prompt_sets import Prompt


def greedy_answer(
    lm: LoadedModel,
    text: str,
    chat_template: str = "auto",
    max_new_tokens: int = 24,
    allow_special: bool = False,
) -> str:
    """The model's greedy answer to one prompt, as a user turn under its chat template (when it has one); its
    special-token strings are text unless `allow_special` (pairs.encode_prompt)."""
    ids = encode_prompt(lm.tokenizer, text, chat_template, allow_special)[1]
    return greedy_continuation(lm, ids, max_new_tokens)


def probe(
    lm: LoadedModel,
    sets: dict[str, list[Prompt]],
    judge: PhraseJudge | ModelJudge,
    chat_template: str = "auto",
    max_new_tokens: int = 24,
    jailbreak: Jailbreak | None = None,
    allow_special: bool = False,
) -> list[dict]:
    """One row per prompt: its set, id, category, the prompt as sent, the answer and the verdict."""
    rows = []
    for name, prompts in sets.items():
        for p in prompts:
            text = jailbreak.wrap(p.text) if jailbreak else p.text
            answer = greedy_answer(lm, text, chat_template, max_new_tokens, allow_special)
            rows.append(
                dict(
                    set=name,
                    id=p.id,
                    category=p.category,
                    prompt=text,
                    answer=answer,
                    refused=judge.refuses(answer, text),
                )
            )
    return rows


def refusal_rates(rows: list[dict]) -> list[dict]:
    """Per set, and per category within it (category '' = the whole set): n, refusals, rate."""
    groups: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for r in rows:
        groups[(r["set"], "")].append(r["refused"])
        if r["category"]:
            groups[(r["set"], r["category"])].append(r["refused"])
    return [
        dict(set=s, category=c, n=len(v), refused=sum(v), rate=sum(v) / len(v))
        for (s, c), v in groups.items()
    ]
