"""The information-flow recorder sees every committed position once, with values in range."""
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.cota import CoTAConfig
from minidlm.infoflow import FlowRecorder
from minidlm.sampler import SamplerConfig, generate

MODEL = tiny_model(sink=True, n_layer=4)


@given(prompts=st.lists(st.lists(st.integers(0, VOCAB - 4), min_size=1, max_size=5), min_size=1, max_size=3),
       cache=st.sampled_from(["none", "dual", "feature"]))
def test_every_committed_position_is_classified_once(prompts, cache):
    eot = PAD_ID
    recorder = FlowRecorder(MODEL, MASK_ID, eot, CoTAConfig().deep_layers(4))
    recorder.start(max(map(len, prompts)))
    cfg = SamplerConfig(gen_length=8, steps=8, block_length=8, cache=cache, cache_kr=3)
    out = generate(MODEL, prompts, MASK_ID, PAD_ID, cfg, on_step=recorder, observe=True)
    recorder.finish(out)
    expected = sum(row.index(eot) if eot in row else len(row) for row in out.tolist())
    summary = recorder.summary()
    assert summary["repeated"]["n"] + summary["normal"]["n"] == expected
    for kind in summary.values():
        assert all(0 <= e <= 1 + 1e-9 for e in kind["entropy_by_layer"])
        assert kind["n"] == 0 or 0 <= kind["local_mass"] <= 1 + 1e-9
