"""Small pieces shared by the command-line scripts: one-line errors with exit code 2, devices."""
import argparse
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


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value
