"""Every cache, refreshed at every step, gives exactly the uncached tokens; otherwise it saves rows."""
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import FIRST_ROUND, MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.cota import CoTAConfig
from minidlm.sampler import SamplerConfig, generate

MODELS = {sink: tiny_model(sink=sink, n_layer=3, random_gains=True) for sink in (False, True)}
MODELS["unrotated"] = tiny_model(sink=True, n_layer=3, sink_rotation=False, random_gains=True)
MODELS["first-round"] = tiny_model(sink=True, n_layer=3, arch=FIRST_ROUND, random_gains=True)
MODELS["zero-value"] = tiny_model(sink=True, n_layer=3, sink_value="zero", random_gains=True)
MODELS["zero-value unrotated"] = tiny_model(sink=True, n_layer=3, sink_value="zero", sink_rotation=False, random_gains=True)
VARIANTS = [False, True, "unrotated", "first-round", "zero-value", "zero-value unrotated"]
prompts_strategy = st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=8),
                            min_size=1, max_size=3)


def feature_cache(model, x, prompt_len, cfg):
    """The feature cache generate would build for cfg, on a canvas x with no padding."""
    from minidlm.cota import CoTA
    from minidlm.sampler import make_cache, transfer_schedule
    is_hole = torch.arange(x.shape[1]).expand_as(x) >= prompt_len
    cota = CoTA(cfg.cota, model, None, is_hole, MASK_ID)
    steps_per_block = cfg.steps // (cfg.gen_length // cfg.block_length)
    columns = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    return make_cache(cfg, model, x, torch.arange(x.shape[1])[None], cota, columns[:, :prompt_len],
                      columns[:, prompt_len:], False,
                      per_step=transfer_schedule(cfg.block_length, steps_per_block)[0])


def run(prompts, sink, model=None, **kwargs):
    stats = {}
    out = generate(MODELS[sink] if model is None else model, prompts, MASK_ID, PAD_ID, SamplerConfig(**kwargs), stats=stats)
    return out, stats["rows_per_layer"]


@given(prompts=prompts_strategy, sink=st.sampled_from(VARIANTS), blocks=st.integers(1, 4),
       block=st.integers(1, 6), cache=st.sampled_from(["prefix", "dual"]))
def test_prefix_and_dual_with_one_step_per_block_equal_no_cache(prompts, sink, blocks, block, cache):
    kw = dict(gen_length=blocks * block, block_length=block, steps=blocks)
    assert torch.equal(run(prompts, sink, cache=cache, **kw)[0], run(prompts, sink, **kw)[0])


@given(prompts=prompts_strategy, sink=st.sampled_from(VARIANTS), blocks=st.integers(1, 3),
       block=st.integers(1, 6), data=st.data())
def test_feature_cache_refreshed_every_step_equals_no_cache(prompts, sink, blocks, block, data):
    spb = data.draw(st.integers(1, block))
    kw = dict(gen_length=blocks * block, block_length=block, steps=blocks * spb)
    every_step = data.draw(st.sampled_from([dict(cache_kp=1, cache_kr=1, cache_rho=data.draw(st.floats(0, 1))),
                                            dict(cache_kp=1, cache_kr=data.draw(st.integers(2, 9)), cache_rho=1.0)]))
    fresh_values = data.draw(st.booleans())  # dLLM-Cache's hook: every V fresh on partial steps
    assert torch.equal(run(prompts, sink, cache="feature", cache_fresh_values=fresh_values, **every_step, **kw)[0],
                       run(prompts, sink, **kw)[0])


@given(prompts=prompts_strategy, row=st.integers(0, 2), sink=st.booleans(),
       cache=st.sampled_from(["prefix", "dual", "feature"]))
def test_batch_rows_are_independent_with_every_cache(prompts, row, sink, cache):
    row = row % len(prompts)
    kw = dict(gen_length=8, block_length=4, steps=8, cache=cache, cache_kr=3)
    assert torch.equal(run(prompts, sink, **kw)[0][row], run([prompts[row]], sink, **kw)[0][0])


def test_rows_computed_show_the_saved_work():
    prompts, kw = [[1, 2, 3, 4]], dict(gen_length=16, block_length=8, steps=16)
    L, n = 4 + 16, 16
    rows = {c: run(prompts, False, cache=c, **kw)[1] for c in ["none", "prefix", "dual", "feature"]}
    assert rows["none"] == [n * L] * 3
    assert rows["dual"] == [2 * L + 14 * 8] * 3                  # 2 block starts, 14 block-only steps
    assert rows["prefix"] == [2 * L + 7 * (L - 4) + 7 * (L - 12)] * 3
    # feature, K_p 25, K_r 7, rho 0.25: steps 1, 8, 15 refresh the response; step 1 the prompt too
    assert rows["feature"] == [L + 2 * 16 + 13 * int(0.25 * 16)] * 3


@pytest.mark.parametrize("cache", ["prefix", "dual", "feature"])
def test_caches_keep_the_sampler_invariants(cache):
    frames = []
    generate(MODELS[True], [[1, 2], [3, 4, 5, 6]], MASK_ID, PAD_ID,
             SamplerConfig(gen_length=12, block_length=6, steps=6, cache=cache, cache_kr=2),
             on_step=lambda s, x, c: frames.append(x.clone()))
    for before, after in zip(frames, frames[1:]):
        assert torch.equal(after[before != MASK_ID], before[before != MASK_ID])
        assert torch.all(((before == MASK_ID) & (after != MASK_ID)).sum(1) == 2)
    assert not (frames[-1] == MASK_ID).any()


@given(prompts=prompts_strategy, sink=st.booleans())
def test_stale_first_refreshed_every_step_equals_no_cache(prompts, sink):
    kw = dict(gen_length=8, block_length=8, steps=8)
    every = dict(cache="feature", cache_stale_first=True, cache_kp=1, cache_kr=1)
    assert torch.equal(run(prompts, sink, **every, **kw)[0], run(prompts, sink, **kw)[0])


@given(prompts=prompts_strategy, sink=st.booleans(), window=st.integers(0, 6))
def test_ctar_refreshed_every_step_equals_no_cache(prompts, sink, window):
    kw = dict(gen_length=8, block_length=8, steps=8)
    every = dict(cache="feature", cache_kp=1, cache_kr=1, cota=CoTAConfig(ctar=True, ctar_window=window))
    assert torch.equal(run(prompts, sink, **every, **kw)[0], run(prompts, sink, **kw)[0])


@given(commit=st.integers(2, 21), window=st.integers(1, 5), n_layer=st.integers(2, 6))
def test_ctar_repairs_exactly_the_neighbourhood_of_a_new_commit_in_the_deep_band(commit, window, n_layer):
    """rho = 0: the cache itself refreshes nothing on partial steps, so what CTAR recomputes after
    one commit at i is visible alone: rows i-w..i+w (inside the response) in the deep band only.
    The budget is a fixed 2w + 1 rows (static shapes); near the response's ends the rows left over
    go by the cache's similarity rule."""
    model = tiny_model(n_layer=n_layer)
    x = torch.full((1, 22), MASK_ID)
    x[0, :2] = torch.tensor([1, 2])
    cota = CoTAConfig(ctar=True, ctar_window=window)
    cfg = SamplerConfig(gen_length=20, block_length=20, steps=20, cache="feature", cache_kp=99,
                        cache_kr=99, cache_rho=0.0, cota=cota)
    cache = feature_cache(model, x, 2, cfg)
    cache.logits(x, 2, 22, True)            # step 1: full refresh
    x[0, commit] = 5
    cache.logits(x, 2, 22, False)           # step 2: partial
    deep = set(cota.deep_layers(n_layer))
    want = set(range(max(2, commit - window), min(22, commit + window + 1)))
    for layer in range(n_layer):
        got = set(torch.nonzero(cache.policy.computed_at[layer][0] == 2).flatten().tolist())
        if layer in deep:
            assert want <= got and len(got) == 2 * window + 1
        else:
            assert got == set()


@pytest.mark.slow  # compiling takes most of a minute on a 2-core CPU
def test_compiled_forward_gives_the_same_tokens():
    """--compile (torch.compile of the model forward) on the CPU: identical greedy tokens. The
    dual cache runs both compiled paths: full forwards at block starts, cached ones in between;
    also under the threshold rule, and with the [SINK], whose K/V the cache writes once."""
    for sink in [False, True]:
        compiled = torch.compile(MODELS[sink], dynamic=True)
        for threshold in [None, 0.3]:
            kw = dict(gen_length=8, block_length=4, steps=4, cache="dual", threshold=threshold)
            compiled_out = run([[1, 2, 3], [4]], sink, model=compiled, **kw)[0]
            assert torch.equal(compiled_out, run([[1, 2, 3], [4]], sink, **kw)[0]), (sink, threshold)


@given(prompts=prompts_strategy, sink=st.booleans(),
       cache=st.sampled_from(["none", "prefix", "dual", "feature"]))
def test_observing_changes_no_token_and_sees_whole_attention_rows(prompts, sink, cache):
    kw = dict(gen_length=8, block_length=4, steps=8, cache=cache, cache_kr=3)
    row_sums = []
    seen = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, SamplerConfig(**kw), observe=True,
                    on_step=lambda s, x, c: row_sums.append(torch.stack([a.sum(-1) for a in c.record.attention])))
    assert torch.equal(seen, run(prompts, sink, **kw)[0])
    assert all(torch.allclose(r, torch.ones(()).double()) for r in row_sums)


def test_a_partial_step_with_nothing_to_refresh_reuses_both_cached_outputs():
    """rho = 0: a partial step recomputes no row; on an unchanged canvas it must reproduce the
    logits of the full refresh exactly (the reused attention AND FFN outputs both go back in)."""
    for model in (MODELS[False], MODELS[True]):
        x = torch.full((2, 12), MASK_ID)
        x[:, :3] = torch.tensor([[1, 2, 3], [4, 5, 6]])
        cfg = SamplerConfig(gen_length=9, block_length=9, steps=9, cache="feature", cache_kp=99,
                            cache_kr=99, cache_rho=0.0)
        cache = feature_cache(model, x, 3, cfg)
        full = cache.logits(x, 3, 12, True)
        before = list(cache.rows_computed)
        partial = cache.logits(x, 3, 12, False)
        assert cache.rows_computed == before
        assert torch.equal(full, partial)


def test_stale_first_refreshes_the_neighbours_of_new_commits_and_only_until_recomputed():
    """rho gives 3 rows per layer. After a commit at 6 the refreshed rows are 5, 6, 7; a
    neighbourhood counts as stale only while a commit is NEWER than the row's last compute, so a
    commit at 10 one step later makes 9, 10, 11 the refreshed ones, not 5-7 again."""
    model = MODELS[False]
    x = torch.full((1, 14), MASK_ID)
    x[0, :2] = torch.tensor([1, 2])
    cfg = SamplerConfig(gen_length=12, block_length=12, steps=12, cache="feature", cache_kp=99,
                        cache_kr=99, cache_rho=0.25, cache_stale_first=True)
    cache = feature_cache(model, x, 2, cfg)
    cache.logits(x, 2, 14, True)            # step 1: full refresh
    for step, (commit, want) in enumerate([(6, {5, 6, 7}), (10, {9, 10, 11})], start=2):
        x[0, commit] = 5
        cache.logits(x, 2, 14, False)       # a partial step
        for layer in range(model.cfg.n_layer):
            assert set(torch.nonzero(cache.policy.computed_at[layer][0] == step).flatten().tolist()) == want


def test_fresh_values_put_every_response_rows_fresh_v_in_the_buffer():
    """dLLM-Cache's LLaDA hook: after a partial step, the cached V of EVERY response row is this
    step's fresh V (checked in layer 0, whose input is the embedding), not only the refreshed rows'."""
    model = MODELS[False]
    x = torch.full((1, 12), MASK_ID)
    x[0, :2] = torch.tensor([1, 2])
    for fresh_values in (False, True):
        cfg = SamplerConfig(gen_length=10, block_length=10, steps=10, cache="feature", cache_kp=99,
                            cache_kr=99, cache_rho=0.2, cache_fresh_values=fresh_values)
        cache = feature_cache(model, x.clone(), 2, cfg)
        y = x.clone()
        cache.logits(y, 2, 12, True)
        y[0, 2:12:2] = torch.tensor([5, 6, 7, 8, 9])  # five response rows change
        cache.logits(y, 2, 12, False)
        block = model.blocks[0]
        fresh = block.attn.values(block.norm1(model.embed(y)))[:, :, 2:]
        same = torch.isclose(cache.kv.v[0][:, :, 2:], fresh, atol=1e-12).all(-1).all(1)[0]  # per row
        assert same.all() if fresh_values else same.sum() < 10  # 2 of the 5 changed rows refreshed
