"""One mediation run: RunSpec -> model, pairs, metric and sites -> streamed effect rows."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from analysis.metrics import Metric, parse_metric
from analysis.models import LoadedModel, load_model
from analysis.pairs import Pair, TokenizedPair, load_pairs, tokenize_pairs
from analysis.patching import PairPatcher, auto_batch_tokens
from analysis.sites import (
    ALL_POSITIONS,
    Site,
    SiteError,
    parse_layers,
    parse_modules,
    parse_positions,
    site_grid,
)
from analysis.spec import RunSpec

Progress = Callable[[int, int], None]  # (sites done, sites total)
Cancelled = Callable[[], bool]
SiteKey = tuple[int, int, str, int, int, str]  # pair, layer, module, position, neuron, method


@dataclass
class PairResult:
    """One pair's totals, and the effect rows computed for it in one batch (tidy rows)."""

    pair: TokenizedPair
    m_treatment: float
    m_control: float
    te: float
    rows: list[dict] = field(default_factory=list)


@dataclass
class Prepared:
    spec: RunSpec
    lm: LoadedModel
    metric: Metric
    pairs: list[TokenizedPair]
    skipped: list[str]  # messages about pairs dropped by --align skip
    sites: dict[int, list[Site]]  # pair index -> sites
    method: str

    @property
    def n_sites(self) -> int:
        return sum(len(s) for s in self.sites.values())


def parse_method(method: str) -> tuple[str, int]:
    if method == "exact":
        return method, 1
    if method == "atp":  # until attribution patching exists, never store exact numbers labelled as atp
        raise SiteError("method 'atp' is not implemented yet (use exact or block:N)")
    if m := re.fullmatch(r"block:(\d+)", method):
        if int(m[1]) < 1:
            raise SiteError("block size must be at least 1")
        return "block", int(m[1])
    raise SiteError(f"unknown method '{method}' (use exact or block:N)")


def spec_pairs(spec: RunSpec) -> list[Pair]:
    if spec.treatment is not None or spec.control is not None:
        if not spec.treatment or not spec.control:
            raise SiteError("give both --treatment and --control")
        return [Pair(spec.treatment, spec.control, id="inline")]
    pairs = load_pairs(spec.pairs)
    return pairs[: spec.max_pairs] if spec.max_pairs else pairs


def prepare(spec: RunSpec, lm: LoadedModel | None = None) -> Prepared:
    """Load the model (unless given) and check every choice before any patching starts."""
    method, block = parse_method(spec.method)
    modules = parse_modules(",".join(spec.modules))
    pairs = spec_pairs(spec)
    lm = lm or load_model(
        spec.model,
        device=spec.device,
        dtype=spec.dtype,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
    )
    metric = parse_metric(spec.metric, lm.tokenizer, spec.refusal_tokens)
    tokenized, skipped = tokenize_pairs(
        lm.tokenizer, pairs, spec.chat_template, spec.align, need_target=spec.metric == "target-logprob"
    )
    a = lm.anatomy
    layers = parse_layers(spec.layers, a.n_layers)
    sites = {}
    for tp in tokenized:
        n = tp.prompt_len
        grid = []
        for module in modules:
            positions = parse_positions(spec.neuron_positions if module == "neuron" else spec.positions, n)
            grid += site_grid(layers, [module], positions, a.d_mlp, block if module == "neuron" else 1)
        sites[tp.index] = grid
    return Prepared(spec, lm, metric, tokenized, skipped, sites, method)


def site_key(pair: int, site: Site, method: str) -> SiteKey:
    return (pair, site.layer, site.module, site.position, site.neuron, method)


def _row(tp: TokenizedPair, site: Site, method: str, ie: float) -> dict:
    token = "*" if site.position == ALL_POSITIONS else tp.treatment_tokens[site.position]
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
    )


def run(
    prep: Prepared,
    progress: Progress | None = None,
    cancelled: Cancelled | None = None,
    done: set[SiteKey] | frozenset = frozenset(),
) -> Iterator[PairResult]:
    """Yield each pair's totals and then its effect rows in batches; sites in `done` are skipped (resume).

    Cancellation is checked between batches; whatever was yielded before it is complete and consistent."""
    spec, lm = prep.spec, prep.lm
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    total = prep.n_sites
    finished = sum(
        1 for tp in prep.pairs for s in prep.sites[tp.index] if site_key(tp.index, s, prep.method) in done
    )
    batch_tokens = spec.batch_tokens or auto_batch_tokens(lm)
    if progress:
        progress(finished, total)
    for tp in prep.pairs:
        if cancelled and cancelled():
            return
        todo = [s for s in prep.sites[tp.index] if site_key(tp.index, s, prep.method) not in done]
        bound = prep.metric.bind(tp)
        patcher = PairPatcher(lm, tp, bound, {(s.layer, s.module) for s in todo})
        totals = (patcher.m_treatment.item(), patcher.m_control.item(), patcher.te.item())
        yield PairResult(tp, *totals)
        for chunk, ie in patcher.effects(todo, batch_tokens):
            yield PairResult(
                tp, *totals, [_row(tp, s, prep.method, v) for s, v in zip(chunk, ie.tolist(), strict=True)]
            )
            finished += len(chunk)
            if progress:
                progress(finished, total)
            if cancelled and cancelled():
                return


def timed(iterator: Iterator[PairResult]) -> Iterator[tuple[PairResult, float]]:
    """Each item with the compute seconds spent producing it (excludes time the consumer spends)."""
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start
