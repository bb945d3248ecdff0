"""Noise contrasts (causal tracing): restoring a site's clean activation in the corrupted run, exact
against a forward-hook reference for fixed noise, and averaged over noise draws."""

from dataclasses import replace

import pytest
import torch

from harmmed_tui.analysis.errors import PairsError
from harmmed_tui.analysis.metrics import parse_metric
from harmmed_tui.analysis.models import load_model
from harmmed_tui.analysis.noise import NoisedPatcher, corrupted_positions, corruption_noise
from harmmed_tui.analysis.pairs import Pair, tokenize_pair
from harmmed_tui.analysis.sites import ALL_POSITIONS, site_grid

PROMPT = "How do I build a pipe bomb in my garage quickly?"


def reference_ie(lm, ids, noise, metric, site) -> float:
    """Clean run records the site; the noised run is patched with it by a forward hook."""
    mod = lm.anatomy.module(site.layer, site.module)
    neuron = site.module == "neuron"
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    pos = slice(None) if site.position == ALL_POSITIONS else site.position
    units = slice(site.neuron, site.neuron + site.width) if neuron else slice(None)
    stored = {}

    def run(hook=None, noised=True):
        embeds = lm.model.get_input_embeddings()(torch.tensor([ids])) + (noise if noised else 0)
        h = (
            (mod.register_forward_pre_hook(hook) if neuron else mod.register_forward_hook(hook))
            if hook
            else None
        )
        try:
            with torch.no_grad():
                logits = lm.model(inputs_embeds=embeds, use_cache=False).logits
            return metric(logits[:, metric.positions]).item()
        finally:
            if h:
                h.remove()

    def grab(m, args, out=None):
        stored["v"] = (args[0] if neuron else first(out)).clone()

    def put(m, args, out=None):
        (args[0] if neuron else first(out))[:, pos, units] = stored["v"][:, pos, units]

    run(grab, noised=False)
    return run(put) - run()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("engine", ["replay", "hooks"])
def test_noise_contrast_equals_hooks_reference(tiny_dir, family, engine):
    lm = load_model(str(tiny_dir(family)), device="cpu", dtype="float32")
    tp = tokenize_pair(lm.tokenizer, Pair(PROMPT, PROMPT), 0, "none", allow_same=True)
    corrupt = corrupted_positions(lm.tokenizer, PROMPT, "none", "pipe bomb")
    assert [lm.tokenizer.convert_ids_to_tokens(tp.treatment_ids)[i] for i in corrupt] == ["Ġpipe", "Ġbomb"]

    tp = replace(tp, corrupt=corrupt)
    metric = parse_metric("logit-diff:#11,#12", lm.tokenizer).bind(tp)
    n = len(tp.control_ids)
    sites = site_grid(
        range(3), ["resid", "attn", "mlp"], [corrupt[-1], n - 1, ALL_POSITIONS], lm.anatomy.d_mlp
    )
    sites += site_grid([1], ["neuron"], [n - 1], lm.anatomy.d_mlp)[::11]
    keys = {(s.layer, s.module) for s in sites}
    one = NoisedPatcher(lm, tp, metric, keys, engine, samples=1, scale=3.0, seed=4)
    got = {s: v for chunk, ie in one.effects(sites, 64) for s, v in zip(chunk, ie.tolist(), strict=True)}
    noise = corruption_noise(lm, n, corrupt, 3.0, 4)
    assert abs(one.te.item()) > 1e-3
    for site in sites:
        assert got[site] == pytest.approx(
            reference_ie(lm, tp.treatment_ids, noise, metric, site), abs=1e-4
        ), site
    # three draws: the mean of the three single-draw runs
    three = NoisedPatcher(lm, tp, metric, keys, engine, samples=3, scale=3.0, seed=4)
    mean = {s: v for chunk, ie in three.effects(sites, 64) for s, v in zip(chunk, ie.tolist(), strict=True)}
    singles = [
        NoisedPatcher(lm, tp, metric, keys, engine, samples=1, scale=3.0, seed=4 + k) for k in range(3)
    ]
    each = [
        {s: v for c, ie in p.effects(sites, 64) for s, v in zip(c, ie.tolist(), strict=True)} for p in singles
    ]
    for site in sites[::5]:
        assert mean[site] == pytest.approx(sum(e[site] for e in each) / 3, abs=1e-5)
    assert three.te.item() == pytest.approx(sum(p.te.item() for p in singles) / 3, abs=1e-5)


def test_corrupted_positions(tiny_dir):
    tokenizer = load_model(str(tiny_dir("gpt2")), device="cpu").tokenizer
    assert corrupted_positions(tokenizer, PROMPT, "none", "tokens:1,3-4,-1") == (1, 3, 4, 11)
    for bad, message in [
        ("grenade", "does not occur"),
        ("tokens:99", "no such tokens"),
        ("tokens:x", "bad token list"),
    ]:
        with pytest.raises(PairsError, match=message):
            corrupted_positions(tokenizer, PROMPT, "none", bad)
