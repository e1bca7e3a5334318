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
import pickle
import zipfile
from dataclasses import asdict

import torch

from .files import atomic_write
from .model import DiffusionLM, ModelConfig
from .tokenizer import Tokenizer

FORMAT = "minidlm-checkpoint-v1"
# Checkpoints saved before these options existed were trained without them (and as diffusion models).
ABSENT_MEANS = dict(qk_norm=False, mlp_act="gelu", head_bias=False, zero_init=False, causal=False)


class CheckpointError(Exception):
    """A checkpoint is missing, truncated or incompatible; the message is one clear line."""


def atomic_save(obj, path: str):
    """torch.save(obj) to `path`, atomically (files.atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def state_path(path: str) -> str:
    """Where the resumable training state of checkpoint `path` lives."""
    root, _ = os.path.splitext(path)
    return root + ".state.pt"


def save_model(path: str, model: DiffusionLM, tokenizer: Tokenizer, meta: dict):
    weights = {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "config": asdict(model.cfg), "model": weights,
                 "tokenizer": tokenizer.state_dict(), "meta": meta}, path)


ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def read(path: str) -> dict:
    """torch.load(weights_only=True) with every failure turned into a CheckpointError that says
    what is wrong: missing, a folder, empty, not a PyTorch file at all, truncated or damaged, or a
    PyTorch file holding objects that are not tensors and plain data (not written by minidlm)."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}" if not os.path.exists(path)
                              else f"checkpoint {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    if head != ZIP_MAGIC:
        raise CheckpointError(f"cannot read checkpoint {path}: not a minidlm checkpoint (not a file "
                              f"written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a class: some other program's file
        raise CheckpointError(f"cannot read checkpoint {path}: not a minidlm checkpoint (it holds Python "
                              f"objects other than tensors and plain data)") from None
    except Exception as e:  # a cut zip: "failed finding central directory", "[Errno 22] ..."
        why = ("it is truncated (an interrupted copy or download?)" if not zipfile.is_zipfile(path)
               else "it is damaged or not a minidlm checkpoint: "
               + (str(e).strip().splitlines() or [type(e).__name__])[0][:120])
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None


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
    meta = ckpt.get("meta", {})
    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"incompatible checkpoint {path}: {problem}")
    return model.to(device).eval(), tokenizer, meta


# the types of the metadata fields the scripts read (train_tiny.py writes them; each is optional)
META_TYPES = {"args": dict, "metrics": dict, "evals": list, "curve": list, "losses": list, "command": str,
              "step": int}


def meta_problem(meta):
    """None, or why a checkpoint's metadata cannot be used: it must be a dict, and each field the
    scripts read, where present, of the type train_tiny.py writes (a missing one is fine: the
    scripts read each with a default, as older checkpoints lack some)."""
    if not isinstance(meta, dict):
        return f"its metadata is a {type(meta).__name__}, not a dict"
    for key, kind in META_TYPES.items():
        if key in meta and not isinstance(meta[key], kind):
            return f"its metadata's {key!r} is a {type(meta[key]).__name__}, not a {kind.__name__}"
    return None
