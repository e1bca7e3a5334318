"""The network: a bidirectional pre-norm transformer that predicts every position's token.

A BERT-shaped network trained with a diffusion objective (diffusion.py). After LLaDA (arXiv
2502.09992) and nanochat: bidirectional attention (no causal mask), no timestep input, no biases,
pre-norm RMSNorm, rotary position embeddings (RoPE), a plain MLP. train_tiny.py turns on the
speedrun levers (QK-norm, ReLU^2, zero-init projections, a unigram output bias; docs/training.md);
the defaults here are the first round's, so its checkpoints load unchanged.

`causal=True` is the autoregressive baseline (train_tiny.py --objective ar): the SAME network with
a causal mask, so row i attends only to keys up to its own (`causal_bias`); trained on the next
token (diffusion.ar_loss) instead of the masked ones. Nothing else differs.

`sink=True` adds ONE extra [SINK] token ("One Token Is Enough", arXiv 2601.19657): prepended at
RoPE position 0 with its own learned embedding (`sink_embed`; not a vocabulary id: the
tokenizer's `<|sink|>` id is reserved and unused), its row attends only to itself, every row may
attend to it, and its output is sliced off before the final norm. It is never masked and never
predicted, so neither the objective nor the sampler knows it exists. Variants of it (scored
without rotation, a value fixed at zero) live beside this file (sink_variants.py).

Seams for the samplers and analyses:
- `cache`: an object with `update(layer, k, v) -> (K, V)`: the forward runs only the given query
  rows (at their true `positions`) against the keys/values it returns, the sink's constant K/V
  (kv.sink_kv, computed once) included. When a cache refreshes is its own business (cache.py).
- `attn_bias`: additive pre-softmax logits over content keys (padding; CoTA's log G_ij).
- `Block.branches` and `Attention.values`: a block's attention and FFN outputs for some rows, and
  the V projection alone, for a cache that recomputes single rows (dLLM-Cache).
- `trace=True`: per-layer attention weights, values and hidden states, by the very same path.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sink_variants import sink_variant


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    n_layer: int = 8          # depth over width: CoTA's deep-layer band and sinks need layers
    n_head: int = 4
    d_model: int = 128
    max_seq_len: int = 256    # content tokens; the sink, when present, comes on top
    mlp_ratio: int = 4
    sink: bool = False
    sink_rotation: bool = True  # False: the sink's key is scored without RoPE (sink_variants.py)
    sink_value: str = "learned"  # "zero": the sink's value vectors are zero (sink_variants.py)
    rope_base: float = 10000.0
    qk_norm: bool = True        # RMS-normalise queries and keys per head before RoPE
    mlp_act: str = "relu2"      # "relu2" (ReLU squared) or "gelu"
    head_bias: bool = True      # a bias on the output logits (train_tiny starts it at log unigram)
    zero_init: bool = True      # start the residual projections (attn out, MLP down) at zero
    causal: bool = False        # True: the autoregressive baseline (each row sees only earlier keys)


@dataclass
class Trace:
    """What one forward saw, per layer. With a sink, S = 1 and key 0 is the sink; query row 0 is
    the sink too, except on cached forwards (the cache holds the sink's K/V, no sink query)."""
    attn: list = field(default_factory=list)    # (B, H, S + Tq, S + Tk) softmax weights
    values: list = field(default_factory=list)  # (B, H, S + Tk, head_dim) value vectors
    hidden: list = field(default_factory=list)  # (B, Tq, d) content residual stream after the layer
    attention: bool = True                      # False: keep hidden states only (cheaper)


_CONSTANTS = {}


def constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a 0-dim tensor of like's dtype and device, made once. An operator given a Python
    number wraps it in a float64 tensor and converts it (four more operator calls every time); the
    same value reaches the kernel either way, so the result is bitwise the same."""
    key = (value, like.dtype, like.device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return _CONSTANTS[key]


def rms_normalise(x, eps: float):
    """x / sqrt(mean(x^2) + eps) over the last dimension, without a gain. Written as the kernels
    `x.pow(2).mean(-1) + eps` runs (x * x, a sum, a division by the count) with constants of x's
    dtype: bitwise the same, in 7 operator calls instead of 17."""
    if torch.compiler.is_compiling():  # the compiler fuses it anyway
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    mean_square = (x * x).sum(-1, keepdim=True).div_(constant(x.shape[-1], x))
    return x * torch.rsqrt(mean_square + constant(eps, x))


class RMSNorm(nn.RMSNorm):
    """x / sqrt(mean(x^2) + eps) * gain, written out (`rms_normalise`): the same bits as
    nn.RMSNorm here in fewer operator calls (F.rms_norm also warns and falls back under bf16
    autocast)."""
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)

    def forward(self, x):
        return rms_normalise(x, self.eps) * self.weight


def rope_angles(positions: torch.Tensor, head_dim: int, base: float):
    """cos, sin of shape (B, 1, T, head_dim/2) for integer positions of shape (B, T)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float().unsqueeze(-1) * inv_freq  # (B, T, head_dim/2)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def rope_tables(cos, sin):
    """rope_angles' cos, sin widened to (..., head_dim), the form apply_rope uses: each pair's
    cos twice, and its sin as (-sin, +sin)."""
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x, cos, sin):
    """Rotate each pair (x1, x2) of x's last dimension: (x1 cos - x2 sin, x1 sin + x2 cos).
    cos, sin: rope_tables' (..., head_dim), or rope_angles' (..., head_dim/2), widened here.
    Computed as x * cos + (x2, x1) * (-sin, sin): the same products and sums, so the same bits
    as the pairwise formula, in about half the operator calls."""
    if cos.shape[-1] != x.shape[-1]:
        cos, sin = rope_tables(cos, sin)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x2, x1) in each pair
    return x * cos + swapped * sin


def causal_bias(tq: int, tk: int, device) -> torch.Tensor:
    """(1, 1, tq, tk) additive mask: -inf where a query row would see a later key. The queries are the
    LAST tq of the tk keys (all of them in training; the newest rows when decoding with a K/V cache)."""
    row = torch.arange(tq, device=device)[:, None] + (tk - tq)
    later = torch.arange(tk, device=device) > row
    return torch.zeros(1, 1, tq, tk, device=device).masked_fill(later, float("-inf"))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer  # which layer's K/V a cache updates
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.sink_variant = None  # a sink variant's change to v and the mask (sink_variants.py)
        self.q_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()

    def values(self, x):
        """The value vectors alone, (B, H, T, head_dim): V of wqkv (the same weights qkv uses)."""
        B, T, d = x.shape
        v = F.linear(x, self.wqkv.weight[2 * d:])
        return v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def qkv(self, x, rope):
        """Rotated queries and keys, and values, each (B, H, T, head_dim)."""
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        qk = qkv[:2]  # queries and keys normed and rotated together: half the operator calls
        if isinstance(self.q_norm, RMSNorm):  # each with its own gain, as q_norm(q) and k_norm(k)
            gains = torch.stack((self.q_norm.weight, self.k_norm.weight))[:, None, None, None]
            qk = rms_normalise(qk, self.q_norm.eps) * gains
        q, k = apply_rope(qk, *rope)
        return q, k, qkv[2]

    def forward(self, x, rope, mask, cache=None, trace=None):
        q, k, v = self.qkv(x, rope)
        if cache is not None:  # write these rows' K/V, attend over every key the cache holds
            k, v = cache.update(self.layer, k, v)
        if self.sink_variant is not None:
            v, mask = self.sink_variant(q, k, v, lambda x: apply_rope(x, *rope), mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if trace is not None and trace.attention:  # weights beside the fast path; y is unchanged
            logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
            trace.attn.append(torch.softmax(logits if mask is None else logits + mask, dim=-1))
            trace.values.append(v)
        return self.wo(y.transpose(1, 2).flatten(2))  # (B, T, H * head_dim)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.down = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)
        if cfg.mlp_act not in ("gelu", "relu2"):
            raise ValueError(f"mlp_act must be 'gelu' or 'relu2', got {cfg.mlp_act!r}")
        self.relu2 = cfg.mlp_act == "relu2"

    def forward(self, x):
        h = self.up(x)
        if not self.relu2:
            return self.down(F.gelu(h))
        h = F.relu(h)
        return self.down(h * h)  # the same bits as .square(), without pow's dispatch


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model), Attention(cfg, layer)
        self.norm2, self.mlp = RMSNorm(cfg.d_model), MLP(cfg)

    def forward(self, x, rope, mask, cache=None, trace=None):
        x = x + self.attn(self.norm1(x), rope, mask, cache, trace)
        return x + self.mlp(self.norm2(x))

    def branches(self, x, rope, mask, cache=None, trace=None):
        """The two residual branches for rows x, as `forward` computes them: the attention output
        a, then the FFN output f of x + a (the block's output is x + a + f)."""
        a = self.attn(self.norm1(x), rope, mask, cache, trace)
        return a, self.mlp(self.norm2(x + a))


class DiffusionLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head or (cfg.d_model // cfg.n_head) % 2:
            raise ValueError("d_model must split into heads of even size (RoPE rotates pairs)")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.sink_embed = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.sink else None
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale residual projections by depth (or start at 0)
            for w in (block.attn.wo.weight, block.mlp.down.weight):
                if cfg.zero_init:
                    nn.init.zeros_(w)
                else:
                    nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.sink:
            nn.init.normal_(self.sink_embed, std=0.02)
        if cfg.sink and (not cfg.sink_rotation or cfg.sink_value != "learned"):
            for block in self.blocks:
                block.attn.sink_variant = sink_variant(cfg)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attention_mask(self, attn_bias, tq, tk, sink_row, dtype, device):
        """Additive mask over [sink?; content] keys, or None when every score is allowed. With a
        sink, key 0 is the sink; `sink_row` says whether query row 0 is the sink itself."""
        if not self.cfg.sink:
            return None if attn_bias is None else attn_bias.to(dtype)
        s = int(sink_row)
        mask = torch.zeros(1, 1, s + tq, 1 + tk, dtype=dtype, device=device)
        if sink_row:
            mask[..., 0, 1:] = float("-inf")  # the sink's row sees only itself
        if attn_bias is not None:             # content rows: bias on content keys, 0 on the sink key
            bias = attn_bias.to(dtype).expand(*attn_bias.shape[:2], tq, tk)
            mask = mask + F.pad(bias, (1, 0, s, 0))
        return mask

    def rope(self, positions):
        """RoPE's (cos, sin) tables (rope_tables), each (B, 1, T, head_dim), of content rows at
        positions (B, T); with a sink, content positions are shifted by one: the sink sits at RoPE
        position 0. A sampler computes them once per call and slices them (`rope=` in forward)."""
        return rope_tables(*rope_angles(positions + int(self.cfg.sink), self.cfg.d_model // self.cfg.n_head,
                                        self.cfg.rope_base))

    def embed_rows(self, idx, positions=None, rope=None):
        """Token embeddings (B, T, d) and the RoPE tables of content rows at their true positions
        (`rope`, when given: already computed)."""
        B, T = idx.shape
        if rope is None:
            if positions is None:
                positions = torch.arange(T, device=idx.device)
            rope = self.rope(positions.expand(B, T))
        return self.embed(idx), rope

    def forward(self, idx, positions=None, cache=None, attn_bias=None, trace=False, rope=None):
        """Logits (B, T, V) for the query rows `idx` (B, T); with trace (True or a Trace to fill),
        (logits, Trace). positions: (B, T) or (T,) true content positions (default 0..T-1).
        cache: None (keys = these rows, plus the sink row) or an object with update(layer, k, v)
        -> (K, V) and num_keys; its K/V include the sink's at index 0.
        attn_bias: (B|1, H|1, T, Tk) additive logits over content keys.
        rope: these rows' RoPE tables, sliced from `self.rope(positions)` (then positions is unused)."""
        B, T = idx.shape
        x, rope = self.embed_rows(idx, positions, rope)
        sink_row = self.cfg.sink and cache is None
        if sink_row:  # prepend [SINK] as a query row at RoPE position 0
            x = torch.cat([self.sink_embed.expand(B, 1, -1), x], dim=1)
            cos, sin = rope  # position 0: angle 0, so cos 1 and sin 0
            rope = (F.pad(cos, (0, 0, 1, 0), value=1.0), F.pad(sin, (0, 0, 1, 0), value=0.0))
        tr = trace if isinstance(trace, Trace) else (Trace() if trace else None)
        s = int(sink_row)
        tk = T if cache is None else cache.num_keys - int(self.cfg.sink)
        if self.cfg.causal:  # the one change that makes this an autoregressive model
            attn_bias = causal_bias(T, tk, x.device) + (0 if attn_bias is None else attn_bias)
        mask = self.attention_mask(attn_bias, T, tk, sink_row, x.dtype, x.device)
        for block in self.blocks:
            x = block(x, rope, mask, cache, tr)
            if tr is not None:
                tr.hidden.append(x[:, s:])
        logits = self.head(self.norm(x[:, s:]))
        return (logits, tr) if tr is not None else logits

    def logit_lens(self, hidden):
        """Logits read off an intermediate residual stream (final norm + head)."""
        return self.head(self.norm(hidden))
