"""Tests for minidlm.tokenizer: exact round trips, special-token ids, determinism, persistence."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidlm.tokenizer import EOT, MASK, SINK, Tokenizer, train_bpe

VOCAB_SIZE = 400


def make_corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """Simple English-like sentences, generated so the tests need no data files."""
    rng = random.Random(seed)
    subjects = ["The cat", "A dog", "My friend", "The teacher", "Our neighbour", "The old man"]
    verbs = ["sees", "likes", "walks to", "reads about", "talks with", "remembers"]
    objects = ["the river", "a small house", "the market", "her brother", "the red car", "music"]
    endings = [".", "!", "?", ", and then it rains."]
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}"
        + rng.choice([" ", "\n", "\n\n", f" In {rng.randint(1900, 2024)}, "])
        for _ in range(n_sentences)
    ]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=VOCAB_SIZE)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.characters(codec="utf-8")),  # emoji, CJK, control characters
        st.lists(st.sampled_from(["<|mask|>", EOT, SINK, "😀", "\x00", "\n", " ", "the ", "é"])).map("".join),
    )
)
def test_round_trip_is_exact_and_never_special(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert not set(ids) & {tok.eot_id, tok.mask_id, tok.sink_id}


def test_literal_special_strings_are_plain_text(tok):
    ids = tok.encode(f"a {MASK} b {EOT}{SINK}")
    assert tok.mask_id not in ids and tok.eot_id not in ids and tok.sink_id not in ids
    assert tok.decode(ids) == f"a {MASK} b {EOT}{SINK}"


def test_special_ids_are_the_last_three(tok):
    assert tok.vocab_size == VOCAB_SIZE
    assert (tok.eot_id, tok.mask_id, tok.sink_id) == (VOCAB_SIZE - 3, VOCAB_SIZE - 2, VOCAB_SIZE - 1)
    assert tok.decode([tok.mask_id]) == MASK


def test_decode_of_partial_utf8_uses_replacement_char(tok):
    ids = tok.encode("😀")
    assert len(ids) > 1  # not in the training text, so it stays as several byte tokens
    assert tok.decode(ids[:1]) == "\ufffd"
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])


def test_training_is_deterministic(corpus, tok):
    again = Tokenizer.train(corpus, vocab_size=VOCAB_SIZE)
    assert again.mergeable_ranks == tok.mergeable_ranks


def test_more_merges_give_shorter_encodings(corpus):
    text = "".join(corpus)
    lengths = [len(Tokenizer.train(corpus, vocab_size=v).encode(text)) for v in (260, 300, 400)]
    assert lengths[0] > lengths[1] > lengths[2]
    assert lengths[0] < len(text.encode("utf-8"))  # even one merge helps


def test_training_stops_when_no_pair_repeats():
    ranks = train_bpe(["ab ab ab"], vocab_size=1000)  # pieces: "ab" once, " ab" twice
    assert len(ranks) == 258  # "ab" (3 times), then " ab" (twice), then nothing repeats
    assert ranks[b"ab"] == 256 and ranks[b" ab"] == 257


def test_token_display_and_classes(tok):
    assert tok.token_str(tok.mask_id) == "[MASK]"
    assert tok.token_str(tok.encode(" ")[0]) == "␣"
    assert tok.token_str(tok.encode("\n")[0]) == "\\n"
    assert tok.token_str(0) == "\\x00"
    (newlines,) = tok.encode("\n\n")
    assert tok.is_whitespace_token(newlines) and not tok.is_punctuation_token(newlines)
    (period,) = tok.encode(".")
    assert tok.is_punctuation_token(period) and not tok.is_whitespace_token(period)
    (cat,) = tok.encode(" cat")
    assert not tok.is_whitespace_token(cat) and not tok.is_punctuation_token(cat)
    assert not tok.is_whitespace_token(tok.mask_id) and not tok.is_punctuation_token(tok.eot_id)


def test_state_dict_round_trip_through_torch_save(tok, corpus, tmp_path):
    path = tmp_path / "tok.pt"
    torch.save(tok.state_dict(), path)
    loaded = Tokenizer.from_state_dict(torch.load(path, weights_only=True))
    assert loaded.vocab_size == tok.vocab_size and loaded.mask_id == tok.mask_id
    for text in corpus[:50] + ["unseen words 😀 <|mask|>"]:
        assert loaded.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.update(format="gpt2"),
        lambda s: s.update(version=99),
        lambda s: s.pop("merged_tokens_hex"),
        lambda s: s.update(special_tokens=[EOT, MASK]),
        lambda s: s["merged_tokens_hex"].append("zz"),  # not hex
        lambda s: s["merged_tokens_hex"].append("61"),  # duplicate of the single byte "a"
        lambda s: s["merged_tokens_hex"].append("7a7a7a7a7a7a"),  # "zzzzzz": no lower-rank halves
    ],
)
def test_malformed_state_raises_value_error(tok, corrupt):
    state = tok.state_dict()
    state["merged_tokens_hex"] = list(state["merged_tokens_hex"])
    corrupt(state)
    with pytest.raises(ValueError):
        Tokenizer.from_state_dict(state)


def test_vocab_size_must_leave_room_for_a_merge(corpus):
    with pytest.raises(ValueError):
        Tokenizer.train(corpus, vocab_size=259)
    assert Tokenizer.train(corpus, vocab_size=260).vocab_size == 260
