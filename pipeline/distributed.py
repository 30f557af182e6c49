"""Several processes training one model: PyTorch's DistributedDataParallel under `torchrun`.

`torchrun` starts one process per device (on one machine, or on many through its c10d
rendezvous) and tells each its rank in the environment; `World.from_environment` reads it and
joins the process group (gloo on the CPU, NCCL on CUDA). Every rank computes the same seeded
permutation each epoch and takes its own disjoint shard of each global batch, so the gradient
DDP averages is the gradient of the whole batch; sums (loss, correct, seen) are all-reduced so
every rank holds the epoch's figures. Only rank 0 talks to MLflow and writes checkpoints.
Nothing here knows MLflow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from pipeline.config import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this machine

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> "World":
        """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), its process group joined;
        a plain process is a world of one."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(world.local_rank)
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return world

    def sum(self, values: list[float], device: torch.device | None = None) -> list[float]:
        """Element-wise sums over every rank (float64: counts of 10^6 images stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_rows(self, rows: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """Every rank's rows, concatenated in rank order (shards may differ in length by one)."""
        if not self.distributed:
            return rows
        counts = [int(c) for c in self.all_values(len(rows))]
        padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=device)
        padded[: len(rows)] = rows.to(device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()

    def all_values(self, value) -> list:
        """One picklable value from every rank, in rank order."""
        if not self.distributed:
            return [value]
        found = [None] * self.size
        dist.all_gather_object(found, value)
        return found

    def from_main(self, value: T) -> T:
        """Rank 0's value on every rank (e.g. a decision only rank 0 may take, or a checkpoint
        only rank 0 may download)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, work: Callable[[], T]) -> T:
        """The first process of each machine does `work` (prepares the data, fetches weights)
        while the others wait; then they do it too, finding what it left in that machine's cache."""
        if not self.distributed:
            return work()
        if self.local_rank != 0:
            dist.barrier()
        result = work()
        if self.local_rank == 0:
            dist.barrier()
        return result

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's part of a batch: every size-th item from its rank (sizes differ by <= 1)."""
        return indices[self.rank :: self.size]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch(argv: list[str], nproc: int, env: dict[str, str] | None = None) -> None:
    """`python -m pipeline <argv>` again, as `nproc` processes on this machine under torchrun
    (its standalone rendezvous). A failing worker fails the whole launch, as torchrun does; its
    `error:` line has already reached stderr."""
    torchrun = shutil.which("torchrun")
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    # `--`: our settings are not torchrun's options (argparse would take --nproc for --nproc_per_node)
    command += ["--standalone", "--nproc_per_node", str(nproc), "-m", "pipeline", "--", *argv]
    # Each worker gets an equal share of the cores (torchrun's default is one thread each).
    threads = max(1, (os.cpu_count() or 1) // nproc)
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)), **(env or {})}
    process = subprocess.Popen(command, env={k: v for k, v in environment.items() if v is not None})
    try:
        returncode = process.wait()
    except KeyboardInterrupt:
        # Ctrl-C or `mlflow run`'s SIGTERM: torchrun passes SIGTERM on to the workers (rank 0
        # marks its run KILLED); a SIGKILL here would leave them running without it.
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise
    if returncode != 0:
        raise UserError(f"the {nproc}-process training failed (exit status {returncode}); the worker's error is above")
