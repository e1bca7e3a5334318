"""Which rows a feature cache recomputes on its partial steps: dLLM-Cache's rule and ours.

dLLM-Cache (arXiv 2506.06295) refreshes, in every layer, the int(rho * gen_length) response rows
whose fresh value vector V is least similar (cosine) to the cached one: `LeastSimilar`.
`StaleFirst` (ours) spends the same budget first on rows next to a token committed since the
layer last computed them. CoTA's CTAR, context-token attention repair (the authors' later code;
cota.py turns it on), is `StaleFirst` with a +-w window and a larger budget in the deep layers
only (`ctar_policy`): it repairs staleness instead of adding a distance prior. The other caches
recompute every row near a new commit anyway, so CTAR acts only on the feature cache.

A policy sees every step's canvas (`start_step`) and every recompute (`computed`), and answers,
per layer, how many rows (`budget`) and which (`pick`, given the similarity of each response row).
"""
import torch
import torch.nn.functional as F


class LeastSimilar:
    """dLLM-Cache's refresh rule: the n response rows whose fresh V is least similar to the
    cached V."""

    def start_step(self, step: int, x):
        pass

    def budget(self, layer: int, n: int) -> int:
        return n

    def pick(self, layer: int, similarity, n: int):
        return similarity.topk(n, dim=-1, largest=False).indices

    def computed(self, layer: int, rows, step: int):
        pass


class StaleFirst(LeastSimilar):
    """Ours, not dLLM-Cache: the budget goes FIRST to rows whose +-window neighbourhood (the row
    included) gained a committed token since this layer last computed the row, then by
    similarity. The similarity rule misses exactly those rows: a just-committed neighbour leaves a
    row's own V almost unchanged, and in layer 0 every [MASK] row has the same V, so ties decide.
    `window[layer]` (0: plain similarity) and `extra[layer]` (more rows) are per layer, which is
    what CoTA's CTAR sets for its deep band (cota.py)."""

    def __init__(self, x, holes, n_layer: int, window: int = 1):
        self.holes, self.n_response = holes, holes.shape[1]  # (B, N) the response rows' columns
        self.window = dict.fromkeys(range(n_layer), window)
        self.extra = dict.fromkeys(range(n_layer), 0)
        self.previous = x.clone()  # the canvas at the last step, to see what was committed
        self.changed_at = torch.zeros_like(x)
        self.computed_at = torch.zeros(n_layer, *x.shape, dtype=torch.long, device=x.device)

    def start_step(self, step, x):
        self.changed_at.masked_fill_(x != self.previous, step)
        self.previous.copy_(x)

    def budget(self, layer, n):
        return min(self.n_response, n + self.extra[layer])

    def pick(self, layer, similarity, n):
        w = self.window[layer]
        if w:
            changed = F.max_pool1d(self.changed_at[:, None].float(), 2 * w + 1, stride=1, padding=w)[:, 0]
            stale = changed.gather(1, self.holes) > self.computed_at[layer].gather(1, self.holes)
            # cosine similarity spans [-1, 1], a range of 2: subtracting 3 puts every stale row
            # ahead of every fresh one, and keeps the similarity order within each group
            similarity = similarity - 3.0 * stale
        return super().pick(layer, similarity, n)

    def computed(self, layer, rows, step):
        self.computed_at[layer].scatter_(1, rows, step)


def ctar_policy(policy, x, holes, n_layer: int, deep, window: int, per_step: int):
    """CTAR: in the `deep` layers, first every response row whose +-window neighbourhood gained a
    committed token since that layer computed it, with a budget of (2 window + 1) more rows per
    token committed in a step (`per_step` at most), so all of them fit; elsewhere `policy` as it was."""
    if not isinstance(policy, StaleFirst):
        policy = StaleFirst(x, holes, n_layer, window=0)
    for layer in deep:
        policy.window[layer] = window
        policy.extra[layer] = per_step * (2 * window + 1)
    return policy
