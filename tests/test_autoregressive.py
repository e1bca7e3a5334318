"""The autoregressive baseline: the same network with a causal mask, its loss, and its K/V-cached
decoding; the scripts keep each objective's options to its own checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from conftest import MASK_ID, PAD_ID, VOCAB, tiny_model
from minidlm.autoregressive import ar_generate, ar_generate_uncached
from minidlm.checkpoint import load_model, read, save_model
from minidlm.diffusion import ar_loss, evaluate_nelbo, evaluate_nll
from minidlm.model import DiffusionLM, ModelConfig
from minidlm.tokenizer import Tokenizer
from test_cli import TEXT, assert_clean_error, script_run  # noqa: F401 (script_run is a fixture)

TOKENS = st.integers(0, VOCAB - 4)  # ordinary ids: no [MASK], pad or bos


def causal_model(sink=False, seed=0):
    model = tiny_model(sink=sink, seed=seed)
    model.cfg.causal = True  # the same weights, the causal mask on
    return model


@given(st.lists(TOKENS, min_size=2, max_size=24), st.data(), st.booleans())
def test_logits_at_i_do_not_depend_on_any_later_token(seq, data, sink):
    model = causal_model(sink)
    i = data.draw(st.integers(0, len(seq) - 2))
    later = data.draw(st.lists(TOKENS, min_size=len(seq) - i - 1, max_size=len(seq) - i - 1))
    x, y = torch.tensor([seq]), torch.tensor([seq[:i + 1] + later])
    assert torch.allclose(model(x)[:, :i + 1], model(y)[:, :i + 1], rtol=0, atol=1e-12)


def test_without_the_causal_flag_later_tokens_do_matter():
    """The property above is the mask's doing: the same weights, bidirectional, see the future."""
    model = tiny_model()
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    y = x.clone()
    y[0, -1] = 7
    assert not torch.allclose(model(x)[:, 0], model(y)[:, 0])


@given(st.lists(st.lists(TOKENS, min_size=6, max_size=6), min_size=1, max_size=3), st.integers(0, VOCAB - 4))
def test_ar_loss_is_the_mean_next_token_cross_entropy_computed_by_hand(rows, bos):
    """Token i of every window is scored from bos and the tokens before it only, each prefix run
    through the model on its own; the loss is the mean over all B * L tokens."""
    model = causal_model()
    x0 = torch.tensor(rows)
    by_hand = []
    for row in rows:
        for i, target in enumerate(row):
            logits = model(torch.tensor([[bos] + row[:i]]))[0, -1]
            by_hand.append(-torch.log_softmax(logits, -1)[target])
    expected = torch.stack(by_hand).mean()
    assert math.isclose(ar_loss(model, x0, bos).item(), expected.item(), rel_tol=1e-5)
    nats, _ = evaluate_nll(model, x0, bos, batch_size=2)
    assert math.isclose(nats, expected.item(), rel_tol=1e-5)


PROMPTS = st.lists(st.lists(TOKENS, min_size=1, max_size=8), min_size=1, max_size=4)


@given(PROMPTS, st.integers(1, 10), st.sampled_from([0.0, 0.7, 1.5]), st.integers(0, 2**16), st.booleans())
def test_kv_cached_decoding_equals_the_uncached_loop(prompts, n, temperature, seed, sink):
    """Token for token, greedy and sampled with the same seed, on left-padded batches."""
    model = causal_model(sink)
    cached = ar_generate(model, prompts, MASK_ID, PAD_ID, n, temperature, seed)
    assert torch.equal(cached, ar_generate_uncached(model, prompts, MASK_ID, PAD_ID, n, temperature, seed))
    assert not (cached == MASK_ID).any()


@given(PROMPTS, st.integers(1, 8))
def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch(prompts, n):
    model = causal_model()
    together = ar_generate(model, prompts, MASK_ID, PAD_ID, n)
    for row, prompt in enumerate(prompts):
        assert torch.equal(together[row], ar_generate(model, [prompt], MASK_ID, PAD_ID, n)[0])


def test_on_step_shows_one_new_token_per_step_and_masks_the_rest():
    model, frames = causal_model(), []
    out = ar_generate(model, [[1, 2, 3]], MASK_ID, PAD_ID, 5, on_step=lambda s, x, c: frames.append(x[0, 3:].tolist()))
    assert len(frames) == 5 and frames[-1] == out[0].tolist()
    for step, frame in enumerate(frames, 1):
        assert frame[:step] == out[0, :step].tolist() and frame[step:] == [MASK_ID] * (5 - step)


def test_decoding_refuses_a_diffusion_model_and_an_overlong_request_and_the_nelbo_a_causal_one():
    with pytest.raises(ValueError, match="autoregressive"):
        ar_generate(tiny_model(), [[1, 2]], MASK_ID, PAD_ID, 4)
    with pytest.raises(ValueError, match="context"):
        ar_generate(causal_model(), [[1] * 60], MASK_ID, PAD_ID, 8)
    with pytest.raises(ValueError, match="evaluate_nll"):
        evaluate_nelbo(causal_model(), torch.ones(2, 8, dtype=torch.long), MASK_ID)


# --- checkpoints and the scripts -------------------------------------------------------------

def tiny_checkpoint(path, causal: bool):
    tok = Tokenizer.train([TEXT], vocab_size=300)
    torch.manual_seed(0)
    model = DiffusionLM(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=48,
                                    causal=causal))
    save_model(str(path), model, tok, {"command": "test"})
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objectives")
    return {"ar": tiny_checkpoint(folder / "ar.pt", True), "diffusion": tiny_checkpoint(folder / "diffusion.pt", False)}


def test_a_checkpoint_without_the_flag_loads_as_diffusion(checkpoints, tmp_path):
    ckpt = read(checkpoints["diffusion"])
    del ckpt["config"]["causal"]  # as saved before the autoregressive baseline existed
    torch.save(ckpt, tmp_path / "old.pt")
    assert not load_model(str(tmp_path / "old.pt"))[0].cfg.causal
    assert load_model(checkpoints["ar"])[0].cfg.causal


def test_sample_decodes_an_ar_checkpoint_left_to_right(checkpoints, script_run):
    r = script_run("sample.py", "--checkpoint", checkpoints["ar"], "--prompt", "The cat", "--gen-length", "8",
                   "--num-samples", "2", "--temperature", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The cat") and "2 x 8 tokens in 8 steps" in r.stderr and "cache kv" in r.stderr
    plain = script_run("sample.py", "--checkpoint", checkpoints["ar"], "--prompt", "The cat", "--gen-length", "8",
                       "--num-samples", "2", "--temperature", "1", "--no-kv-cache")
    assert plain.returncode == 0 and plain.stdout == r.stdout and "cache none" in plain.stderr


IN_PROCESS = pytest.mark.parametrize("script_run", ["in-process"], indirect=True)  # a subprocess each: too slow


@IN_PROCESS
@pytest.mark.parametrize("flags, needle", [
    (["--suffix", "The end."], "cannot use the text after a hole"),
    (["--prompt", "The <|hole:2|> sat."], "cannot use the text after a hole"),
    (["--cache", "dual"], "--cache is an option of the diffusion sampler"),
    (["--steps", "4"], "--steps is an option of the diffusion sampler"),
    (["--block-length", "4"], "--block-length is an option of the diffusion sampler"),
    (["--cota"], "--cota is an option of the diffusion sampler"),
    (["--sinks"], "--sinks is an option of the diffusion sampler"),
    (["--remasking", "random"], "--remasking is an option of the diffusion sampler"),
])
def test_an_ar_checkpoint_refuses_holes_and_the_diffusion_options(checkpoints, script_run, flags, needle):
    assert_clean_error(script_run("sample.py", "--checkpoint", checkpoints["ar"], "--gen-length", "8", *flags), needle)


@pytest.mark.parametrize("study", ["studies/sink_compare.py", "studies/copy_study.py"])
def test_the_diffusion_studies_refuse_an_ar_checkpoint_in_one_line(checkpoints, script_run, study):
    assert_clean_error(script_run(study, "--arm", f"ar={checkpoints['ar']}"), "is an autoregressive model")


def test_a_diffusion_checkpoint_refuses_the_ar_option(checkpoints, script_run):
    assert_clean_error(script_run("sample.py", "--checkpoint", checkpoints["diffusion"], "--no-kv-cache"),
                       "--no-kv-cache is for autoregressive checkpoints")


@IN_PROCESS
@pytest.mark.parametrize("flags", [["--t-min", "0.2"], ["--t-max=0.9"], ["--no-plain-ce"], ["--sink"],
                                   ["--sink-value", "zero"], ["--eval-mc", "4"], ["--curve-every", "10"]])
def test_train_tiny_refuses_diffusion_options_with_the_ar_objective(script_run, tmp_path, flags):
    r = script_run("train_tiny.py", "--objective", "ar", "--out", str(tmp_path / "a.pt"), *flags)
    assert_clean_error(r, f"{flags[0].split('=')[0]} is an option of the masked-diffusion objective")
    assert not (tmp_path / "a.pt").exists()


def test_train_tiny_ar_records_its_objective_and_resume_keeps_it(script_run, tmp_path):
    data, out = tmp_path / "text.txt", str(tmp_path / "ar.pt")
    data.write_text(TEXT)
    tiny = ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--seq-len", "32", "--batch-size", "2",
            "--vocab-size", "300", "--threads", "1", "--data", str(data), "--out", out]
    r = script_run("train_tiny.py", "--objective", "ar", "--steps", "2", *tiny)
    assert r.returncode == 0, r.stderr
    assert "val NLL (exact)" in r.stderr and "NELBO" not in r.stderr
    model, _, meta = load_model(out)
    assert model.cfg.causal and meta["objective"] == "ar" and "val_nll_nats" in meta["metrics"]
    assert_clean_error(script_run("train_tiny.py", "--resume", "--steps", "3", *tiny),
                       "--objective diffusion differs from the saved run's ar")


@IN_PROCESS
@pytest.mark.parametrize("flags, needle", [(["--arms", "embedded,nope"], "--arms must name arms"),
                                           (["--seeds", "-1"], "--seeds"),
                                           (["--from-json", "README.md"], "is not a comparison")])
def test_the_comparison_study_refuses_bad_input(script_run, flags, needle):
    assert_clean_error(script_run("studies/ar_compare.py", *flags), needle)


@pytest.mark.slow
def test_the_comparison_study_runs_end_to_end_and_prints_its_tables_again(tmp_path):
    """Both objectives on the embedded corpus at a toy budget, every measure, then --from-json."""
    from test_cli import run
    out = tmp_path / "c.json"
    r = run("studies/ar_compare.py", "--seeds", "0", "--arms", "embedded", "--steps", "2", "--n-layer", "1",
            "--evals", "2", "--prompts", "2", "--stories", "6", "--repeats", "1", "--threads", "1",
            "--runs", str(tmp_path / "runs"), "--json", str(out), "--plot", str(tmp_path))
    assert r.returncode == 0, r.stderr
    for row in ("val bits/token, equal tokens", "equal wall time", "grammatical %, greedy",
                "name hole recovered", "autoregressive, K/V cache", "diffusion, dual cache"):
        assert row in r.stdout
    assert (tmp_path / "ar_vs_diffusion.png").exists()
    again = run("studies/ar_compare.py", "--from-json", str(out))
    assert again.returncode == 0 and again.stdout == r.stdout
