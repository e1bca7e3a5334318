"""Resume and saves, in process: an interrupted-then-resumed run IS the uninterrupted one (losses,
weights, optimizer state, every random stream); an interrupt during a save keeps the old file and
leaves no temporary file; ranks agree on when to stop (two gloo processes)."""
import multiprocessing
import os
import socket
import sys

import pytest
import torch

from minidlm import checkpoint, files
from minidlm.corpus import generate_stories
from minidlm.distributed import Ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_tiny  # noqa: E402

TINY = ["--n-layer", "2", "--n-head", "2", "--d-model", "16", "--seq-len", "16", "--vocab-size", "260",
        "--steps", "6", "--batch-size", "2", "--eval-interval", "1000", "--threads", "1", "--no-bf16",
        "--warmup", "2", "--schedule", "cosine"]


class StopAfter:
    """GracefulStop whose stop is requested after n steps (as if Ctrl-C came during step n)."""

    def __init__(self, n):
        self.n = n

    def __call__(self):
        return self

    def __enter__(self):
        self.reads = 0
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.reads += 1
        return self.reads >= self.n


def run_for(argv, state=None, stop_after=None, monkeypatch=None):
    args = train_tiny.parse_args(argv)
    if stop_after is not None:
        monkeypatch.setattr(train_tiny, "GracefulStop", StopAfter(stop_after))
    run = train_tiny.Run(args, Ranks(), torch.device("cpu"), state, lambda *a, **k: None)
    interrupted = run.train()
    monkeypatch.undo()
    return run, interrupted


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "stories.txt"
    path.write_text("\n\n".join(generate_stories(60, seed=0)))
    return str(path)


@pytest.mark.parametrize("stop_at", [1, 3, 5])
def test_an_interrupted_then_resumed_run_is_the_uninterrupted_run(stop_at, text, tmp_path, monkeypatch, capsys):
    """Stop after `stop_at` of 6 steps, save, resume from the state file: the losses of every step,
    the weights, the optimizer state and both random streams (batches, masks) equal a run that
    was never interrupted, bit for bit (one thread, float32, the same order of operations)."""
    whole, interrupted = run_for(["--out", str(tmp_path / "whole.pt"), "--data", text, *TINY],
                                 monkeypatch=monkeypatch)
    assert not interrupted and whole.step == 6
    out = str(tmp_path / "part.pt")
    first, interrupted = run_for(["--out", out, "--data", text, *TINY], stop_after=stop_at, monkeypatch=monkeypatch)
    assert interrupted and first.step == stop_at
    first.save()
    args = train_tiny.parse_args(["--out", out, "--data", text, *TINY, "--resume"])
    second, interrupted = run_for(["--out", out, "--data", text, *TINY, "--resume"],
                                  state=train_tiny.resume_state(args), monkeypatch=monkeypatch)
    assert not interrupted and second.step == 6
    assert second.losses == whole.losses and len(whole.losses) == 6
    for name, w in whole.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], w), name
    for a, b in zip(whole.opts, second.opts):
        sa, sb = a.state_dict(), b.state_dict()
        assert [g["lr"] for g in sa["param_groups"]] == [g["lr"] for g in sb["param_groups"]]
        for key in sa["state"]:
            for field, value in sa["state"][key].items():
                assert torch.equal(torch.as_tensor(sb["state"][key][field]), torch.as_tensor(value)), (key, field)
    assert torch.equal(second.batch_gen.get_state(), whole.batch_gen.get_state())
    assert torch.equal(second.mask_gen.get_state(), whole.mask_gen.get_state())
    assert second.tokenizer.state_dict() == whole.tokenizer.state_dict()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, OSError])
@pytest.mark.parametrize("writer", ["checkpoint", "text"])
def test_an_interrupt_during_a_save_keeps_the_old_file_and_leaves_no_temporary_file(interrupt, writer, tmp_path,
                                                                                     monkeypatch):
    """Ctrl-C (KeyboardInterrupt), an exit, or a failed write half-way through atomic_write's
    write: the previous file is unchanged and nothing else is left in its folder."""
    path = tmp_path / ("a.pt" if writer == "checkpoint" else "a.txt")
    path.write_bytes(b"the previous version")

    def half_then_interrupt(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise interrupt()

    real = files.atomic_write
    monkeypatch.setattr(files, "atomic_write", lambda p, fn: real(p, lambda tmp: (fn(tmp), half_then_interrupt(tmp))))
    monkeypatch.setattr(checkpoint, "atomic_write", files.atomic_write)
    with pytest.raises(interrupt):
        if writer == "checkpoint":
            checkpoint.atomic_save({"x": 1}, str(path))
        else:
            files.write_text(str(path), lambda f: f.write("new"))
    assert path.read_bytes() == b"the previous version"
    assert os.listdir(tmp_path) == [path.name]


# ---- several processes -------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank, world, port, stop_steps, seconds, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ranks = Ranks()
    ranks.start(torch.device("cpu"))
    try:
        steps, elapsed = 0, 0.0
        stopping = False
        while steps < 20 and not stopping:  # train_tiny's loop, without the training
            steps += 1
            requested = steps >= stop_steps[rank]  # this rank saw Ctrl-C at this step
            stopping, elapsed = ranks.agree(float(requested), elapsed + seconds[rank])
        mean = ranks.mean(torch.tensor(float(rank + 1))).item()
        queue.put((rank, steps, bool(stopping), elapsed, mean, ranks.rows(8)))
    finally:
        ranks.stop()


def test_ranks_agree_on_when_to_stop_and_on_the_time_used():
    """Two gloo processes. Rank 1 is asked to stop at step 3, rank 0 at step 7: both stop at
    step 3. Each step's time is the slower rank's (rank 0 0.5 s, rank 1 2 s: 6 s at step 3). The
    logged loss is the mean over ranks; the rows of a batch of 8 are split 0-3 and 4-7."""
    ctx = multiprocessing.get_context("fork")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=rank_main, args=(r, 2, port, [7, 3], [0.5, 2.0], queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [r[1:4] for r in results] == [(3, True, 6.0), (3, True, 6.0)]
    assert [r[4] for r in results] == [1.5, 1.5]
    assert [r[5] for r in results] == [slice(0, 4), slice(4, 8)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_the_ranks_rows_split_the_global_batch_without_overlap(world, monkeypatch):
    batch = 24
    rows = []
    for rank in range(world):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(rank))
        rows.extend(range(batch)[Ranks().rows(batch)])
    assert rows == list(range(batch))
