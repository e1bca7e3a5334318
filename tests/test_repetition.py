"""Tests for minidlm.repetition: hand-computed values and the invariants of the metrics."""
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidlm.repetition import (RepetitionReport, adjacent_commit_share, adjacent_repetition_rate,
                                clean_response, distinct_n, percentile, repetition_report, runs, seq_rep_n)

seqs = st.lists(st.integers(0, 4), max_size=40)  # small alphabet so repeats are common
KEYS = ["ARR", "SRR", "MRL", "MRL_mean", "ARL", "p95RL", "seq_rep_2", "seq_rep_4",
        "distinct_2", "length", "n"]


def test_known_sequence():
    y = [1, 1, 2, 3, 3, 3]
    assert runs(y) == [2, 1, 3]
    assert adjacent_repetition_rate(y) == pytest.approx(3 / 5)
    # bigrams (1,1) (1,2) (2,3) (3,3) (3,3): 4 unique of 5
    assert distinct_n(y, 2) == pytest.approx(4 / 5)
    assert seq_rep_n(y, 2) == pytest.approx(1 / 5)
    r = repetition_report([y])
    assert (r.MRL, r.MRL_mean, r.ARL, r.SRR, r.length, r.n) == (3, 3, 2.5, 1.0, 6, 1)
    assert r.p95RL == pytest.approx(2.95)  # runs >= 2 are (2, 3): position 0.95 between them


def test_sentence_loop_is_seen_by_seq_rep_not_by_arr():
    y = [5, 6, 7, 8] * 3
    assert adjacent_repetition_rate(y) == 0.0
    assert seq_rep_n(y, 4) == pytest.approx(1 - 4 / 9)


def test_empty_and_single_token():
    for y in ([], [7]):
        assert adjacent_repetition_rate(y) == 0.0
        assert seq_rep_n(y, 2) == 0.0 and distinct_n(y, 2) == 1.0  # no n-gram: nothing repeats
        assert runs(y) == [1] * len(y)
    r = repetition_report([[], [7]])
    assert (r.ARR, r.SRR, r.MRL, r.MRL_mean, r.ARL, r.p95RL) == (0, 0, 0, 0, 0, 0)
    assert (r.length, r.n) == (0.5, 2)
    assert repetition_report([]).as_dict() == dict.fromkeys(KEYS, 0)


def test_report_over_several_samples():
    r = repetition_report([[1, 1, 2, 3, 3, 3], [4, 5, 6], [9, 9]])
    assert r.ARR == pytest.approx((3 / 5 + 0 + 1) / 3)
    assert r.SRR == pytest.approx(2 / 3)
    assert r.MRL == 3
    assert r.MRL_mean == pytest.approx((3 + 2) / 2)  # the non-repeating sample does not count
    assert r.ARL == pytest.approx(((2 + 3) / 2 + 2) / 2)  # per repeating sample, then averaged
    assert r.length == pytest.approx(11 / 3)


def test_p95_is_per_sample_and_averaged_over_repeating_samples():
    samples = [[1, 1]] * 19 + [[2] * 10] + [[3, 4]]  # the last sample does not repeat
    assert repetition_report(samples).p95RL == pytest.approx((19 * 2 + 10) / 20)


@given(st.lists(st.integers(2, 30), min_size=2, max_size=40), st.sampled_from([0.05, 0.5, 0.95]))
def test_percentile_interpolates_linearly(xs, q):
    """Against the standard library's inclusive quantiles (linear between order statistics)."""
    cuts = statistics.quantiles(xs, n=20, method="inclusive")
    assert percentile(xs, q) == pytest.approx(cuts[round(q * 20) - 1])


def test_adjacent_commit_share():
    assert adjacent_commit_share([[3, 4, 5, 9], [0, 2]]) == pytest.approx(2 / 4)
    assert adjacent_commit_share([[7], []]) == 0.0


def test_clean_response_cuts_at_eot_and_drops_whitespace():
    EOT, SPACE, NL = 0, 10, 11
    is_ws = lambda t: t in (SPACE, NL)  # noqa: E731
    ids = [3, SPACE, 3, NL, 4, EOT, 5, 5, EOT]
    assert clean_response(ids, EOT, is_ws) == [3, 3, 4]
    assert clean_response([3, 4], EOT, is_ws) == [3, 4]  # no EOT: keep everything
    assert clean_response([EOT, 3], EOT, is_ws) == []
    # whitespace between two equal words must not hide the repeat ("the the")
    assert adjacent_repetition_rate(clean_response([3, SPACE, 3], EOT, is_ws)) == 1.0


@given(seqs)
def test_arr_invariants(y):
    arr = adjacent_repetition_rate(y)
    rs = runs(y)
    assert 0.0 <= arr <= 1.0
    assert (arr == 0.0) == (not any(a == b for a, b in zip(y, y[1:])))
    assert sum(rs) == len(y) and all(r >= 1 for r in rs)
    if len(y) >= 2:
        assert arr * (len(y) - 1) == pytest.approx(sum(r - 1 for r in rs))


@given(seqs, st.integers(1, 5))
def test_seq_rep_plus_distinct_is_one(y, n):
    s, d = seq_rep_n(y, n), distinct_n(y, n)
    assert 0.0 <= s <= 1.0 and 0.0 <= d <= 1.0
    assert s + d == pytest.approx(1.0)  # also without an n-gram: nothing repeats, all distinct


@given(st.lists(st.integers(), unique=True, max_size=30))
def test_all_distinct_tokens(y):
    assert adjacent_repetition_rate(y) == 0.0
    assert all(r == 1 for r in runs(y))
    for n in (1, 2, 4):
        if len(y) >= n:
            assert seq_rep_n(y, n) == 0.0 and distinct_n(y, n) == 1.0


@given(st.integers(0, 9), st.integers(2, 50))
def test_constant_sequence(t, L):
    y = [t] * L
    assert adjacent_repetition_rate(y) == 1.0
    assert runs(y) == [L]
    r = repetition_report([y])
    assert r.MRL == r.p95RL == r.ARL == r.MRL_mean == L and r.SRR == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(seqs, max_size=8))
def test_report_ranges(samples):
    r = repetition_report(samples)
    assert isinstance(r, RepetitionReport) and list(r.as_dict()) == KEYS
    assert r.n == len(samples)
    has_repeat = [any(a == b for a, b in zip(y, y[1:])) for y in samples]
    assert r.SRR == pytest.approx(sum(has_repeat) / len(samples) if samples else 0.0)
    for k in ("ARR", "SRR", "seq_rep_2", "seq_rep_4", "distinct_2"):
        assert 0.0 <= getattr(r, k) <= 1.0
    longest = max((len(y) for y in samples), default=0)
    if any(has_repeat):
        assert 2 <= r.ARL <= r.MRL <= longest and 2 <= r.p95RL <= r.MRL  # mean may exceed p95
        assert 2 <= r.MRL_mean <= r.MRL
    else:
        assert r.ARR == r.MRL == r.MRL_mean == r.ARL == r.p95RL == 0
    assert r.length == pytest.approx(sum(map(len, samples)) / len(samples) if samples else 0.0)
