"""What the probes read from a cache: the attention in effect at the current step, per layer.

The sink probe (sinks.py) and CoTA's information-flow analysis (infoflow.py) need, at every
step, the softmax weights each query row attended with and each head's value norms ||v_j||. A
cache given `observe=True` fills an `AttentionRecord` from the model's traces (model.Trace): a
full forward writes every row; a feature cache's partial step overwrites only the rows it
recomputed, so the others keep the weights they were computed with, which is what the model
used. Recording changes no computation (tested).
"""
import torch


class AttentionRecord:
    """attention[layer]: (B, H, L, S + L) weights over [sink?; every position];
    value_norms[layer]: (B, H, S + L) each head's ||v_j|| of every key, the sink's included."""

    def __init__(self, model, batch: int, length: int, dtype, device):
        H, S, n_layer = model.cfg.n_head, int(model.cfg.sink), model.cfg.n_layer
        self.attention = [torch.zeros(batch, H, length, S + length, dtype=dtype, device=device)
                          for _ in range(n_layer)]
        self.value_norms = [None] * n_layer

    def write_span(self, trace, start: int, end: int):
        """Every layer of a forward whose query rows were the columns start..end-1."""
        for buffer, weights in zip(self.attention, trace.attn):  # drop an uncached sink query row
            buffer[:, :, start:end] = weights[:, :, weights.shape[2] - (end - start):]
        for layer, values in enumerate(trace.values):
            self.value_norms[layer] = values.norm(dim=-1)

    def write_rows(self, layer: int, trace, rows):
        """One layer's recomputed rows (B, R): their weights replace the stale ones."""
        weights = trace.attn[0]
        self.attention[layer].scatter_(2, rows[:, None, :, None].expand_as(weights), weights)
        self.value_norms[layer] = trace.values[0].norm(dim=-1)
