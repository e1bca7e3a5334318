"""Optimizers and the learning-rate schedule of train_tiny.py.

- "adamw": AdamW on everything (weight decay on matrices only), the first round's recipe.
- "muon": Muon (torch.optim.Muon, Keller Jordan's orthogonalised momentum) on the transformer
  blocks' weight matrices, AdamW on the rest (embeddings, output head, norm gains, [SINK]), as in
  modded-nanogpt and nanochat. Muon only takes 2-D parameters, and embeddings and the head are
  lookups / readouts for which it is not meant.
On the CPU, `Muon` below is torch.optim.Muon with one change: its Newton-Schulz iteration runs in
float32. The library casts to bfloat16 for GPUs with bf16 matrix units; on a CPU without them
(AVX2 here) a bf16 matmul is about 30x slower than float32, which made an optimizer step cost
more than the forward and backward together. Same coefficients, same five steps, same update.

The schedule is a multiplier of each group's base learning rate over the run's progress in [0, 1]
(a share of the steps, or of the time budget): linear warm-up, then "cosine" decay to 10 % or
"wsd" (warm-up, stable, then a linear decay to 0 over the last `cooldown` share of the run).
"""
import math
from contextlib import contextmanager

import torch
import torch.optim._muon as _muon


def newton_schulz_float32(grad, ns_coefficients, ns_steps, eps):
    """torch.optim._muon._zeropower_via_newtonschulz, in float32: the quintic iteration
    X <- a X + (b A + c A^2) X with A = X X^T, from X = G / ||G|| on the wide orientation."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


@contextmanager
def _float32_newton_schulz():
    library = _muon._zeropower_via_newtonschulz
    _muon._zeropower_via_newtonschulz = newton_schulz_float32
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = library


class Muon(torch.optim.Muon):
    """torch.optim.Muon; on the CPU its Newton-Schulz iteration runs in float32 (see above)."""

    def step(self, closure=None):
        on_cpu = self.param_groups[0]["params"][0].device.type == "cpu"
        if on_cpu and hasattr(_muon, "_zeropower_via_newtonschulz"):
            with _float32_newton_schulz():
                return super().step(closure)
        return super().step(closure)


def build_optimizers(model, name: str, lr: float, muon_lr: float, weight_decay: float):
    """A list of optimizers whose param_groups carry their peak learning rate as `base_lr`."""
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")]
    in_muon = {id(p) for p in matrices} if name == "muon" else set()
    rest = [p for p in model.parameters() if id(p) not in in_muon]
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    opts = [torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))]
    if name == "muon":
        opts.append(Muon(matrices, lr=muon_lr, weight_decay=weight_decay, momentum=0.95,
                                     nesterov=True, adjust_lr_fn="original"))
    elif name != "adamw":
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {name!r}")
    for opt in opts:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts


def lr_factor(progress: float, step: int, warmup: int, schedule: str, cooldown: float) -> float:
    """The multiplier of the peak learning rate at `step` / `progress` (share of the run done)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, progress)
    if schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        return min(1.0, (1.0 - progress) / cooldown) if cooldown > 0 else 1.0
    raise ValueError(f"schedule must be 'cosine' or 'wsd', got {schedule!r}")


def set_lr(opts, factor: float):
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
