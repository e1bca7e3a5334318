"""The copy probe (minidlm/copy_probe.py): which holes it makes, what it scores, and the corpus
option that makes the hero's name come back more often."""
import random
import re
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import MASK_ID, PAD_ID, tiny_model
from minidlm.checkpoint import load_model
from minidlm.copy_probe import (GENDER, MENTIONS, Case, attention_on_mentions, head_zeroed, hero_mentions,
                                make_case, probe_cases, repeat_stats, summarize)
from minidlm.corpus import generate_stories, generate_story, is_grammatical, split_sentences


@pytest.fixture(scope="module")
def tok():
    return load_model("checkpoints/tiny.pt")[1]


@given(seed=st.integers(0, 2**32 - 1), mention=st.sampled_from(MENTIONS), share=st.sampled_from([0.5, 1.0]))
def test_a_case_filled_with_its_answer_is_the_story(tok, seed, mention, share):
    """The hole is exactly the hero's mention: put the name's ids back and the canvas is the story's
    ids; the rivals are the other names of the hero's gender with as many tokens."""
    story = generate_story(random.Random(seed), share)
    name, spans = hero_mentions(story)
    case = make_case(tok, story, mention)
    if len(spans) < 2:
        assert case is None
        return
    canvas = list(case.canvas)
    assert [canvas[i] for i in case.hole] == [tok.mask_id] * len(case.answer)
    for i, t in zip(case.hole, case.answer):
        canvas[i] = t
    assert canvas == [tok.eot_id] + tok.encode(story)
    start, end = spans[0 if mention == "first" else 1]
    assert tok.decode(list(case.answer)).strip() == story[start:end] == name
    assert case.answer not in case.rivals and len(case.rivals) == len(set(case.rivals))
    others = [tok.decode(list(r)).strip() for r in case.rivals]
    assert all(GENDER[o] == GENDER[name] and len(r) == len(case.answer) for o, r in zip(others, case.rivals))
    # where a copy would read: every other mention's tokens, and nothing of the hole
    assert case.others and not set(case.others) & set(case.hole)
    mentioned = tok.decode([canvas[i] for i in case.others]).replace(" ", "")
    assert mentioned == name * (len(spans) - 1)


class SetLogits(torch.nn.Module):
    """A model whose log-probabilities are the same at every position: `probs` over the vocabulary."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.nn.Parameter(torch.tensor(probs, dtype=torch.float64).log())
        self.cfg = SimpleNamespace(max_seq_len=64)

    def forward(self, x, positions=None, attn_bias=None):
        return self.logp.expand(*x.shape, -1)


TOK = SimpleNamespace(mask_id=MASK_ID, eot_id=PAD_ID)


def test_the_probe_reads_the_right_name_against_the_best_rival_of_a_model_it_controls():
    probs = [0.01] * 40
    probs[3], probs[4], probs[6], probs[MASK_ID] = 0.4, 0.2, 0.05, 0.5  # [MASK] is never a prediction
    model = SetLogits([p / sum(probs) for p in probs])
    norm = sum(probs) - probs[MASK_ID]
    won = Case("A", (PAD_ID, 5, MASK_ID, 7), (2,), (3,), ((4,), (6,)))
    lost = Case("B", (PAD_ID, 1, 2, 5, MASK_ID, MASK_ID, 7), (4, 5), (6, 6), ((3, 3), (4, 6), (9, 9)))
    results = probe_cases(model, TOK, [won, lost])
    assert results[0]["right"] == pytest.approx(torch.tensor(0.4 / norm).log().item())
    assert results[0]["rival"] == pytest.approx(torch.tensor(0.2 / norm).log().item())
    assert results[1]["right"] == pytest.approx(2 * torch.tensor(0.05 / norm).log().item())
    assert results[1]["rival"] == pytest.approx(2 * torch.tensor(0.4 / norm).log().item())
    assert [r["recovered"] for r in results] == [True, False]  # greedy writes 3, then 3 3
    log = lambda p: torch.tensor(p / norm).log().item()
    assert results[0]["margin"] == pytest.approx(log(0.4) - (log(0.2) + log(0.05)) / 2)
    assert results[1]["margin"] == pytest.approx(2 * log(0.05) - (2 * log(0.4) + log(0.2) + log(0.05) + 2 * log(0.01)) / 3)
    s = summarize(results, [won, lost])
    assert s["cases"] == 2 and s["prefers"] == 0.5 and s["recovered"] == 0.5
    assert s["p_right"] == pytest.approx((0.4 / norm + (0.05 / norm) ** 2) / 2)
    assert s["chance"] == pytest.approx((1 / 3 + 1 / 4) / 2)


def random_cases(data, n_cases, mask_id=MASK_ID):
    """Canvases of different lengths (a batch pads them on the left), a hole in each, two rivals
    and a few other positions marked as the name's other mention."""
    cases = []
    for _ in range(n_cases):
        n = data.draw(st.integers(5, 20))
        canvas = [PAD_ID] + data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
        at, width = data.draw(st.integers(1, n - 3)), data.draw(st.integers(1, 2))
        hole = tuple(range(at, at + width))
        for i in hole:
            canvas[i] = mask_id
        rest = [i for i in range(1, n + 1) if i not in hole]
        others = tuple(sorted(data.draw(st.sets(st.sampled_from(rest), min_size=1, max_size=3))))
        cases.append(Case("x", tuple(canvas), hole, (31,) * width, ((32,) * width, (33,) * width), others))
    return cases


@given(data=st.data())
def test_a_case_scores_the_same_alone_and_in_a_left_padded_batch(data):
    """Rows of different lengths share a batch by left padding, hidden from attention: each case's
    numbers are the ones it gets alone."""
    model = tiny_model(n_layer=2)
    cases = random_cases(data, data.draw(st.integers(2, 4)))
    together = probe_cases(model, TOK, cases)
    alone = [probe_cases(model, TOK, [c])[0] for c in cases]
    for a, b in zip(together, alone):
        assert a["right"] == pytest.approx(b["right"]) and a["rival"] == pytest.approx(b["rival"])
        assert a["recovered"] == b["recovered"] and a["margin"] == pytest.approx(b["margin"])


@given(data=st.data(), sink=st.booleans())
def test_attention_on_the_other_mention_is_the_same_alone_and_in_a_padded_batch(data, sink):
    model = tiny_model(n_layer=2, sink=sink)
    cases = random_cases(data, data.draw(st.integers(2, 4)))
    together, uniform = attention_on_mentions(model, TOK, cases)
    alone = torch.stack([attention_on_mentions(model, TOK, [c])[0] for c in cases]).mean(0)
    assert together.shape == (2, 2) and torch.allclose(together, alone, atol=1e-6)
    assert bool(((together >= 0) & (together <= 1 + 1e-9)).all())
    assert uniform == pytest.approx(sum(len(c.others) / (len(c.canvas) + sink) for c in cases) / len(cases))


@given(data=st.data(), sink=st.booleans())
def test_a_model_whose_queries_are_zero_attends_uniformly_to_the_other_mention(data, sink):
    """Zero queries give every key the same logit: the weight on the other mention is then the
    share of the keys its tokens are ([SINK] included), in every layer and head: the uniform figure."""
    model = tiny_model(n_layer=2, sink=sink)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.wqkv.weight[:model.cfg.d_model] = 0
    cases = random_cases(data, data.draw(st.integers(1, 3)))
    weights, uniform = attention_on_mentions(model, TOK, cases)
    assert torch.allclose(weights, torch.full_like(weights, uniform), atol=1e-9)


@given(data=st.data(), sink=st.booleans())
def test_every_content_key_as_the_other_mention_gets_all_attention_but_the_sinks(data, sink):
    """With every canvas position named as the other mention, a hole row's weight there is all of
    its attention except what goes to the [SINK] (key 0 of a sink model's forward): pins which
    rows and keys are read, padding and sink offsets included."""
    model = tiny_model(n_layer=2, sink=sink)
    case = random_cases(data, 1)[0]
    case = Case(case.name, case.canvas, case.hole, case.answer, case.rivals, tuple(range(len(case.canvas))))
    alone, _ = attention_on_mentions(model, TOK, [case])
    _, trace = model(torch.tensor([case.canvas]), trace=True)
    S = int(sink)
    for layer, attn in enumerate(trace.attn):
        rows = [S + i for i in case.hole]
        expected = 1 - attn[0, :, rows, 0].mean(-1) if sink else torch.ones(attn.shape[1], dtype=attn.dtype)
        assert torch.allclose(alone[layer], expected.float(), atol=1e-6)


@given(layer=st.integers(0, 1), head=st.integers(0, 1), seed=st.integers(0, 3))
def test_silencing_a_head_is_zeroing_its_columns_of_the_output_projection_and_undoes_itself(layer, head, seed):
    model = tiny_model(n_layer=2, seed=seed)
    x = torch.randint(0, 30, (2, 9), generator=torch.Generator().manual_seed(seed))
    before = model(x)
    with head_zeroed(model, layer, head):
        silenced = model(x)
    assert torch.equal(model(x), before)
    size = model.cfg.d_model // model.cfg.n_head
    with torch.no_grad():
        model.blocks[layer].attn.wo.weight[:, head * size:(head + 1) * size] = 0
    assert torch.allclose(silenced, model(x), atol=1e-9) and not torch.allclose(silenced, before)


def test_repeat_stats_counts_mentions_and_token_gaps(tok):
    story = "Mia had a red ball. Mia played with the ball all day. She smiled. Mia went home happily."
    s = repeat_stats(tok, [story, "Tom had a kite. He was so happy!"])
    assert s["repeat_share"] == 0.5 and s["mean_mentions"] == 2 and s["mentions_histogram"] == {1: 1, 3: 1}
    first, second, third = (len(tok.encode(story[:m.start()])) for m in re.finditer("Mia", story))
    assert s["gap_max"] == max(second - first, third - second)


# ---- The corpus option --------------------------------------------------------------------------
def test_name_share_one_half_is_the_shipped_corpus():
    assert generate_stories(300, seed=7, name_share=0.5) == generate_stories(300, seed=7)


@given(seed=st.integers(0, 2**32 - 1))
def test_name_share_zero_names_the_hero_once_and_every_share_stays_grammatical(seed):
    """0: the hero is named in the introduction only. Every sentence of any share is one the
    recognizer accepts (a share only picks between two renderings the grammar already has)."""
    never = generate_story(random.Random(seed), 0.0)
    assert len(hero_mentions(never)[1]) == 1
    for story in (never, generate_story(random.Random(seed), 1.0)):
        assert all(is_grammatical(s) for s in split_sentences(story)), story


def test_name_share_one_names_the_hero_more_often():
    stories = {share: generate_stories(500, seed=3, name_share=share) for share in (0.5, 1.0)}
    mentions = {share: sum(len(hero_mentions(s)[1]) for s in ss) / 500 for share, ss in stories.items()}
    assert mentions[1.0] > mentions[0.5] + 1


# ---- End to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_tiny_logs_the_copy_curve_and_copy_study_reads_it(tmp_path):
    """--copy-every N records a point at step 0, every N steps and at the end; the study prints
    the corpus statistics, the probe and the curve, and reprints its JSON unchanged."""
    import json
    import os
    import subprocess
    import sys
    from minidlm.checkpoint import read
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out, saved = tmp_path / "copy.pt", tmp_path / "copy.json"
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True,
                                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = run("train_tiny.py", "--out", str(out), "--n-layer", "1", "--d-model", "16", "--n-head", "2",
            "--seq-len", "192", "--batch-size", "2", "--vocab-size", "300", "--steps", "5", "--copy-every", "2",
            "--eval-mc", "1", "--eval-interval", "1000", "--threads", "1", "--name-share", "0.9")
    assert r.returncode == 0, r.stderr[-2000:]
    curve = read(str(out))["meta"]["copy_curve"]
    assert [p["step"] for p in curve] == [0, 2, 4, 5] and r.stderr.count("copy probe") == 4
    assert all(0 <= p[f"{m}_recovered"] <= 1 for p in curve for m in MENTIONS)
    r = run("-m", "studies.copy_study", "--arm", f"tiny={out}", "--stories", "20", "--json", str(saved))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--name-share 1.0" in r.stdout and r.stdout.count("| tiny |") == 2 + 4
    again = run("-m", "studies.copy_study", "--from-json", str(saved))
    assert again.returncode == 0 and again.stdout == r.stdout
    seeds = run("-m", "studies.copy_study", "--from-json", str(saved), "--per-seed")
    assert seeds.returncode == 0 and seeds.stdout.count("| tiny copy.pt |") == 4  # every point of the one seed
    assert json.loads(saved.read_text())["rows"][0]["per_model"][0]["name_share"] == 0.9
    heads = tmp_path / "heads.json"
    r = run("-m", "studies.copy_study", "--arm", f"tiny={out}", "--stories", "20", "--heads", "--json", str(heads))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Which head copies" in r.stdout and r.stdout.count("| tiny | copy.pt |") == 2
    again = run("-m", "studies.copy_study", "--from-json", str(heads))
    assert again.returncode == 0 and again.stdout == r.stdout
