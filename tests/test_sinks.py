"""The sink probe only observes, and its summaries are well-formed measurements."""
import torch
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.sampler import SamplerConfig, generate
from minidlm.sinks import SinkProbe, describe, run_lengths

MODELS = {sink: tiny_model(sink=sink, n_layer=3) for sink in (False, True)}


class StubTokenizer:
    """What the probe needs of a tokenizer: ids 0-4 are punctuation, 5 is whitespace."""
    vocab_size, mask_id = VOCAB, MASK_ID

    def is_punctuation_token(self, i):
        return i < 5

    def is_whitespace_token(self, i):
        return i == 5


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
    assert s["steps"] == 8 and 0 <= s["switch_rate"] <= 1 and 0 <= s["jaccard"] <= 1
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
