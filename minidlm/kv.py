"""The K/V store every cache writes into through the model's seam (`cache=` in model.forward).

One preallocated buffer per generate call holds, for every layer, the keys and values of
[sink?; every canvas position]. A forward over some query rows hands their fresh K/V to
`update` and attends over the whole buffer it returns: the rows just written plus every other
row's K/V as they were last computed (the approximation a cache makes). The sink's K/V never
change (its row sees only itself), so they are written once. A slice copy for a span of columns
is several times cheaper than a scatter, so spans use it; scattered rows (dLLM-Cache) use
`scatter_`. Shapes are static and nothing syncs with the host.
"""
import torch

from .model import rope_angles


@torch.no_grad()
def sink_kv(model):
    """Per layer, the [SINK]'s (k, v), each (1, H, 1, head_dim). Its row sees only itself and its
    input is constant, so these never change: a cache computes them once, by the model's own
    blocks at RoPE position 0."""
    cfg = model.cfg
    rope = rope_angles(torch.zeros(1, 1, dtype=torch.long, device=model.sink_embed.device),
                       cfg.d_model // cfg.n_head, cfg.rope_base)
    x, kvs = model.sink_embed, []

    def keep(k, v):  # attend as usual, and remember this layer's k, v
        kvs.append((k, v))
        return k, v
    for block in model.blocks:
        x = block(x, rope, None, kv_update=keep)
    return kvs


class KVBuffer:
    """Preallocated K/V of [sink?; every position] for every layer. `update(layer, k, v, span=
    (start, end) | rows=(B, R) index)` writes the query rows' fresh K/V and returns the whole buffer."""

    def __init__(self, model, batch: int, length: int, dtype, device):
        cfg = model.cfg
        self.sink = int(cfg.sink)
        shape = (cfg.n_layer, batch, cfg.n_head, self.sink + length, cfg.d_model // cfg.n_head)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        if self.sink:  # the sink's K/V are the same for every input and step: computed once
            for layer, (k, v) in enumerate(sink_kv(model)):
                self.k[layer, :, :, :1] = k
                self.v[layer, :, :, :1] = v
        self.num_keys = self.sink + length

    def update(self, layer: int, k, v, span=None, rows=None, keep=None):
        """keep: (B, end - start) bool or None; rows of the span it marks False keep their K/V."""
        if span is not None:  # a plain slice copy: several times cheaper than a scatter
            start, end = span[0] + self.sink, span[1] + self.sink
            if keep is not None:
                k = torch.where(keep[:, None, :, None], k, self.k[layer][:, :, start:end])
                v = torch.where(keep[:, None, :, None], v, self.v[layer][:, :, start:end])
            self.k[layer][:, :, start:end] = k
            self.v[layer][:, :, start:end] = v
        else:
            index = (rows + self.sink)[:, None, :, None].expand_as(k)
            self.k[layer].scatter_(2, index, k)
            self.v[layer].scatter_(2, index, v)
        return self.k[layer], self.v[layer]

    def writer(self, span=None, rows=None, keep=None):
        """For model(..., cache=...): a forward whose query rows are the columns span = (start,
        end) of every sample (`keep`: of which each row writes back), or the (B, R) `rows`."""
        return KVWriter(self, span, rows, keep)


class KVWriter:
    def __init__(self, buffer: KVBuffer, span, rows, keep):
        self.buffer, self.span, self.rows, self.keep, self.num_keys = buffer, span, rows, keep, buffer.num_keys

    def update(self, layer, k, v):
        return self.buffer.update(layer, k, v, span=self.span, rows=self.rows, keep=self.keep)
