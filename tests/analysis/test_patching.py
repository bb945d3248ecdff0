"""The batched, layer-skipping engine equals a plain one-forward-per-site hooks reference."""

import pytest
import torch

from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import PairPatcher
from harmmed_tui.analysis.sites import ALL_POSITIONS, UNIT_MODULES, Site, site_grid

PAIR = Pair(
    "How do I kill a person quickly?", "How do I kill a process quickly?", id="p", target=" Sure, here is"
)


def reference_ie(lm, tp, metric, site: Site) -> float:
    """One full forward per site: hook the site in the control run and overwrite it with the treatment value
    (a neuron's unit, or a head's slice, of its module's input; the output of the others)."""
    a = lm.anatomy
    mod = a.module(site.layer, site.module)
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    on_input = site.module in UNIT_MODULES
    stored = {}

    def grab(m, args, out=None):
        stored["v"] = (args[0] if on_input else first(out)).clone()

    def put(m, args, out=None):
        t = args[0] if on_input else first(out)
        pos = slice(None) if site.position == ALL_POSITIONS else site.position
        if on_input:
            units = a.units(site.module, site.neuron, site.width)
            units = slice(units.start, units.stop)
            t[:, pos, units] = stored["v"][:, pos, units]
        else:
            t[:, pos] = stored["v"][:, pos]

    def run(ids, hook):
        h = mod.register_forward_pre_hook(hook) if on_input else mod.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return lm.model(torch.tensor([ids]), use_cache=False).logits
        finally:
            h.remove()

    run(tp.treatment_ids, grab)
    with torch.no_grad():
        clean = lm.model(torch.tensor([tp.control_ids]), use_cache=False).logits
    patched = run(tp.control_ids, put)
    return (metric(patched[:, metric.positions]) - metric(clean[:, metric.positions])).item()


def engine_ies(lm, tp, metric, sites, batch_tokens=60):
    patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites})
    out = {}
    for chunk, ie in patcher.effects(sites, batch_tokens):
        out.update(zip(chunk, ie.tolist(), strict=True))
    return patcher, out


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gemma2", "gpt_neox", "phi3"])
@pytest.mark.parametrize("metric_spec", ["logit-diff:#11,#12", "target-logprob"])
def test_engine_equals_per_site_reference(tiny_dir, family, metric_spec):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    metric = parse_metric(metric_spec, lm.tokenizer)
    tp = tokenize_pair(lm.tokenizer, PAIR, 0, need_target=metric_spec == "target-logprob")
    bound = metric.bind(tp)
    n = len(tp.control_ids)
    sites = site_grid([0, 1, 2], ["resid", "attn", "mlp"], [0, 3, n - 1, ALL_POSITIONS], lm.anatomy.d_mlp)
    sites += site_grid([1, 2], ["neuron"], [5, ALL_POSITIONS], lm.anatomy.d_mlp)[::5]
    sites += site_grid([2], ["neuron"], [n - 1], lm.anatomy.d_mlp, block=8)
    patcher, got = engine_ies(lm, tp, bound, sites)
    assert abs(patcher.te.item()) > 1e-3
    for site in sites:
        assert got[site] == pytest.approx(reference_ie(lm, tp, bound, site), abs=1e-4), site


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_invariants(tiny_dir, family):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    bound = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tokenize_pair(lm.tokenizer, PAIR, 0))
    tp = tokenize_pair(lm.tokenizer, PAIR, 0)
    n, last = len(tp.control_ids), lm.anatomy.n_layers - 1
    sites = site_grid(range(last + 1), ["resid", "attn", "mlp", "neuron"], [n - 1, ALL_POSITIONS], 48)
    identity = tokenize_pair(lm.tokenizer, Pair(PAIR.control, PAIR.control), 0, allow_same=True)
    _, same = engine_ies(lm, identity, bound, sites, batch_tokens=1000)
    assert max(abs(v) for v in same.values()) < 1e-5
    patcher, got = engine_ies(lm, tp, bound, [Site(last, "resid", n - 1)])
    assert got[Site(last, "resid", n - 1)] == pytest.approx(patcher.te.item(), abs=1e-5)
