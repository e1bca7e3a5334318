"""torchrun with two CPU processes follows the one-process trajectory with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from minidlm.checkpoint import read
from minidlm.corpus import generate_stories

pytestmark = pytest.mark.slow  # two trainings, one of them under torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "2", "--n-head", "2", "--d-model", "32", "--seq-len", "32", "--vocab-size", "300",
        "--steps", "5", "--batch-size", "4", "--eval-interval", "1000", "--curve-every", "1000",
        "--eval-mc", "1", "--threads", "1", "--force",
        "--no-bf16"]  # float32: bf16 rounding would hide the all-reduce's float32-sized differences


def train(launcher, out, text):
    result = subprocess.run([*launcher, "train_tiny.py", "--out", str(out), "--data", str(text), *TINY],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return read(str(out))["meta"]["losses"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("\n\n".join(generate_stories(300, seed=0)))
    one = train([sys.executable], tmp_path / "one.pt", text)
    two = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
                tmp_path / "two.pt", text)
    assert len(one) == len(two) == 5
    # the same batches and masks; only the order of float32 sums differs (gradient all-reduce)
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4, atol=1e-5), (one, two)
