"""Small pieces shared by the command-line scripts: one-line errors with exit code 2, checked
numeric flags, devices, markdown table cells (`cell`), timing (`timed`), Ctrl-C and closed pipes
(`run_main`), figures. What scripts read and write is checked in files.py.

This module imports torch only inside the functions that need it, so that a script can call
`quiet_early_ctrl_c` before its heavy imports (torch takes a second or more to load)."""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import stat
import time


def first_rank() -> bool:
    """False on the other processes of a torchrun launch (RANK > 0): they stay silent, so that a
    refused setting is one line, rank 0's, not one per process."""
    return os.environ.get("RANK", "0") == "0"


def tell_torchrun(line: str):
    """Under torchrun, leave `line` in the error file it reads for this process, so that its
    failure report shows the reason instead of a link about enabling tracebacks."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as f:
                json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                      "timestamp": str(int(time.time()))}}}, f)
        except OSError:
            pass


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit code 2), not usage + error."""

    def error(self, message):
        line = f"{self.prog}: error: {message} (see --help)"
        tell_torchrun(line)
        self.exit(2, line + "\n" if first_rank() else None)


def given_options(parser, argv=None) -> dict:
    """{dest: the option string as typed} of the options that `argv` (default sys.argv[1:]) sets
    explicitly, however spelled (abbreviated, --flag=value, --no-flag). Parses a second time with
    every default suppressed, so only what was given remains."""
    argv = sys.argv[1:] if argv is None else argv
    saved = {a: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        given = vars(parser.parse_known_args(argv)[0])
    finally:
        for a, default in saved.items():
            a.default = default
    spelled = {}  # dest: the spelling of its last occurrence in argv (argparse keeps the last)
    for token in argv:
        option = _spelling(parser, token.split("=", 1)[0]) if token.startswith("--") else None
        if option is not None:
            spelled[parser._option_string_actions[option].dest] = option
    return {a.dest: spelled.get(a.dest, a.option_strings[0])
            for a in parser._actions if a.dest in given and a.option_strings}


def _spelling(parser, token):
    """The option string `token` names in `parser`: itself, or the one option it abbreviates
    (None when it names none, or several)."""
    if token in parser._option_string_actions:
        return token
    matches = [o for o in parser._option_string_actions if o.startswith(token)]
    return matches[0] if len(matches) == 1 else None


def die(message: str, code: int = 2):
    """End the program with one clear line on stderr (rank 0's only under torchrun); code 2 means
    bad input."""
    tell_torchrun(f"error: {message}")
    if first_rank():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    import torch
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


def device_or_die(name: str, threads=None):
    """The scripts' --device and --threads: pick_device, or its one-line error and exit code 2;
    then torch's CPU threads, when given."""
    import torch
    try:
        device = pick_device(name)
    except ValueError as e:
        die(str(e))
    if threads:
        torch.set_num_threads(threads)
    return device


def mean_curve(curves):
    """The studies' mean over seeds of curves logged in training (lists of points, dicts with a
    "step"): a point at each step every curve has, holding the quantities every one of those
    points has (a curve rebuilt from an old log may lack some), each averaged; None stays None."""
    import statistics
    curves = [c for c in curves if c]
    if not curves:
        return []
    out = []
    for step in sorted(set.intersection(*(set(p["step"] for p in c) for c in curves))):
        points = [next(p for p in c if p["step"] == step) for c in curves]
        keys = [k for k in points[0] if all(k in p for p in points)]
        out.append({k: statistics.mean(p[k] for p in points) if points[0][k] is not None else None for k in keys})
    return out


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
SEED = number(int, lo=0, hi=2**63 - 1)  # what torch.Generator.manual_seed takes


def cell(values, spec: str, scale: float = 1, sd=None) -> str:
    """One markdown table cell, each number `scale` x and written format(number, spec): "-" when
    nothing was measured (no values, or only None), the one value, or "mean +- sd", the sample sd
    of several values, or `sd` given beside one value (a mean whose sd was measured with it)."""
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    if len(values) > 1:
        sd = statistics.stdev(values)
    elif sd is not None:
        sd = scale * sd
    return format(mean, spec) if sd is None else f"{format(mean, spec)} +- {format(sd, spec)}"


def synchronize(device):
    """Wait until the device has done the work queued on it (CUDA and MPS run asynchronously)."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(device, work):
    """(work(), its wall-clock seconds): the device is synchronised before the clock starts and
    after `work` returns, so queued work from before is not counted and its own is."""
    synchronize(device)
    start = time.perf_counter()
    out = work()
    synchronize(device)
    return out, time.perf_counter() - start


class GracefulStop:
    """A context in which the first Ctrl-C (SIGINT) or SIGTERM only sets `requested`, so a loop can
    finish its step and save; a second Ctrl-C interrupts at once (KeyboardInterrupt)."""

    def __enter__(self):
        self.requested = False
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


class WriteError(OSError):
    """A write that failed for want of room or a working disk (files.atomic_write); run_main ends
    the script with its one-line message and exit code 1, the previous file being intact."""


BROKEN_PIPE = 141  # 128 + SIGPIPE: what a program killed by a closed pipe returns in a shell


def _interrupted_early(signum, frame):
    sys.stderr.write("\ninterrupted\n")
    os._exit(130)


def quiet_early_ctrl_c(name: str):
    """Called at the very top of a script with its __name__, before the heavy imports: a Ctrl-C
    while torch loads ends it with one line and exit code 130, not a 20-line traceback. run_main
    takes over once main() starts. Nothing happens when the script is only imported (tests)."""
    if name == "__main__":
        signal.signal(signal.SIGINT, _interrupted_early)


def run_main(main):
    """Run a script's main(): Ctrl-C ends it with one line and exit code 130, no traceback; a
    write that fails for a full disk is one line and exit code 1 (`WriteError`); a
    closed stdout (`python sample.py | head -c 0`) ends it quietly with exit code 141, as a
    program killed by SIGPIPE (Python's own recipe: stdout goes to os.devnull, so the final flush
    at exit cannot fail again)."""
    try:
        if signal.getsignal(signal.SIGINT) is _interrupted_early:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            main()
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except WriteError as e:
        die(e.strerror, code=1)
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        sys.exit(BROKEN_PIPE)


def require_plot_extra(flag: str = "--plot"):
    """End with one line (exit 2) when the plot extra is missing; call before any long work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        die(f"{flag} needs matplotlib: pip install -e '.[plot]'")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (figures are written, never shown)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 120):
    """fig.savefig, atomically (`atomic_write`): an interrupted run never leaves half a PNG."""
    from .files import atomic_write  # files.py imports die from here
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))


def parse_arms(arm_flags, default: dict) -> dict:
    """{arm name: [checkpoint paths]} from the studies' --arm NAME=PATH[,PATH...] flags (one path per
    seed), or `default` when none was given; a malformed or repeated name is one line, exit 2."""
    if not arm_flags:
        return default
    arms = {}
    for arm in arm_flags:
        name, _, paths = arm.partition("=")
        if not name or not paths or "" in paths.split(","):
            die(f"--arm takes NAME=PATH[,PATH...], got {arm!r}")
        if name in arms:
            die(f"two arms are named {name!r}: give each --arm a name of its own")
        arms[name] = paths.split(",")
    return arms
