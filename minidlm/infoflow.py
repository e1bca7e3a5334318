"""The information-flow view of the Repeat Curse ("Context Tokens are Anchors", arXiv 2601.20520).

The paper reads the curse off two signals: the logit-lens entropy of a position across layers
(it converges, i.e. drops, in the deep layers when the prediction is well anchored) and how much
attention a position pays to its neighbours. For every response position, at the step it is
committed, `FlowRecorder` records from the states the model actually used at that step:

    E_l(i)   = H(softmax(head(norm(h_l(i))))) / log V        for every layer l
    local(i) = sum of attention on keys j with |i - j| <= 5,  mean over heads and deep layers

After decoding, a position whose final token equals its left or right neighbour's is "repeated",
any other "normal"; positions after the first end-of-text are left out. It only observes
(generate(..., observe=True)); nothing it does changes a token.
"""
import torch

from .cota import lens_entropy
from .tokenizer import cut_at


class FlowRecorder:
    """Use: start(prompt_len); generate(..., on_step=recorder, observe=True); finish(response)."""

    def __init__(self, model, mask_id: int, eot_id: int, deep_layers, window: int = 5):
        self.model, self.mask_id, self.eot_id = model, mask_id, eot_id
        self.deep, self.window = list(deep_layers), window
        self.sink = int(model.cfg.sink)
        self.groups = {"repeated": [], "normal": []}  # lists of (entropies, local mass)

    def start(self, prompt_len: int):
        self.prompt_len, self.previous = prompt_len, None
        self.entropy = {}  # (row, position) -> (n_layer,) entropies at the commit step
        self.local = {}    # (row, position) -> local attention mass at the commit step

    def __call__(self, step, x, cache):
        before = self.previous if self.previous is not None else torch.full_like(x, self.mask_id)
        newly = ((x != self.mask_id) & (before == self.mask_id)).nonzero().tolist()
        self.previous = x.clone()
        if not newly:
            return
        rows, cols = torch.tensor(newly, device=x.device).T
        hidden = torch.stack([cache.hidden[l][rows, cols] for l in sorted(cache.hidden)])  # (n_layer, N, d)
        entropy = lens_entropy(self.model, hidden).T.cpu()                   # (N, n_layer)
        keys = torch.arange(x.shape[1], device=x.device)
        near = (keys[None] - cols[:, None]).abs() <= self.window             # (N, L)
        near = torch.nn.functional.pad(near, (self.sink, 0))                 # the sink is not near
        mass = torch.stack([(cache.record.attention[l][rows, :, cols] * near[:, None]).sum(-1).mean(-1)
                            for l in self.deep]).mean(0).cpu()               # (N,)
        for k, (r, c) in enumerate(newly):
            self.entropy[(r, c)], self.local[(r, c)] = entropy[k], mass[k].item()

    def finish(self, response):
        """Classify this batch's committed positions by the final response tokens (B, G)."""
        for r, row in enumerate(response.tolist()):
            end = len(cut_at(row, self.eot_id))
            for i in range(end):
                same = (i > 0 and row[i - 1] == row[i]) or (i + 1 < end and row[i + 1] == row[i])
                key = (r, self.prompt_len + i)
                if key in self.entropy:
                    self.groups["repeated" if same else "normal"].append((self.entropy[key], self.local[key]))

    def summary(self) -> dict:
        """{'repeated'|'normal': {'n', 'entropy_by_layer', 'local_mass'}} over all batches."""
        out = {}
        for kind, items in self.groups.items():
            out[kind] = {"n": len(items),
                         "entropy_by_layer": torch.stack([e for e, _ in items]).mean(0).tolist() if items else [],
                         "local_mass": sum(m for _, m in items) / len(items) if items else float("nan")}
        return out
