"""Caches for the reverse process: how much of the model each denoising step recomputes.

A diffusion LM re-runs the whole network at every step. Caches reuse work across steps; all are
approximations except when they refresh at every step, where each must give exactly the tokens
of the uncached sampler. Each is a small object with one method, `logits(x, lo, hi, block_start)`,
returning the logits of the current block's columns; the model never knows which one is in use.

- NoCache: the full forward at every step (LLaDA).
- PrefixCache (Fast-dLLM, arXiv 2505.22618): at each block's first step a full forward stores
  K/V of every position; later steps recompute the current block AND the masked suffix against
  the cached prefix (prompt + finished blocks).
- DualCache (Fast-dLLM): as above, but later steps recompute only the current block (a fixed
  `block_length` of queries); the suffix's K/V stay as they were at the block's start.
- FeatureCache (dLLM-Cache, arXiv 2506.06295): per layer it keeps K, V, the attention output and
  the FFN output of every row. With a step counter s, prompt rows are recomputed when
  (s - 1) % K_p == 0 and response rows when (s - 1) % K_r == 0. On other steps each layer takes
  the fresh V projection of the response rows, and recomputes attention and FFN only for the
  int(rho * gen_length) rows whose V is least similar (cosine) to the cached V; every other row
  reuses its cached outputs. Reusing RESPONSE features is what causes the Repeat Curse
  (arXiv 2601.20520).
  Option `stale_first` (ours, not dLLM-Cache): spend the same rho budget FIRST on rows whose
  +-1 neighbourhood (themselves included) gained a committed token since that layer last computed
  them, then on the least similar rows. The similarity rule misses exactly those rows: a
  just-committed neighbour leaves a row's own V almost unchanged, and in layer 0 every [MASK]
  row has the same V, so ties decide.
  With CoTA's CTAR (cota.py) the deep-band layers get an extra budget of (2w + 1) rows per token
  committed in a step and put rows whose +-w neighbourhood changed since their last compute first:
  every such row is recomputed (the budget covers all of them), the rest goes by similarity.

For CoTA's CTEV a cache also keeps, in `hidden`, the residual stream after each layer in
`keep_hidden` for EVERY canvas position: the states the model actually used at this step, stale
ones included (for rows a cache did not recompute, their last computed state). With
`observe=True` it keeps every layer's state, in `attention` the attention weights in effect for
every row (B, H, L, S + L) per layer, and in `value_norms` each head's ||v_j|| for every key
(B, H, S + L) per layer, for the probes; observing changes no computation.

CUDA-friendly: buffers are allocated once per `generate` call and written in place: prefix and
dual write one contiguous span of columns (a slice copy), the feature cache scatters its chosen
rows (`scatter_`); the number of rows per step is a Python int fixed by the step's kind, so shapes
are static; nothing here syncs with the host. `rows_computed[layer]` counts the rows that went through
attention and FFN, so the work saved is visible, not only the time.
"""
import math

import torch
import torch.nn.functional as F

from .model import Trace


class KVBuffer:
    """Preallocated K/V of [sink?; every position] for every layer, written at `rows`.

    This is the object the model's `cache` seam talks to: `update(layer, k, v)` writes the fresh
    keys/values of the current query rows, then returns the whole buffer to attend to."""

    def __init__(self, model, batch: int, length: int, dtype, device):
        cfg = model.cfg
        self.sink = int(cfg.sink)
        shape = (cfg.n_layer, batch, cfg.n_head, self.sink + length, cfg.d_model // cfg.n_head)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        if self.sink:  # the sink's K/V are the same for every input and step: computed once
            for layer, (k, v) in enumerate(model.sink_kv()):
                self.k[layer, :, :, :1] = k
                self.v[layer, :, :, :1] = v
        self.num_keys = self.sink + length
        self.rows = None  # (B, R) content positions of the current query rows
        self.span = None  # (start, end) when the rows are that same range in every batch row

    def update(self, layer: int, k, v):
        if self.span is not None:  # a plain slice copy: several times cheaper than a scatter
            start, end = self.span[0] + self.sink, self.span[1] + self.sink
            self.k[layer][:, :, start:end] = k
            self.v[layer][:, :, start:end] = v
        else:
            index = (self.rows + self.sink)[:, None, :, None].expand_as(k)
            self.k[layer].scatter_(2, index, k)
            self.v[layer].scatter_(2, index, v)
        return self.k[layer], self.v[layer]


class NoCache:
    """The reference: the whole sequence through the whole model at every step."""

    def __init__(self, model, x, positions, bias_for, prompt_len, cfg, keep_hidden=(), observe=False):
        self.model, self.positions, self.bias_for = model, positions, bias_for
        self.batch, self.length = x.shape
        n_layer, H, S = model.cfg.n_layer, model.cfg.n_head, int(model.cfg.sink)
        self.rows_computed = [0] * n_layer
        self.keep_hidden = list(range(n_layer)) if observe else list(keep_hidden)
        dtype = next(model.parameters()).dtype
        self.hidden = [torch.zeros(self.batch, self.length, model.cfg.d_model, dtype=dtype,
                                   device=x.device) for _ in self.keep_hidden]
        self.observe = observe
        self.attention = [torch.zeros(self.batch, H, self.length, S + self.length, dtype=dtype,
                                      device=x.device) for _ in range(n_layer if observe else 0)]
        self.value_norms = [None] * (n_layer if observe else 0)

    def count(self, rows: int):
        self.rows_computed = [n + self.batch * rows for n in self.rows_computed]

    def forward_rows(self, x, start: int, end: int, cache=None):
        """Run canvas columns start..end-1 as queries; record the kept hidden states."""
        self.count(end - start)
        rows = None if (start, end) == (0, self.length) else cache.rows
        trace = Trace(attention=self.observe) if self.keep_hidden else None
        out = self.model(x[:, start:end], positions=self.positions[:, start:end], cache=cache,
                         attn_bias=self.bias_for(rows), trace=trace)
        if trace is None:
            return out
        for buffer, layer in zip(self.hidden, self.keep_hidden):
            buffer[:, start:end] = trace.hidden[layer]
        for buffer, weights in zip(self.attention, trace.attn):  # drop an uncached sink query row
            buffer[:, :, start:end] = weights[:, :, weights.shape[2] - (end - start):]
        for layer, values in enumerate(trace.values):  # values of every key, the sink's included
            self.value_norms[layer] = values.norm(dim=-1)
        return out[0]

    def full_forward(self, x, cache=None):
        return self.forward_rows(x, 0, self.length, cache)

    def logits(self, x, lo, hi, block_start):
        return self.full_forward(x)[:, lo:hi]


class PrefixCache(NoCache):
    """Fast-dLLM prefix cache: refresh all K/V at a block's start, then run block + suffix."""

    def __init__(self, model, x, positions, bias_for, prompt_len, cfg, keep_hidden=(), observe=False):
        super().__init__(model, x, positions, bias_for, prompt_len, cfg, keep_hidden, observe)
        self.kv = KVBuffer(model, self.batch, self.length, next(model.parameters()).dtype, x.device)
        self.all_rows = torch.arange(self.length, device=x.device).expand(self.batch, -1)

    def query_span(self, lo, hi):
        return lo, self.length

    def logits(self, x, lo, hi, block_start):
        start, end = (0, self.length) if block_start else self.query_span(lo, hi)
        self.kv.rows, self.kv.span = self.all_rows[:, start:end], (start, end)
        return self.forward_rows(x, start, end, self.kv)[:, lo - start:hi - start]


class DualCache(PrefixCache):
    """Fast-dLLM dual cache: after the block's first step, only the block's rows are run."""

    def query_span(self, lo, hi):
        return lo, hi


class FeatureCache(NoCache):
    """dLLM-Cache: per-layer K/V, attention and FFN outputs, refreshed every K_p / K_r steps."""

    def __init__(self, model, x, positions, bias_for, prompt_len, cfg, keep_hidden=(), observe=False):
        super().__init__(model, x, positions, bias_for, prompt_len, cfg, keep_hidden, observe)
        dtype, device = next(model.parameters()).dtype, x.device
        n_layer, d = model.cfg.n_layer, model.cfg.d_model
        self.kv = KVBuffer(model, self.batch, self.length, dtype, device)
        self.attn_out = torch.zeros(n_layer, self.batch, self.length, d, dtype=dtype, device=device)
        self.ffn_out = torch.zeros_like(self.attn_out)
        self.prompt_len, self.step = prompt_len, 0
        self.K_p, self.K_r = cfg.cache_kp, cfg.cache_kr
        self.n_partial = int(cfg.cache_rho * (self.length - prompt_len))  # rows per partial layer
        rows = torch.arange(self.length, device=device).expand(self.batch, -1)
        self.prompt_rows, self.response_rows = rows[:, :prompt_len], rows[:, prompt_len:]
        self.stale_first = cfg.cache_stale_first
        n_response = self.length - prompt_len
        self.repair_layers = set(cfg.cota.deep_layers(n_layer)) if cfg.cota.ctar else set()
        self.repair_window = cfg.cota.ctar_window
        steps_per_block = cfg.steps // (cfg.gen_length // cfg.block_length)
        per_step = math.ceil(cfg.block_length / steps_per_block)  # most tokens committed in one step
        self.n_repair = min(n_response, self.n_partial + per_step * (2 * self.repair_window + 1))
        self.previous = x.clone()  # the canvas at the last step, to see what was committed
        self.changed_at = torch.zeros(self.batch, self.length, dtype=torch.long, device=device)
        self.computed_at = torch.zeros(n_layer, self.batch, self.length, dtype=torch.long, device=device)

    def logits(self, x, lo, hi, block_start):
        self.step += 1
        if self.stale_first or self.repair_layers:
            self.changed_at.masked_fill_(x != self.previous, self.step)
            self.previous.copy_(x)
        refresh_prompt = (self.step - 1) % self.K_p == 0
        refresh_response = (self.step - 1) % self.K_r == 0
        parts = ([self.prompt_rows] if refresh_prompt else []) + \
                ([self.response_rows] if refresh_response else [])
        fixed = torch.cat(parts, dim=1) if parts else self.prompt_rows[:, :0]
        h, (cos, sin) = self.model.embed_rows(x, self.positions)
        for layer, block in enumerate(self.model.blocks):
            rows = fixed
            if layer in self.repair_layers:  # CTAR: stale neighbourhoods first, larger budget
                n, window = self.n_repair, self.repair_window
            else:                            # dLLM-Cache (or ours, stale-first within +-1)
                n, window = self.n_partial, 1 if self.stale_first else 0
            if n > 0 and not refresh_response:
                rows = torch.cat([fixed, self.least_similar_rows(layer, block, h, n, window)], dim=1)
            if rows.shape[1]:
                h = self.run_rows(layer, block, h, rows, cos, sin)
            else:  # nothing to refresh in this layer: reuse both outputs for every row
                h = h + self.attn_out[layer] + self.ffn_out[layer]
            if layer in self.keep_hidden:
                self.hidden[self.keep_hidden.index(layer)] = h
        return self.model.head(self.model.norm(h[:, lo:hi]))

    def least_similar_rows(self, layer, block, h, n, window):
        """The n response rows whose fresh V is least similar to the cached V; with window > 0,
        rows whose +-window neighbourhood changed since this layer computed them come first."""
        P = self.prompt_len
        w_v = block.attn.wqkv.weight[2 * self.model.cfg.d_model:]  # the V projection only
        fresh = F.linear(block.norm1(h[:, P:]), w_v)                  # (B, G, d)
        cached = self.kv.v[layer][:, :, self.kv.sink + P:].transpose(1, 2).flatten(2)
        priority = F.cosine_similarity(fresh, cached, dim=-1)        # (B, G), low goes first
        if window:  # neighbourhood changed after this layer computed the row: first
            changed = F.max_pool1d(self.changed_at[:, None].float(), 2 * window + 1, stride=1,
                                   padding=window)[:, 0]
            stale = changed[:, P:] > self.computed_at[layer][:, P:]
            # cosine similarity spans [-1, 1], a range of 2: subtracting 3 puts every stale row
            # ahead of every fresh one, and keeps the similarity order within each group
            priority = priority - 3.0 * stale
        return priority.topk(n, dim=-1, largest=False).indices + P

    def run_rows(self, layer, block, h, rows, cos, sin):
        """Recompute attention and FFN for `rows` (B, R); reuse the cached outputs elsewhere."""
        R, d = rows.shape[1], h.shape[-1]
        index = rows[:, :, None].expand(-1, -1, d)
        rope_index = rows[:, None, :, None].expand(-1, 1, -1, cos.shape[-1])
        rope = (cos.gather(2, rope_index), sin.gather(2, rope_index))
        bias = self.bias_for(rows)
        layer_bias = bias[layer] if isinstance(bias, (list, tuple)) else bias
        mask = self.model.attention_mask(layer_bias, R, self.length, False, h.dtype, h.device)
        self.kv.rows = rows
        trace = Trace() if self.observe else None
        attn = block.attn(block.norm1(h.gather(1, index)), rope, mask,
                          kv_update=lambda k, v: self.kv.update(layer, k, v), trace=trace)
        if trace is not None:  # the recomputed rows' weights replace their stale ones
            weights = trace.attn[0]
            self.attention[layer].scatter_(2, rows[:, None, :, None].expand_as(weights), weights)
            self.value_norms[layer] = trace.values[0].norm(dim=-1)
        self.attn_out[layer].scatter_(1, index, attn)
        h = h + self.attn_out[layer]
        self.ffn_out[layer].scatter_(1, index, block.mlp(block.norm2(h.gather(1, index))))
        self.rows_computed[layer] += self.batch * R
        self.computed_at[layer].scatter_(1, rows, self.step)
        return h + self.ffn_out[layer]


CACHES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache, "feature": FeatureCache}
