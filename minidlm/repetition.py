"""Repetition metrics of the Repeat Curse paper, on token ids.

Paper: "Context Tokens are Anchors: Understanding the Repetition Curse in dMLLMs from an
Information Flow Perspective" (Zhao et al., ICLR 2026, arXiv 2601.20520), authors' definitions.

A response y = (y_1, ..., y_L) is first cleaned: cut at the first end-of-text token (exclusive),
then pure whitespace/newline tokens are dropped (`clean_response`). On a cleaned sample:

    ARR(y)       = 1/(L-1) * sum_{i=1}^{L-1} 1[y_i == y_{i+1}]          (0 if L < 2)
    runs(y)      = lengths of the maximal blocks of identical adjacent tokens (sum = L)
    seq-rep-n(y) = 1 - |unique n-grams| / |n-grams|                      (0 if L < n)
    distinct-n(y)= |unique n-grams| / |n-grams|                          (0 if L < n)

Note ARR * (L-1) = sum over runs of (r - 1): every run of length r holds r - 1 equal pairs.
Over N samples (`repetition_report`), with R = all runs of length >= 2 in all samples:

    ARR      = mean_s ARR(y_s)                      SRR  = mean_s 1[ARR(y_s) > 0]
    MRL      = max R                                MRL_mean = mean_{s: ARR>0} max runs(y_s)
    ARL      = mean R                               p95RL = nearest-rank 95th percentile of R
    seq_rep_2, seq_rep_4, distinct_2 = means over samples;  length = mean_s L_s;  n = N

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


def clean_response(ids: list[int], eot_id: int, is_whitespace: Callable[[int], bool]) -> list[int]:
    """Cut at the first eot_id (exclusive), then drop the whitespace-only tokens."""
    ids = list(ids)
    if eot_id in ids:
        ids = ids[:ids.index(eot_id)]
    return [t for t in ids if not is_whitespace(t)]


def runs(ids: list[int]) -> list[int]:
    """Lengths of the maximal runs of identical adjacent tokens; [1,1,2,3,3,3] -> [2,1,3]."""
    out = []
    for i, t in enumerate(ids):
        if i > 0 and t == ids[i - 1]:
            out[-1] += 1
        else:
            out.append(1)
    return out


def adjacent_repetition_rate(ids: list[int]) -> float:
    """ARR of one sample: the share of the len-1 adjacent pairs that are equal (0.0 if len < 2)."""
    if len(ids) < 2:
        return 0.0
    return sum(a == b for a, b in zip(ids, ids[1:])) / (len(ids) - 1)


def _ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(ids: list[int], n: int) -> float:
    """Unique n-grams / total n-grams of one sample (0.0 when it has no n-gram)."""
    grams = _ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def seq_rep_n(ids: list[int], n: int) -> float:
    """1 - unique n-grams / total n-grams of one sample (0.0 when it has no n-gram)."""
    grams = _ngrams(ids, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def _nearest_rank(xs: list[int], q: float) -> int:
    """Nearest-rank percentile: the smallest x with at least q of the values <= x (0 if empty)."""
    if not xs:
        return 0
    xs = sorted(xs)
    return xs[max(1, math.ceil(q * len(xs))) - 1]


@dataclass
class RepetitionReport:
    """Repetition metrics over a set of cleaned samples (rates as fractions in [0, 1]).

    ARR: mean per-sample adjacent repetition rate.   SRR: fraction of samples with ARR > 0.
    MRL: longest run (>= 2) in any sample, 0 if none.
    MRL_mean: mean over the repeating samples of their longest run, 0 if none.
    ARL: mean length of the runs of length >= 2, 0 if none.
    p95RL: nearest-rank 95th percentile of those run lengths (always an observed length), 0 if none.
    seq_rep_2, seq_rep_4, distinct_2: per-sample values averaged over samples.
    length: mean cleaned length in tokens.   n: number of samples.
    """
    ARR: float
    SRR: float
    MRL: int
    MRL_mean: float
    ARL: float
    p95RL: int
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
    sample_runs = [runs(s) for s in samples]
    repeats = [r for rs in sample_runs for r in rs if r >= 2]  # a run of 1 is not a repeat
    longest = [max(rs) for rs, a in zip(sample_runs, arrs) if a > 0]
    return RepetitionReport(
        ARR=_mean(arrs),
        SRR=_mean(a > 0 for a in arrs),
        MRL=max(repeats, default=0),
        MRL_mean=_mean(longest),
        ARL=_mean(repeats),
        p95RL=_nearest_rank(repeats, 0.95),
        seq_rep_2=_mean(seq_rep_n(s, 2) for s in samples),
        seq_rep_4=_mean(seq_rep_n(s, 4) for s in samples),
        distinct_2=_mean(distinct_n(s, 2) for s in samples),
        length=_mean(len(s) for s in samples),
        n=len(samples),
    )
