"""CoTA, "Context Tokens are Anchors" (Zhao et al., ICLR 2026, arXiv 2601.20520): CTAE + CTEV.

CTAE, context-token attention enhancement: a distance gain between a response query at position
i and a response key at position j,

    G_ij = gamma + (1 - gamma) * exp(-((i - j) / tau)^2),        gamma in (0, 1],

multiplies the attention weights. We add log G_ij to the pre-softmax logits (the same thing after
renormalisation) through the model's additive-bias seam, so it works alike in every sampler mode;
i and j are TRUE canvas positions, also on partial (cached) forwards. Given (prompt) rows and keys get none.

CTEV, context-token entropy-guided voting: with the logit-lens entropy E_l(j) =
H(softmax(head(norm(h_l(j))))) / log V, and E(j) its mean over the deep band (about the last 20 %
of depth, before the final layer), positions are committed by

    score(i) = confidence(i) - lambda * mean_{j in C(i)} E(j),    C(i) = {i - w, ..., i + w}.

With a cache, h_l are the states the model actually used at this step, stale ones included.
gamma = 1 and lambda = 0 leave sampling unchanged (tested). Defaults are the paper's: tau = 5,
gamma = 0.5, lambda = 0.75, w = 1.

Variants from the authors' later code: "context" CTEV (`ctev_mode`; w = 5, lambda 0.25 there)
averages over COMMITTED neighbours only (0 without any); CTAR repairs the feature cache's stale
rows in the deep band instead of adding a distance prior (refresh.py, `ctar_policy`).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .refresh import ctar_policy


CTEV_MODES = ("self", "context")  # the paper's, the authors' later variant


@dataclass
class CoTAConfig:
    ctae: bool = False
    ctae_tau: float = 5.0
    ctae_gamma: float = 0.5
    ctev: bool = False
    ctev_lambda: float = 0.75
    ctev_window: int = 1
    ctev_deep_fraction: float = 0.2
    ctev_mode: str = "self"       # "self" (paper) or "context" (authors' later variant)
    ctar: bool = False            # authors' later staleness repair (feature cache, deep band)
    ctar_window: int = 5

    def validate(self):
        if not (0 < self.ctae_gamma <= 1) or not self.ctae_tau > 0:
            raise ValueError("CTAE needs 0 < gamma <= 1 and tau > 0")
        if self.ctev_lambda < 0 or self.ctev_window < 0 or not 0 < self.ctev_deep_fraction <= 1:
            raise ValueError("CTEV needs lambda >= 0, window >= 0 and 0 < deep fraction <= 1")
        if self.ctar_window < 0:
            raise ValueError("CTAR needs a window >= 0")
        if self.ctev_mode not in CTEV_MODES:
            raise ValueError(f"CTEV mode must be 'self' or 'context', got {self.ctev_mode!r}")

    def deep_layers(self, n_layer: int) -> list:
        """The deep band: the last ~fraction of layers before the final one (paper: 26-30 of 32)."""
        k = max(1, round(self.ctev_deep_fraction * n_layer))
        last = max(n_layer - 1, k)  # exclude the final layer when there is room
        return list(range(last - k, last))


def ctae_log_gain(q_pos, k_pos, q_response, k_response, tau: float, gamma: float):
    """log G_ij (B, 1, R, L) for query positions (B, R) and key positions (L,); 0 unless both are
    response positions (q_response (B, R), k_response (B, L): the holes of the canvas)."""
    dist = (q_pos[:, :, None] - k_pos[None, None, :]).float()
    gain = torch.log(gamma + (1 - gamma) * torch.exp(-(dist / tau) ** 2))
    both = q_response[:, :, None] & k_response[:, None, :]
    return torch.where(both, gain, torch.zeros((), device=gain.device)).unsqueeze(1)


class CoTA:
    """CoTA for one `generate` call, through the sampler's seams: `bias(rows)`, the attention bias
    of the query rows (padding, plus CTAE's log-gain) that every cache passes to the model;
    `penalty(x, hidden, lo, hi)`, CTEV's term subtracted from the block's confidences (None when
    off); `refresh_policy`, CTAR for the feature cache."""

    def __init__(self, cfg: CoTAConfig, model, pad_bias, is_hole, mask_id: int, real=None):
        """is_hole: (B, L) the canvas's response positions (its holes); pad_bias: (B, 1, 1, L) or None;
        real: (B, L) bool, False on a row's left padding (None: no padding). Padding is outside the
        canvas, so CTEV never counts it as a neighbour: a row's tokens do not depend on the batch."""
        self.cfg, self.model, self.pad, self.is_hole, self.mask_id = cfg, model, pad_bias, is_hole, mask_id
        self.real = real
        self.positions = torch.arange(is_hole.shape[1], device=is_hole.device)
        self.deep = cfg.deep_layers(model.cfg.n_layer)
        self.hidden_layers = self.deep if cfg.ctev else []  # what a cache must keep for `penalty`

    def bias(self, rows):
        """For query rows (B, R) of canvas positions, or None for every row."""
        if not self.cfg.ctae:
            return self.pad
        q, q_hole = (self.positions[None], self.is_hole) if rows is None else (rows, self.is_hole.gather(1, rows))
        gain = ctae_log_gain(q, self.positions, q_hole, self.is_hole, self.cfg.ctae_tau, self.cfg.ctae_gamma)
        return gain if self.pad is None else gain + self.pad

    def penalty(self, x, hidden, lo: int, hi: int):
        """lambda * the CTEV mean entropy for columns lo..hi-1 of canvas x, from the deep layers'
        states `hidden[layer]` the model used at this step; context mode: committed neighbours."""
        if not self.cfg.ctev:
            return None
        counted = (x != self.mask_id) if self.cfg.ctev_mode == "context" else None
        if self.real is not None:
            counted = self.real if counted is None else counted & self.real
        return self.cfg.ctev_lambda * ctev_penalty(self.model, [hidden[l] for l in self.deep], lo, hi,
                                                   self.cfg.ctev_window, counted)

    def refresh_policy(self, policy, x, holes, per_step: int):
        """The feature cache's refresh policy with CTAR in the deep band (refresh.py), or as it is."""
        if not self.cfg.ctar:
            return policy
        return ctar_policy(policy, x, holes, self.model.cfg.n_layer, self.deep, self.cfg.ctar_window, per_step)


def lens_entropy(model, hidden):
    """Normalised logit-lens entropy E(j) = H(softmax(head(norm(h_j)))) / log V, shape (B, T)."""
    logits = model.logit_lens(hidden)
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(logp.shape[-1])


def ctev_penalty(model, deep_hidden, lo: int, hi: int, window: int, committed=None):
    """mean over j in C(i) of the deep-layer entropy, for the block's columns lo..hi-1: (B, hi-lo).
    deep_hidden: list of (B, L, d) hidden states of the deep layers over the whole canvas.
    committed: None (every neighbour in the window counts) or a (B, L) bool mask of the neighbours
    that count ("context" mode: the committed ones; padding never counts); none gives 0."""
    L = deep_hidden[0].shape[1]
    a, b = max(0, lo - window), min(L, hi + window)
    entropy = torch.stack([lens_entropy(model, h[:, a:b]) for h in deep_hidden]).mean(0)
    weight = torch.ones_like(entropy) if committed is None else committed[:, a:b].to(entropy.dtype)
    # a sum over the window as a convolution: the canvas edges simply have fewer neighbours
    kernel = torch.ones(1, 1, 2 * window + 1, device=entropy.device, dtype=entropy.dtype)
    total = F.conv1d(F.pad((entropy * weight)[:, None], (window, window)), kernel)[:, 0]
    count = F.conv1d(F.pad(weight[:, None], (window, window)), kernel)[:, 0]
    mean = total / count.clamp_min(1)
    return mean[:, lo - a:lo - a + (hi - lo)]
