"""Properties at the edges: settings' edge values, exact values of the metrics, the command line's
mapping onto the configurations, and rules that only a stored answer used to catch."""
import math
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, StubTokenizer, tiny_model
from minidlm.cache import CACHES
from minidlm.corpus import generate_stories, grammatical_rate, is_grammatical, split_sentences
from minidlm.cota import CoTA, CoTAConfig, ctev_penalty, lens_entropy
from minidlm.diffusion import EPS, forward_process, train_loss
from minidlm.evaluate import unigram_entropy_bits
from minidlm.model import ModelConfig, apply_rope, rope_angles
from minidlm.optim import build_optimizers, lr_factor, set_lr
from minidlm.sampler import REMASKING, SamplerConfig, commit, generate, infill
from minidlm.sinks import SinkProbe
from minidlm.train import TrainConfig, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sample  # noqa: E402
import train_tiny  # noqa: E402

# ---- the training draw of t ---------------------------------------------------------------------


@given(t_min=st.floats(0.0, 0.95), width=st.floats(0.0, 1.0), B=st.integers(1, 12), seed=st.integers(0, 999))
@example(t_min=0.15, width=0.7, B=8, seed=0)  # the recipe's range and batch
def test_training_t_is_stratified_inside_t_min_t_max_and_masks_follow_p(t_min, width, B, seed):
    """t_i = t_min + (t_max - t_min)((u + i/B) mod 1): inside [t_min, t_max], one per 1/B slice of
    it, and each row masked at rate p = (1 - eps) t + eps."""
    t_max = min(1.0, t_min + width)
    L = 3000
    _, masked, p = forward_process(torch.zeros(B, L, dtype=torch.long), MASK_ID,
                                   torch.Generator().manual_seed(seed), t_min=t_min, t_max=t_max)
    t = ((p.squeeze(1).double() - EPS) / (1 - EPS))
    assert torch.all(t >= t_min - 1e-6) and torch.all(t <= t_max + 1e-6)
    if t_max - t_min > 1e-3:
        slot = ((t - t_min) / ((t_max - t_min) / B)).floor().clamp(0, B - 1).long()
        assert sorted(slot.tolist()) == list(range(B))  # stratified over the range
    rate = masked.double().mean(1)
    sd = torch.sqrt(p.squeeze(1) * (1 - p.squeeze(1)) / L)
    assert torch.all((rate - p.squeeze(1)).abs() <= 5 * sd + 1e-3)


class Recorder(torch.nn.Module):
    """Uniform logits; remembers what it was given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, xt):
        self.seen.append(xt)
        return torch.zeros(*xt.shape, VOCAB) + self.w


@settings(max_examples=10, deadline=None)
@given(t_min=st.floats(0.05, 0.9), plain=st.booleans(), seed=st.integers(0, 99))
def test_train_step_trains_on_its_t_range_with_or_without_the_1_over_p_weight(t_min, plain, seed):
    """train_step passes the config's t range and weight to the loss: every row's masking rate lies
    in [p(t_min), p(t_max)], and the loss of a uniform model is log V times the masked share
    (plain CE) or log V times the sum of masked / p (the weighted loss), over all B * L tokens."""
    t_max = min(1.0, t_min + 0.1)
    cfg = TrainConfig(t_min=t_min, t_max=t_max, plain_ce=plain)
    model, x0 = Recorder(), torch.zeros(4, 2000, dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_step(model, [opt], x0, MASK_ID, torch.Generator().manual_seed(seed), cfg)
    masked = (model.seen[0] == MASK_ID).double()
    p_lo, p_hi = (1 - EPS) * t_min + EPS, (1 - EPS) * t_max + EPS
    rate = masked.mean(1)
    assert torch.all((rate > p_lo - 0.05) & (rate < p_hi + 0.05))
    _, _, p = forward_process(x0, MASK_ID, torch.Generator().manual_seed(seed), t_min=t_min, t_max=t_max)
    weight = 1.0 if plain else p.double()
    expected = math.log(VOCAB) * (masked / weight).sum() / x0.numel()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


# ---- the schedule -------------------------------------------------------------------------------


@given(warmup=st.integers(1, 200), step=st.integers(0, 400), progress=st.floats(0, 1),
       schedule=st.sampled_from(["cosine", "wsd"]), cooldown=st.floats(0.01, 1))
@example(warmup=10, step=9, progress=0.0, schedule="wsd", cooldown=0.3)
@example(warmup=10, step=10, progress=0.0, schedule="wsd", cooldown=0.3)
def test_the_warm_up_ramp_and_the_schedule_are_these_formulas(warmup, step, progress, schedule, cooldown):
    """Warm-up: (step + 1) / warmup for the first `warmup` steps (step 0 trains at 1/warmup, the
    last warm-up step at the peak); then cosine 0.1 + 0.45 (1 + cos(pi progress)) or wsd
    min(1, (1 - progress) / cooldown)."""
    got = lr_factor(progress, step, warmup, schedule, cooldown)
    if step < warmup:
        want = (step + 1) / warmup
    elif schedule == "cosine":
        want = 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
    else:
        want = min(1.0, (1 - progress) / cooldown)
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)


def test_set_lr_scales_every_groups_own_peak():
    opts = build_optimizers(tiny_model(sink=True).float(), "muon", 3e-3, 0.05, 0.1)
    set_lr(opts, 0.25)
    peaks = [(3e-3, g["lr"]) for g in opts[0].param_groups] + [(0.05, g["lr"]) for g in opts[1].param_groups]
    assert all(math.isclose(lr, 0.25 * peak) for peak, lr in peaks)


@given(step=st.integers(0, 100), steps=st.integers(1, 100), seconds=st.floats(0, 1000),
       minutes=st.sampled_from([None, 0.5, 3.0]))
def test_the_runs_progress_is_the_larger_share_of_steps_or_time(step, steps, seconds, minutes):
    run = SimpleNamespace(step=step, train_seconds=seconds, args=SimpleNamespace(steps=steps, minutes=minutes))
    want = max(step / steps, seconds / (60 * minutes)) if minutes else step / steps
    assert math.isclose(train_tiny.Run.progress(run), want)


# ---- the context boundary ----------------------------------------------------------------------


@given(context=st.integers(4, 24), prompt=st.integers(1, 8), sink=st.booleans())
def test_a_prompt_plus_generation_that_exactly_fills_the_context_is_accepted_one_more_is_not(context, prompt, sink):
    prompt = min(prompt, context - 1)
    model = tiny_model(sink=sink, n_layer=1, max_seq_len=context)
    gen = context - prompt
    ok = SamplerConfig(gen_length=gen, steps=gen, block_length=gen)
    out = generate(model, [[1] * prompt], MASK_ID, PAD_ID, ok)
    assert out.shape == (1, gen) and not (out == MASK_ID).any()
    too_long = SamplerConfig(gen_length=gen + 1, steps=gen + 1, block_length=gen + 1)
    with pytest.raises(ValueError, match="context"):
        generate(model, [[1] * prompt], MASK_ID, PAD_ID, too_long)
    with pytest.raises(ValueError, match="context"):  # a canvas one longer than the context, however split
        infill(model, [[1] * prompt + [MASK_ID] * gen + [2]], MASK_ID, PAD_ID, ok)


# ---- what resume must refuse to change ----------------------------------------------------------

# written out here, not read from train_tiny.py: the rule, stated once more
MUST_MATCH = ["objective", "train_fraction", "n_layer", "n_head", "d_model", "seq_len", "vocab_size", "sink", "sink_no_rotation",
              "sink_value", "qk_norm", "relu2", "unigram_bias", "data", "name_share", "seed", "batch_size", "optimizer"]
MAY_CHANGE = ["steps", "minutes", "lr", "muon_lr", "weight_decay", "warmup", "schedule", "cooldown", "t_min",
              "t_max", "plain_ce", "eval_interval", "eval_mc", "curve_every", "copy_every", "threads", "device", "bf16",
              "zero_init"]  # an init choice: a resumed run loads its weights


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if value is None:
        return "other.txt"
    return {"muon": "adamw", "learned": "zero", "cosine": "wsd", "auto": "cpu"}.get(value, value + "x")


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    from minidlm.checkpoint import atomic_save, state_path
    out = str(tmp_path_factory.mktemp("resume") / "run.pt")
    args = train_tiny.parse_args(["--out", out])
    state = {"args": vars(args), "step": 3, "model": {}, "optimizer": [], "tokenizer": {},
             "batch_rng": torch.Generator().get_state(), "mask_rng": torch.Generator().get_state()}
    atomic_save(state, state_path(out))
    return out


@pytest.mark.parametrize("key", MUST_MATCH)
def test_resume_refuses_every_setting_that_shapes_the_model_data_or_batches(key, saved_state, capsys):
    args = train_tiny.parse_args(["--out", saved_state, "--resume"])
    setattr(args, key, changed(getattr(args, key)))
    with pytest.raises(SystemExit) as e:
        train_tiny.resume_state(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--{key.replace('_', '-')} " in err and err.count("\n") == 1


@pytest.mark.parametrize("key", MAY_CHANGE)
def test_resume_takes_every_other_setting(key, saved_state):
    args = train_tiny.parse_args(["--out", saved_state, "--resume"])
    setattr(args, key, changed(getattr(args, key)))
    assert train_tiny.resume_state(args)["step"] == 3


def test_every_flag_is_either_kept_or_free_on_resume():
    """A new train_tiny.py flag must be put in one of the two lists above (and, if it shapes the
    model, the data or the batches, in train_tiny.RESUME_MUST_MATCH)."""
    names = set(vars(train_tiny.parse_args([])))
    assert names - {"out", "resume", "force"} == set(MUST_MATCH) | set(MAY_CHANGE)


# ---- exact values of the metrics ----------------------------------------------------------------


def test_the_unigram_entropy_of_four_equally_frequent_tokens_is_two_bits():
    windows = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    assert unigram_entropy_bits(windows, 300) == pytest.approx(2.0, abs=1e-12)
    assert unigram_entropy_bits(torch.full((3, 5), 7), 300) == 0.0


@given(st.lists(st.integers(1, 30), min_size=1, max_size=8))
def test_the_unigram_entropy_is_that_of_the_token_frequencies(counts):
    ids = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    n = sum(counts)
    want = -sum(c / n * math.log2(c / n) for c in counts)
    assert unigram_entropy_bits(ids[None], len(counts) + 5) == pytest.approx(want, abs=1e-9)


SENTENCES = [s for story in generate_stories(30, seed=3) for s in split_sentences(story)]
BAD = ["Tom had had a ball.", "The ball sat dog.", "Mia ran quickly to the the park."]


@given(texts=st.lists(st.tuples(st.lists(st.sampled_from(SENTENCES), max_size=4),
                                st.lists(st.sampled_from(BAD), max_size=3), st.booleans()), max_size=4),
       data=st.data())
def test_the_grammatical_rate_pools_complete_sentences_and_skips_a_trailing_fragment(texts, data):
    """Over several texts, the rate is (grammatical complete sentences) / (complete sentences),
    pooled (a text with more sentences weighs more), a trailing fragment never counted."""
    strings, good, total = [], 0, 0
    for goods, bads, fragment in texts:
        sentences = data.draw(st.permutations(goods + bads))
        tail = [" Tom went to the"] if fragment else []  # a sample cut off mid-sentence
        strings.append(" ".join(sentences) + "".join(tail))
        good, total = good + len(goods), total + len(goods) + len(bads)
    assert grammatical_rate(strings) == (good / total if total else 0.0)


def test_the_bad_sentences_above_are_bad_and_the_good_ones_good():
    assert not any(map(is_grammatical, BAD)) and all(map(is_grammatical, SENTENCES))


@given(sentence=st.sampled_from(SENTENCES),
       extra=st.sampled_from(["and", "the end", "Tom", ".", "!", "ball.", " x"] + SENTENCES[:5]))
def test_the_recognizer_refuses_a_grammatical_sentence_followed_by_extra_text(sentence, extra):
    assert is_grammatical(sentence)
    assert not is_grammatical(sentence + " " + extra) and not is_grammatical(sentence + extra)
    assert not is_grammatical(extra + " " + sentence)


# ---- the sink probe ----------------------------------------------------------------------------


SINK_MODELS = {sink: tiny_model(sink=sink, n_layer=2, random_gains=True) for sink in (False, True)}


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("cache", ["none", "feature"])
def test_a_padded_rows_sink_statistics_are_the_row_run_alone(sink, cache):
    short, long = [7, 8], [1, 2, 9, 4, 10, 6]
    cfg = SamplerConfig(gen_length=6, steps=6, block_length=3, cache=cache, cache_kr=2)
    probes = []
    for prompts in ([long, short], [short]):
        probe = SinkProbe(SINK_MODELS[sink], StubTokenizer(), list(map(len, prompts)))
        generate(SINK_MODELS[sink], prompts, MASK_ID, PAD_ID, cfg, on_step=probe, observe=True)
        probes.append(probe)
    both, alone = probes
    pad = len(long) - len(short)
    for step in range(6):
        assert torch.equal(both.top[step][:, 1], alone.top[step][:, 0] + pad)
        assert torch.equal(both.top_is_sink[step][:, 1], alone.top_is_sink[step][:, 0])
        for a, b in ((both.sets, alone.sets), (both.strict_sets, alone.strict_sets)):
            assert not a[step][:, 1, :, :pad].any() and torch.equal(a[step][:, 1, :, pad:], b[step][:, 0])
        assert torch.allclose(both.norm_ratio[step][:, 1], alone.norm_ratio[step][:, 0])
        assert torch.equal(both.over_03[step][:, 1], alone.over_03[step][:, 0])
        assert torch.equal(both.kinds[step][:, 1], alone.kinds[step][:, 0])
        assert torch.equal(both.top_mean[step][:, 1], alone.top_mean[step][:, 0] + pad)
        if sink:
            assert torch.allclose(both.sink_mass[step][:, 1], alone.sink_mass[step][:, 0])


def test_the_strict_rule_keeps_a_low_value_sink_and_drops_a_content_hub():
    """Twelve keys, every query row alike: key 2 takes 0.45 of the attention with a large value
    (a content hub), key 4 takes 0.35 with a small one (a sink), the rest 0.02 each. Both pass the
    relative rule (> 3/12); only key 4 passes the strict one (value norm below the head's mean)."""
    L = 12
    row = torch.full((L,), 0.02, dtype=torch.float64)
    row[2], row[4] = 0.45, 0.35
    attn = row.expand(1, 1, L, L).clone()
    norms = torch.ones(1, 1, L, dtype=torch.float64)
    norms[0, 0, 2], norms[0, 0, 4] = 10.0, 0.1
    model = SimpleNamespace(cfg=SimpleNamespace(sink=False))
    probe = SinkProbe(model, StubTokenizer(), [L])
    cache = SimpleNamespace(record=SimpleNamespace(attention=[attn], value_norms=[norms]))
    x = torch.full((1, L), 20)
    probe(1, x, cache)
    assert probe.sets[0][0, 0, 0].nonzero().flatten().tolist() == [2, 4]
    assert probe.strict_sets[0][0, 0, 0].nonzero().flatten().tolist() == [4]
    assert probe.top[0].item() == 2 and probe.top_is_sink[0].item()
    assert probe.norm_ratio[0].item() == pytest.approx(10.0 / (norms.sum().item() / L))
    assert probe.over_03[0].item()
    s = probe.summary()
    assert s["relative_sinks_per_head"] == 2 and s["strict_sinks_per_head"] == 1


# ---- the command line -> the configuration ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(temperature=st.sampled_from([None, 0.0, 0.5, 2.0]), remasking=st.sampled_from([None, *REMASKING]),
       cache=st.sampled_from([None, *CACHES]), kp=st.sampled_from([None, 1, 9]), kr=st.sampled_from([None, 2, 11]),
       rho=st.sampled_from([None, 0.0, 0.4, 1.0]), stale=st.booleans(), fresh=st.booleans(),
       steps=st.sampled_from([None, 8, 16]), block=st.sampled_from([None, 4, 16]),
       cota=st.sampled_from([None, "paper", "released"]), ctae=st.booleans(), ctev=st.booleans(), ctar=st.booleans(),
       tau=st.sampled_from([None, 3.5]), gamma=st.sampled_from([None, 0.3]), lam=st.sampled_from([None, 1.5]),
       window=st.sampled_from([None, 0, 4]), mode=st.sampled_from([None, "self", "context"]),
       ctar_window=st.sampled_from([None, 2]))
def test_every_sample_flag_lands_in_its_field(temperature, remasking, cache, kp, kr, rho, stale, fresh, steps,
                                              block, cota, ctae, ctev, ctar, tau, gamma, lam, window, mode,
                                              ctar_window):
    values = {"--temperature": temperature, "--remasking": remasking, "--cache": cache, "--cache-kp": kp,
              "--cache-kr": kr, "--cache-rho": rho, "--steps": steps, "--block-length": block,
              "--ctae-tau": tau, "--ctae-gamma": gamma, "--ctev-lambda": lam, "--ctev-window": window,
              "--ctev-mode": mode, "--ctar-window": ctar_window}
    argv = [a for flag, v in values.items() if v is not None for a in (flag, str(v))]
    argv += [flag for flag, on in (("--cache-stale-first", stale), ("--cache-fresh-values", fresh),
                                   ("--ctae", ctae), ("--ctev", ctev), ("--ctar", ctar)) if on]
    argv += ["--cota", cota] if cota else []
    cfg = sample.sampler_config(sample.parse_args(argv), 32)
    s0, c0 = SamplerConfig(), CoTAConfig()
    pick = lambda v, default: default if v is None else v
    assert cfg.gen_length == 32 and cfg.steps == pick(steps, 32) and cfg.block_length == pick(block, 32)
    assert cfg.temperature == pick(temperature, s0.temperature) and cfg.remasking == pick(remasking, s0.remasking)
    assert cfg.cache == pick(cache, "none")
    assert (cfg.cache_kp, cfg.cache_kr, cfg.cache_rho) == (pick(kp, s0.cache_kp), pick(kr, s0.cache_kr),
                                                           pick(rho, s0.cache_rho))
    assert (cfg.cache_stale_first, cfg.cache_fresh_values) == (stale, fresh)
    c = cfg.cota
    assert c.ctae == (cota is not None or ctae) and c.ctev == (cota is not None or ctev) and c.ctar == ctar
    preset = (2.0, 0.75, 0.25, 0) if cota == "released" else (c0.ctae_tau, c0.ctae_gamma, c0.ctev_lambda, c0.ctev_window)
    assert (c.ctae_tau, c.ctae_gamma, c.ctev_lambda, c.ctev_window) == \
        (pick(tau, preset[0]), pick(gamma, preset[1]), pick(lam, preset[2]), pick(window, preset[3]))
    assert c.ctev_mode == pick(mode, c0.ctev_mode) and c.ctar_window == pick(ctar_window, c0.ctar_window)


def test_the_default_block_is_32_where_it_divides_else_one_block():
    args = sample.parse_args([])
    assert sample.sampler_config(args, 64).block_length == 32
    assert sample.sampler_config(args, 48).block_length == 48


@settings(max_examples=40, deadline=None)
@given(n_layer=st.integers(1, 9), heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 8, 16]),
       seq=st.integers(8, 600), sink=st.booleans(), no_rot=st.booleans(), zero=st.booleans(),
       qk=st.booleans(), relu2=st.booleans(), bias=st.booleans(), zero_init=st.booleans())
def test_every_train_tiny_model_flag_lands_in_its_field(n_layer, heads, head_dim, seq, sink, no_rot, zero, qk,
                                                       relu2, bias, zero_init):
    argv = ["--n-layer", str(n_layer), "--n-head", str(heads), "--d-model", str(heads * head_dim),
            "--seq-len", str(seq), "--qk-norm" if qk else "--no-qk-norm", "--relu2" if relu2 else "--no-relu2",
            "--unigram-bias" if bias else "--no-unigram-bias", "--zero-init" if zero_init else "--no-zero-init"]
    argv += ["--sink"] + (["--sink-no-rotation"] if no_rot else []) + (["--sink-value", "zero"] if zero else []) \
        if sink else []
    cfg = train_tiny.model_config(train_tiny.parse_args(argv), 345)
    assert cfg == ModelConfig(vocab_size=345, n_layer=n_layer, n_head=heads, d_model=heads * head_dim,
                              max_seq_len=seq, sink=sink, sink_rotation=not (sink and no_rot),
                              sink_value="zero" if sink and zero else "learned", qk_norm=qk,
                              mlp_act="relu2" if relu2 else "gelu", head_bias=bias, zero_init=zero_init)


def test_train_tiny_defaults_are_the_configs():
    args, m, t = train_tiny.parse_args([]), ModelConfig(), TrainConfig()
    assert train_tiny.model_config(args, m.vocab_size) == m
    for field in vars(t):
        assert getattr(args, field) == getattr(t, field), field


# ---- sampling at T > 0 --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_sampling_at_temperature_t_follows_softmax_of_logits_over_t(temperature):
    """20 000 draws at one masked position with fixed logits (token 5 is [MASK], never drawn).
    Each token's count is within 5 standard deviations of 20 000 * softmax(logits / T) (a false
    alarm about once in 3 million per token; the seed is fixed, so the test is deterministic)."""
    n, mask = 20_000, 5
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.full((n, 1), mask)
    cfg = SamplerConfig(temperature=temperature)
    commit(x, logits.expand(n, 1, 6).clone(), torch.ones(n, 1, dtype=torch.bool), 1, cfg,
           torch.Generator().manual_seed(1), mask)
    counts = torch.bincount(x.flatten(), minlength=6).double()
    p = torch.softmax(torch.cat([logits[:mask], torch.tensor([-math.inf], dtype=torch.float64)]) / temperature, 0)
    assert counts[mask] == 0
    assert torch.all((counts - n * p).abs() <= 5 * torch.sqrt(n * p * (1 - p)) + 1e-9), (counts, n * p)


# ---- CTEV ---------------------------------------------------------------------------------------


class Lens:
    """A model whose logit lens is the identity: the hidden state IS the logits."""
    cfg = SimpleNamespace(n_layer=5)

    @staticmethod
    def logit_lens(h):
        return h


@given(seed=st.integers(0, 999), scale=st.floats(0.01, 30))
def test_lens_entropy_is_the_normalised_entropy_of_the_lens_distribution(seed, scale):
    h = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    p = torch.softmax(h, -1)
    want = -(p * p.log()).sum(-1) / math.log(7)
    assert torch.allclose(lens_entropy(Lens, h), want)
    flat, peaked = torch.zeros(1, 1, 7, dtype=torch.float64), torch.tensor([[[50.0] + [0.0] * 6]], dtype=torch.float64)
    assert lens_entropy(Lens, flat).item() == pytest.approx(1.0) and lens_entropy(Lens, peaked).item() < 1e-15


@given(seed=st.integers(0, 999), lam=st.floats(0.1, 3), k=st.integers(1, 5))
def test_ctev_lowers_the_score_of_high_entropy_positions(seed, lam, k):
    """Equal confidences everywhere: with CTEV (window 0) the k positions committed are the k of
    lowest deep-layer entropy; each score is the confidence minus lambda times that entropy."""
    g = torch.Generator().manual_seed(seed)
    L, V = 6, 7
    hidden = {layer: torch.randn(1, L, V, generator=g, dtype=torch.float64) * 3 for layer in range(5)}
    cota = CoTA(CoTAConfig(ctev=True, ctev_lambda=lam, ctev_window=0), Lens, None,
                torch.ones(1, L, dtype=torch.bool), MASK_ID)
    penalty = cota.penalty(torch.full((1, L), MASK_ID), hidden, 0, L)
    entropy = torch.stack([lens_entropy(Lens, hidden[layer]) for layer in cota.deep]).mean(0)
    assert torch.allclose(penalty, lam * entropy)
    x = torch.full((1, L), MASK_ID)
    logits = torch.zeros(1, L, VOCAB, dtype=torch.float64)
    logits[..., 3] = 4.0  # the same confident guess at every position
    _, scores = commit(x, logits, torch.ones(1, L, dtype=torch.bool), k, SamplerConfig(), None, MASK_ID, penalty)
    chosen = (x != MASK_ID)[0].nonzero().flatten().tolist()
    assert sorted(chosen) == sorted(entropy[0].argsort()[:k].tolist())
    conf = torch.softmax(logits[0, 0].clone().index_fill_(0, torch.tensor([MASK_ID]), -math.inf), 0)[3]
    assert torch.allclose(scores[0], conf - lam * entropy[0])
    off = CoTA(CoTAConfig(ctev=False), Lens, None, torch.ones(1, L, dtype=torch.bool), MASK_ID)
    assert off.penalty(x, hidden, 0, L) is None


# ---- the caches: the feature cache with a sink, the prefix cache's row boundary ----------------

CACHE_MODELS = {"sink": tiny_model(sink=True, n_layer=3, random_gains=True),
                "unrotated sink": tiny_model(sink=True, n_layer=3, sink_rotation=False, random_gains=True),
                "zero-value sink": tiny_model(sink=True, n_layer=3, sink_value="zero", random_gains=True)}


@pytest.mark.parametrize("model", list(CACHE_MODELS))
@pytest.mark.parametrize("every_step", [dict(cache_kp=1, cache_kr=1, cache_rho=0.0),
                                        dict(cache_kp=1, cache_kr=4, cache_rho=1.0, cache_fresh_values=True),
                                        dict(cache_kp=1, cache_kr=1, cache_rho=0.5, cache_stale_first=True)])
def test_the_feature_cache_with_a_sink_refreshed_every_step_equals_no_cache(model, every_step):
    """Padded prompts, two blocks of four, two steps each, CoTA on: K_p = 1 with K_r = 1 or rho = 1
    recomputes every row at every step, so the tokens are the uncached ones."""
    prompts = [[3, 9, 4, 1, 7], [11, 2]]
    kw = dict(gen_length=8, steps=4, block_length=4, cota=CoTAConfig(ctae=True, ctev=True))
    m = CACHE_MODELS[model]
    assert torch.equal(generate(m, prompts, MASK_ID, PAD_ID, SamplerConfig(cache="feature", **every_step, **kw)),
                       generate(m, prompts, MASK_ID, PAD_ID, SamplerConfig(**kw)))


M = MASK_ID
# rows whose blocks start and end at different columns: one row's block begins where another's
# is already under way, and ends before the other's ends (what `own` decides, column by column)
LAYOUTS = [
    [[1, 2, M, M, 3, M, M, 4], [M, M, 5, M, M, 6, 7, 8]],
    [[1, M, M, M, M, 2], [3, 4, 5, M, M, M, M, 6, 7], [M, M, 8, 9, M, M]],
    [[1, 2, 3, M, M, M, M], [M, M, M, 4, 5, 6, M]],
]


@pytest.mark.parametrize("layout", range(len(LAYOUTS)))
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("sink", [False, True])
def test_each_rows_tokens_are_its_own_when_the_rows_blocks_cover_different_columns(layout, cache, sink):
    """Two steps per block, so the cache's later steps run: a row's tokens are those of the row
    filled alone (the batch's union of columns is run, only each row's own are written back)."""
    batch = LAYOUTS[layout]
    model = tiny_model(sink=sink, n_layer=2, random_gains=True)
    cfg = SamplerConfig(block_length=2, steps=4, cache=cache)
    together = infill(model, batch, MASK_ID, PAD_ID, cfg)
    for r, canvas in enumerate(batch):
        assert torch.equal(together[r, -len(canvas):], infill(model, [canvas], MASK_ID, PAD_ID, cfg)[0]), r


# ---- RoPE and the key norm ---------------------------------------------------------------------


@given(head_dim=st.sampled_from([2, 4, 8, 16]), base=st.sampled_from([100.0, 10000.0]),
       positions=st.lists(st.integers(0, 300), min_size=1, max_size=6))
def test_rope_rotates_pair_i_by_position_times_base_to_the_minus_2i_over_d(head_dim, base, positions):
    pos = torch.tensor([positions])
    cos, sin = rope_angles(pos, head_dim, base)
    angle = torch.tensor([[p * base ** (-2 * i / head_dim) for i in range(head_dim // 2)] for p in positions],
                         dtype=torch.float64)
    assert cos.shape == (1, 1, len(positions), head_dim // 2)
    assert torch.allclose(cos[0, 0].double(), angle.cos(), atol=1e-4)
    assert torch.allclose(sin[0, 0].double(), angle.sin(), atol=1e-4)
    x = torch.randn(1, 1, len(positions), head_dim, dtype=torch.float64)
    z = torch.view_as_complex(x.reshape(1, 1, len(positions), head_dim // 2, 2).contiguous())
    rotated = torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    assert torch.allclose(apply_rope(x, cos.double(), sin.double()), rotated, atol=1e-4 * (1 + x.abs().max()))


@given(seed=st.integers(0, 99), T=st.integers(1, 9))
def test_queries_and_keys_are_rms_normalised_with_their_own_gains_then_rotated(seed, T):
    model = tiny_model(seed=seed, random_gains=True)
    attn = model.blocks[1].attn
    assert not torch.equal(attn.q_norm.weight, attn.k_norm.weight)
    x = torch.randn(2, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    rope = rope_angles(torch.arange(T)[None].expand(2, T), 8, 10000.0)
    rope = tuple(r.double() for r in rope)
    q, k, v = attn.qkv(x, rope)
    raw = (x @ attn.wqkv.weight.T).view(2, T, 3, 2, 8).permute(2, 0, 3, 1, 4)
    rms = lambda t, g: t / torch.sqrt((t ** 2).mean(-1, keepdim=True) + 1e-6) * g
    assert torch.allclose(q, apply_rope(rms(raw[0], attn.q_norm.weight), *rope))
    assert torch.allclose(k, apply_rope(rms(raw[1], attn.k_norm.weight), *rope))
    assert torch.allclose(v, raw[2])


# ---- the training batches ----------------------------------------------------------------------


@given(extra=st.integers(0, 5), seq_len=st.integers(1, 9), seed=st.integers(0, 99))
def test_random_windows_are_slices_of_the_stream_and_every_start_is_drawn(extra, seq_len, seed):
    """A stream of seq_len + extra tokens has extra + 1 windows; 400 draws meet every one of them
    (the last included: a start range one short would never draw it) and nothing else."""
    from minidlm.data import random_windows
    stream = torch.arange(seq_len + extra) * 7
    windows = random_windows(stream, 400, seq_len, torch.Generator().manual_seed(seed))
    starts = windows[:, 0] // 7
    assert torch.equal(windows, stream[starts[:, None] + torch.arange(seq_len)])
    assert sorted(set(starts.tolist())) == list(range(extra + 1))


@pytest.mark.parametrize("sink", [False, True])
def test_the_relative_rule_counts_every_key_the_rows_attend_to_the_sink_included(sink):
    """c_j > 3 / N with N the keys a row attends over: the real content keys, plus [SINK] when the
    model has one. Twelve content keys: a key holding 0.24 passes 3/13 (with [SINK]) but not 3/12."""
    L, S = 12, int(sink)
    row = torch.zeros(S + L, dtype=torch.float64)
    if sink:
        row[0] = 0.3
    row[S + 2], row[S + 4] = 0.24, 0.2
    rest = [j for j in range(S, S + L) if j not in (S + 2, S + 4)]
    row[rest] = (1 - row.sum()) / len(rest)
    probe = SinkProbe(SimpleNamespace(cfg=SimpleNamespace(sink=sink)), StubTokenizer(), [L])
    cache = SimpleNamespace(record=SimpleNamespace(attention=[row.expand(1, 1, L, S + L).clone()],
                                                   value_norms=[torch.ones(1, 1, S + L, dtype=torch.float64)]))
    probe(1, torch.full((1, L), 20), cache)
    assert probe.sets[0][0, 0, 0].nonzero().flatten().tolist() == ([2] if sink else [])
    if sink:
        assert probe.sink_mass[0].item() == pytest.approx(0.3)


# ---- holes --------------------------------------------------------------------------------------

HOLE_TOK = None


@given(pieces=st.lists(st.text(" abcTom.,", max_size=8), min_size=1, max_size=4),
       holes=st.lists(st.integers(1, 3), min_size=4, max_size=4))
def test_a_canvas_keeps_the_given_text_but_the_one_space_before_each_hole(pieces, holes):
    """encode_canvas: end-of-text, then each piece's ids and each hole's [MASK]s, in order; the
    given ids decode to the text, less exactly one space right before each hole (it belongs to
    the hole), and a space at the very end stays."""
    global HOLE_TOK
    from minidlm.holes import encode_canvas
    from minidlm.tokenizer import Tokenizer
    HOLE_TOK = HOLE_TOK or Tokenizer.train(["Tom ran to the park. The cat, the dog."] * 20, vocab_size=270)
    text = "".join(p + (f"<|hole:{n}|>" if i + 1 < len(pieces) else "") for i, (p, n) in enumerate(zip(pieces, holes)))
    canvas = encode_canvas(HOLE_TOK, text)
    assert canvas[0] == HOLE_TOK.eot_id
    assert canvas.count(HOLE_TOK.mask_id) == sum(holes[:len(pieces) - 1])
    given = [t for t in canvas[1:] if t != HOLE_TOK.mask_id]
    want = "".join(p[:-1] if p.endswith(" ") and i + 1 < len(pieces) else p for i, p in enumerate(pieces))
    assert HOLE_TOK.decode(given) == want


@given(argv=st.lists(st.sampled_from(["--steps", "10", "--force", "--out", "a b.pt", "--sink"]), max_size=6),
       resume=st.booleans())
def test_the_resume_command_is_the_run_less_force_with_resume_once(argv, resume):
    """What Ctrl-C prints: the same command, without --force (it would start over) and with
    --resume once; each argument quoted for the shell."""
    import shlex
    argv = ["train_tiny.py", *argv, *(["--resume"] if resume else [])]
    run = SimpleNamespace(args=SimpleNamespace(resume=resume))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", argv)
        command = train_tiny.Run.resume_command(run)
    words = shlex.split(command)
    assert words[0] == "python" and words.count("--resume") == 1 and "--force" not in words
    assert [w for w in words[1:] if w != "--resume"] == [a for a in argv if a not in ("--force", "--resume")]
