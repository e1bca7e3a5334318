"""Checkpoints: one dict per file, written atomically, read with `torch.load(weights_only=True)`.

A model checkpoint holds everything needed to sample: the model config and weights (stored in
float16 to keep the shipped files small; loaded back as float32), the tokenizer's state (tiktoken's
named encodings cannot be downloaded here, so ours travels with the model), the command that
trained it and its final metrics. Training state for `--resume` (float32 weights, optimizer, step,
RNG) lives in a separate `.state.pt` file beside it.

Files are written to a temporary name in the same folder, flushed to disk, then renamed over the
target: an interrupted write never leaves a truncated checkpoint where a good one was.
"""
import os
from dataclasses import asdict

import torch

from .cli import atomic_write
from .model import DiffusionLM, ModelConfig
from .tokenizer import Tokenizer

FORMAT = "minidlm-checkpoint-v1"
# Checkpoints saved before these options existed were trained without them.
ABSENT_MEANS = dict(qk_norm=False, mlp_act="gelu", head_bias=False, zero_init=False)


class CheckpointError(Exception):
    """A checkpoint is missing, truncated or incompatible; the message is one clear line."""


def atomic_save(obj, path: str):
    """torch.save(obj) to `path`, atomically (cli.atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def state_path(path: str) -> str:
    """Where the resumable training state of checkpoint `path` lives."""
    root, _ = os.path.splitext(path)
    return root + ".state.pt"


def save_model(path: str, model: DiffusionLM, tokenizer: Tokenizer, meta: dict):
    weights = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "config": asdict(model.cfg), "model": weights,
                 "tokenizer": tokenizer.state_dict(), "meta": meta}, path)


def read(path: str) -> dict:
    """torch.load(weights_only=True) with every failure turned into a CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of foreign objects, not a torch file at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:160]}") from None


def load_model(path: str, device="cpu"):
    """Returns (model in eval mode on `device`, tokenizer, meta)."""
    ckpt = read(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minidlm model checkpoint ({FORMAT})")
    try:
        cfg = ModelConfig(**{**ABSENT_MEANS, **ckpt["config"]})
        model = DiffusionLM(cfg)
        model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
        tokenizer = Tokenizer.from_state_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"incompatible checkpoint {path}: {first[:160]}") from None
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"incompatible checkpoint {path}: tokenizer has "
                              f"{tokenizer.vocab_size} ids, model {cfg.vocab_size}")
    return model.to(device).eval(), tokenizer, ckpt.get("meta", {})
