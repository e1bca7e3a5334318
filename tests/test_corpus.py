"""Tests for minidlm.corpus: determinism, story structure, the no-repeat rule, the exact
recognizer behind `grammatical_rate`, and loading a user's own text file."""
import os
import random
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidlm import corpus
from minidlm.corpus import (CorpusError, default_corpus, generate_stories, generate_story,
                            grammatical_rate, is_grammatical, load_text_file, split_sentences,
                            split_train_val)

PRONOUNS = {"girl": {"she", "her"}, "boy": {"he", "him", "his"}}
GENDER = {name: gender for gender, names in corpus.NAMES.items() for name in names}
seeds = st.integers(0, 2**32 - 1)


def words(text: str) -> list[str]:
    """Lowercase words with attached punctuation removed (an independent copy of the rule)."""
    return [w.strip(".,!?") for w in text.lower().split()]


@pytest.fixture(scope="module")
def default_split():
    return default_corpus()


@pytest.fixture(scope="module")
def stories():
    return generate_stories(5000, seed=123)


# ---- Determinism and shape ----------------------------------------------------------------------
def test_same_seed_gives_same_stories():
    small = dict(n_train=300, n_val=30)
    assert generate_stories(200, seed=7) == generate_stories(200, seed=7)
    assert default_corpus(seed=3, **small) == default_corpus(seed=3, **small)


def test_stories_do_not_depend_on_the_string_hash_seed():
    code = "from minidlm.corpus import generate_stories; print(generate_stories(300, seed=5))"
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                              text=True, check=True, env={**os.environ, "PYTHONHASHSEED": str(h)}
                              ).stdout for h in (1, 2)}
    assert len(outputs) == 1 and outputs.pop() == str(generate_stories(300, seed=5)) + "\n"


def test_different_seeds_give_different_stories():
    small = dict(n_train=50, n_val=10)
    assert generate_stories(50, seed=0) != generate_stories(50, seed=1)
    assert default_corpus(seed=0, **small) != default_corpus(seed=1, **small)


def test_stories_are_single_lines_of_three_to_eight_clean_sentences(stories):
    for story in stories:
        assert "\n" not in story and story.isascii() and "  " not in story
        sentences = split_sentences(story)
        assert 3 <= len(sentences) <= 8
        assert " ".join(sentences) == story
        for s in sentences:
            assert s[0].isupper() and s[-1] in ".!?" and not re.search(r"[.!?]", s[:-1])


def test_vocabulary_has_several_hundred_words(default_split):
    train, val = default_split
    vocabulary = {w for story in train + val for w in words(story)}
    assert 300 <= len(vocabulary) <= 1000


def test_at_least_25_sentence_shapes():
    assert len(set(corpus.TEMPLATES)) >= 25


def test_templates_keep_the_rules_the_recognizer_relies_on():
    for template in corpus.TEMPLATES:
        slots = re.findall(r"\{([A-Z_]+)\}", template)
        assert slots.count("HERO") + slots.count("SUBJ") <= 1, template
        for slot, word in corpus.ARTICLE_SLOTS.items():
            assert not (slot in slots and word in slots), template
        assert template[-1] in ".!?" and not re.search(r"[.!?]", template[:-1]), template


# ---- No word follows itself ---------------------------------------------------------------------
def test_no_adjacent_repeated_word_even_across_sentence_boundaries(stories):
    for story in stories:
        w = words(story)
        assert all(a != b for a, b in zip(w, w[1:])), story


def test_no_adjacent_repeat_in_the_default_corpus(default_split):
    train, val = default_split
    for story in train[:20000] + val:
        w = words(story)
        assert all(a != b for a, b in zip(w, w[1:])), story


# ---- Stories refer back -------------------------------------------------------------------------
def test_the_hero_is_referred_back_to_by_name_or_pronoun(stories):
    referred = 0
    for story in stories:
        first, *rest = split_sentences(story)
        hero = next(w for w in words(first) if w.capitalize() in GENDER)
        later = set(words(" ".join(rest)))
        referred += hero in later or bool(PRONOUNS[GENDER[hero.capitalize()]] & later)
    assert referred / len(stories) > 0.95


def test_the_object_recurs_in_later_sentences(stories):
    things, recurs = set(corpus.STORY_WORDS["THING"]), 0
    for story in stories:
        sentences = split_sentences(story)
        thing = next(w for w in words(sentences[1]) if w in things)
        recurs += thing in words(" ".join(sentences[2:]))
    assert recurs / len(stories) > 0.7  # 3-sentence stories may end without it


def test_pronouns_agree_with_the_name_when_there_is_no_friend(stories):
    opposite = {"girl": {"he", "him", "his", "boy"}, "boy": {"she", "her", "girl"}}
    for story in stories:
        names = {w for w in re.findall(r"[A-Z][a-z]+", story) if w in GENDER}
        if len(names) == 1:
            assert not opposite[GENDER[names.pop()]] & set(words(story)), story


# ---- The recognizer -----------------------------------------------------------------------------
def test_every_generated_sentence_is_grammatical(stories):
    for story in stories[:3000]:
        for sentence in split_sentences(story):
            assert is_grammatical(sentence), sentence


def test_hand_written_sentences():
    assert is_grammatical("Once upon a time, there was a shy girl named Mia.")
    assert is_grammatical("An owl came to the park looking for food.")
    assert is_grammatical("She and Mia danced together.")
    assert not is_grammatical("Once upon a time, there was a shy boy named Mia.")  # he/she agree
    assert not is_grammatical("Tom said to Mia that she was happy.")  # {HE} is Tom's pronoun
    assert not is_grammatical("Her mom gave him a red ball.")
    assert not is_grammatical("A owl came to the park looking for food.")  # a/an
    assert not is_grammatical("Mia and Mia danced together.")  # hero and friend differ
    assert not is_grammatical("once upon a time, there was a shy girl named Mia.")
    assert not is_grammatical("")


def mutated(sentence: str, mutate) -> str:
    """Apply `mutate` to the words of the sentence (final mark kept aside), then re-capitalise."""
    body, mark = sentence[:-1], sentence[-1]
    text = " ".join(mutate(body.split())) + mark
    return text[0].upper() + text[1:]


def a_sentence(data) -> str:
    story = generate_story(random.Random(data.draw(seeds)))
    return data.draw(st.sampled_from(split_sentences(story)))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_swapping_two_neighbouring_words_is_rejected(data):
    sentence = a_sentence(data)
    i = data.draw(st.integers(0, len(sentence[:-1].split()) - 2))
    swapped = mutated(sentence, lambda w: w[:i] + [w[i + 1], w[i]] + w[i + 2:])
    assert not is_grammatical(swapped), swapped


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_reversed_word_order_is_rejected(data):
    reversed_ = mutated(a_sentence(data), lambda w: w[::-1])
    assert not is_grammatical(reversed_), reversed_


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_duplicated_word_is_rejected(data):
    sentence = a_sentence(data)
    i = data.draw(st.integers(0, len(sentence[:-1].split()) - 1))
    doubled = mutated(sentence, lambda w: w[:i + 1] + w[i:])
    assert not is_grammatical(doubled), doubled


@settings(max_examples=150, deadline=None)
@given(st.data(), st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6))
def test_a_made_up_word_is_rejected(data, suffix):
    sentence = a_sentence(data)
    i = data.draw(st.integers(0, len(sentence[:-1].split()) - 1))
    replaced = mutated(sentence, lambda w: w[:i] + ["zq" + suffix] + w[i + 1:])
    assert not is_grammatical(replaced), replaced


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_missing_final_punctuation_is_rejected(data):
    sentence = a_sentence(data)
    assert not is_grammatical(sentence[:-1])
    assert not is_grammatical(sentence[:-1] + ",")


# ---- Sentences and the grammatical rate ---------------------------------------------------------
def test_split_sentences():
    assert split_sentences("Hi there. Is it? Yes!  ") == ["Hi there.", "Is it?", "Yes!"]
    assert split_sentences("One. Two half") == ["One.", "Two half"]
    assert split_sentences("Pi is 3.14 today.") == ["Pi is 3.14 today."]
    assert split_sentences("   ") == []


def test_grammatical_rate_counts_complete_sentences_only():
    good = "Mia had a red ball. It was the best day ever!"
    assert grammatical_rate(good) == 1.0
    assert grammatical_rate(good + " The ball the ball") == 1.0  # trailing fragment ignored
    assert grammatical_rate(good + " Ball the red had Mia.") == pytest.approx(2 / 3)
    assert grammatical_rate("Mia had a red") == 0.0
    assert grammatical_rate("") == 0.0


def test_grammatical_rate_of_the_corpus_is_one(stories):
    assert grammatical_rate(" ".join(stories[:300])) == 1.0


# ---- Train/validation ---------------------------------------------------------------------------
def test_default_validation_is_disjoint_from_train(default_split):
    train, val = default_split
    assert len(train) == 40000 and len(val) == 1000
    assert not set(train) & set(val)
    assert len(set(val)) == len(val)


def test_split_train_val_of_documents():
    docs = [f"document {i}" for i in range(100)]
    train, val = split_train_val(docs, seed=1)
    assert (train, val) == split_train_val(docs, seed=1)
    assert len(val) == 5 and sorted(train + val) == sorted(docs)
    assert split_train_val(docs[:3])[1] and len(split_train_val(docs[:2])[1]) == 1


def test_split_train_val_of_one_document_cuts_by_characters():
    text = "x" * 950 + "y" * 50
    assert split_train_val([text]) == (["x" * 950], ["y" * 50])


# ---- A user's text file -------------------------------------------------------------------------
def test_load_text_file_splits_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    paragraphs = [f"Paragraph {i} " + "word " * 100 for i in range(5)]
    path.write_text("\n\n".join(paragraphs) + "\n\n\n", encoding="utf-8")
    assert load_text_file(str(path)) == [p.strip() for p in paragraphs]


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"   \n\n  ", "empty"),
    (b"text\x00with a NUL byte " * 200, "binary"),
    (b"caf\xe9 not utf-8 " * 200, "UTF-8"),  # Latin-1 (FF FE would be UTF-16's byte-order mark)
    (b"\xff\xfe" + "odd length".encode("utf-16-le") * 200 + b"!", "UTF-16"),
    (b"too short", "characters"),
])
def test_load_text_file_rejects_unusable_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as error:
        load_text_file(str(path))
    assert "\n" not in str(error.value)


def test_load_text_file_rejects_a_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_text_file(str(tmp_path / "nowhere.txt"))
    assert issubclass(CorpusError, ValueError)
