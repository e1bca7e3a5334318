"""Caches for the reverse process: how much of the model each denoising step recomputes.

A diffusion LM re-runs the whole network at every step. Caches reuse work across steps; all are
approximations except when they refresh at every step, where each must give exactly the tokens
of the uncached sampler. Each has one method, `logits(x, lo, hi, block_start)`, the logits of the
current block's columns; the model never knows which one is in use. NoCache is LLaDA's full
forward; PrefixCache and DualCache are Fast-dLLM's (arXiv 2505.22618); FeatureCache is
dLLM-Cache's (arXiv 2506.06295), whose reuse of RESPONSE features causes the Repeat Curse
(arXiv 2601.20520).

`hidden[layer]` keeps, for CoTA's CTEV, the residual stream after each layer in `keep_hidden` for
every position: the states the model used at this step, stale ones included. `observe=True` keeps
every layer's hidden state and, in `record`, an `AttentionRecord` of the attention in effect for
the probes (observe.py); it changes no computation. Buffers are allocated once per call and
written in place; rows per step are a Python int, so shapes are static and nothing syncs with the
host.
`rows_computed[layer]` counts rows through attention and FFN.
"""

import torch
import torch.nn.functional as F

from .kv import KVBuffer
from .model import Trace
from .observe import AttentionRecord


def cosine_similarity(a, b, eps: float = 1e-8):
    """F.cosine_similarity(a, b, dim=-1) as its kernel computes it (each vector divided by its
    norm, clamped at eps; the products summed): the same bits without its dozen dispatches for
    dtypes and broadcasting, which it makes in every layer of every partial step."""
    a_norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min_(eps)
    b_norm = torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min_(eps)
    return ((a / a_norm) * (b / b_norm)).sum(-1)


class NoCache:
    """The reference: the whole sequence through the whole model at every step."""

    def __init__(self, model, x, positions, bias_for, keep_hidden=(), observe=False):
        self.model, self.positions, self.bias_for = model, positions, bias_for
        self.batch, self.length = x.shape
        n_layer, dtype = model.cfg.n_layer, next(model.parameters()).dtype
        self.all_rows = torch.arange(self.length, device=x.device).expand(self.batch, -1)
        self.rope = model.rope(positions.expand(self.batch, -1))  # once per call, sliced per step
        self.rows_computed = [0] * n_layer
        self.hidden = {layer: torch.zeros(self.batch, self.length, model.cfg.d_model, dtype=dtype, device=x.device)
                       for layer in (range(n_layer) if observe else keep_hidden)}
        self.record = AttentionRecord(model, self.batch, self.length, dtype, x.device) if observe else None

    def forward_rows(self, x, start: int, end: int, kv=None, keep=None):
        """Run canvas columns start..end-1 as queries (against `kv`, written at those columns of
        each row that `keep` marks, or all); record the kept hidden states and the attention."""
        self.rows_computed = [n + self.batch * (end - start) for n in self.rows_computed]
        full = (start, end) == (0, self.length)
        rows = None if full else self.all_rows[:, start:end]
        rope = self.rope if full else tuple(t[:, :, start:end] for t in self.rope)
        trace = Trace(attention=self.record is not None) if self.hidden else None
        out = self.model(x[:, start:end], cache=None if kv is None else kv.writer((start, end), keep=keep),
                         attn_bias=self.bias_for(rows), trace=trace, rope=rope)
        if trace is None:
            return out
        for layer, buffer in self.hidden.items():
            fresh = trace.hidden[layer]
            buffer[:, start:end] = fresh if keep is None else torch.where(keep[..., None], fresh, buffer[:, start:end])
        if self.record is not None:
            self.record.write_span(trace, start, end)
        return out[0]

    def logits(self, x, lo, hi, block_start, row_spans=None):
        """Logits of columns lo..hi-1, which cover the current block in every row. row_spans:
        (lo_r, hi_r), each (B, 1), where the rows' blocks cover different columns (infilling)."""
        return self.forward_rows(x, 0, self.length)[:, lo:hi]


class PrefixCache(NoCache):
    """Fast-dLLM prefix cache: a block's first step stores K/V of every position; later steps
    recompute the block AND the masked suffix against the cached prefix."""

    def __init__(self, model, x, positions, bias_for, keep_hidden=(), observe=False):
        super().__init__(model, x, positions, bias_for, keep_hidden, observe)
        self.kv = KVBuffer(model, self.batch, self.length, next(model.parameters()).dtype, x.device)

    def query_span(self, lo, hi):
        return lo, self.length

    def own(self, columns, lo_r, hi_r):
        """Which query columns are this row's own block + suffix (the rest keep their cache)."""
        return columns >= lo_r

    def logits(self, x, lo, hi, block_start, row_spans=None):
        start, end = (0, self.length) if block_start else self.query_span(lo, hi)
        # rows whose block covers fewer columns than the batch's span write back only their own,
        # so that a row's tokens do not depend on the other rows' hole layouts
        keep = None if block_start or row_spans is None else self.own(self.all_rows[:, start:end], *row_spans)
        return self.forward_rows(x, start, end, self.kv, keep)[:, lo - start:hi - start]


class DualCache(PrefixCache):
    """Fast-dLLM dual cache: later steps recompute only the block; the suffix's K/V stay as they were."""

    def query_span(self, lo, hi):
        return lo, hi

    def own(self, columns, lo_r, hi_r):
        return (columns >= lo_r) & (columns < hi_r)


class FeatureCache(NoCache):
    """dLLM-Cache: per layer it keeps K, V, the attention output A and the FFN output F of every
    row. At step s the "prompt" rows (the given tokens, wherever they are) are recomputed when
    (s - 1) % K_p == 0, the "response" rows (the N holes) when (s - 1) % K_r == 0. On other steps
    each layer takes the response rows' fresh V and recomputes attention and FFN only for the
    int(rho * N) rows its refresh policy picks (refresh.py; dLLM-Cache's: the least similar fresh
    V); every other row reuses its outputs, h_{l+1} = h_l + A_l + F_l. Attention sees the
    refreshed rows' own fresh V (the CoTA authors' LLaDA-V hook; default) or every response
    row's (`fresh_values=True`, dLLM-Cache's LLaDA hook).
    `per_block=True` (threshold decoding) restarts the clock s at each block's first step, which
    is then a full refresh, as in Fast-dLLM's caches: there a block takes as many steps as its
    slowest row needs, and a clock over the batch's steps would make a row's tokens depend on the
    pace of the others."""

    def __init__(self, model, x, positions, bias_for, given, holes, K_p: int, K_r: int, rho: float,
                 policy, fresh_values=False, keep_hidden=(), observe=False, per_block=False):
        super().__init__(model, x, positions, bias_for, keep_hidden, observe)
        dtype, device = next(model.parameters()).dtype, x.device
        self.kv = KVBuffer(model, self.batch, self.length, dtype, device)
        self.attn_out = torch.zeros(model.cfg.n_layer, self.batch, self.length, model.cfg.d_model,
                                    dtype=dtype, device=device)
        self.ffn_out = torch.zeros_like(self.attn_out)
        self.given, self.holes = given, holes  # (B, L - N) and (B, N) canvas columns
        self.K_p, self.K_r, self.step, self.clock, self.per_block = K_p, K_r, 0, 0, per_block
        self.n_partial = int(rho * holes.shape[1])
        self.policy, self.fresh_values = policy, fresh_values

    def logits(self, x, lo, hi, block_start, row_spans=None):
        self.step += 1  # every step, for the policy; the refresh clock may restart at blocks
        self.clock = 1 if block_start and self.per_block else self.clock + 1
        self.policy.start_step(self.step, x)
        refresh_prompt, refresh_response = (self.clock - 1) % self.K_p == 0, (self.clock - 1) % self.K_r == 0
        due = ([self.given] if refresh_prompt else []) + ([self.holes] if refresh_response else [])
        due = torch.cat(due, dim=1) if due else self.all_rows[:, :0]
        h, rope = self.model.embed_rows(x, rope=self.rope)
        hole_rows = self.holes[:, :, None].expand(-1, -1, h.shape[-1])
        for layer, block in enumerate(self.model.blocks):
            rows, n = due, self.policy.budget(layer, self.n_partial)
            if not refresh_response and (n > 0 or self.fresh_values):
                fresh = block.attn.values(block.norm1(h.gather(1, hole_rows)))  # (B, H, N, head_dim)
                hole_keys = (self.holes + self.kv.sink)[:, None, :, None].expand_as(fresh)
                if n > 0:  # low similarity first
                    cached = self.kv.v[layer].gather(2, hole_keys)
                    similarity = cosine_similarity(fresh.transpose(1, 2).flatten(2), cached.transpose(1, 2).flatten(2))
                    rows = torch.cat([due, self.holes.gather(1, self.policy.pick(layer, similarity, n))], dim=1)
                if self.fresh_values:  # every response row's fresh V, in attention and next time
                    self.kv.v[layer].scatter_(2, hole_keys, fresh)
            if rows.shape[1]:
                h = self.recompute(layer, block, h, rows, rope)
            else:  # nothing to refresh in this layer: reuse both outputs for every row
                h = h + self.attn_out[layer] + self.ffn_out[layer]
            if layer in self.hidden:
                self.hidden[layer] = h
        return self.model.head(self.model.norm(h[:, lo:hi]))

    def recompute(self, layer, block, h, rows, rope):
        """Attention and FFN for `rows` (B, R) by the block's own branches; cached outputs elsewhere."""
        index = rows[:, :, None].expand(-1, -1, h.shape[-1])
        rope_index = rows[:, None, :, None].expand(-1, 1, -1, rope[0].shape[-1])
        rope_rows = (rope[0].gather(2, rope_index), rope[1].gather(2, rope_index))
        mask = self.model.attention_mask(self.bias_for(rows), rows.shape[1], self.length, False,
                                         h.dtype, h.device)
        trace = Trace() if self.record is not None else None
        a, f = block.branches(h.gather(1, index), rope_rows, mask, cache=self.kv.writer(rows=rows), trace=trace)
        if trace is not None:
            self.record.write_rows(layer, trace, rows)
        self.attn_out[layer].scatter_(1, index, a)
        self.ffn_out[layer].scatter_(1, index, f)
        self.rows_computed[layer] += self.batch * rows.shape[1]
        self.policy.computed(layer, rows, self.step)
        return h + self.attn_out[layer] + self.ffn_out[layer]


CACHES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "feature": FeatureCache}
