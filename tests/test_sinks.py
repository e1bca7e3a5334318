"""The sink probe only observes, and its summaries are well-formed measurements."""
from types import SimpleNamespace

import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, StubTokenizer, tiny_model
from minidlm.sampler import SamplerConfig, generate
from minidlm.sinks import SinkProbe, describe, run_lengths

MODELS = {sink: tiny_model(sink=sink, n_layer=3) for sink in (False, True)}


prompts_strategy = st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=6),
                            min_size=1, max_size=3)


@given(prompts=prompts_strategy, sink=st.booleans(),
       cache=st.sampled_from(["none", "prefix", "dual", "feature"]))
def test_probe_changes_no_token_and_summaries_are_in_range(prompts, sink, cache):
    cfg = SamplerConfig(gen_length=8, steps=8, block_length=4, cache=cache, cache_kr=3)
    probe = SinkProbe(MODELS[sink], StubTokenizer(), list(map(len, prompts)), snapshot_steps=(1, 8))
    probed = generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg, on_step=probe, observe=True)
    assert torch.equal(probed, generate(MODELS[sink], prompts, MASK_ID, PAD_ID, cfg))
    s = probe.summary()
    assert s["steps"] == 8
    for key, pairs in (("switch_rate", "switch_pairs"), ("jaccard", "jaccard_pairs")):
        assert 0 <= s[key] <= 1 if s[pairs] else s[key] != s[key]  # nan when nothing to measure
    assert abs(sum(s["top_sink_kind"].values()) - 1) < 1e-9
    assert s["strict_sinks_per_head"] <= s["relative_sinks_per_head"]
    assert ("sink_mass" in s) == sink and (not sink or 0 < s["sink_mass"] < 1)
    assert sorted(probe.snapshots) == [1, 8]
    assert len(probe.trajectory(0)) == 3 and "switch rate" in describe(probe, max(map(len, prompts)))


def test_top_sink_ignores_padding_rows_and_keys():
    prompts = [[1, 2, 3, 4, 5, 6], [7]]
    probe = SinkProbe(MODELS[False], StubTokenizer(), [6, 1])
    generate(MODELS[False], prompts, MASK_ID, PAD_ID, SamplerConfig(gen_length=4, steps=4, block_length=4),
             on_step=probe, observe=True)
    top_row_1 = torch.stack(probe.top)[:, :, 1]
    assert torch.all(top_row_1 >= 5)  # row 1 has 5 pad columns in front; none can be its sink


def test_run_lengths():
    assert run_lengths([3, 3, 7, 7, 7, 3]) == "3x2 > 7x3 > 3x1"


@given(sink=st.booleans(), training=st.booleans(), seed=st.integers(0, 3))
def test_training_curve_point_is_a_set_of_shares_and_leaves_the_model_as_it_was(sink, training, seed):
    from minidlm.sinks import training_curve_point
    model = tiny_model(sink=sink).train(training)
    windows = torch.randint(0, VOCAB - 4, (3, 12), generator=torch.Generator().manual_seed(seed))
    point = training_curve_point(model, windows, MASK_ID, seed=seed)
    assert model.training == training
    content = 1 - (point["sink_mass"] or 0)                 # what [SINK] leaves to 12 content keys
    assert content / 12 - 1e-9 <= point["top_mass"] <= content + 1e-9   # the largest of 12 shares
    assert point["top_value_ratio"] > 0
    assert (point["sink_mass"] is None) == (not sink)
    if sink:
        assert 0 <= point["sink_mass"] <= 1 and point["sink_value_ratio"] > 0


class Observed:
    """What the probe reads from a cache in observe mode, made by hand: per layer the attention
    (B, H, L, L) and each head's value norms (B, H, L); no sink token."""

    def __init__(self, attention, norms):
        self.record = SimpleNamespace(attention=[attention], value_norms=[norms])


def column_map(columns, L=10, heavy=0.9):
    """(1, H, L, L) attention in which every query row of head h puts `heavy` on key columns[h]
    (None: uniform), the rest spread evenly."""
    maps = []
    for c in columns:
        a = torch.full((L, L), 1.0 / L)
        if c is not None:
            a = torch.full((L, L), (1 - heavy) / (L - 1))
            a[:, c] = heavy
        maps.append(a)
    return torch.stack(maps)[None]


def probe_over(steps, L=10, norms=None, prompt_lens=(4,)):
    model = tiny_model(sink=False, n_layer=1)
    probe = SinkProbe(model, StubTokenizer(), list(prompt_lens))
    x = torch.full((len(prompt_lens), L), 7)
    for s, columns in enumerate(steps, 1):
        attention = column_map(columns, L).expand(len(prompt_lens), -1, -1, -1)
        probe(s, x, Observed(attention, torch.ones(len(prompt_lens), len(columns), L) if norms is None else norms))
    return probe.summary()


def test_heads_without_a_sink_do_not_dilute_the_movement_summaries():
    """Head 0 keeps its sink at key 2; head 1 has none (uniform attention, so its argmax is
    arbitrary). Only head 0's step pairs count: no switch, Jaccard 1, one distinct top sink."""
    s = probe_over([[2, None], [2, None], [2, None]])
    assert (s["switch_rate"], s["switch_pairs"]) == (0.0, 2)
    assert (s["jaccard"], s["jaccard_pairs"]) == (1.0, 2)
    assert (s["distinct_top_sinks"], s["heads_with_a_sink"]) == (1.0, 0.5)


def test_a_moving_sink_switches_and_empty_sets_give_no_number():
    s = probe_over([[2], [5], [5], [None]])
    assert (s["switch_rate"], s["switch_pairs"]) == (0.5, 2)       # 2 -> 5, 5 -> 5; step 4 has none
    assert s["jaccard_pairs"] == 3 and abs(s["jaccard"] - (0 + 1 + 0) / 3) < 1e-12
    assert s["distinct_top_sinks"] == 2.0
    s = probe_over([[None], [None]])
    assert s["switch_pairs"] == s["jaccard_pairs"] == 0 and s["heads_with_a_sink"] == 0
    assert all(v != v for v in (s["switch_rate"], s["jaccard"], s["distinct_top_sinks"]))  # nan


def test_value_norms_are_per_head_and_over_real_columns_only():
    """Head 0's sink at key 5 has a value norm below head 0's mean (a strict sink), head 1's has
    one above (a content hub), though the head-averaged norm of key 5 is below the mean; the
    second sample's three left-pad columns have huge norms that must not enter its means."""
    L = 10
    norms = torch.ones(2, 2, L)
    norms[:, 0, 5] = 0.5            # head 0: its sink has a small value
    norms[:, 1, 5] = 1.4            # head 1: the same key has a large one
    norms[1, :, :3] = 100.0         # sample 1's padding columns
    s = probe_over([[5, 5]], L=L, norms=norms, prompt_lens=(4, 1))
    assert s["strict_sinks_per_head"] == 0.5                    # head 0 of each sample
    expected = [0.5 / (9.5 / 10), 1.4 / (10.4 / 10), 0.5 / (6.5 / 7), 1.4 / (7.4 / 7)]
    assert abs(s["top_sink_value_norm_ratio"] - sum(expected) / 4) < 1e-6


def test_the_literatures_share_of_heads_over_0_3_counts_heads_not_keys():
    """Gu et al.'s yardstick: a head counts when its mean attention to one key exceeds 0.3. Head 0
    puts 0.9 on key 2, head 1 is uniform (0.1 per key): half the heads, at every step."""
    s = probe_over([[2, None], [2, None]])
    assert s["heads_over_0.3"] == 0.5
    assert probe_over([[None, None]])["heads_over_0.3"] == 0.0
