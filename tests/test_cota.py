"""CoTA: zero strength is the identity, CTAE is a renormalised distance gain at true positions,
CTEV averages the deep-layer lens entropy over the window, in every sampler mode."""
import math

import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.cota import CoTAConfig, ctae_log_gain, ctev_penalty, lens_entropy
from minidlm.sampler import SamplerConfig, generate

MODELS = {sink: tiny_model(sink=sink, n_layer=5, random_gains=True) for sink in (False, True)}
prompts_strategy = st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=6),
                            min_size=1, max_size=3)
CACHE_MODES = st.sampled_from([dict(cache="none"), dict(cache="prefix"), dict(cache="dual"),
                               dict(cache="feature", cache_kr=3)])


def run(prompts, sink, cota=None, **kwargs):
    cfg = SamplerConfig(**{**dict(gen_length=8, block_length=4, steps=8), **kwargs},
                        cota=cota or CoTAConfig())
    return generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg)


@given(prompts=prompts_strategy, sink=st.booleans(), mode=CACHE_MODES,
       tau=st.floats(0.5, 10), window=st.integers(0, 3))
def test_zero_strength_cota_is_plain_sampling(prompts, sink, mode, tau, window):
    off = CoTAConfig(ctae=True, ctae_gamma=1.0, ctae_tau=tau, ctev=True, ctev_lambda=0.0,
                     ctev_window=window)
    assert torch.equal(run(prompts, sink, off, **mode), run(prompts, sink, **mode))


@given(prompts=prompts_strategy, sink=st.booleans(), gamma=st.floats(0.1, 0.9),
       lam=st.floats(0.1, 2.0), cache=st.sampled_from(["prefix", "dual"]))
def test_cota_with_caches_refreshed_every_step_equals_uncached_cota(prompts, sink, gamma, lam, cache):
    cota = CoTAConfig(ctae=True, ctae_gamma=gamma, ctae_tau=2.0, ctev=True, ctev_lambda=lam)
    kw = dict(gen_length=12, block_length=4, steps=3)  # one step per block
    assert torch.equal(run(prompts, sink, cota, cache=cache, **kw), run(prompts, sink, cota, **kw))
    kw = dict(gen_length=8, block_length=4, steps=8)
    feature_every_step = dict(cache="feature", cache_kp=1, cache_kr=1)
    assert torch.equal(run(prompts, sink, cota, **feature_every_step, **kw), run(prompts, sink, cota, **kw))


def response(L, start):
    """The response mask (1, L) of a continuation whose response starts at `start`."""
    return (torch.arange(L) >= start)[None]


def test_log_gain_values():
    pos = torch.arange(10)
    g = ctae_log_gain(pos[None], pos, response(10, 4), response(10, 4), tau=2.0, gamma=0.5)[0, 0]
    assert torch.all(g[:4] == 0) and torch.all(g[:, :4] == 0)          # prompt untouched
    assert torch.allclose(torch.diagonal(g)[4:], torch.zeros(6))       # G_ii = 1
    assert math.isclose(g[4, 6].item(), math.log(0.5 + 0.5 * math.exp(-1)), rel_tol=1e-6)
    assert torch.equal(g, g.T) and torch.all(g <= 0) and torch.all(g >= math.log(0.5) - 1e-6)


@given(rows=st.lists(st.integers(0, 11), min_size=1, max_size=6, unique=True))
def test_log_gain_uses_true_positions_for_a_subset_of_queries(rows):
    pos = torch.arange(12)
    full = ctae_log_gain(pos[None], pos, response(12, 3), response(12, 3), 5.0, 0.5)
    part = ctae_log_gain(torch.tensor(rows)[None], pos, response(12, 3)[:, rows], response(12, 3), 5.0, 0.5)
    assert torch.equal(part[0, 0], full[0, 0, rows])


def test_additive_log_gain_is_a_renormalised_multiplicative_gain():
    model = MODELS[False]
    x = torch.randint(0, VOCAB - 3, (1, 9))
    gain = ctae_log_gain(torch.arange(9)[None], torch.arange(9), response(9, 2), response(9, 2), 3.0, 0.4)
    _, plain = model(x, trace=True)
    _, boosted = model(x, attn_bias=gain, trace=True)
    expected = plain.attn[0] * gain.exp()
    assert torch.allclose(boosted.attn[0], expected / expected.sum(-1, keepdim=True))


@given(window=st.integers(0, 3), lo=st.integers(0, 6), width=st.integers(1, 4))
def test_ctev_penalty_is_the_window_mean_of_deep_entropy(window, lo, width):
    model = MODELS[False]
    hidden = [torch.randn(2, 10, 16, dtype=torch.float64) for _ in range(2)]
    hi = min(10, lo + width)
    got = ctev_penalty(model, hidden, lo, hi, window)
    entropy = torch.stack([lens_entropy(model, h) for h in hidden]).mean(0)
    for i in range(lo, hi):
        js = range(max(0, i - window), min(10, i + window + 1))
        assert torch.allclose(got[:, i - lo], entropy[:, list(js)].mean(1))
    assert torch.all((entropy >= 0) & (entropy <= 1 + 1e-9))


@given(window=st.integers(1, 5), seed=st.integers(0, 99))
def test_context_ctev_averages_only_committed_neighbours(window, seed):
    model = MODELS[False]
    g = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(1, 12, 16, generator=g, dtype=torch.float64)]
    committed = torch.rand(1, 12, generator=g) < 0.5
    got = ctev_penalty(model, hidden, 0, 12, window, committed)
    entropy = lens_entropy(model, hidden[0])
    for i in range(12):
        js = [j for j in range(max(0, i - window), min(12, i + window + 1)) if committed[0, j]]
        want = entropy[0, js].mean() if js else torch.zeros((), dtype=torch.float64)
        assert torch.allclose(got[0, i], want)


def test_deep_band_is_the_last_fifth_before_the_final_layer():
    assert CoTAConfig().deep_layers(32) == list(range(25, 31))
    assert CoTAConfig().deep_layers(8) == [5, 6]
    assert CoTAConfig().deep_layers(1) == [0]


@given(prompts=prompts_strategy, mode=st.sampled_from(["self", "context"]), cache=CACHE_MODES)
def test_generate_hands_ctev_the_committed_set_in_context_mode(prompts, mode, cache):
    """As `generate` calls it: context-mode CTEV gets exactly the committed positions of the
    canvas at that step (prompt and earlier commits), self mode every position; neither counts a
    row's left padding (None when no row is padded)."""
    import minidlm.cota as cota_module
    seen = []

    def spy(model, hidden, lo, hi, window, committed):
        seen.append((committed.clone() if committed is not None else None, lo, hi))
        return torch.zeros(hidden[0].shape[0], hi - lo, dtype=hidden[0].dtype)

    frames = []
    original = cota_module.ctev_penalty
    cota_module.ctev_penalty = spy
    try:
        cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, **cache,
                            cota=CoTAConfig(ctev=True, ctev_mode=mode))
        generate(MODELS[False], prompts, MASK_ID, PAD_ID, cfg,
                 on_step=lambda s, x, c: frames.append(x.clone()))
    finally:
        cota_module.ctev_penalty = original
    assert len(seen) == 8
    P = max(map(len, prompts))
    canvases = [torch.cat([frames[0][:, :P], torch.full((len(prompts), 8), MASK_ID)], 1)] + frames[:-1]
    real = torch.tensor([[False] * (P - len(p)) + [True] * (len(p) + 8) for p in prompts])
    padded = not bool(real.all())
    for (committed, lo, hi), canvas in zip(seen, canvases):  # the canvas BEFORE the step's commit
        if mode == "self":
            assert torch.equal(committed, real) if padded else committed is None
        else:
            assert torch.equal(committed, (canvas != MASK_ID) & real)
