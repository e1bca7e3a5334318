"""The bigram-backcopy text (Guo et al.): after every trigger comes a copy of the word before it."""
from types import SimpleNamespace

import torch
from hypothesis import given, settings, strategies as st

from minidlm.backcopy import backcopy_documents, copy_accuracy, triggers
from minidlm.tokenizer import Tokenizer


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rate=st.floats(0.05, 0.5))
def test_every_trigger_is_followed_by_a_copy_of_the_word_before_it(seed, rate):
    docs = backcopy_documents(n_docs=20, trigger_rate=rate, seed=seed)
    trig = set(triggers(seed=seed))
    n_triggers = 0
    for doc in docs:
        assert doc[0] not in trig and 60 <= len(doc) <= 121
        for i, word in enumerate(doc):
            if word in trig:
                n_triggers += 1
                assert doc[i + 1] == doc[i - 1] and doc[i - 1] not in trig
    assert n_triggers > 0


def test_the_same_seed_gives_the_same_text_and_another_seed_another():
    assert backcopy_documents(n_docs=5, seed=3) == backcopy_documents(n_docs=5, seed=3)
    assert backcopy_documents(n_docs=5, seed=3) != backcopy_documents(n_docs=5, seed=4)


def test_words_follow_a_few_successors_each_outside_the_copies():
    docs = backcopy_documents(n_docs=200, seed=0)
    trig = set(triggers(seed=0))
    follow = {}
    for doc in docs:
        for i in range(len(doc) - 1):
            if doc[i] not in trig and doc[i + 1] not in trig:
                follow.setdefault(doc[i], set()).add(doc[i + 1])
    assert len(follow) == 64 and max(len(s) for s in follow.values()) == 4


class CopyOracle(torch.nn.Module):
    """Fills a masked slot right after a trigger with the word before the trigger (the task's
    rule), and every other masked slot with [MASK] (always wrong)."""

    def __init__(self, trigger_ids, mask_id, vocab):
        super().__init__()
        self.vocab = vocab
        self.cfg = SimpleNamespace(max_seq_len=64)
        self.trig, self.mask_id, self.dummy = trigger_ids, mask_id, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        guess = torch.full_like(x, self.mask_id)
        after = torch.isin(x[:, 1:-1], self.trig)
        guess[:, 2:] = torch.where(after, x[:, :-2], guess[:, 2:])
        return torch.nn.functional.one_hot(guess, self.vocab).float()


def test_copy_accuracy_scores_the_copies_and_the_ordinary_words_apart():
    docs = [" ".join(d) for d in backcopy_documents(n_docs=1000, seed=0)]
    tok = Tokenizer.train(docs, vocab_size=1024)
    words = triggers(seed=0)
    trig = torch.tensor([tok.encode(" " + w)[0] for w in words])
    acc = copy_accuracy(CopyOracle(trig, tok.mask_id, tok.vocab_size), tok, docs[:20], words)
    # every copy of a window is masked at once, so a copy whose source is itself a copy (w T w T w)
    # sees [MASK] where the oracle looks: those few are the oracle's misses
    assert 0.9 < acc["copy"] < 1.0 and acc["ordinary"] == 0.0 and acc["documents"] > 10
