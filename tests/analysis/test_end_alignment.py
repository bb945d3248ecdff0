"""End alignment: prompts of any lengths, sites aligned from the last token, exact against forward hooks."""

import pytest
import torch

from harmmed_tui.analysis.attribution import Attribution
from harmmed_tui.analysis.errors import SiteError
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.patching import PairPatcher
from harmmed_tui.analysis.sites import SUFFIX, Site, parse_positions, site_grid
from tests.analysis.hooked import hooked_logits
from tests.analysis.test_attribution import patching_slope
from tests.conftest import SMOLLM_TOKENIZER

PAIRS = {  # a longer and a shorter treatment than control, under the real SmolLM2 chat template
    "longer": Pair(
        "How do I quietly kill a person at night without anyone noticing?",
        "How do I kill a stuck process?",
        target=" Sure, here",
    ),
    "shorter": Pair(
        "Kill him how?", "How do I end a stuck background process quickly on Linux?", target=" Sure, here"
    ),
}


def control_positions(tp, site: Site) -> range:
    n = len(tp.control_ids)
    return range(n - tp.suffix_len, n) if site.position == SUFFIX else range(site.position, site.position + 1)


def reference_ie(lm, tp, metric, site: Site) -> float:
    """One plain forward per site: the treatment's activation at p + shift written into the control at p."""
    mod = lm.anatomy.module(site.layer, site.module)
    neuron = site.module == "neuron"
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    stored = {}
    positions = list(control_positions(tp, site))
    units = slice(site.neuron, site.neuron + site.width) if neuron else slice(None)

    def run(ids, hook=None):
        return hooked_logits(lm, ids, mod, hook, on_input=neuron)

    def grab(m, args, out=None):
        stored["t"] = (args[0] if neuron else first(out)).clone()

    def put(m, args, out=None):
        t = args[0] if neuron else first(out)
        t[:, positions, units] = stored["t"][:, [p + tp.shift for p in positions], units]

    run(tp.treatment_ids, grab)
    clean, patched = run(tp.control_ids), run(tp.control_ids, put)
    return (metric(patched[:, metric.positions]) - metric(clean[:, metric.positions])).item()


def sites_of(lm, tp):
    n, d_mlp = tp.prompt_len, lm.anatomy.d_mlp
    aligned = min(tp.prompt_len, tp.treatment_prompt_len)
    positions = parse_positions("last:4,suffix", n, aligned, tp.suffix_len)
    sites = site_grid(range(lm.anatomy.n_layers), ["resid", "attn", "mlp"], positions, d_mlp)
    return sites + site_grid([1, 2], ["neuron"], [n - 1, n - 3, SUFFIX], d_mlp)[::9]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("which", sorted(PAIRS))
@pytest.mark.parametrize("metric_spec", ["logit-diff:#11,#12", "target-logprob"])
@pytest.mark.parametrize("engine", ["replay", "hooks"])
def test_end_aligned_engine_equals_hooks_reference(tiny_dir, family, which, metric_spec, engine):
    lm = load_model(str(tiny_dir(family, SMOLLM_TOKENIZER)), device="cpu", dtype="float32")
    target = metric_spec == "target-logprob"
    tp = tokenize_pair(lm.tokenizer, PAIRS[which], 0, need_target=target, align="end")
    assert tp.shift != 0 and tp.suffix_len >= 5  # the template's closing tokens (and the target)
    metric = parse_metric(metric_spec, lm.tokenizer).bind(tp)
    sites = sites_of(lm, tp)
    patcher = PairPatcher(lm, tp, metric, {(s.layer, s.module) for s in sites}, engine)
    got = {}
    for chunk, ie in patcher.effects(sites, batch_tokens=90):
        got.update(zip(chunk, ie.tolist(), strict=True))
    # TE: each prompt's own metric, read at the same offsets from its end
    with torch.no_grad():
        logits = lm.model(torch.tensor([tp.treatment_ids]), use_cache=False).logits
    m_t = metric.shifted(tp.shift)(logits[:, metric.shifted(tp.shift).positions]).item()
    assert patcher.m_treatment.item() == pytest.approx(m_t, abs=1e-5)
    assert abs(patcher.te.item()) > 1e-3
    for site in sites:
        assert got[site] == pytest.approx(reference_ie(lm, tp, metric, site), abs=1e-4), site


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_end_aligned_atp_is_the_slope_of_the_patching_curve(tiny_dir, family):
    """AtP on end-aligned sites: the derivative of the patching curve at the control run, as for equal lengths."""
    lm = load_model(str(tiny_dir(family, SMOLLM_TOKENIZER)), device="cpu", dtype="float32")
    lm.model.double()
    tp = tokenize_pair(lm.tokenizer, PAIRS["longer"], 0, align="end")
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    sites = sites_of(lm, tp)
    got = Attribution(lm, tp, metric, sites).effects(sites)
    for site, value in zip(sites[::3], got.tolist()[::3], strict=True):
        assert value == pytest.approx(patching_slope(lm, tp, metric, site), rel=2e-3, abs=2e-3), site


def test_end_alignment_positions_count_from_the_end():
    assert parse_positions("last:3,suffix", 20, aligned=12, suffix_len=6) == [17, 18, 19, SUFFIX]
    assert parse_positions("-1,-12", 20, aligned=12) == [8, 19]
    assert parse_positions("all", 20, aligned=3) == [17, 18, 19]
    for bad, message in [("*", "use 'suffix'"), ("3", "count from the end"), ("-13", "out of range")]:
        with pytest.raises(SiteError, match=message):
            parse_positions(bad, 20, aligned=12, suffix_len=6)
