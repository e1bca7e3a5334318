"""Invariants of the reverse process, on tiny random float64 models."""
import pytest
import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.sampler import SamplerConfig, generate, transfer_schedule

MODELS = {sink: tiny_model(sink=sink) for sink in (False, True)}


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
