"""Files a script reads and writes: an output that may be written (`check_writable`), one that would
destroy an input or another output (`path_clash`), both checked before any work (`preflight`),
and writes that never leave a truncated file (`atomic_write`, `write_text`, `write_json`)."""
import errno
import json
import os
import shutil
import stat
import tempfile

from .cli import WriteError, die

# a write that fails for these reasons is the machine's, not the script's: one line (cli.WriteError)
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}
TORCH_WRITE_FAILURES = ("write failed", "iostream error", "unexpected pos")


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        why = write_failure(e, folder)
        if why:
            kept = f"the previous {path} is intact" if os.path.exists(path) else "nothing was written"
            raise WriteError(errno.ENOSPC, f"cannot write {path}: {why}; {kept}") from None
        raise


def write_failure(e: BaseException, folder: str):
    """Why a write failed, when the disk is the reason (full, over quota, read-only, failing),
    else None. torch.save's own writer reports a full disk as a RuntimeError without the errno
    (TORCH_WRITE_FAILURES: the messages seen on a full tmpfs and from a failing file object)."""
    if isinstance(e, OSError) and e.errno in NO_ROOM:
        return e.strerror or os.strerror(e.errno)
    if isinstance(e, RuntimeError) and any(s in str(e) for s in TORCH_WRITE_FAILURES):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return "the write failed"
        full = "the disk is full: " if free < 2**20 else ""
        return f"the write failed ({full}{free / 2**20:,.0f} MB free there)"
    return None


def write_text(path: str, write):
    """Call write(f) on a UTF-8 text file for `path`, atomically (`atomic_write`)."""
    def write_file(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            write(f)
    atomic_write(path, write_file)


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
