"""Invariants of the reverse process, on tiny random float64 models."""
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.sampler import SamplerConfig, generate, llada_generate, transfer_schedule

MODELS = {sink: tiny_model(sink=sink, random_gains=True) for sink in (False, True)}


def settings_strategy():
    """(gen_length, block_length, steps) that satisfy the divisibility rules."""
    return st.tuples(st.integers(1, 4), st.integers(1, 6), st.data()).map(
        lambda t: t).flatmap(lambda t: st.integers(1, t[1]).map(
            lambda spb: (t[0] * t[1], t[1], t[0] * spb)))


prompts_strategy = st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=8),
                            min_size=1, max_size=3)


@given(setting=settings_strategy(), prompts=prompts_strategy, sink=st.booleans(),
       temperature=st.sampled_from([0.0, 1.0]), remasking=st.sampled_from(["low_confidence", "random"]),
       seed=st.integers(0, 99))
def test_schedule_is_followed_and_commits_are_final(setting, prompts, sink, temperature, remasking, seed):
    gen_length, block_length, steps = setting
    cfg = SamplerConfig(gen_length, steps, block_length, temperature, remasking)
    frames = []
    out = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg, seed=seed,
                   on_step=lambda s, x, c: frames.append(x.clone()))
    assert len(frames) == steps and not (out == MASK_ID).any()
    P = max(map(len, prompts))
    num_blocks = gen_length // block_length
    expected = [k for _ in range(num_blocks) for k in transfer_schedule(block_length, steps // num_blocks)]
    before = torch.cat([frames[0][:, :P], torch.full((len(prompts), gen_length), MASK_ID)], 1)
    for k, after in zip(expected, frames):
        newly = (before == MASK_ID) & (after != MASK_ID)
        assert torch.all(newly.sum(1) == k)                            # exactly k per row
        assert torch.equal(after[before != MASK_ID], before[before != MASK_ID])  # never changed
        before = after


@given(prompts=prompts_strategy, seed=st.integers(0, 99), sink=st.booleans())
def test_deterministic_for_a_seed(prompts, seed, sink):
    cfg = SamplerConfig(8, 8, 4, temperature=1.0)
    a = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg, seed=seed)
    b = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg, seed=seed)
    assert torch.equal(a, b)


@given(prompts=prompts_strategy, row=st.integers(0, 2), sink=st.booleans())
def test_batch_rows_are_independent(prompts, row, sink):
    row = row % len(prompts)
    cfg = SamplerConfig(8, 8, 4)  # greedy
    batched = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg)
    alone = generate(MODELS[sink], [prompts[row]], MASK_ID, PAD_ID, cfg)
    assert torch.equal(batched[row], alone[0])


def test_schedule_spreads_evenly():
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(transfer_schedule(32, 32)) == 32


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_length=10, block_length=4), "not divisible by block length"),
    (dict(gen_length=8, block_length=4, steps=3), "not divisible by the number of blocks"),
    (dict(temperature=-1.0), "temperature"),
    (dict(gen_length=64, block_length=32, steps=64), "exceeds the model's context"),
    (dict(remasking="sideways"), "remasking"),
])
def test_impossible_settings_are_rejected(kwargs, message):
    cfg = SamplerConfig(**{**dict(gen_length=8, steps=8, block_length=4), **kwargs})
    with pytest.raises(ValueError, match=message):
        generate(MODELS[False], [[1] * 10], MASK_ID, PAD_ID, cfg)


@given(prompt=st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=8), rows=st.integers(1, 3),
       blocks=st.sampled_from([1, 2, 4]), sink=st.booleans(), seed=st.integers(0, 99))
def test_greedy_generate_equals_the_plain_llada_loop(prompt, rows, blocks, sink, seed):
    """The batched, hole-aware, cache-ready sampler is LLaDA's plain loop (`llada_generate`) on
    what that loop covers: same-length prompts, greedy, low-confidence remasking."""
    prompts = [[(t + r * seed) % (VOCAB - 3) for t in prompt] for r in range(rows)]
    cfg = SamplerConfig(gen_length=8, block_length=8 // blocks, steps=8)
    ours = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg)
    reference = llada_generate(MODELS[sink], torch.tensor(prompts), MASK_ID, 8, 8, 8 // blocks)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("remasking, temperature", [("low_confidence", 1.0), ("random", 0.0)])
def test_the_seed_matters_where_something_is_random(remasking, temperature):
    """Sampling at T > 0, or random remasking: one seed gives one answer, different seeds differ."""
    cfg = SamplerConfig(16, 16, 16, temperature=temperature, remasking=remasking)
    runs = [generate(MODELS[False], [[1, 2, 3]], MASK_ID, PAD_ID, cfg, seed=s) for s in (0, 0, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2]) or not torch.equal(runs[0], runs[3])


@given(log2_t=st.integers(-6, 6), seed=st.integers(0, 99))
def test_temperature_divides_the_logits(log2_t, seed):
    """x0 at temperature T is x0 at T = 1 of logits / T (T a power of two: the division is exact)."""
    from minidlm.sampler import choose_tokens
    logits = torch.randn(3, 5, VOCAB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = 2.0 ** log2_t
    a = choose_tokens(logits, t, torch.Generator().manual_seed(seed))
    b = choose_tokens(logits / t, 1.0, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@given(seed=st.integers(0, 99), k=st.integers(1, 3))
def test_low_confidence_ranks_the_sampled_token_by_its_probability(seed, k):
    """At T > 0 the confidence is the probability of the token that was SAMPLED, not the argmax's."""
    from minidlm.sampler import commit
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, 6, VOCAB, generator=gen, dtype=torch.float64)
    x = torch.full((2, 6), MASK_ID)
    x0, scores = commit(x, logits.clone(), x == MASK_ID, k, SamplerConfig(temperature=1.0), gen, MASK_ID)
    logits[..., MASK_ID] = float("-inf")
    expected = torch.softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
    assert torch.allclose(scores, expected)
    assert torch.equal((x != MASK_ID).sum(1), torch.full((2,), k))


HOST_SYNCS = ["item", "tolist", "nonzero", "cpu", "__bool__", "__int__", "__float__"]


@pytest.mark.parametrize("rule", ["fixed", "threshold"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "feature", "stale-first"])
@pytest.mark.parametrize("cota", ["off", "CoTA", "CTEV context", "CTAR"])
@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("layout", ["continuation", "holes"])
def test_no_host_sync_inside_the_step_loop(rule, cache, cota, sink, layout, monkeypatch):
    """Every host-sync entry point raises from the first block's schedule to the end of `generate`
    or `infill` (on_step, the display hook, is allowed to sync and is switched back on around it).
    Threshold decoding is allowed exactly one per step, `bool()` of "is the block full?": counted."""
    from minidlm import sampler
    from minidlm.cota import CoTAConfig
    if cota == "CTAR" and cache not in ("feature", "stale-first"):
        pytest.skip("CTAR is a feature-cache policy")
    cota_cfg = {"off": CoTAConfig(), "CoTA": CoTAConfig(ctae=True, ctev=True),
                "CTEV context": CoTAConfig(ctev=True, ctev_mode="context"), "CTAR": CoTAConfig(ctar=True)}[cota]
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, cota=cota_cfg, cache_kr=3,
                        cache="feature" if cache == "stale-first" else cache,
                        cache_stale_first=cache == "stale-first",
                        threshold=0.2 if rule == "threshold" else None)
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNCS}
    armed, allowed = [], []

    def trap(name):
        def raising(self, *args, **kwargs):
            if armed and rule == "threshold" and name == "__bool__":
                allowed.append(1)
            elif armed:
                raise AssertionError(f"host sync: Tensor.{name} inside the step loop")
            return originals[name](self, *args, **kwargs)
        return raising

    for name in HOST_SYNCS:
        monkeypatch.setattr(torch.Tensor, name, trap(name))
    schedule = sampler.transfer_schedule
    monkeypatch.setattr(sampler, "transfer_schedule", lambda *a: (armed.append(1), schedule(*a))[1])
    steps = []

    def on_step(step, x, cache_object):
        armed.clear()
        steps.append(int((x == MASK_ID).sum()))  # a sync, allowed here
        armed.append(1)

    model = tiny_model(sink=sink, n_layer=5)
    if layout == "continuation":
        out = generate(model, [[1, 2], [3, 4, 5]], MASK_ID, PAD_ID, cfg, on_step=on_step)
    else:
        M = MASK_ID
        out = sampler.infill(model, [[1, M, M, 2] + [M] * 6, [M, M, 3, 4, M, M, M, M, 5, M, M]], MASK_ID,
                             PAD_ID, cfg, on_step=on_step)
    armed.clear()
    assert out.shape[0] == 2 and (out == MASK_ID).sum() == 0 and steps[-1] == 0
    assert len(steps) == 8 if rule == "fixed" else len(allowed) == len(steps) and 2 <= len(steps) <= 8
