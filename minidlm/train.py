"""One training step of the recipe, its defaults, and bf16 where the hardware has it.

train_tiny.py runs the loop; bench.py --train times the same step. The model's defaults are
`ModelConfig`'s (model.py); the schedule's and objective's are `TrainConfig`'s, below.
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .diffusion import ar_loss, train_loss


@dataclass
class TrainConfig:
    """train_tiny.py's default schedule and objective (the flags of the same names)."""
    steps: int = 1000
    batch_size: int = 8          # windows of the model's context per step, over all processes
    optimizer: str = "muon"      # Muon on the blocks' matrices, AdamW on the rest (optim.py)
    lr: float = 6e-3             # peak AdamW learning rate
    muon_lr: float = 0.04        # peak Muon learning rate
    weight_decay: float = 0.1
    warmup: int = 0
    schedule: str = "wsd"        # constant, then a linear decay over the last `cooldown` share
    cooldown: float = 0.3
    t_min: float = 0.15          # training draws t ~ U[t_min, t_max] (the NELBO uses all t)
    t_max: float = 0.85
    plain_ce: bool = False       # True: masked cross-entropy without the 1/p weight
    objective: str = "diffusion"  # or "ar": the same network, causal, on the next token (ar_loss)


def native_bf16(device) -> bool:
    """Whether this device multiplies bf16 matrices natively: there, bf16 matmuls run about 2x
    float32's (a 2-core AVX512-BF16 CPU: 420 against 190 GFLOP/s); elsewhere they are emulated and
    slower than float32 (AVX2: about 30x)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch.cpu's own (private) checks; absent in a torch without them
        has = lambda name: getattr(torch.cpu, name, lambda: False)()
        return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")
    return False


def bf16_autocast(device):
    """bf16 autocast for the forward where the device has native bf16, else None. Parameters,
    optimizer state and the loss stay float32; evaluation runs in float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if native_bf16(device) else None


def train_step(model, opts, x0, mask_id, generator, cfg, rows=slice(None), autocast=None, bos_id=None):
    """One optimizer step of the recipe on this process's rows of x0; returns their loss. cfg: a
    TrainConfig, or anything with its t_min, t_max, plain_ce and objective (train_tiny.py's flags).
    The autoregressive objective needs `bos_id` (end-of-text) and ignores the mask settings."""
    with autocast or nullcontext():
        if getattr(cfg, "objective", "diffusion") == "ar":
            loss = ar_loss(model, x0, bos_id, rows=rows)
        else:
            loss = train_loss(model, x0, mask_id, generator, t_min=cfg.t_min, t_max=cfg.t_max,
                              weight_by_p=not cfg.plain_ce, rows=rows)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for opt in opts:
        opt.step()
    return loss
