"""The K/V store every cache writes into through the model's seam (`cache=` in model.forward).

One preallocated buffer per generate call holds the keys and values of [sink?; every canvas
position], one (B, H, sink + L, head_dim) tensor per layer. A forward over some query rows hands their fresh K/V to
`update` and attends over the whole buffer it returns: the rows just written plus every other
row's K/V as they were last computed (the approximation a cache makes). The sink's K/V never
change (its row sees only itself), so they are written once. A slice copy for a span of columns
is several times cheaper than a scatter, so spans use it; scattered rows (dLLM-Cache) use
`scatter_`. Nothing syncs with the host, and shapes are static except in left-to-right decoding
(autoregressive.py): there `upto_span=True` hands back only the keys up to the newest row, as
nothing after it has been written, so the key count grows by one each step.
"""
import torch

from .model import rope_angles


@torch.no_grad()
def sink_kv(model):
    """Per layer, the [SINK]'s (k, v), each (1, H, 1, head_dim). Its row sees only itself and its
    input is constant, so these never change: a cache computes them once, by the model's own
    blocks at RoPE position 0 (each layer's K/V projection of the sink row, then the layer)."""
    cfg = model.cfg
    rope = rope_angles(torch.zeros(1, 1, dtype=torch.long, device=model.sink_embed.device),
                       cfg.d_model // cfg.n_head, cfg.rope_base)
    x, kvs = model.sink_embed, []
    for block in model.blocks:
        _, k, v = block.attn.qkv(block.norm1(x), rope)
        kvs.append((k, v))
        x = block(x, rope, None)
    return kvs


class KVBuffer:
    """Preallocated K/V of [sink?; every position] for every layer. A forward writes into it
    through `writer(span=(start, end) | rows=(B, R) index, keep=...)`, its `cache=`."""

    def __init__(self, model, batch: int, length: int, dtype, device):
        cfg = model.cfg
        self.sink = int(cfg.sink)
        shape = (batch, cfg.n_head, self.sink + length, cfg.d_model // cfg.n_head)
        # one tensor per layer, not one for all: torch.compile then writes a layer's rows in place
        # (a write into a view of one shared tensor made it copy the whole cache at every step)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        if self.sink:  # the sink's K/V are the same for every input and step: computed once
            for layer, (k, v) in enumerate(sink_kv(model)):
                self.k[layer][:, :, :1] = k
                self.v[layer][:, :, :1] = v
        self.num_keys = self.sink + length

    def writer(self, span=None, rows=None, keep=None, upto_span=False):
        """For model(..., cache=...): a forward whose query rows are the columns span = (start,
        end) of every sample (`keep`: of which each row writes back), or the (B, R) `rows`.
        upto_span: attend over the keys of columns [0, end) only (left-to-right decoding)."""
        return KVWriter(self, span, rows, keep, upto_span)


class KVWriter:
    """One forward's writes into a KVBuffer. `update(layer, k, v)`, the one call each layer's
    attention makes (gpt-fast's `KVCache.update(input_pos, k, v)`), writes the query rows'
    fresh K/V at their columns and returns the layer's whole K, V (num_keys of them).
    keep: (B, end - start) bool or None; rows of the span it marks False keep their K/V."""

    def __init__(self, buffer: KVBuffer, span=None, rows=None, keep=None, upto_span=False):
        self.k, self.v, self.sink, self.num_keys = buffer.k, buffer.v, buffer.sink, buffer.num_keys
        self.span, self.rows, self.keep = span, rows, keep
        if upto_span:  # the keys written so far: the sink's and columns [0, end)
            self.num_keys = self.sink + span[1]

    def update(self, layer: int, k, v):
        K, V = self.k[layer], self.v[layer]
        if self.span is not None:  # a plain slice copy: several times cheaper than a scatter
            start, end = self.span[0] + self.sink, self.span[1] + self.sink
            if self.keep is not None:
                k = torch.where(self.keep[:, None, :, None], k, K[:, :, start:end])
                v = torch.where(self.keep[:, None, :, None], v, V[:, :, start:end])
            K[:, :, start:end] = k
            V[:, :, start:end] = v
        else:
            index = (self.rows + self.sink)[:, None, :, None].expand_as(k)
            K.scatter_(2, index, k)
            V.scatter_(2, index, v)
        if self.num_keys == K.shape[2]:  # every key: no slicing (a step's fewer operator calls)
            return K, V
        return K[:, :, :self.num_keys], V[:, :, :self.num_keys]
