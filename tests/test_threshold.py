"""Threshold decoding (Fast-dLLM's parallel rule, `SamplerConfig.threshold`), on tiny float64 models.

Their confidences stay far below 1 (about 0.1 to 0.3 over 37 answers), so thresholds from 0.05 to
0.5 exercise every case, from one token per step to a whole block at once, and P = 1 is above every
confidence they reach.
"""
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.cota import CoTAConfig
from minidlm.sampler import SamplerConfig, commit_confident, generate, infill

MODELS = {sink: tiny_model(sink=sink, n_layer=3) for sink in (False, True)}
CACHES = {"none": {}, "prefix": dict(cache="prefix"), "dual": dict(cache="dual"),
          "feature": dict(cache="feature", cache_kr=3),
          "stale-first": dict(cache="feature", cache_kr=3, cache_stale_first=True)}
COTA = {"off": CoTAConfig(), "ctae": CoTAConfig(ctae=True), "cota": CoTAConfig(ctae=True, ctev=True),
        "ctar": CoTAConfig(ctev=True, ctev_mode="context", ctar=True)}
prompts_strategy = st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=8),
                            min_size=1, max_size=3)
thresholds = st.floats(0.05, 0.5)
shapes = st.sampled_from([(8, 8), (8, 4), (12, 4), (6, 2), (4, 1)])  # (gen length, block length)


def run(prompts, sink=False, on_step=None, stats=None, seed=0, **kwargs):
    return generate(MODELS[sink], prompts, MASK_ID, PAD_ID, SamplerConfig(**kwargs), seed=seed,
                    on_step=on_step, stats=stats)


@given(seed=st.integers(0, 99), P=thresholds, rows=st.integers(1, 4), width=st.integers(1, 8))
def test_the_rule_commits_the_confident_and_the_best_and_nothing_in_a_full_row(seed, P, rows, width):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, width, VOCAB, generator=g, dtype=torch.float64)
    eligible = torch.rand(rows, width, generator=g) < 0.6
    x = torch.where(eligible, MASK_ID, 1)
    x0, scores = commit_confident(x, logits, eligible, SamplerConfig(threshold=P), g, MASK_ID)
    new = (x != MASK_ID) & eligible
    best = scores.max(-1, keepdim=True).values
    assert torch.all(~new | (scores >= P) | (scores == best))          # confident, or the row's best
    assert torch.all(new.sum(1) >= eligible.any(1).long())             # >= 1 where something was open
    assert torch.equal(new | (eligible & (scores >= P)), new)          # every confident one committed
    assert torch.equal(x[new], x0[new]) and torch.all(x[~eligible] == 1)


@given(prompts=prompts_strategy, sink=st.booleans(), P=thresholds, shape=shapes,
       temperature=st.sampled_from([0.0, 1.0]))
def test_commits_are_confident_or_best_final_and_at_least_one_per_unfinished_row(prompts, sink, P, shape, temperature):
    """Uncached, so each step's confidences can be recomputed from the canvas before it: every
    commit scored >= P or was its row's best; commits stay; every row with masks left in the
    current block commits >= 1, a row whose block is full commits nothing; blocks in order."""
    prompts = [p[:min(map(len, prompts))] for p in prompts]  # same lengths: no padding to recompute
    N, bl = shape
    P_len = len(prompts[0])
    model = MODELS[sink]
    frames = [torch.cat([torch.tensor(prompts), torch.full((len(prompts), N), MASK_ID)], 1)]
    run(prompts, sink, on_step=lambda s, x, c: frames.append(x.clone()), gen_length=N, block_length=bl,
        steps=N, threshold=P, temperature=temperature)
    for before, after in zip(frames, frames[1:]):
        assert torch.equal(after[before != MASK_ID], before[before != MASK_ID])
        new = (before == MASK_ID) & (after != MASK_ID)
        block = int((before[:, P_len:] == MASK_ID).any(0).nonzero()[0]) // bl  # the first open block
        lo, hi = P_len + block * bl, P_len + (block + 1) * bl
        assert not new[:, :lo].any() and not new[:, hi:].any()
        open_rows = (before[:, lo:hi] == MASK_ID).any(1)
        assert torch.equal(new.any(1), open_rows)
        if temperature == 0:
            logits = model(before).double()
            logits[..., MASK_ID] = float("-inf")
            conf = torch.softmax(logits, -1).max(-1).values.masked_fill(before != MASK_ID, float("-inf"))
            conf[:, :lo] = conf[:, hi:] = float("-inf")
            best = conf.max(-1, keepdim=True).values
            assert torch.all(~new | (conf >= P) | (conf == best))
            assert torch.equal(after[new], logits.argmax(-1)[new])
    assert not (frames[-1] == MASK_ID).any()


@given(prompts=prompts_strategy, sink=st.booleans(), shape=shapes, cache=st.sampled_from(list(CACHES)),
       cota=st.sampled_from(list(COTA)), temperature=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 9),
       data=st.data())
def test_a_threshold_above_every_confidence_is_the_one_token_per_step_schedule(prompts, sink, shape, cache, cota,
                                                                               temperature, seed, data):
    """The feature cache's clock restarts at each block under a threshold; with K_p and K_r
    dividing the block length the two clocks agree."""
    N, bl = shape
    kw = dict(gen_length=N, block_length=bl, steps=N, cota=COTA[cota], temperature=temperature, **CACHES[cache])
    if "cache_kr" in kw:
        kw.update(cache_kp=bl, cache_kr=data.draw(st.sampled_from([k for k in range(1, bl + 1) if bl % k == 0])))
    stats = {}
    assert torch.equal(run(prompts, sink, seed=seed, stats=stats, threshold=1.0, **kw),
                       run(prompts, sink, seed=seed, **kw))
    assert stats["steps"] == N


@given(prompts=prompts_strategy, sink=st.booleans(), P=thresholds, shape=shapes, data=st.data())
def test_every_cache_refreshed_every_step_equals_uncached_under_the_threshold(prompts, sink, P, shape, data):
    """The feature cache with K_p = K_r = 1 at any threshold; prefix and dual refresh at each
    block's first step, so at a threshold below every confidence (each block in one step; CTEV's
    penalty could push a score below it, so CTAE alone there)."""
    N, bl = shape
    cache = data.draw(st.sampled_from(["prefix", "dual", "feature", "stale-first"]))
    kw = dict(gen_length=N, block_length=bl, steps=N)
    if cache in ("prefix", "dual"):
        kw.update(CACHES[cache], threshold=1e-6, cota=COTA[data.draw(st.sampled_from(["off", "ctae"]))])
    else:
        kw.update(CACHES[cache], threshold=P, cache_kp=1, cache_kr=1, cache_rho=data.draw(st.floats(0, 1)),
                  cota=COTA[data.draw(st.sampled_from(list(COTA)))])
    stats = {}
    out = run(prompts, sink, stats=stats, **kw)
    assert torch.equal(out, run(prompts, sink, **{**kw, "cache": "none"}))
    if cache in ("prefix", "dual"):
        assert stats["steps"] == N // bl


@given(prompts=prompts_strategy, row=st.integers(0, 2), sink=st.booleans(), P=thresholds, shape=shapes,
       cache=st.sampled_from(list(CACHES)))
def test_rows_are_independent_under_the_threshold(prompts, row, sink, P, shape, cache):
    """A row waits for the others at the end of each block, but its tokens never depend on them."""
    row = row % len(prompts)
    N, bl = shape
    kw = dict(gen_length=N, block_length=bl, steps=N, threshold=P, **CACHES[cache])
    assert torch.equal(run(prompts, sink, **kw)[row], run([prompts[row]], sink, **kw)[0])


@given(sink=st.booleans(), P=thresholds, cache=st.sampled_from(list(CACHES)), cota=st.sampled_from(["off", "cota"]))
def test_holes_fill_under_the_threshold_and_rows_stay_independent(sink, P, cache, cota):
    M = MASK_ID
    batch = [[1, M, M, 2, M, M, M, M, 3], [M, M, 4, 5, M, M, M, M, 6, 7, 8], [9, 10, M, M, M, M, M, M]]
    kw = dict(gen_length=6, block_length=3, steps=6, threshold=P, cota=COTA[cota], **CACHES[cache])
    out = infill(MODELS[sink], batch, MASK_ID, PAD_ID, SamplerConfig(**kw))
    assert not (out == MASK_ID).any()
    for r, canvas in enumerate(batch):
        alone = infill(MODELS[sink], [canvas], MASK_ID, PAD_ID, SamplerConfig(**kw))[0]
        assert torch.equal(out[r, -len(canvas):], alone)
        given_tokens = torch.tensor(canvas) != MASK_ID
        assert torch.equal(alone[given_tokens], torch.tensor(canvas)[given_tokens])


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=0.0), "threshold must be within"),
    (dict(threshold=1.5), "threshold must be within"),
    (dict(threshold=0.9, remasking="random"), "coin toss"),
])
def test_impossible_thresholds_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run([[1, 2]], gen_length=8, block_length=4, steps=8, **kwargs)
