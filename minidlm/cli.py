"""Small pieces shared by the command-line scripts: one-line errors with exit code 2, devices."""
import argparse
import json
import math
import os
import sys

import torch


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit code 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def die(message: str, code: int = 2):
    """End the program with one clear line on stderr; code 2 means bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if name == "mps" and not (torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or mps)") from None


def number(kind=float, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse `type` for a finite int or float within [lo, hi] (or open ends): nan, inf and
    out-of-range values are refused with one line (and exit code 2) by ArgumentParser."""
    what = "an integer" if kind is int else "a number"
    low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    high = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    bounds = " and ".join(b for b in (low, high) if b)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if ((lo is not None and (value < lo or (lo_open and value == lo)))
                or (hi is not None and (value > hi or (hi_open and value == hi)))):
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text}")
        return value

    parse.__name__ = f"{what} {bounds}".strip()  # argparse names the type in its messages
    return parse


positive_int = number(int, lo=1, hi=10**9)


def write_json(path: str, obj):
    """Write `obj` as indented JSON, creating the folder if needed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
