"""Invariants of the network: traces observe only, the sink is as specified, the seams are exact."""
import torch
from hypothesis import given, strategies as st

from conftest import VOCAB, tiny_model
from minidlm.kv import KVBuffer
from minidlm.data import padding_bias


def tokens(B, T, seed):
    return torch.randint(0, VOCAB - 3, (B, T), generator=torch.Generator().manual_seed(seed))


@given(sink=st.booleans(), B=st.integers(1, 3), T=st.integers(1, 20), seed=st.integers(0, 99))
def test_trace_changes_no_logit(sink, B, T, seed):
    model = tiny_model(sink=sink, random_gains=True)
    x = tokens(B, T, seed)
    logits, trace = model(x, trace=True)
    assert torch.equal(model(x), logits)
    S = int(sink)
    assert len(trace.attn) == model.cfg.n_layer
    assert trace.attn[0].shape == (B, 2, S + T, S + T) and trace.hidden[0].shape == (B, T, 16)
    assert torch.allclose(trace.attn[0].sum(-1), torch.ones(()).double())


@given(T=st.integers(1, 20), seed=st.integers(0, 99))
def test_sink_row_sees_only_itself_and_every_row_sees_the_sink(T, seed):
    model = tiny_model(sink=True)
    _, trace = model(tokens(2, T, seed), trace=True)
    for attn in trace.attn:
        assert torch.all(attn[:, :, 0, 0] == 1) and torch.all(attn[:, :, 0, 1:] == 0)
        assert torch.all(attn[:, :, 1:, 0] > 0)


@given(seed=st.integers(0, 99))
def test_sink_state_is_the_same_for_every_input(seed):
    model = tiny_model(sink=True)
    _, a = model(tokens(1, 7, seed), trace=True)
    _, b = model(tokens(1, 12, seed + 1), trace=True)
    for va, vb in zip(a.values, b.values):
        assert torch.allclose(va[:, :, 0], vb[:, :, 0])


@given(sink=st.booleans(), T=st.integers(2, 20), seed=st.integers(0, 99), data=st.data())
def test_subset_of_queries_against_a_kv_cache_matches_the_full_forward(sink, T, seed, data):
    model = tiny_model(sink=sink, random_gains=True)
    x = tokens(2, T, seed)
    full = model(x)
    cache = KVBuffer(model, 2, T, torch.float64, "cpu")  # holds the sink's K/V when there is one
    assert torch.allclose(model(x, cache=cache.writer(span=(0, T))), full, atol=1e-10)  # and fills it
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, T - 1), min_size=1))))
    part = model(x[:, rows], positions=rows, cache=cache.writer(rows=rows.expand(2, -1)))
    assert torch.allclose(part, full[:, rows], atol=1e-10)


@given(sink=st.booleans(), T=st.integers(1, 15), pad=st.integers(1, 5), seed=st.integers(0, 99))
def test_padding_through_the_bias_seam_is_invisible(sink, T, pad, seed):
    model = tiny_model(sink=sink, random_gains=True)
    x = tokens(1, T, seed)
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], dim=1)
    positions = torch.arange(T + pad) - pad
    bias = padding_bias(torch.tensor([pad]), T + pad, torch.float64)
    out = model(padded, positions=positions, attn_bias=bias)[:, pad:]
    assert torch.allclose(out, model(x), atol=1e-10)


@given(T=st.integers(1, 12), seed=st.integers(0, 99))
def test_the_value_seam_and_the_branch_seam_are_the_blocks_own_computation(T, seed):
    """Attention.values is the V that attention uses; a block's output is x + a + f of its branches."""
    from minidlm.model import rope_angles
    model = tiny_model(seed=seed)
    block = model.blocks[0]
    x = torch.randn(2, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rope = rope_angles(torch.arange(T)[None].expand(2, T), 8, 10000.0)
    assert torch.allclose(block.attn.values(x), block.attn.qkv(x, rope)[2], atol=1e-12)
    a, f = block.branches(x, rope, None)
    assert torch.equal(block(x, rope, None), x + a + f)


@given(B=st.integers(1, 3), T=st.integers(1, 20), shift=st.integers(1, 50), seed=st.integers(0, 99))
def test_unrotated_sink_makes_the_model_blind_to_a_shift_of_every_position(B, T, shift, seed):
    """RoPE scores depend on i - j only; a sink scored without rotation adds no absolute position,
    so shifting every content position changes nothing (up to the float32 RoPE angles, as without
    a sink). The paper's sink at RoPE position 0 makes the absolute position visible."""
    x = tokens(B, T, seed)
    positions = torch.arange(T)
    unrotated = tiny_model(sink=True, sink_rotation=False)
    assert torch.allclose(unrotated(x, positions=positions + shift), unrotated(x), atol=1e-5)
    rotated = tiny_model(sink=True)
    assert not torch.allclose(rotated(x, positions=positions + shift), rotated(x), atol=1e-3)


@given(T=st.integers(2, 20), seed=st.integers(0, 99), data=st.data(),
       variant=st.sampled_from([dict(sink_rotation=False), dict(sink_value="zero"),
                                dict(sink_value="zero", sink_rotation=False)]))
def test_sink_variants_partial_forward_against_the_cache_matches_the_full_forward(T, seed, data, variant):
    model = tiny_model(sink=True, random_gains=True, **variant)
    x = tokens(2, T, seed)
    full, trace = model(x, trace=True)
    for attn in trace.attn:  # still the paper's mask: the sink row sees only itself
        assert torch.all(attn[:, :, 0, 1:] == 0) and torch.all(attn[:, :, 1:, 0] > 0)
    for values in trace.values:  # a zero-value sink is exactly zero in every layer and head
        assert torch.all(values[:, :, 0] == 0) == (variant.get("sink_value") == "zero")
    cache = KVBuffer(model, 2, T, torch.float64, "cpu")
    assert torch.allclose(model(x, cache=cache.writer(span=(0, T))), full, atol=1e-10)
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, T - 1), min_size=1))))
    assert torch.allclose(model(x[:, rows], positions=rows, cache=cache.writer(rows=rows.expand(2, -1))),
                          full[:, rows], atol=1e-10)


@given(T=st.integers(1, 20), seed=st.integers(0, 99))
def test_the_sink_takes_rope_position_0_and_content_starts_at_1(T, seed):
    """A rotated [SINK] sits at RoPE position 0 (sink_kv), so content position i is rotated as
    i + 1: no content token shares the sink's position."""
    from minidlm.model import rope_angles, rope_tables
    model = tiny_model(sink=True, seed=seed)
    idx = torch.randint(0, VOCAB - 3, (1, T), generator=torch.Generator().manual_seed(seed))
    _, (cos, sin) = model.embed_rows(idx, torch.arange(T))
    ref_cos, ref_sin = rope_tables(*rope_angles(torch.arange(1, T + 1)[None], model.cfg.d_model // model.cfg.n_head,
                                                model.cfg.rope_base))
    assert torch.equal(cos, ref_cos.to(cos.dtype)) and torch.equal(sin, ref_sin.to(sin.dtype))


@given(B=st.integers(1, 3), T=st.integers(1, 20), seed=st.integers(0, 99),
       variant=st.sampled_from([dict(), dict(sink_rotation=False), dict(sink_value="zero")]))
def test_a_masked_sink_is_the_same_weights_without_a_sink(B, T, seed, variant):
    """sink_compare's test-time ablation: with content queries barred from key 0, every form of
    the sink model computes exactly what its weights compute with no sink at all (RoPE sees only
    i - j, so the sink's shift of every position by one is invisible, up to the float32 RoPE
    angles), and the model is restored."""
    from minidlm.sink_variants import sink_masked
    model = tiny_model(sink=True, seed=seed, **variant)
    plain = tiny_model(seed=seed)
    state = {k: v for k, v in model.state_dict().items() if k != "sink_embed"}
    plain.load_state_dict(state)
    x = tokens(B, T, seed)
    before = model(x)
    with sink_masked(model):
        assert torch.allclose(model(x), plain(x), atol=1e-5)
    assert torch.equal(model(x), before)
