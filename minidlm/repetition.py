"""Repetition metrics of the Repeat Curse paper, on token ids.

Paper: "Context Tokens are Anchors: Understanding the Repetition Curse in dMLLMs from an
Information Flow Perspective" (Zhao et al., ICLR 2026, arXiv 2601.20520), authors' definitions.

A response y = (y_1, ..., y_L) is first cleaned: cut at the first end-of-text token (exclusive),
then pure whitespace/newline tokens are dropped (`clean_response`). On a cleaned sample:

    ARR(y)       = 1/(L-1) * sum_{i=1}^{L-1} 1[y_i == y_{i+1}]          (0 if L < 2)
    runs(y)      = lengths of the maximal blocks of identical adjacent tokens (sum = L)
    R(y)         = the runs of length >= 2 (the repeats);  ARL(y) = mean R(y)
    p95RL(y)     = 95th percentile of R(y), linear interpolation between order statistics
    seq-rep-n(y) = 1 - |unique n-grams| / |n-grams|                      (0 if L < n)
    distinct-n(y)= |unique n-grams| / |n-grams|                          (1 if L < n: nothing repeats)

Note ARR * (L-1) = sum over runs of (r - 1): every run of length r holds r - 1 equal pairs.
Over N samples (`repetition_report`), with S = the repeating samples (ARR(y) > 0):

    ARR      = mean_s ARR(y_s)                      SRR  = |S| / N
    MRL      = max_s max R(y_s)                     MRL_mean = mean_{s in S} max R(y_s)
    ARL      = mean_{s in S} ARL(y_s)               p95RL    = mean_{s in S} p95RL(y_s)
    seq_rep_2, seq_rep_4, distinct_2 = means over samples;  length = mean_s L_s;  n = N

These are the authors' per-sample definitions (run statistics averaged over the repeating
samples, not pooled over all runs). Over several sets of samples (seeds) MRL is the max, not a
mean of maxima: a "MRL 1.0" would not be a repeat.
Rates are fractions in [0, 1] (the paper prints them in percent). Run statistics are 0 when
there is no repeat at all, so an uncorrupted model reads ARR = SRR = MRL = 0.

Caveat: ARR counts adjacent pairs only. In natural text it is dominated by punctuation pairs
("..", "))") and it misses sentence-level loops ("the cat sat. the cat sat."), which seq-rep-n
catches. A model can also lower ARR by saying less. Report it next to a quality metric (e.g.
the NELBO / perplexity) and the response length, never alone.
"""
import math
from dataclasses import asdict, dataclass
from typing import Callable

from .tokenizer import cut_at


def clean_response(ids: list[int], eot_id: int, is_whitespace: Callable[[int], bool]) -> list[int]:
    """Cut at the first eot_id (exclusive), then drop the whitespace-only tokens."""
    return [t for t in cut_at(ids, eot_id) if not is_whitespace(t)]


def runs_of(items: list) -> list[tuple]:
    """The maximal runs of equal adjacent items as (item, length); [1,1,2] -> [(1, 2), (2, 1)]."""
    out = []
    for x in items:
        if out and out[-1][0] == x:
            out[-1][1] += 1
        else:
            out.append([x, 1])
    return [tuple(r) for r in out]


def runs(ids: list[int]) -> list[int]:
    """Lengths of the maximal runs of identical adjacent tokens; [1,1,2,3,3,3] -> [2,1,3]."""
    return [n for _, n in runs_of(ids)]


def adjacent_repetition_rate(ids: list[int]) -> float:
    """ARR of one sample: the share of the len-1 adjacent pairs that are equal (0.0 if len < 2)."""
    if len(ids) < 2:
        return 0.0
    return sum(a == b for a, b in zip(ids, ids[1:])) / (len(ids) - 1)


def _ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(ids: list[int], n: int) -> float:
    """Unique n-grams / total n-grams of one sample (1.0 when it has no n-gram: nothing repeats)."""
    grams = _ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def seq_rep_n(ids: list[int], n: int) -> float:
    """1 - unique n-grams / total n-grams of one sample (0.0 when it has no n-gram)."""
    grams = _ngrams(ids, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def percentile(xs: list[int], q: float) -> float:
    """The q-quantile with linear interpolation between order statistics (numpy's default):
    position q * (n - 1) in the sorted values (0.0 if empty)."""
    if not xs:
        return 0.0
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


@dataclass
class RepetitionReport:
    """Repetition metrics over a set of cleaned samples (rates as fractions in [0, 1]).

    ARR: mean per-sample adjacent repetition rate.   SRR: fraction of samples with ARR > 0.
    MRL: longest run (>= 2) in any sample, 0 if none.
    MRL_mean: mean over the repeating samples of their longest run, 0 if none.
    ARL: mean over the repeating samples of their mean repeat length, 0 if none.
    p95RL: mean over the repeating samples of their interpolated 95th-percentile repeat length.
    seq_rep_2, seq_rep_4, distinct_2: per-sample values averaged over samples.
    length: mean cleaned length in tokens.   n: number of samples.
    """
    ARR: float
    SRR: float
    MRL: int
    MRL_mean: float
    ARL: float
    p95RL: float
    seq_rep_2: float
    seq_rep_4: float
    distinct_2: float
    length: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def repetition_report(samples: list[list[int]]) -> RepetitionReport:
    """Aggregate the metrics over already-cleaned samples (see `clean_response`)."""
    arrs = [adjacent_repetition_rate(s) for s in samples]
    repeats = [[r for r in runs(s) if r >= 2] for s in samples]  # a run of 1 is not a repeat
    repeating = [r for r in repeats if r]
    return RepetitionReport(
        ARR=_mean(arrs),
        SRR=_mean(a > 0 for a in arrs),
        MRL=max((max(r) for r in repeating), default=0),
        MRL_mean=_mean(max(r) for r in repeating),
        ARL=_mean(_mean(r) for r in repeating),
        p95RL=_mean(percentile(r, 0.95) for r in repeating),
        seq_rep_2=_mean(seq_rep_n(s, 2) for s in samples),
        seq_rep_4=_mean(seq_rep_n(s, 4) for s in samples),
        distinct_2=_mean(distinct_n(s, 2) for s in samples),
        length=_mean(len(s) for s in samples),
        n=len(samples),
    )


def adjacent_commit_share(orders: list[list[int]]) -> float:
    """Share of commits made right next to (+-1) the previous commit of the same sample, over
    every consecutive pair of each sample's commit order (positions in the order committed)."""
    pairs = [abs(a - b) == 1 for order in orders for a, b in zip(order, order[1:])]
    return _mean(pairs)
