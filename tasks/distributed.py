"""torch.distributed plumbing for the training stages: one process per device under `torchrun`.

`session(device)` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), joins the process group (NCCL on CUDA, gloo on CPU), pins each rank to its GPU
and silences `llmpipe` info logs on every rank but 0. Without those variables it is a no-op, so
the same stage code runs as a plain `python -m tasks.<stage>`.

    torchrun --nproc_per_node=2 -m tasks.pretrain
Leaves out: multi-node launch details (use torchrun's --nnodes/--rdzv flags; checkpoints are
written by rank 0, so every node must see the same `out/`), FSDP/tensor parallelism (the models
here fit on one device).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: from the process group once joined, else from torchrun's env."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_world_size()
    return env_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one that logs and writes files."""
    return rank() == 0


def init(device: torch.device) -> Dist:
    """Join the process group torchrun describes; return this rank's place and device."""
    if env_world_size() <= 1:
        return Dist(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend)
    if tdist.get_rank() != 0:
        logging.getLogger("llmpipe").setLevel(logging.WARNING)  # rank-0-only progress lines
    return Dist(tdist.get_rank(), tdist.get_world_size(), local_rank, device)


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """`init` on entry, `cleanup` on exit (also on error, so no rank hangs in a dead group)."""
    try:
        yield init(device)
    finally:
        cleanup()


def wrap(model: torch.nn.Module, dist: Dist, find_unused: bool = False) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel when there is more than one rank.

    Keep a handle on the plain model for eval, generation and checkpoints; train through the
    wrapper (its backward all-reduces gradients). `find_unused` is needed when some parameters
    can miss the graph in a step (mixture-of-experts routing).
    """
    if dist.world_size <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def no_sync(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (`sync=False`); DDP only."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def global_micro(micro: int, grad_accum: int) -> int:
    """This rank's micro-batch index in the global step: ranks own disjoint ranges.

    Rank r takes [r * grad_accum, (r + 1) * grad_accum), so world_size ranks with grad_accum g
    read exactly the batches of one process with grad_accum world_size * g.
    """
    return rank() * grad_accum + micro


def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks (float64), e.g. [nats, tokens]; identity on one process."""
    if world_size() <= 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)  # a sync point on every rank
    return t.tolist()


def mean_over_ranks(value: float) -> float:
    """The mean of a scalar over ranks (NaN on any rank makes it NaN on every rank)."""
    n = world_size()
    return value if n <= 1 else all_reduce_sums([value])[0] / n


def shard(items: Sequence) -> Sequence:
    """This rank's share of `items` (every item on exactly one rank, no padding duplicates)."""
    return items[rank() :: world_size()]


def barrier() -> None:
    if world_size() > 1 and tdist.is_initialized():
        tdist.barrier()


def seed_rank(seed: int) -> None:
    """Give each rank its own torch RNG stream (dropout masks) after identical model init.

    A single process keeps its stream untouched, so its runs are unchanged by this call.
    """
    if world_size() > 1:
        torch.manual_seed(seed + 1_000_003 * rank())
