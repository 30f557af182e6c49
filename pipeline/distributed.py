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

import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from pipeline.errors import UserError

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
    def from_environment(cls, device_type: str) -> World:
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


# Where a worker leaves its `error:` message for the process that launched it, which says it once.
ERROR_FILE = "CXR_WORKER_ERROR_FILE"


def launch(argv: list[str], nproc: int, env: dict[str, str | None] | None = None) -> None:
    """`python -m pipeline <argv>` again, as `nproc` processes on this machine, through torchrun's
    own launcher (its elastic agent, in this process, with a standalone rendezvous). `env`
    changes the workers' environment (None removes a variable). A worker's mistake comes back as
    the `UserError` it raised; Ctrl-C or SIGTERM stops the workers (rank 0 marks its run KILLED)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure report is ours to give
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        start_method="spawn",
    )
    # Each worker gets an equal share of the cores (torchrun's default is one thread each).
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    with tempfile.TemporaryDirectory() as folder:
        error_file = os.path.join(folder, "error")
        changes = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads), ERROR_FILE: error_file, **(env or {})}
        saved = {name: os.environ.get(name) for name in changes}
        handler = signal.getsignal(signal.SIGTERM)
        _set_environment(changes)
        try:
            elastic_launch(config, sys.executable)("-m", "pipeline", *argv)
        except ChildFailedError as e:
            if os.path.exists(error_file):
                raise UserError(open(error_file).read()) from None
            codes = sorted({f.exitcode for f in e.failures.values()})
            raise UserError(f"the {nproc}-process training failed (worker exit status {', '.join(map(str, codes))}); its output is above") from None
        except SignalException:
            raise KeyboardInterrupt from None
        finally:
            _set_environment(saved)
            signal.signal(signal.SIGTERM, handler)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def report_error(message: str) -> bool:
    """In a launched worker: leave the message for the launcher and say True, so the worker exits
    without printing it; elsewhere False. Any rank may be the one to fail first (the agent then
    stops the others before they reach their own error), so each writes its own file whole and
    links it to the launcher's name: the first message to arrive is the one said."""
    if ERROR_FILE not in os.environ or "RANK" not in os.environ:
        return False
    target = os.environ[ERROR_FILE]
    mine = f"{target}.{os.environ['RANK']}"
    with open(mine, "w") as f:
        f.write(message)
    try:
        os.link(mine, target)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: the last message, still whole
        os.replace(mine, target)
    return True
