"""Nothing a student types destroys their work: an output that is one of the run's inputs, or
another of its outputs, however it is spelled, is refused in one line before any work (files.preflight,
files.path_clash); a FIFO or a device is written, never replaced; a symlink is written through.
In-process and fast: the path checks are called directly, or the scripts' own preflight."""
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading

import pytest
from hypothesis import given, strategies as st

from minidlm import cli, files
from minidlm.checkpoint import atomic_save, state_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def tree():
    """root/d/{x.txt, y.txt, x.state.pt}, root/sub/, root/link -> d/x.txt, root/dlink -> d, root/hard."""
    root = os.path.realpath(tempfile.mkdtemp(prefix="minidlm-paths-"))
    os.makedirs(os.path.join(root, "d"))
    os.makedirs(os.path.join(root, "sub"))
    for name in ("x.txt", "y.txt", "x.state.pt"):
        with open(os.path.join(root, "d", name), "w") as f:
            f.write("a student's work\n")
    os.symlink(os.path.join(root, "d", "x.txt"), os.path.join(root, "link"))
    os.symlink(os.path.join(root, "d"), os.path.join(root, "dlink"))
    os.link(os.path.join(root, "d", "x.txt"), os.path.join(root, "hard"))  # a second name of x.txt
    yield root
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            os.remove(p) if os.path.islink(p) or not os.path.isdir(p) else os.rmdir(p)
    os.rmdir(root)


# ways to reach root/d from root, and to spell the whole path
FOLDERS = ["d", "./d", "d/.", "d/../d", "sub/../d", "dlink", "dlink/../d", "d//"]
WHOLE = [lambda p: p, os.path.relpath, lambda p: p.replace(os.sep, os.sep + os.sep)]


@st.composite
def spelling(draw, name):
    """A spelling of root/d/NAME (root filled in by the test): ./, .., a symlinked folder, doubled
    slashes, relative to the working folder."""
    folder, whole = draw(st.sampled_from(FOLDERS)), draw(st.sampled_from(WHOLE))
    return lambda root: whole(os.path.join(root, folder, name))


def x_spelling(root, s):
    """Also the symlink root/link, which points at root/d/x.txt, and its hard link root/hard."""
    return os.path.join(root, s) if isinstance(s, str) else s(root)


x_or_link = st.one_of(st.sampled_from(["link", "hard"]), spelling("x.txt"))


@given(a=x_or_link, b=x_or_link)
def test_an_output_that_is_an_input_or_another_output_is_refused_however_spelled(tree, a, b):
    out, data = x_spelling(tree, a), x_spelling(tree, b)
    clash = files.path_clash(outputs={"--out": out}, inputs={"--data": data})
    assert clash and "--out" in clash and "--data" in clash and "destroy" in clash
    clash = files.path_clash(outputs={"--json": out, "--save": data})
    assert clash and "replace the other" in clash


@given(a=x_or_link, b=spelling("y.txt"))
def test_different_files_do_not_clash(tree, a, b):
    out, data = x_spelling(tree, a), b(tree)
    assert files.path_clash(outputs={"--out": out}, inputs={"--data": data, "--checkpoint": data}) is None
    assert files.path_clash(outputs=[out, data]) is None


@given(out=st.sampled_from(["x.pt", "x.pth", "x", "x.ckpt"]).flatmap(spelling),
       data=spelling("x.state.pt"), force=st.booleans())
def test_train_tiny_refuses_data_that_is_the_state_file_it_adds_beside_out(tree, out, data, force):
    """--out runs/x.pt writes runs/x.state.pt too: --data runs/x.state.pt would be replaced."""
    import train_tiny
    before = open(os.path.join(tree, "d", "x.state.pt")).read()
    args = train_tiny.parse_args(["--out", out(tree), "--data", data(tree)] + (["--force"] if force else []))
    err = io.StringIO()
    with pytest.raises(SystemExit) as e, _stderr(err):
        train_tiny.preflight_paths(args)
    assert e.value.code == 2 and err.getvalue().count("\n") == 1, err.getvalue()
    assert "training state of --out" in err.getvalue() and "--data" in err.getvalue()
    assert open(os.path.join(tree, "d", "x.state.pt")).read() == before


def _stderr(buffer):
    import contextlib
    return contextlib.redirect_stderr(buffer)


def _train_preflight(argv, capsys):
    import train_tiny
    with pytest.raises(SystemExit) as e:
        train_tiny.preflight_paths(train_tiny.parse_args(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_train_tiny_data_as_out_with_force_keeps_the_text(tmp_path, capsys):
    """The report: `train_tiny.py --data mine.txt --out mine.txt --force` made the text a checkpoint."""
    mine = tmp_path / "mine.txt"
    mine.write_text("my stories\n" * 300)
    err = _train_preflight(["--data", str(mine), "--out", str(mine), "--force"], capsys)
    assert "same file as --data" in err and mine.read_text() == "my stories\n" * 300


def test_two_outs_sharing_one_state_file_cannot_replace_the_first_runs_state(tmp_path, capsys):
    """runs/a.pt and runs/a.pth both keep their state in runs/a.state.pt (checkpoint.state_path):
    the state records its --out; another existing --out's state is refused, even with --force or
    --resume. The same --out (any spelling) with --force overwrites it as before."""
    a, a2 = tmp_path / "a.pt", tmp_path / "a.pth"
    assert state_path(str(a)) == state_path(str(a2))
    a.write_bytes(b"run a's model")
    atomic_save({"args": {"out": str(a)}, "step": 3}, state_path(str(a)))
    for flag in ["--force", "--resume"]:
        err = _train_preflight(["--out", str(a2), flag], capsys)
        assert f"training state of {a}" in err and "another name" in err
    err = _train_preflight(["--out", str(a2)], capsys)  # a fresh run may not take it either
    assert "state.pt" in err
    import train_tiny
    train_tiny.preflight_paths(train_tiny.parse_args(["--out", os.path.join(str(tmp_path), ".", "a.pt"), "--force"]))
    a.unlink()  # run a is gone: its leftover state is nobody's work, but still needs --force
    assert "exists" in _train_preflight(["--out", str(a2)], capsys)
    train_tiny.preflight_paths(train_tiny.parse_args(["--out", str(a2), "--force"]))
    err = _train_preflight(["--out", str(tmp_path / "b.state.pt"), "--force"], capsys)
    assert "training-state file" in err


@pytest.mark.parametrize("script, argv, needle", [
    ("sample.py", ["--checkpoint", "{x}", "--save", "{x}"], "same file as --checkpoint"),
    ("sample.py", ["--checkpoint", "{x}", "--sinks", "--plot", "{x}"], "is also --checkpoint"),
    ("sample.py", ["--checkpoint", "{d}/sink_trajectory.png", "--sinks", "--plot", "{d}"], "sink_trajectory.png"),
    ("sample.py", ["--checkpoint", "{y}", "--sinks", "--plot", "{x}"], "is a file; give a folder"),
    ("bench.py", ["--checkpoint", "{x}", "--json", "{x}"], "same file as --checkpoint"),
    ("studies/repeat_study.py", ["--checkpoint", "{y}", "{x}", "--json", "{x}"], "--checkpoint #2"),
    ("studies/repeat_study.py", ["--data", "{d}/r_infoflow.json", "--json", "{d}/r.json"], "information-flow"),
    ("studies/infill_study.py", ["--checkpoint", "{x}", "--json", "{x}"], "same file as --checkpoint"),
    ("studies/sink_compare.py", ["--arm", "a={y},{x}", "--json", "{x}"], "--arm a #2"),
    ("studies/infill_study.py", ["--checkpoint", "{d}", "--json", "{x}"], "is a folder, not a file"),
    ("studies/sink_compare.py", ["--data", "{x}", "--json", "{x}"], "same file as --data"),
    ("studies/ablation.py", ["--data", "{x}", "--json", "{x}"], "same file as --data"),
])
def test_every_script_passes_its_inputs_and_outputs_to_preflight(script, argv, needle, tmp_path, monkeypatch,
                                                                  capsys):
    import importlib
    for name in ("x.pt", "y.pt", "sink_trajectory.png", "r_infoflow.json"):
        (tmp_path / name).write_bytes(b"precious")
    argv = [a.format(x=tmp_path / "x.pt", y=tmp_path / "y.pt", d=tmp_path) for a in argv]
    module = importlib.import_module(script[:-3].replace("/", "."))
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as e:
        module.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and needle in err, err
    assert all((tmp_path / n).read_bytes() == b"precious" for n in ("x.pt", "y.pt", "sink_trajectory.png"))


# ---- what is written where: FIFOs and devices directly, symlinks through, never replaced ----------
def test_output_target_decides_per_kind_of_file(tmp_path):
    target, link, fifo = tmp_path / "t.json", tmp_path / "l.json", tmp_path / "f.json"
    target.write_text("{}")
    os.symlink(target, link)
    os.mkfifo(fifo)
    assert files.output_target(str(target)) == ("replace", str(target))
    assert files.output_target(str(tmp_path / "new.json")) == ("replace", str(tmp_path / "new.json"))
    assert files.output_target(str(link)) == ("replace", os.path.realpath(link))  # written through
    assert files.output_target(str(fifo)) == ("direct", str(fifo))
    assert files.output_target(os.devnull)[0] == "direct"  # only stat()ed: nothing is written there
    assert files.output_target(str(tmp_path))[0] == "refuse"
    assert files.check_writable(os.devnull) is None and files.check_writable(str(fifo)) is None


def test_a_block_device_or_socket_is_refused(tmp_path, monkeypatch):
    real_stat = os.stat
    monkeypatch.setattr(files.os, "stat", lambda p, *a, **k: os.stat_result(
        (stat.S_IFBLK | 0o660,) + tuple(real_stat(tmp_path))[1:]))
    how, why = files.output_target("/dev/sdz")
    assert how == "refuse" and "block device" in why


def test_a_fifo_is_written_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    files.write_json(str(fifo), {"rows": [1, 2]})
    reader.join(timeout=10)
    assert json.loads(got[0]) == {"rows": [1, 2]} and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["out.json"]  # no temporary file left beside it


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target, link = tmp_path / "real" / "rows.json", tmp_path / "rows.json"
    target.parent.mkdir()
    target.write_text("old")
    os.symlink(target, link)
    files.write_json(str(link), {"new": True})
    assert os.path.islink(link) and json.loads(target.read_text()) == {"new": True}
    dangling = tmp_path / "dangling.json"
    os.symlink(tmp_path / "later.json", dangling)  # a link to a file not there yet: created there
    files.write_json(str(dangling), [1])
    assert os.path.islink(dangling) and json.loads((tmp_path / "later.json").read_text()) == [1]


def test_two_outputs_on_one_device_do_not_clash(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    assert files.path_clash(outputs={"--json": str(fifo), "--save": str(fifo)}) is None
    assert files.path_clash(outputs={"--json": os.devnull, "--save": os.devnull}) is None


# ---- tracebacks: a closed pipe, Ctrl-C while torch loads -----------------------------------------
def test_a_closed_stdout_ends_quietly_with_141(monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)
    pipe = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", pipe)

    def main():
        print("a story " * 10000)

    with pytest.raises(SystemExit) as e:
        cli.run_main(main)
    assert e.value.code == cli.BROKEN_PIPE == 141
    pipe.write("more")  # stdout now goes to os.devnull: the flush at exit cannot fail
    pipe.flush()
    pipe.close()


@pytest.mark.slow
def test_sample_into_a_closed_pipe_has_no_traceback():
    r = subprocess.run("python sample.py --gen-length 16 --num-samples 64 | head -c 0; echo ${PIPESTATUS[0]} >&2",
                       shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "141", r.stderr


def _ctrl_c_while_importing(target):
    """Start `python target` with -X importtime (each import is logged on stderr as it ends), send
    SIGINT once torch's first submodule is imported, i.e. while torch loads; its exit code and
    stderr lines (the import log left out)."""
    import signal
    proc = subprocess.Popen([sys.executable, "-X", "importtime", *target], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.split("|")[-1].strip().startswith("torch."):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    return proc.wait(timeout=60), [l for l in rest.splitlines() if not l.startswith("import time:")]


def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130():
    code, lines = _ctrl_c_while_importing(["sample.py"])
    assert code == 130 and lines[-1] == "interrupted" and not any("Traceback" in l for l in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("target", [["train_tiny.py"], ["bench.py"], *(["-m", f"studies.{name}"] for name in
                                    ["repeat_study", "sink_compare", "reproduce", "ablation", "infill_study"])])
def test_every_script_ends_a_ctrl_c_during_its_imports_in_one_line(target):
    code, lines = _ctrl_c_while_importing(target)
    assert code == 130 and lines[-1] == "interrupted" and not any("Traceback" in l for l in lines), lines


def test_importing_a_script_leaves_ctrl_c_alone():
    """The early handler is installed only when the script runs (__name__ == '__main__')."""
    import signal
    import sample  # noqa: F401
    assert signal.getsignal(signal.SIGINT) is not cli._interrupted_early
