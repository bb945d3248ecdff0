"""One mediation run: RunSpec -> model, pairs, metric and sites -> streamed effect rows."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch

from harmmed_tui.analysis.attribution import Attribution, direct_effects
from harmmed_tui.analysis.behaviour import Behaviour, decode_answer, learned_refusal_tokens, pair_behaviour
from harmmed_tui.analysis.direction import Directions, mean_difference
from harmmed_tui.analysis.errors import NoRefusalsError, PairsError
from harmmed_tui.analysis.families import config_d_mlp
from harmmed_tui.analysis.jailbreaks import DESIGNS, load_jailbreak
from harmmed_tui.analysis.judge import PhraseJudge
from harmmed_tui.analysis.metrics import AUTO, Metric, Refusal, parse_metric
from harmmed_tui.analysis.model_judge import ModelJudge, check_template, make_judge
from harmmed_tui.analysis.models import LoadedModel, load_model, load_tokenizer_and_config
from harmmed_tui.analysis.noise import NoisedPatcher, corrupted_positions
from harmmed_tui.analysis.pairs import BUILTIN, Pair, TokenizedPair, load_pairs, tokenize_pairs
from harmmed_tui.analysis.patching import ENGINES, DirectEffects, PairPatcher, auto_batch_tokens
from harmmed_tui.analysis.prompt_sets import build_pairs, check_pairing, load_prompt_set
from harmmed_tui.analysis.sites import (
    Site,
    SiteError,
    parse_layers,
    parse_modules,
    parse_positions,
    position_label,
    site_grid,
)
from harmmed_tui.analysis.spec import Effect, RunSpec
from harmmed_tui.analysis.stats import spearman

Progress = Callable[[int, int], None]  # (sites done, sites total)
Cancelled = Callable[[], bool]


class Stages:
    """Hears what a run is doing: each stage as it starts (`total` where its work is countable) and its
    progress. This one hears nothing; db.jobs.Job tells every process that opens the database."""

    def stage(self, text: str, total: int | None = None) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass


QUIET = Stages()
SiteKey = tuple[int, int, str, int, int, str]  # pair, layer, module, position, neuron, method
GENERATION = "generation"  # the method of a SiteKey whose patched answer was generated and judged


@dataclass
class PairResult:
    """One pair's totals, and the effect rows computed for it in one batch (tidy rows)."""

    pair: TokenizedPair
    m_treatment: float
    m_control: float
    te: float
    rows: list[dict] = field(default_factory=list)
    spearman: float | None = None  # atp: rank agreement with exact on the verified top sites
    generations: list[dict] = field(default_factory=list)  # --verify-generation: judged patched answers


@dataclass
class Plan:
    """What a run will do, checked against the model's tokenizer and shape: no weights needed."""

    spec: RunSpec
    metric: Metric
    pairs: list[TokenizedPair]
    skipped: list[str]  # messages about pairs dropped by --align skip
    sites: dict[int, list[Site]]  # pair index -> sites
    method: str
    behaviour: dict[int, Behaviour] = field(default_factory=dict)  # pair index -> judged answers
    directions: Directions | None = None  # what `direction` sites patch along: the run's own pairs' direction

    @property
    def n_sites(self) -> int:
        return sum(self.pair_sites(i) for i in self.sites)

    def verified(self, pair: int) -> int:
        """How many of a pair's top atp sites are checked with exact patching."""
        return min(self.spec.verify_top, len(self.sites[pair])) if self.method == "atp" else 0

    def pair_sites(self, pair: int) -> int:
        return len(self.sites[pair]) + self.verified(pair)


@dataclass(frozen=True)
class Stored:
    """A resumed run's pairs as the store holds them: a resume computes from these, never from the pairs'
    files again (an edited file cannot change a stored run), and checks they tokenize as they did."""

    pairs: dict[int, Pair]  # pair index -> the pair (wrapped, if a jailbreak wrapped it)
    tokens: dict[int, tuple[list[str], list[str]]]  # pair index -> (treatment, control) tokens as stored
    behaviour: dict[int, Behaviour]  # pair index -> its judged answers, where they were recorded
    refusal_token_ids: list[int] | None = None  # the set `--refusal-tokens auto` learned
    directions: Directions | None = None  # the direction its `direction` sites patched along


@dataclass
class Prepared(Plan):
    lm: LoadedModel = field(kw_only=True)
    judge: PhraseJudge | ModelJudge | None = field(kw_only=True)  # None when no answer is judged


def parse_method(method: str) -> tuple[str, int]:
    if method == "exact":
        return method, 1
    if method == "atp":
        return method, 1
    if m := re.fullmatch(r"block:(\d+)", method):
        if int(m[1]) < 1:
            raise SiteError("block size must be at least 1")
        return "block", int(m[1])
    raise SiteError(f"unknown method '{method}' (use exact, atp or block:N)")


def check_choices(spec: RunSpec) -> tuple[str, int]:
    """The checks that need no model, so that a typo does not wait for one to load: (method, block)."""
    method, block = parse_method(spec.method)
    if spec.engine not in ENGINES:
        raise SiteError(f"unknown engine '{spec.engine}' (use {' or '.join(ENGINES)})")
    counts = (
        ("max-pairs", spec.max_pairs, 1),
        ("verify-top", spec.verify_top, 0),
        ("verify-generation", spec.verify_generation, 0),
    )
    for name, value, minimum in (*counts, ("batch-tokens", spec.batch_tokens, 0)):
        if value is not None and value < minimum:
            raise SiteError(f"--{name} must be at least {minimum}, got {value}")
    if spec.verify_top and method != "atp":
        raise SiteError("--verify-top checks atp estimates: use it with --method atp")
    if spec.answer_tokens < 0:
        raise SiteError(f"--answer-tokens must be at least 0, got {spec.answer_tokens}")
    if spec.verify_generation:
        if not spec.answer_tokens:
            raise SiteError("--verify-generation judges generated answers: keep --answer-tokens above 0")
        if spec.corrupt is not None or spec.metric == "target-logprob":
            raise SiteError(
                "--verify-generation patches the control prompt and judges its answer: it needs a control "
                "prompt (not --corrupt) and a metric without a target (refusal or logit-diff)"
            )
    if spec.corrupt is not None:
        if method == "atp":
            raise SiteError("--corrupt runs patch exactly: use --method exact or block:N")
        if spec.jailbreak or spec.control is not None:
            raise SiteError("--corrupt makes the control from the treatment: drop --control and --jailbreak")
        if not spec.noise_scale > 0 or spec.noise_samples < 1:
            raise SiteError("--noise-scale must be more than 0 and --noise-samples at least 1")
        if "direction" in spec.modules:
            raise SiteError(
                "direction sites patch along the difference of the treatment and control prompts' "
                "activations: --corrupt runs have no control prompt; drop direction or --corrupt"
            )
    _check_sources(spec)
    parse_modules(",".join(spec.modules))
    check_effects(spec)
    return method, block


def check_effects(spec: RunSpec) -> None:
    """IE always; DE beside it where asked (the reverse patch of every site: twice the cost)."""
    if not set(spec.effects) <= set(Effect) or "ie" not in spec.effects:
        raise SiteError(f"--effects {','.join(spec.effects)}: give ie, or ie,de (IE is always computed)")
    if "de" in spec.effects and spec.corrupt is not None:
        raise SiteError(
            "--effects de holds a site of the clean run at its noised value, which --corrupt runs do not "
            "compute yet: drop de, or use a control prompt"
        )


def _check_sources(spec: RunSpec) -> None:
    """One source of pairs, and no flag that the chosen source would silently ignore."""
    sets = spec.harmful is not None or spec.harmless is not None
    typed = spec.treatment is not None or spec.control is not None
    given = [
        name
        for name, on in (
            ("--pairs", spec.pairs != BUILTIN),
            ("--harmful/--harmless", sets),
            ("--treatment/--control", typed),
        )
        if on
    ]
    if len(given) > 1:
        raise SiteError(f"give one source of pairs, not {' and '.join(given)}")
    check_pairing(spec.pairing)
    if spec.pairing != "index" and not sets:
        raise SiteError(
            f"--pairing {spec.pairing} pairs two prompt sets: use it with --harmful and --harmless"
        )
    if spec.refusal_tokens is not None and not spec.refusal_tokens.strip(" ,"):
        raise SiteError(
            "--refusal-tokens is empty: give refusal openings (I cannot,Sorry) or auto, or leave it out"
        )
    if spec.judge_template != "refusal":
        if not spec.judge:
            raise SiteError(
                f"--judge-template {spec.judge_template} is the --judge model's prompt: give --judge too"
            )
        check_template(spec.judge_template)


def spec_pairs(spec: RunSpec) -> list[Pair]:
    """The run's pairs: typed, from a pairs source or from two prompt sets, then jailbreak-wrapped if asked."""
    pairs = _source_pairs(spec)
    if not spec.jailbreak:
        return pairs
    jailbreak = load_jailbreak(spec.jailbreak)
    if spec.jailbreak_design == "plain-vs-wrapped":  # which sites carry the jailbreak's effect
        return [replace(p, control=jailbreak.wrap(p.treatment), id=f"{p.id}+{jailbreak.name}") for p in pairs]
    if spec.jailbreak_design == "wrapped-pair":  # harmful vs harmless, both inside the attack
        return [
            replace(p, treatment=jailbreak.wrap(p.treatment), control=jailbreak.wrap(p.control))
            for p in pairs
        ]
    raise SiteError(f"unknown jailbreak design '{spec.jailbreak_design}' (use {' or '.join(DESIGNS)})")


def _source_pairs(spec: RunSpec) -> list[Pair]:
    """Pairs as typed, from two prompt sets, or from a pairs source; a noise contrast needs only treatments
    (its control is the treatment, noised)."""
    noise = spec.corrupt is not None
    if spec.treatment is not None or spec.control is not None:
        if not spec.treatment or not (spec.control or noise):
            raise SiteError("give both --treatment and --control" + (" (or --corrupt)" if not noise else ""))
        return [Pair(spec.treatment, spec.treatment if noise else spec.control, id="inline")]
    if spec.harmful is not None or spec.harmless is not None:
        if noise and spec.harmful and not spec.harmless:
            prompts = load_prompt_set(spec.harmful)[: spec.max_pairs or None]
            return [Pair(p.text, p.text, id=p.id, category=p.category, target=p.target) for p in prompts]
        if not spec.harmful or not spec.harmless:
            raise SiteError("give both --harmful and --harmless prompt sets")
        return build_pairs(spec.harmful, spec.harmless, spec.pairing, spec.max_pairs)
    pairs = load_pairs(spec.pairs)
    pairs = pairs[: spec.max_pairs] if spec.max_pairs else pairs
    return [replace(p, control=p.treatment) for p in pairs] if noise else pairs


def plan(
    spec: RunSpec, tokenizer, n_layers: int, d_mlp: int, n_heads: int, stored: Stored | None = None
) -> Plan:
    """Check every choice of the spec and list each pair's sites (a resumed run's: its stored pairs').
    Neurons take their own positions; heads theirs, or those of resid/attn/mlp."""
    method, block = check_choices(spec)
    modules = parse_modules(",".join(spec.modules))
    pairs = list(stored.pairs.values()) if stored else spec_pairs(spec)
    metric = parse_metric(spec.metric, tokenizer, spec.refusal_tokens)
    tokenized, skipped = tokenize_pairs(
        tokenizer,
        pairs,
        spec.chat_template,
        spec.align,
        need_target=spec.metric == "target-logprob",
        allow_same=spec.corrupt is not None,
        indices=list(stored.pairs) if stored else None,
        allow_special=spec.allow_special_tokens,
    )
    if stored:
        check_stored_tokens(tokenized, stored)
    if spec.corrupt is not None:
        tokenized = [
            replace(
                tp,
                corrupt=corrupted_positions(
                    tokenizer, tp.pair.treatment, spec.chat_template, spec.corrupt, spec.allow_special_tokens
                ),
            )
            for tp in tokenized
        ]
    layers = parse_layers(spec.layers, n_layers)
    sites = {}
    for tp in tokenized:
        # both position choices are checked, used or not: a typo is never silently ignored
        aligned = min(tp.prompt_len, tp.treatment_prompt_len) if spec.align == "end" else None
        positions = parse_positions(spec.positions, tp.prompt_len, aligned, tp.suffix_len)
        neuron_positions = parse_positions(spec.neuron_positions, tp.prompt_len, aligned, tp.suffix_len)
        head_positions = (
            parse_positions(spec.head_positions, tp.prompt_len, aligned, tp.suffix_len)
            if spec.head_positions
            else positions
        )
        grid = []
        for module in modules:
            if module == "neuron":
                grid += site_grid(layers, [module], neuron_positions, d_mlp, block)
            else:
                where = head_positions if module == "head" else positions
                grid += site_grid(layers, [module], where, d_mlp, n_heads=n_heads)
        sites[tp.index] = grid
    return Plan(spec, metric, tokenized, skipped, sites, method)


def check_stored_tokens(tokenized: list[TokenizedPair], stored: Stored, what: str = "the run") -> None:
    """A resumed pair must read to the model as it did when its rows were computed (or `what` stored it)."""
    for tp in tokenized:
        if (tp.treatment_tokens, tp.control_tokens) != tuple(stored.tokens[tp.index]):
            raise PairsError(
                f"pair {tp.index} ({tp.pair.id!r}) tokenizes differently than when {what} started (the "
                "tokenizer or its chat template changed): its rows would mix two inputs; start a new one"
            )
    if missing := sorted(set(stored.pairs) - {tp.index for tp in tokenized}):
        raise PairsError(f"stored pair {missing[0]} is no longer usable with this tokenizer: start a new one")


def preview(spec: RunSpec) -> Plan:
    """The plan from the model's tokenizer and config alone (for checking a setup as it is typed)."""
    tokenizer, config = load_tokenizer_and_config(spec.model, spec.revision, spec.trust_remote_code)
    return plan(spec, tokenizer, config.num_hidden_layers, config_d_mlp(config), config.num_attention_heads)


def spec_model(spec: RunSpec) -> LoadedModel:
    return load_model(
        spec.model,
        device=spec.device,
        dtype=spec.dtype,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        device_map=spec.device_map,
    )


def prepare(
    spec: RunSpec, lm: LoadedModel | None = None, stored: Stored | None = None, stages: Stages = QUIET
) -> Prepared:
    """Load the model (unless given), check every choice, and judge each pair's behaviour before any
    patching starts (a resumed run keeps the answers and verdicts it stored)."""
    check_choices(spec)
    if lm is None:
        stages.stage("loading the model")
        lm = spec_model(spec)
    a = lm.anatomy
    checked = plan(spec, lm.tokenizer, a.n_layers, a.d_mlp, a.n_heads, stored)
    behaviour, judge, judged = {}, None, stored.behaviour if stored else {}
    if spec.answer_tokens and spec.corrupt is None:  # (a noise contrast's control is no prompt to answer)
        # a classifier judge loads only when answers are judged
        if spec.verify_generation or any(tp.index not in judged for tp in checked.pairs):
            stages.stage("loading the judge")
            judge = spec_judge(spec, lm)
        stages.stage("judging answers", len(checked.pairs))
        for i, tp in enumerate(checked.pairs):
            behaviour[tp.index] = judged.get(tp.index) or pair_behaviour(lm, tp, judge, spec.answer_tokens)
            stages.progress(i + 1, len(checked.pairs))
    checked = with_behaviour(checked, behaviour, stored)
    if "direction" in spec.modules:  # from the pairs the run patches (a resume: the one it patched along)
        directions = stored.directions if stored else None
        if directions is None:
            stages.stage("the refusal direction: pairs", len(checked.pairs))
            directions = mean_difference(lm, checked.pairs, stages.progress)
        checked = replace(checked, directions=directions)
    return Prepared(**vars(checked), lm=lm, judge=judge)


def spec_judge(spec: RunSpec, lm: LoadedModel) -> PhraseJudge | ModelJudge:
    """The run's refusal judge: its phrases, or a classifier LM on the run's device."""
    return make_judge(spec.refusal_phrases, spec.judge, spec.judge_template, str(lm.device), spec.dtype)


def with_behaviour(checked: Plan, behaviour: dict[int, Behaviour], stored: Stored | None = None) -> Plan:
    """The plan with its pairs' behaviour recorded; with --require-flip, without the pairs that do not flip
    (reported like the pairs --align skip drops). A resumed run keeps the refusal tokens it learned."""
    checked = replace(checked, behaviour=behaviour)
    spec = checked.spec
    if spec.metric == "refusal" and spec.refusal_tokens == AUTO:
        if stored and stored.refusal_token_ids:
            checked = replace(checked, metric=Refusal(stored.refusal_token_ids))
        elif not behaviour:
            raise SiteError(
                "--refusal-tokens auto learns from each pair's answers: keep --answer-tokens above 0"
            )
        elif not (learned := learned_refusal_tokens(behaviour)):
            raise NoRefusalsError(
                "--refusal-tokens auto: no first token of a refused treatment answer is absent from the "
                "answered controls' (does the model refuse any treatment? see harmmed-tui probe)"
            )
        else:
            checked = replace(checked, metric=Refusal(learned))
    if not spec.require_flip:
        return checked
    if not behaviour:
        raise SiteError("--require-flip judges each pair's answers: keep --answer-tokens above 0")
    keep = [tp for tp in checked.pairs if behaviour[tp.index].flips]
    if not keep:
        raise NoRefusalsError("no pair flips (treatment refused, control answered): nothing to explain")
    dropped = [
        f"pair {tp.pair.id!r}: {behaviour[tp.index].label} (--require-flip)"
        for tp in checked.pairs
        if not behaviour[tp.index].flips
    ]
    sites = {tp.index: checked.sites[tp.index] for tp in keep}
    return replace(checked, pairs=keep, sites=sites, skipped=checked.skipped + dropped)


def model_provenance(lm: LoadedModel, spec: RunSpec) -> dict:
    """What a run records about the model it ran on: the loaded model's facts and the exact chat template."""
    template = getattr(lm.tokenizer, "chat_template", None) if spec.chat_template != "none" else None
    return {**lm.provenance(), "chat_template": template, "chat_template_mode": spec.chat_template}


class InProcess:
    """The default executor: the run's pairs are computed here, one after another, on one loaded model.

    An executor prepares a run (loads what it needs and checks the plan: (plan, model provenance)), then
    yields its PairResults; analysis.ray_cluster.RayExecutor is the other one."""

    def __init__(self, lm: LoadedModel | None = None):
        self.lm = lm

    def prepare(
        self, spec: RunSpec, stored: Stored | None = None, stages: Stages = QUIET
    ) -> tuple[Plan, dict]:
        self.prep = prepare(spec, self.lm, stored, stages)
        return self.prep, model_provenance(self.prep.lm, spec)

    def run(self, plan: Plan, progress=None, cancelled=None, done=frozenset()) -> Iterator[PairResult]:
        return run(self.prep, progress, cancelled, done)

    def close(self) -> None:
        pass


def site_key(pair: int, site: Site, method: str) -> SiteKey:
    return (pair, site.layer, site.module, site.position, site.neuron, method)


def _row(tp: TokenizedPair, site: Site, ie: float, de: float | None, method: str) -> dict:
    label = position_label(site.position)
    token = label if isinstance(label, str) else tp.treatment_tokens[site.position + tp.shift]
    return dict(
        pair=tp.index,
        layer=site.layer,
        module=site.module,
        position=site.position,
        neuron=site.neuron,
        width=site.width,
        method=method,
        token=token,
        ie=ie,
        de=de,
    )


def remaining(plan: Plan, done: set[SiteKey] | frozenset) -> tuple[dict[int, list[Site]], int]:
    """Each pair's sites still to compute, and how many of the plan's sites are done already (resume)."""
    todo_by_pair, finished = {}, 0
    for tp in plan.pairs:
        todo = pair_todo(plan, tp.index, done)
        todo_by_pair[tp.index] = todo
        finished += plan.pair_sites(tp.index) - (len(todo) + plan.verified(tp.index) if todo else 0)
    return todo_by_pair, finished


def run(
    prep: Prepared,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
    done: set[SiteKey] | frozenset = frozenset(),
) -> Iterator[PairResult]:
    """Yield each pair's totals and then its effect rows in batches; sites in `done` are skipped (resume).

    Cancellation is checked between batches; whatever was yielded before it is complete and consistent."""
    todo_by_pair, finished = remaining(prep, done)
    # the sites known without a forward pass count as done from the start, so that a stage's ETA (and the
    # cost said from its first timed work) times the computed sites only; each pair yields its known first
    known = {
        tp.index: len(known_sites(tp, todo)[0]) if prep.method != "atp" else 0
        for tp in prep.pairs
        if (todo := todo_by_pair[tp.index])
    }
    finished += sum(known.values())
    if progress:
        progress(finished, prep.n_sites)
    for tp in prep.pairs:
        if not todo_by_pair[tp.index]:
            continue
        if cancelled and cancelled():
            return
        counted = known[tp.index]  # its first rows are its known sites (_with_known), counted above
        for result in run_pair(prep, tp, todo_by_pair[tp.index]):
            yield result
            if result.rows:
                new, counted = len(result.rows) - counted, 0
                finished += new
                if progress and new:
                    progress(finished, prep.n_sites)
            if cancelled and cancelled():
                return


def run_pair(prep: Prepared, tp: TokenizedPair, todo: list[Site]) -> Iterator[PairResult]:
    """One pair: its totals, its effect rows in batches, (atp) the rank agreement with exact, and
    (--verify-generation) the judged answers with its top sites patched."""
    torch.manual_seed(prep.spec.seed)
    random.seed(prep.spec.seed)
    batch_tokens = prep.spec.batch_tokens or auto_batch_tokens(prep.lm)
    source, batches = _pair_batches(prep, tp, todo, batch_tokens)
    totals = (source.m_treatment.item(), source.m_control.item(), source.te.item())
    yield PairResult(tp, *totals)
    estimates, checked, own = {}, {}, {}
    for method, chunk, ie, de in batches:
        values = ie.tolist()
        directs = [None] * len(chunk) if de is None else de.tolist()
        if prep.method == "atp":
            (estimates if method == "atp" else checked).update(zip(chunk, values, strict=True))
        if method == prep.method:
            own.update(zip(chunk, values, strict=True))
        rows = [_row(tp, *row, method) for row in zip(chunk, values, directs, strict=True)]
        yield PairResult(tp, *totals, rows)
    if checked:
        rho = spearman([estimates[s] for s in checked], list(checked.values()))
        yield PairResult(tp, *totals, spearman=rho)
    if prep.spec.verify_generation and (generations := _verify_generation(prep, tp, own)):
        yield PairResult(tp, *totals, generations=generations)


def _verify_generation(prep: Prepared, tp: TokenizedPair, ie: dict[Site, float]) -> list[dict]:
    """Patch each of the pair's top K sites by |IE| into the control prompt (one batch row each), generate
    greedily and judge: does the answer's verdict differ from the unpatched control's? The residual stream
    at every position at once is left out: it is the whole treatment prompt, a flip by construction."""
    spec = prep.spec
    candidates = [s for s in ie if not (s.module == "resid" and s.position < 0)]
    top = sorted(candidates, key=lambda s: -abs(ie[s]))[: spec.verify_generation]
    if not top:
        return []
    keys = {(s.layer, s.module) for s in top}
    units = prep.directions.units if prep.directions else None
    patcher = PairPatcher(prep.lm, tp, prep.metric.bind(tp), keys, "hooks", directions=units)
    control = prep.behaviour[tp.index].refused_control
    rows = []
    for start in range(0, len(top), GENERATIONS_PER_BATCH):
        chunk = top[start : start + GENERATIONS_PER_BATCH]
        for site, ids in zip(chunk, patcher.patched_answers(chunk, spec.answer_tokens), strict=True):
            answer = decode_answer(prep.lm, ids)
            refused = prep.judge.refuses(answer, tp.pair.control)
            key = site_key(tp.index, site, prep.method)
            rows.append(
                dict(zip(("pair", "layer", "module", "position", "neuron", "method"), key, strict=True))
                | dict(ie=ie[site], answer=answer, refused=refused, flips=refused != control)
            )
    return rows


GENERATIONS_PER_BATCH = 32


def pair_todo(prep: Plan, pair: int, done: set[SiteKey] | frozenset) -> list[Site]:
    sites = prep.sites[pair]
    if prep.spec.verify_generation and not any(k[0] == pair and k[5] == GENERATION for k in done):
        # its top sites follow from all of its IEs, which a resumed pair's process does not have: redo it
        return sites
    if prep.method != "atp":
        return [s for s in sites if site_key(pair, s, prep.method) not in done]
    # An atp pair is recomputed whole unless complete: it is cheap, and its verified set follows from it.
    complete = all(site_key(pair, s, "atp") in done for s in sites) and sum(
        site_key(pair, s, "exact") in done for s in sites
    ) >= prep.verified(pair)
    return [] if complete else sites


ATP_ROWS_PER_BATCH = 8192


def _pair_batches(prep: Prepared, tp: TokenizedPair, sites: list[Site], batch_tokens: int):
    """The object holding the pair's metric totals, and its (method, sites, IE, DE or None) batches. For
    atp: every site's estimate, then exact patching of the `verify_top` sites of largest |estimate|."""
    bound = prep.metric.bind(tp)
    spec = prep.spec
    if spec.corrupt is not None:
        keys = {(s.layer, s.module) for s in sites}
        args = (spec.engine, spec.noise_samples, spec.noise_scale, spec.seed)
        patcher = NoisedPatcher(prep.lm, tp, bound, keys, *args)
        known, computed = known_sites(tp, sites)
        return patcher, _with_known(
            prep.method,
            known,
            patcher,
            None,
            ((c, ie, None) for c, ie in patcher.effects(computed, batch_tokens)),
        )
    if prep.method != "atp":
        return _exact_batches(prep, tp, bound, sites, batch_tokens, prep.method)
    units = prep.directions.units if prep.directions else None
    attribution = Attribution(prep.lm, tp, bound, sites, units)

    def batches():
        estimates = attribution.effects(sites)
        direct = direct_effects(prep.lm, tp, bound, sites, units) if "de" in spec.effects else None
        for i in range(0, len(sites), ATP_ROWS_PER_BATCH):
            part = slice(i, i + ATP_ROWS_PER_BATCH)
            yield "atp", sites[part], estimates[part], None if direct is None else direct[part]
        if k := prep.verified(tp.index):
            verify = [sites[i] for i in estimates.abs().topk(k).indices.tolist()]
            yield from _exact_batches(prep, tp, bound, verify, batch_tokens, "exact")[1]

    return attribution, batches()


def _exact_batches(
    prep: Prepared, tp: TokenizedPair, bound, sites: list[Site], batch_tokens: int, method: str
):
    """The pair's patcher and its exact (method, sites, IE, DE or None) batches; DE where the run asks."""
    keys = {(s.layer, s.module) for s in sites}
    engine, units = prep.spec.engine, prep.directions.units if prep.directions else None
    patcher = PairPatcher(prep.lm, tp, bound, keys, engine, directions=units)
    direct = DirectEffects(prep.lm, tp, bound, keys, engine, units) if "de" in prep.spec.effects else None
    known, computed = known_sites(tp, sites)
    return patcher, _with_known(
        method,
        known,
        patcher,
        direct,
        (
            (chunk, ie, None if direct is None else direct.of(chunk, batch_tokens))
            for chunk, ie in patcher.effects(computed, batch_tokens)
        ),
    )


def known_sites(tp: TokenizedPair, sites: list[Site]) -> tuple[list[Site], list[Site]]:
    """The sites whose effects are known without a forward pass (at a position of the shared prefix: IE exactly
    0, DE exactly TE, the patch changes nothing), and the rest."""
    prefix = tp.unchanged
    known = [s for s in sites if 0 <= s.position < prefix]
    return known, [s for s in sites if not 0 <= s.position < prefix] if known else sites


def _with_known(method: str, known: list[Site], patcher, direct, computed):
    """The (method, sites, IE, DE or None) batches: the known sites' exact values first, then the computed."""
    if known:
        te = None if direct is None else torch.full((len(known),), patcher.te.item())
        yield method, known, torch.zeros(len(known)), te
    for chunk, ie, de in computed:
        yield method, chunk, ie, de


def timed(iterator: Iterator[PairResult]) -> Iterator[tuple[PairResult, float]]:
    """Each item with the compute seconds spent producing it (excludes time the consumer spends)."""
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start
