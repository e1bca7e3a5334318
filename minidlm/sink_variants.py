"""Variants of the [SINK] token (model.py), beside the paper's, for the sink studies. Each acts
on the attention of every layer, after the cache has supplied the keys and values (so every
sampler and cache sees the same variant), through `Attention.sink_variant(q, k, v, rotate, mask)
-> (v, mask)`; key/value column 0 is the sink, and rotate(x) applies the query rows' RoPE to x
(the model passes it in, so this file needs nothing from model.py).

Zero-value sink (`ModelConfig(sink_value="zero")`, `train_tiny.py --sink-value zero`): the paper's
own ablation and Gu et al.'s learnable key with a value fixed at zero. The sink's value vector is
exactly 0 in every layer and head, so attention to it is a pure abstain: the weights on the other
keys shrink and nothing is added, a learned "softmax off by one". Its key stays learned.

Unrotated sink (`ModelConfig(sink_rotation=False)`, `train_tiny.py --sink-no-rotation`): RoPE no
longer rotates the sink's key by its distance to the query. Every query i scores it as
q_i . k_sink without rotation, so the sink is one constant no-op key rather than a different key
at every distance. The sink sits at RoPE position 0, so its stored key k_0 is unrotated, and the
rotated query scores q_i . k_0 where the variant wants q_i' . k_0 = q_i . R_i k_0 (q_i' the query
before rotation, R_i the rotation at position i). Column 0 of the additive mask gets the change.

Masked sink (`sink_masked(model)`, sink_compare.py's "NELBO, [SINK] masked"): a test-time
ablation, not a model. Content queries may no longer attend to key 0, so the trained sink model
runs as if the sink were gone: its weights are exactly a model without a sink (RoPE scores depend
on i - j only, so the sink's shift of every position by one changes nothing), and the NELBO it
gets says how much of the sink model's quality is the sink's use at test time rather than what
training with it did to the other weights.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F


SINK_VALUES = ("learned", "zero")


def sink_variant(cfg):
    """The variant `cfg` asks for, as one function for Attention.sink_variant."""
    if cfg.sink_value not in SINK_VALUES:
        raise ValueError(f"sink_value must be one of {', '.join(SINK_VALUES)}, got {cfg.sink_value!r}")
    unrotated, zero = not cfg.sink_rotation, cfg.sink_value == "zero"

    def apply(q, k, v, rotate, mask):
        return (zero_sink_value(v) if zero else v), (unrotated_sink_score(q, k, rotate, mask) if unrotated else mask)
    return apply


def zero_sink_value(v):
    """v with column 0 ([SINK]) zero: a new tensor; the cache's own buffer is left as it is."""
    keep = torch.ones(v.shape[2], 1, dtype=v.dtype, device=v.device)
    keep[0] = 0
    return v * keep


def unrotated_sink_score(q, k, rotate, mask):
    """The attention mask with key column 0 ([SINK]) turned into the unrotated score; rotate(x):
    x rotated by RoPE at the query rows' positions."""
    B, H, T, D = q.shape
    k0 = k[:, :, :1].expand(B, H, T, D)
    change = ((q * rotate(k0)).sum(-1) - (q * k0).sum(-1)) / math.sqrt(D)
    column = F.pad(change[..., None], (0, k.shape[2] - 1))        # (B, H, T, S + Tk)
    return column if mask is None else mask + column


@contextmanager
def sink_masked(model):
    """Within the block, content queries of `model` (a sink model) cannot attend to [SINK]: key
    column 0 is -inf for every query row but row 0, the sink's own row (uncached forwards only;
    a cache's forwards have no sink row and are not supported). Restores the model on exit."""
    if not model.cfg.sink:
        raise ValueError("sink_masked needs a model with a [SINK] token")
    saved = [block.attn.sink_variant for block in model.blocks]

    def masked(inner):
        def apply(q, k, v, rotate, mask):
            if inner is not None:
                v, mask = inner(q, k, v, rotate, mask)
            mask = mask.clone()
            mask[..., 1:, 0] = float("-inf")
            return v, mask
        return apply
    try:
        for block, inner in zip(model.blocks, saved):
            block.attn.sink_variant = masked(inner)
        yield model
    finally:
        for block, inner in zip(model.blocks, saved):
            block.attn.sink_variant = inner
