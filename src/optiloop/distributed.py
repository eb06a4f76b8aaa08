"""torch.distributed plumbing: torchrun detection, process group, the strategy (DDP or FSDP2
sharding), collectives.

optiloop never launches processes: torchrun does, and sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT. Under it, ``fit`` joins the process group (gloo on CPU, nccl on CUDA)
and wraps the model the strategy says: ``DistributedDataParallel`` (a full copy per process) or
FSDP2's ``fully_shard`` (parameters, gradients and optimizer state sharded across processes).
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import OptiloopError, choices
from .optim import OPTIMIZERS

STRATEGIES = ("auto", "none", "ddp", "fsdp")


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


def launched_world() -> World:
    """The world torchrun describes in the environment, before (or without) joining it."""
    if not launched_by_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


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
    global _BACKGROUND_GROUP
    _BACKGROUND_GROUP = None
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


def agreed(key: str, make) -> str | None:
    """One value every process of this torchrun job agrees on, the same again after a restart
    (``--max-restarts``): rank 0 makes it once and leaves it in torchrun's own store, the others
    read it from there. None where there is no such store (a plain process; an agent without one).

    Example: the default run folder's name, whose time part no two processes' clocks would agree on.
    """
    if not launched_by_torchrun() or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(minutes=10))
    key = f"optiloop/{key}"
    if int(os.environ["RANK"]) == 0 and not store.check([key]):
        store.set(key, make())
    return store.get(key).decode()


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


# --- strategy ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FSDP:
    """``fit(strategy=ol.FSDP(...))``: FSDP2 sharding with options (``strategy="fsdp"`` is ``FSDP()``).

    Each block is sharded as one unit (its parameters are all-gathered just before its forward and
    freed after it), and the root module takes whatever no block holds.

    Args:
        blocks: module types to shard one unit per instance, e.g. ``(MyTransformerBlock,)``. None:
            every child of an ``nn.ModuleList`` (how transformer layers are usually held); a
            model without one is sharded as a single unit at the root.
        reshard_after_forward: free a block's gathered parameters after its forward (least memory,
            one more all-gather in the backward); False keeps them until the backward.

    Example:
        >>> import torch, optiloop as ol
        >>> ol.FSDP(blocks=(torch.nn.TransformerEncoderLayer,)).reshard_after_forward
        True
    """

    blocks: tuple[type[nn.Module], ...] | None = None
    reshard_after_forward: bool = True

    def __post_init__(self):
        blocks = self.blocks
        if blocks is not None and (not isinstance(blocks, (tuple, list)) or not all(
                isinstance(b, type) and issubclass(b, nn.Module) for b in blocks)):
            raise OptiloopError(f"FSDP(blocks=...) takes a tuple of nn.Module classes, got {blocks!r}")
        if blocks is not None:
            object.__setattr__(self, "blocks", tuple(blocks))


def resolve_strategy(strategy: str | FSDP, world: World) -> tuple[str, FSDP | None]:
    """The strategy's name (none, ddp or fsdp) and its FSDP options; one-line errors for a name
    that does not exist or does not fit the number of processes."""
    if isinstance(strategy, FSDP):
        name, options = "fsdp", strategy
    elif isinstance(strategy, str) and strategy.lower() in STRATEGIES:
        name = strategy.lower()
        options = FSDP() if name == "fsdp" else None
    else:
        raise OptiloopError(f"unknown strategy {strategy!r}; choose one of: {choices(STRATEGIES)} "
                            "(or an optiloop.FSDP(...))")
    if name == "auto":
        return ("ddp" if world.distributed else "none"), None
    if name in ("ddp", "fsdp") and not world.distributed:
        how = ("torchrun started 1 process; use --nproc_per_node=N with N >= 2" if launched_by_torchrun()
               else "this is one process; launch it with torchrun --nproc_per_node=N (N >= 2)")
        raise OptiloopError(f"strategy={name!r} spreads training over several processes, but {how}")
    if name == "none" and world.distributed:
        raise OptiloopError(f"strategy='none' under torchrun would train {world.world_size} unrelated "
                            "copies; use 'ddp' or 'fsdp', or run a single process")
    return name, options


def shard(model: nn.Module, device: torch.device, world: World, options: FSDP,
          param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2's ``fully_shard``: each block, then the root.

    ``param_dtype`` (bf16 from ``amp="bf16"``) is FSDP's own mixed precision: parameters are
    all-gathered and computed in it, gradients reduced in float32, the sharded parameters and
    optimizer state stay float32, and the root's output is cast back to float32 for the loss.
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh  # FSDP2: only when sharding
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # pragma: no cover - torch < 2.6
        raise OptiloopError(f"strategy='fsdp' needs torch >= 2.6 (fully_shard); this is torch "
                            f"{torch.__version__}") from None
    blocks = _blocks(model, options.blocks)
    _broadcast_from_rank0(model)
    mesh = init_device_mesh(device.type, (world.world_size,))
    block_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    root_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=block_mp.reduce_dtype,
                                   output_dtype=torch.float32 if param_dtype else None)
    for block in blocks:  # innermost first: fully_shard must see a block's inner blocks already sharded
        fully_shard(block, mesh=mesh, mp_policy=block_mp, reshard_after_forward=options.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=root_mp, reshard_after_forward=options.reshard_after_forward)
    return model


def _blocks(model: nn.Module, types: tuple[type[nn.Module], ...] | None) -> list[nn.Module]:
    """The modules sharded as units, children before their parents (the root excluded)."""
    if types is None:
        found = [c for m in model.modules() if isinstance(m, nn.ModuleList) for c in m]
    else:
        found = [m for m in model.modules() if m is not model and isinstance(m, types)]
        if not found:
            present = sorted({type(m).__name__ for m in model.modules()})
            raise OptiloopError(f"FSDP(blocks={tuple(t.__name__ for t in types)}) matches no module of the "
                                f"model; its module types: {', '.join(present[:12])}")
    order = {id(m): i for i, m in enumerate(model.modules())}
    found = [m for m in found if any(p.requires_grad for p in m.parameters())]
    return sorted(found, key=lambda m: -order[id(m)])


@torch.no_grad()
def _broadcast_from_rank0(model: nn.Module) -> None:
    """Every rank starts from rank 0's weights and buffers, as DDP does at construction:
    fully_shard keeps each rank's slice of its *own* copy, so copies initialised differently on
    each rank (no seed, or a per-rank seed) would be stitched together."""
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)


_BACKGROUND_GROUP: Any = None


def background_group() -> Any:
    """A second gloo group for collectives from a background thread (asynchronous checkpoint
    writes): on the training group they would interleave with the training's own collectives.
    Collective to create: every rank must ask for it at the same point (its first use)."""
    global _BACKGROUND_GROUP
    if _BACKGROUND_GROUP is None and _several():
        _BACKGROUND_GROUP = dist.new_group(backend="gloo")
    return _BACKGROUND_GROUP


def _several() -> bool:
    """True when collectives have peers: a process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _several():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_int(value: int, device: torch.device) -> int:
    """The largest of every rank's integer (e.g. a signal one rank got and another did not yet)."""
    if not _several():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


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


# --- device and process policy ----------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda, then mps, then cpu. Anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptiloopError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptiloopError("device 'cuda' asked for but CUDA is not available; use device='auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptiloopError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptiloopError("device 'mps' asked for but MPS is not available on this machine; "
                            "use device='auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OptiloopError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N, mps")
    return dev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_fsdp(optimizer: Any, scheduler: Any = None, amp_dtype: torch.dtype | None = None,
               compile: Any = False) -> None:
    """Refuse, in one line, what strategy='fsdp' cannot take (fit calls it before sharding; a
    command line calls it before writing anything)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise OptiloopError("under strategy='fsdp' pass the optimizer by name or dict: it must be built on "
                            "the sharded parameters, which do not exist before fit shards the model")
    name = str(optimizer.get("name") if isinstance(optimizer, Mapping) else optimizer).lower()
    reason = OPTIMIZERS[name].unsharded_only if name in OPTIMIZERS else None
    if reason:
        raise OptiloopError(f"optimizer {name!r} is not supported under strategy='fsdp' ({reason}); use adamw, "
                            "or strategy='ddp'")
    if scheduler is not None and not isinstance(scheduler, (str, Mapping)):
        raise OptiloopError("under strategy='fsdp' pass the scheduler by name or dict: a built one drives an "
                            "optimizer of the unsharded parameters")
    if amp_dtype == torch.float16:
        raise OptiloopError("amp='fp16' is not supported under strategy='fsdp' (its loss scaler would see "
                            "only this rank's shards); use amp='bf16'")
    if compile:
        raise OptiloopError("compile= is not supported under strategy='fsdp' yet; use strategy='ddp' to compile")
