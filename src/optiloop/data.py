"""Batches from (X, y) tensors / arrays, a Dataset, or a DataLoader; sharded per rank under DDP.

In-memory data takes the fast path: the whole epoch is one permutation and each batch is one
indexing op ``X[idx]`` (no per-sample __getitem__, no collate). The permutation is drawn from a
generator seeded with ``seed + epoch``: the data order is a pure function of (seed, epoch), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from .errors import OptiloopError


def _as_tensor(a: Any, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.is_floating_point():
            return t.to(torch.get_default_dtype())  # numpy's float64 would not match the model
        if t.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8) and what == "y":
            return t.long()  # class indices for cross-entropy
        return t
    raise OptiloopError(f"{what} must be a torch.Tensor or numpy array, got {type(a).__name__}")


class TensorBatches:
    """Index-batched in-memory data. Iterating yields ``(x, y)`` already on ``device``."""

    def __init__(self, X, y, *, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        X, y = _as_tensor(X, "X"), _as_tensor(y, "y")
        if len(X) != len(y):
            raise OptiloopError(f"X has {len(X)} samples but y has {len(y)}")
        # Keep the data where the model is: on a GPU, one upload instead of one per batch.
        self.X, self.y = X.to(device), y.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.num_samples = len(self.indices())  # this rank's share

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor | None:
        """This rank's sample order for the current epoch; None means 'all, in order'."""
        n = len(self.X)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        elif self.world_size == 1:
            return torch.arange(n)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.pad:  # every rank must take the same number of steps: wrap around
                total = math.ceil(n / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - n]]) if total > n else order
            order = order[self.rank :: self.world_size]
        return order

    def batch_sizes(self) -> list[int]:
        full, rest = divmod(self.num_samples, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        bs = self.batch_size
        if not self.shuffle and self.world_size == 1:
            for s in range(0, len(self.X), bs):  # contiguous slices: views, no copy
                yield self.X[s : s + bs], self.y[s : s + bs]
            return
        if self.X.is_cuda:  # pinned, so the copy is truly asynchronous: no host sync per epoch
            order = order.pin_memory().to(self.X.device, non_blocking=True)
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            yield self.X[idx], self.y[idx]


class LoaderBatches:
    """A DataLoader, moved to the device batch by batch (non_blocking where pinned)."""

    def __init__(self, loader: DataLoader, *, device: torch.device, seed: int | None = None,
                 generators: tuple[torch.Generator, ...] = ()):
        self.loader, self.device = loader, device
        self.seed, self.generators = seed, generators  # empty for a user's own DataLoader
        self.epoch = 0
        try:
            self.num_samples = len(loader.dataset)  # type: ignore[arg-type]
            if isinstance(loader.sampler, DistributedSampler):
                self.num_samples = loader.sampler.num_samples
        except TypeError:  # an IterableDataset without __len__
            self.num_samples = None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        for g in self.generators:
            g.manual_seed(self.seed + epoch)  # same order as an uninterrupted run

    def batch_sizes(self) -> list[int] | None:
        bs = self.loader.batch_size
        if bs is None or self.num_samples is None:
            return None
        full, rest = divmod(self.num_samples, bs)
        return [bs] * full + ([rest] if rest and not self.loader.drop_last else [])

    def __iter__(self):
        nb = self.device.type == "cuda"
        for batch in self.loader:
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise OptiloopError("each batch must be an (inputs, targets) pair")
            x, y = batch
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)


def make_batches(data: Any, *, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, role: str = "training"):
    """Turn any accepted input into batches for one phase. Raises on empty or malformed data."""
    if batch_size < 1:
        raise OptiloopError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, DataLoader):
        if world_size > 1 and not isinstance(data.sampler, DistributedSampler):
            raise OptiloopError(
                f"under DDP the {role} DataLoader needs a DistributedSampler; "
                "or pass the Dataset / (X, y) and optiloop shards it"
            )
        batches = LoaderBatches(data, device=device)
    elif isinstance(data, Dataset):
        # Generators reseeded per epoch: the sampler's draws the order (the same permutation the
        # (X, y) path uses); the loader's draws its worker base seed, which would otherwise come
        # from the global RNG and shift dropout masks after a mid-epoch resume.
        order_gen, loader_gen = torch.Generator(), torch.Generator()
        if world_size > 1:
            sampler = DistributedSampler(data, num_replicas=world_size, rank=rank,
                                         shuffle=shuffle, seed=seed, drop_last=False)
        else:
            sampler = RandomSampler(data, generator=order_gen) if shuffle else None
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, generator=loader_gen,
                            pin_memory=device.type == "cuda")
        batches = LoaderBatches(loader, device=device, seed=seed, generators=(order_gen, loader_gen))
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        batches = TensorBatches(data[0], data[1], batch_size=batch_size, shuffle=shuffle,
                                seed=seed, device=device, rank=rank, world_size=world_size,
                                pad=shuffle)
    else:
        raise OptiloopError(
            f"{role} data must be a DataLoader, a Dataset or an (X, y) pair, got {type(data).__name__}"
        )
    if batches.num_samples == 0 or len(batches) == 0:
        raise OptiloopError(f"{role} data is empty")
    return batches
