"""More than one process: PyTorch DistributedDataParallel under torchrun.

    torchrun --standalone --nproc_per_node=2 train_tiny.py --threads 1      # two CPU processes
    torchrun --standalone --nproc_per_node=4 train_tiny.py                  # four GPUs
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 \
             --nproc_per_node=8 train_tiny.py                               # two machines

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them (a plain `python train_tiny.py`) this
module does nothing. The backend is nccl on CUDA and gloo on the CPU. Every rank draws the SAME
global batch from the same seeded generators and trains on its own slice of its rows (`rows`), so
N processes follow the one-process trajectory with the same global batch, up to float rounding
in the gradient all-reduce. Only rank 0 logs, evaluates and writes checkpoints.
"""
import os

import torch
import torch.distributed as dist


class Ranks:
    """Where this process stands: rank, world size, and the rows of the global batch it trains."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each rank gets its own GPU (cuda:LOCAL_RANK); CPU and MPS stay as they are."""
        if self.distributed and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device):
        if self.distributed:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self):
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size` (which the world size divides)."""
        per_rank = batch_size // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def wrap(self, model):
        """DDP around the model when distributed (its gradients are averaged over ranks)."""
        if not self.distributed:
            return model
        ids = [self.local_rank] if next(model.parameters()).device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over ranks (for the logged loss)."""
        if self.distributed:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def agree(self, *values: float) -> list:
        """The maximum over ranks of each value, so every rank takes the same decision (stop now,
        time budget used up) at the same step."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()
