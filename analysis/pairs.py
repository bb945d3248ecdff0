"""Pairs (treatment + control prompts): sources, chat templating, and token alignment."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from harmmed_tui.analysis.errors import PairsError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parent / "data" / "builtin_pairs.jsonl"
CHAT_TEMPLATE_MODES = ("auto", "none", "chat")
ALIGNMENTS = ("strict", "skip", "end")


@dataclass(frozen=True)
class Pair:
    treatment: str
    control: str
    id: str = ""
    category: str = ""
    target: str = ""


@dataclass(frozen=True)
class TokenizedPair:
    pair: Pair
    index: int  # position of the pair in its source
    treatment_ids: list[int]
    control_ids: list[int]
    prompt_len: int  # the control's tokens before the teacher-forced target (all of them without one)
    treatment_tokens: list[str]
    control_tokens: list[str]
    # End alignment: the treatment's position p + shift pairs with the control's p (0 for equal lengths),
    # over the last `aligned` tokens; the last `suffix_len` tokens are the same in both (chat template, target).
    shift: int = 0
    aligned: int = 0
    suffix_len: int = 0
    corrupt: tuple[int, ...] = ()  # noise contrast: the control is the treatment with these tokens noised

    @property
    def treatment_prompt_len(self) -> int:
        return self.prompt_len + self.shift

    @property
    def unchanged(self) -> int:
        """How many first positions both runs compute identically: a causal model's activations at a position
        depend only on the tokens (and noise) up to it, so where both prompts hold the same tokens at the same
        places (a chat template's system prompt and opening, the words before the first that differs) they are
        equal. A noise contrast: the positions before the first noised token. End-aligned prompts of unequal
        length: none (their shared start sits at other positions, with other position encodings)."""
        if self.corrupt:
            return min(self.corrupt)
        if self.shift:
            return 0
        n, t, c = 0, self.treatment_ids, self.control_ids
        while n < min(len(t), len(c)) and t[n] == c[n]:
            n += 1
        return n

    def reversed(self) -> TokenizedPair:
        """The pair with its roles swapped: patching its control run (the treatment prompt) with its treatment
        values (the control's) holds a site of the treatment run at its control value, a direct effect."""
        return replace(
            self,
            treatment_ids=self.control_ids,
            control_ids=self.treatment_ids,
            treatment_tokens=self.control_tokens,
            control_tokens=self.treatment_tokens,
            prompt_len=self.treatment_prompt_len,
            shift=-self.shift,
        )


CSV_FIELD_MAX = 16 << 20  # characters in one CSV field (the csv module's default, 131072, is a long prompt)


def read_csv(text: str, source: object) -> list[dict]:
    csv.field_size_limit(CSV_FIELD_MAX)
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise PairsError(f"{source}: not a readable CSV file ({e})") from None


def load_pairs(source: str) -> list[Pair]:
    """Pairs from `builtin` or a .jsonl/.json/.csv file with fields treatment, control [, id, category, target]."""
    path = BUILTIN_PATH if source == BUILTIN else Path(source).expanduser()
    if path.is_dir():
        raise PairsError(f"{source} is a directory, not a pairs file (.jsonl, .json or .csv)")
    if not path.is_file():
        raise PairsError(f"pairs file not found: {source}")
    try:  # utf-8-sig: spreadsheets save CSV with a byte-order mark
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PairsError(f"{source} is not UTF-8 text (a binary file?)") from None
    except OSError as e:
        raise PairsError(f"cannot read pairs file {source}: {e.strerror or e}") from None
    if not text.strip():
        raise PairsError(f"pairs file is empty: {source}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            records = json.loads(text)
            if isinstance(records, dict):
                records = records.get("pairs", [records])
        elif suffix == ".csv":
            records = read_csv(text, source)
        else:
            raise PairsError(f"unsupported pairs file type '{suffix}' (use .jsonl, .json or .csv): {source}")
    except json.JSONDecodeError as e:
        raise PairsError(f"{source}: invalid JSON ({e})") from None
    if not isinstance(records, list):
        raise PairsError(
            f'{source}: expected a list of pair records (or {{"pairs": [...]}}), found '
            f"{type(records).__name__} {str(records)[:40]}"
        )
    pairs = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not r.get("treatment") or not r.get("control"):
            raise PairsError(f"{source}: record {i + 1} needs non-empty 'treatment' and 'control' fields")
        for name in ("treatment", "control", "id", "category", "target"):
            if isinstance(r.get(name), list | dict):
                raise PairsError(
                    f"{source}: record {i + 1}'s '{name}' is a {type(r[name]).__name__}, not text"
                )
        pairs.append(
            Pair(
                treatment=str(r["treatment"]),
                control=str(r["control"]),
                id=str(r.get("id") or i),
                category=str(r.get("category") or ""),
                target=str(r.get("target") or ""),
            )
        )
    if not pairs:
        raise PairsError(f"pairs file has no records: {source}")
    first: dict[str, int] = {}
    for i, p in enumerate(pairs):
        if (seen := first.setdefault(p.id, i)) != i:
            raise PairsError(
                f"{source}: pair id {p.id!r} is used by records {seen + 1} and {i + 1}: an id names one pair "
                "in the exports and reports; make the ids unique"
            )
    return pairs


def format_prompt(tokenizer: PreTrainedTokenizerBase, text: str, chat_template: str) -> tuple[str, bool]:
    """The prompt text the model sees, and whether the tokenizer should add its own special tokens."""
    if chat_template not in CHAT_TEMPLATE_MODES:
        raise PairsError(
            f"unknown chat template mode '{chat_template}' (use {', '.join(CHAT_TEMPLATE_MODES)})"
        )
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "chat" and not has_template:
        raise PairsError("the tokenizer has no chat template (use --chat-template none or auto)")
    if chat_template == "none" or not has_template:
        return text, True
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), False


def special_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The strings this tokenizer reads as special tokens (`<|im_end|>`, `<|assistant|>`, ...)."""
    return [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]


def literal_ids(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    spans: list[tuple[int, int]],
    add_special_tokens: bool = False,
    offsets: bool = False,
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids of `text` whose `spans` (untrusted text: a user's prompt, a model's answer) are read as text:
    a special-token string inside them (`<|im_end|>\n<|im_start|>assistant`) becomes ordinary tokens and
    cannot forge a turn. Text without such strings tokenizes exactly as the tokenizer alone does it. With
    `offsets`, each token's (start, end) in `text` too."""
    specials = special_strings(tokenizer)
    if not any(s in text[a:b] for a, b in spans for s in specials):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=offsets)
        return enc["input_ids"], enc.get("offset_mapping")
    cuts = sorted({0, len(text), *(i for span in spans for i in span)})
    ids, where = [], []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        untrusted = any(s <= a and b <= e for s, e in spans)
        enc = tokenizer(
            text[a:b],
            add_special_tokens=add_special_tokens and i == 0,
            split_special_tokens=untrusted,
            return_offsets_mapping=offsets,
        )
        ids += enc["input_ids"]
        if offsets:
            where += [(a + x, a + y) for x, y in enc["offset_mapping"]]
    return ids, where if offsets else None


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    chat_template: str = "auto",
    allow_special: bool = False,
    offsets: bool = False,
) -> tuple[str, list[int], list[tuple[int, int]] | None]:
    """A user's prompt as the model reads it: (the prompt text, its token ids, each token's offsets there when
    asked). The chat template's own special tokens act; the user's text is text unless `allow_special`
    (--allow-special-tokens: prefill-style attacks, on purpose)."""
    prompt, special = format_prompt(tokenizer, text, chat_template)
    start = prompt.rfind(text)  # the user's turn (after any system prompt quoting the same words)
    if allow_special:
        spans = []
    elif start < 0:
        raise PairsError(
            "the chat template rewrites the prompt's text, so the text could not be kept literal: "
            "pass --allow-special-tokens to tokenize the whole prompt as the template renders it"
        )
    else:
        spans = [(start, start + len(text))]
    ids, where = literal_ids(tokenizer, prompt, spans, special, offsets)
    return prompt, ids, where


def _common_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class UnusablePair(PairsError):
    """A pair the run cannot measure (unequal lengths unaligned, identical prompts, unknown words only):
    an error with --align strict, dropped with a message with skip or end."""


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase,
    pair: Pair,
    index: int,
    chat_template: str = "auto",
    need_target=False,
    align: str = "strict",
    allow_same: bool = False,
    allow_special: bool = False,
) -> TokenizedPair:
    """`align='end'` accepts prompts of any lengths, aligned from their last token; otherwise unequal token
    lengths are an error. `allow_same`: the control may read the same as the treatment (a noise contrast, whose
    control is the treatment corrupted later: analysis.noise). Special-token strings in the prompts are text
    unless `allow_special` (encode_prompt)."""

    def encode(text: str) -> list[int]:
        return encode_prompt(tokenizer, text, chat_template, allow_special)[1]

    t, c = encode(pair.treatment), encode(pair.control)
    unk = tokenizer.unk_token_id
    for side, text in (("treatment", pair.treatment), ("control", pair.control)):
        own = tokenizer(text, add_special_tokens=False)["input_ids"]
        if unk is not None and own and all(i == unk for i in own):
            raise UnusablePair(
                f"pair {pair.id!r}: every token of the {side} {text!r} is unknown to this tokenizer "
                f"({tokenizer.unk_token}): nothing to measure"
            )
    if t == c and not allow_same:
        raise UnusablePair(
            f"pair {pair.id!r}: the treatment and control read the same to the model ({len(t)} identical "
            "tokens): nothing to measure"
        )
    if len(t) != len(c) and align != "end":
        raise UnusablePair(
            f"pair {pair.id!r} has unequal token lengths (treatment {len(t)}, control {len(c)}): "
            f"{pair.treatment!r} / {pair.control!r}; edit it, or pass --align end (aligned from the last "
            "token) or --align skip (drop such pairs)"
        )
    prompt_len, shift = len(c), len(t) - len(c)
    if need_target:
        if not pair.target:
            raise PairsError(f"pair {pair.id!r} has no 'target' (needed by the target-logprob metric)")
        spans = [] if allow_special else [(0, len(pair.target))]
        target = literal_ids(tokenizer, pair.target, spans)[0]
        t, c = t + target, c + target
    return TokenizedPair(
        pair,
        index,
        t,
        c,
        prompt_len,
        tokenizer.convert_ids_to_tokens(t),
        tokenizer.convert_ids_to_tokens(c),
        shift=shift,
        aligned=min(len(t), len(c)),
        suffix_len=_common_suffix(t, c),
    )


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[Pair],
    chat_template: str = "auto",
    align: str = "strict",
    need_target: bool = False,
    allow_same: bool = False,
    indices: list[int] | None = None,
    allow_special: bool = False,
) -> tuple[list[TokenizedPair], list[str]]:
    """Tokenized pairs and, with align='skip', the messages about the pairs dropped for unequal length.
    A pair's index is its place in `pairs`, or in its source as `indices` gives it (a resumed run's)."""
    if align not in ALIGNMENTS:
        raise PairsError(f"unknown alignment '{align}' (use {', '.join(ALIGNMENTS)})")
    out, skipped = [], []
    for i, p in zip(indices or range(len(pairs)), pairs, strict=True):
        try:
            out.append(
                tokenize_pair(tokenizer, p, i, chat_template, need_target, align, allow_same, allow_special)
            )
        except UnusablePair as e:
            if align == "strict":
                raise
            skipped.append(str(e).split(";")[0])
    if not out:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise PairsError(f"no usable pair: {skipped[0]}{more}")
    return out, skipped
