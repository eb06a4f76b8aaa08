"""torch.distributed plumbing: torchrun detection, process group, DDP wrapping, rank-0 gating.

optiloop never launches processes: torchrun does, and sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT. Under it, ``fit`` joins the process group (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def setup(device: torch.device) -> World:
    """Join the process group torchrun describes (once); a no-op for a single process."""
    if dist.is_available() and not dist.is_initialized() and launched_by_torchrun():
        world_size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        if world_size > 1:
            if device.type == "cuda":  # this process's GPU, before any CUDA state is created
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    store=_attempt_store(rank, world_size), rank=rank, world_size=world_size)
            # We made the group, so we close it: left to interpreter shutdown, a rank that ends
            # first can abort ("terminate called without an active exception") in gloo's teardown.
            atexit.register(_destroy)
    return current_world()


def _destroy() -> None:
    """Leave together, then close: a rank tearing gloo down while its peer still runs can abort."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        try:  # bounded: a peer that died must not hang this process's exit
            dist.monitored_barrier(timeout=timedelta(seconds=30))
        except Exception:  # noqa: BLE001 - exiting anyway; the peer's failure is reported by torchrun
            pass
    dist.destroy_process_group()


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """torchrun's rendezvous store, with keys private to this restart attempt.

    After ``torchrun --max-restarts`` restarts the workers, the agent's store still holds the
    previous attempt's keys, and gloo's mesh set-up would read the dead rank 0's address from them
    and fail. A prefix per TORCHELASTIC_RESTART_COUNT keeps each attempt's rendezvous apart.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent_store and rank == 0, timeout=timedelta(minutes=10),
                          multi_tenant=not agent_store)
    return dist.PrefixStore(f"optiloop/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def local_device(device: torch.device, world: World) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _several() -> bool:
    """True when collectives have peers: a process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _several():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's integer for everyone (e.g. a data seed drawn from a per-rank RNG)."""
    if not _several():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision for everyone (early stopping must stop every rank at the same epoch)."""
    return bool(broadcast_int(int(flag), device))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable, tensors on the CPU), in rank order; ``[obj]`` alone."""
    if not _several():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
