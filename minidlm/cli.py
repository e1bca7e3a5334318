"""Small pieces shared by the command-line scripts: one-line errors with exit code 2, devices,
atomic writes (`atomic_write`), markdown table cells (`cell`) and timing (`timed`)."""
import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time

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
SEED = number(int, lo=0, hi=2**63 - 1)  # what torch.Generator.manual_seed takes


def atomic_write(path: str, write_fn):
    """Call write_fn(tmp) to write a temporary file `tmp` in the folder of `path` (created if
    needed; same extension), flush it to disk, then rename it over `path`: an interrupted write
    never leaves a truncated file where a good one was, and a failed one leaves no debris."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, write):
    """Call write(f) on a UTF-8 text file for `path`, atomically (`atomic_write`)."""
    def write_file(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
    atomic_write(path, write_file)


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


def write_json(path: str, obj):
    """Write `obj` as indented JSON, atomically (`write_text`)."""
    write_text(path, lambda f: json.dump(obj, f, indent=1))


def check_writable(path: str):
    """None if a file can be written at `path`, else one sentence why not. Tries it: creates the
    missing folders and a scratch file there, then removes both again."""
    if os.path.isdir(path):
        return f"{path} is a folder; give a file name"
    folder = os.path.dirname(os.path.abspath(path))
    missing = []
    probe = folder
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(scratch)
    except OSError as e:
        return f"cannot write {path}: {e.strerror or e}"
    finally:
        for made in missing:  # deepest first
            if os.path.isdir(made):
                os.rmdir(made)
    return None


def check_readable_file(path: str, what: str = "file"):
    """None if `path` is a regular file we can read, else one sentence why not."""
    if not os.path.exists(path):
        return f"{what} not found: {path}"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"cannot read {what} {path}: {e.strerror or e}"
    return None


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


def run_main(main):
    """Run a script's main(): Ctrl-C ends it with one line and exit code 130, no traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)


def preflight(outputs=(), folders=(), inputs=()):
    """End with one line (exit 2) unless every output file and folder could be written and every
    input file read; called before any long work. None entries (unused options) are skipped."""
    problems = ([check_writable(p) for p in outputs if p]
                + [check_writable(os.path.join(f, "figure.png")) for f in folders if f]
                + [check_readable_file(p) for p in inputs if p])
    problem = next((p for p in problems if p), None)
    if problem:
        die(problem)


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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
