"""sample.py's flags map onto the sampler's settings, and the --cota lesson marks what it counts."""
import os
import subprocess
import sys

from hypothesis import given, strategies as st

from minidlm.cota import CoTAConfig
from minidlm.repetition import clean_response
from minidlm.show import marked_text
from minidlm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sample  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = Tokenizer.train(["The cat sat on the mat. The dog sat on the log. A cat, a dog, a mat."] * 20,
                      vocab_size=280)


def cota_of(*argv) -> CoTAConfig:
    return sample.cota_config(sample.parse_args(list(argv)))


def test_cota_turns_on_both_halves_with_the_papers_constants():
    paper = cota_of("--cota")
    assert paper.ctae and paper.ctev and not paper.ctar
    c0 = CoTAConfig()
    assert (paper.ctae_tau, paper.ctae_gamma, paper.ctev_lambda, paper.ctev_window) == \
        (c0.ctae_tau, c0.ctae_gamma, c0.ctev_lambda, c0.ctev_window) == (5.0, 0.5, 0.75, 1)


def test_released_cota_is_the_authors_code_and_explicit_constants_win():
    released = cota_of("--cota", "released")
    assert released.ctae and released.ctev
    assert (released.ctae_tau, released.ctae_gamma, released.ctev_lambda, released.ctev_window) == (2.0, 0.75, 0.25, 0)
    assert cota_of("--cota", "released", "--ctev-window", "1").ctev_window == 1
    assert cota_of("--cota", "--ctae-tau", "3").ctae_tau == 3.0


def test_each_half_alone_and_nothing_by_default():
    assert (lambda c: c.ctae and not c.ctev)(cota_of("--ctae"))
    assert (lambda c: c.ctev and not c.ctae)(cota_of("--ctev"))
    assert (lambda c: not (c.ctae or c.ctev or c.ctar))(cota_of())


PLAIN_IDS = [t for t in range(TOK.vocab_size) if t != TOK.mask_id and not set(TOK.decode([t])) & set("[]")]


@given(st.lists(st.sampled_from(PLAIN_IDS), max_size=40))
def test_every_marked_token_repeats_its_neighbour_and_the_marks_count_the_pairs(ids):
    """The marks count exactly the adjacent equal pairs that ARR counts (end-of-text cut, whitespace
    tokens dropped), and removing them gives back the text, token by token."""
    text, repeats = marked_text(TOK, ids, colour=False)
    cleaned = clean_response(ids, TOK.eot_id, TOK.is_whitespace_token)
    assert repeats == sum(a == b for a, b in zip(cleaned, cleaned[1:]))
    plain = "".join(TOK.decode([t]) for t in TOK.until_eot(ids)).replace("\n", " ")
    assert text.replace("[[", "").replace("]]", "") == plain


def test_cota_without_a_cache_is_the_four_decode_lesson(tmp_path):
    import torch
    from minidlm.checkpoint import save_model
    from minidlm.model import DiffusionLM, ModelConfig
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_model(str(path), DiffusionLM(ModelConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, d_model=16,
                                                 max_seq_len=48)), TOK, {"command": "test"})
    run = lambda *a: subprocess.run([sys.executable, "sample.py", "--checkpoint", str(path), *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = run("--cota", "--gen-length", "8")
    assert r.returncode == 0, r.stderr
    for label in ("no cache", "feature cache (", "feature cache + CoTA, the paper constants", "stale-first"):
        assert label in r.stdout
    assert r.stdout.count("repeated pair(s) here; ARR") == 4 and "docs/repeat-curse.md" in r.stdout
    bad = run("--cota", "--show", "--gen-length", "8")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--cache feature" in bad.stderr
