"""Small pieces shared by the command-line scripts: one-line errors with exit code 2, devices,
atomic writes (`atomic_write`), markdown table cells (`cell`) and timing (`timed`).

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


def output_target(path: str):
    """How an output `path` is written, as (how, where):

    - ("replace", path): a regular file, or nothing yet: written atomically (`atomic_write`);
    - ("replace", target): a symlink (to a file, or to nothing yet) is written THROUGH: its target
      is replaced atomically and the link stays a link;
    - ("direct", path): a FIFO or a character device (/dev/null, a terminal, a pipe such as
      bash's >(...)) is opened and written as it is; replacing it would swap the device for a file
      (as root, `--json /dev/null` would replace the system's /dev/null);
    - ("refuse", why): a folder, a block device, a socket: nothing is written there."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except FileNotFoundError:
        mode = None
    except OSError as e:
        return "refuse", f"cannot write {path}: {e.strerror or e}"
    if mode is None or stat.S_ISREG(mode):
        return "replace", (os.path.realpath(path) if os.path.islink(path) else path)
    if stat.S_ISDIR(mode):
        return "refuse", f"{path} is a folder; give a file name"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return "direct", path
    kind = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file"
    return "refuse", f"{path} is {kind}, not a regular file; give a file name"


def atomic_write(path: str, write_fn):
    """Call write_fn(tmp) to write a temporary file `tmp` in the folder of `path` (created if
    needed; same extension), flush it to disk, then rename it over `path`: an interrupted write
    never leaves a truncated file where a good one was, and a failed one leaves no debris.
    A symlink is written through (its target is replaced, the link stays); a FIFO or a character
    device such as /dev/null is written directly, never replaced (`output_target`)."""
    how, where = output_target(path)
    if how == "refuse":
        raise OSError(where)
    if how == "direct":
        write_fn(where)
        return
    path = where
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


def write_json(path: str, obj):
    """Write `obj` as indented JSON, atomically (`write_text`)."""
    write_text(path, lambda f: json.dump(obj, f, indent=1))


def check_writable(path: str):
    """None if a file can be written at `path`, else one sentence why not. Tries it: creates the
    missing folders and a scratch file there, then removes both again. A FIFO or a character device
    (/dev/null) only has to be writable; a symlink is checked where it points (`output_target`)."""
    how, where = output_target(path)
    if how == "refuse":
        return where
    if how == "direct":
        return None if os.access(where, os.W_OK) else f"cannot write {path}: Permission denied"
    folder = os.path.dirname(os.path.abspath(where))
    missing = []
    probe = folder
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"cannot write {path}: {probe} is a file, not a folder"
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


def check_folder(folder: str, what: str = "folder"):
    """None if figures can be written into `folder` (created if missing), else one sentence."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{what} {folder} is a file; give a folder for the figures"
    return check_writable(os.path.join(folder, "figure.png"))


def check_readable_file(path: str, what: str = "file"):
    """None if `path` is a regular file we can read, else one sentence why not."""
    if not os.path.exists(path):
        return f"{what} not found: {path}"
    if os.path.isdir(path):
        return f"{what} {path} is a folder, not a file"
    if not os.path.isfile(path):
        return f"{what} {path} is not a regular file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return f"cannot read {what} {path}: {e.strerror or e}"
    return None


def numbered(label: str, paths) -> dict:
    """{label: path} for one path, {"label #1": path, "label #2": ...} for several: the labels of a
    flag that takes several paths, for `preflight`."""
    paths = list(paths)
    return {label: paths[0]} if len(paths) == 1 else {f"{label} #{i + 1}": p for i, p in enumerate(paths)}


def _named(entries):
    """[(label, path)] from a {label: path} dict or a list of paths (label None); None paths dropped."""
    pairs = entries.items() if isinstance(entries, dict) else ((None, p) for p in entries)
    return [(label, p) for label, p in pairs if p]


def _shown(label, path) -> str:
    return f"{label} {path}" if label else str(path)


def same_file(a: str, b: str) -> bool:
    """Whether two spellings name one file: the same path once symlinks, `..` and `.` are resolved
    (whether or not it exists yet), or two names (hard links) of one existing file."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _stream(path) -> bool:
    """A FIFO or a character device (/dev/null): written directly, so two outputs may share it."""
    return output_target(path)[0] == "direct"


def path_clash(outputs=(), inputs=(), folders=()):
    """None, or one sentence naming an output that is the same file as one of the run's inputs (it
    would be destroyed) or as another of its outputs (one would silently replace the other).
    Each argument is a {label: path} dict (label: the flag, e.g. "--out") or a list of paths;
    `outputs` must include the files a script derives from them (train_tiny.py's .state.pt beside
    --out). A `folders` entry is a folder, or (folder, [the file names written into it])."""
    outputs, inputs = _named(outputs), _named(inputs)
    for label, folder in _named(folders):
        folder, names = folder if isinstance(folder, tuple) else (folder, ())
        for other_label, other in inputs + outputs:
            if same_file(folder, other):
                return f"{_shown(label, folder)} is also {_shown(other_label, other)}; give a folder of its own"
        outputs += [(f"{label or folder}'s {name}" if label else None, os.path.join(folder, name))
                    for name in names]
    for i, (label, out) in enumerate(outputs):
        for in_label, src in inputs:
            if same_file(out, src):
                return (f"{_shown(label, out)} is the same file as {_shown(in_label, src)}: writing it "
                        f"would destroy that input; give another file name")
        for other_label, other in outputs[:i]:
            if same_file(out, other) and not _stream(out):
                return (f"{_shown(label, out)} is the same file as {_shown(other_label, other)}: one "
                        f"output would replace the other; give another file name")
    return None


def preflight(outputs=(), folders=(), inputs=()):
    """End with one line (exit 2) unless every output file and folder could be written and every
    input file read, and no output is the same file as an input or another output (`path_clash`);
    called before any long work. Each argument is a {label: path} dict, the label being the flag
    the path came from ("--out"), or a list of paths; None paths (unused options) are skipped. A
    `folders` entry may be (folder, [file names written into it])."""
    problem = path_clash(outputs, inputs, folders)
    problems = ([problem]
                + [check_writable(p) for _, p in _named(outputs)]
                + [check_folder(f[0] if isinstance(f, tuple) else f, label or "folder")
                   for label, f in _named(folders)]
                + [check_readable_file(p, f"{label} file" if label else "file") for label, p in _named(inputs)])
    problem = next((p for p in problems if p), None)
    if problem:
        die(problem)


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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi))
