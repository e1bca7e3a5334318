"""Variants of the [SINK] token (model.py), beside the paper's: ours, for the sink studies.

Unrotated sink (`ModelConfig(sink_rotation=False)`, `train_tiny.py --sink-no-rotation`): RoPE no
longer rotates the sink's key by its distance to the query. Every query i scores it as
q_i . k_sink without rotation, so the sink is one constant no-op key rather than a different key
at every distance. The sink sits at RoPE position 0, so its stored key k_0 is unrotated, and the
rotated query scores q_i . k_0 where the variant wants q_i' . k_0 = q_i . R_i k_0 (q_i' the query
before rotation, R_i the rotation at position i). Column 0 of the additive mask gets the change.
"""
import math

import torch.nn.functional as F

from .model import apply_rope


def unrotated_sink_score(q, k, rope, mask):
    """The attention mask with key column 0 ([SINK]) turned into the unrotated score."""
    B, H, T, D = q.shape
    k0 = k[:, :, :1].expand(B, H, T, D)
    change = ((q * apply_rope(k0, *rope)).sum(-1) - (q * k0).sum(-1)) / math.sqrt(D)
    column = F.pad(change[..., None], (0, k.shape[2] - 1))        # (B, H, T, S + Tk)
    return column if mask is None else mask + column
