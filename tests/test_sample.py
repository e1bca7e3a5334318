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
    r = run("--gen-length", "8", "--block-length", "4", "--save", str(tmp_path / "r.gif"))
    assert r.returncode == 0 and "wrote" in r.stderr, r.stderr
    from PIL import Image
    with Image.open(tmp_path / "r.gif") as im:
        assert im.n_frames == 8  # --steps defaults to one per token: one frame per step
    bad = run("--cota", "--show", "--gen-length", "8")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--cache feature" in bad.stderr


def test_the_animation_has_one_frame_per_step_and_holds_the_last(tmp_path):
    pytest = __import__("pytest")
    Image = pytest.importorskip("PIL.Image")
    from minidlm.animation import save_gif
    m = TOK.mask_id
    word = TOK.encode(" cat")[0]
    frames = [[word if i < step else m for i in range(6)] for step in range(1, 7)]  # one commit per step
    path = save_gif(str(tmp_path / "a.gif"), frames, TOK, prompt="The", frame_ms=50, hold_ms=900)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == len(frames) and im.info.get("loop") == 0
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        assert durations[-1] == 900 and set(durations[:-1]) == {50}


def test_save_refuses_what_is_not_a_gif_before_any_work():
    r = subprocess.run([sys.executable, "sample.py", "--save", "out.mp4"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and ".gif" in r.stderr
