"""Batches: the written contract between the loop and whatever data the user passes.

A ``Batches`` object yields one epoch of batches already on the device. A batch has any structure
the user's step understands: a tensor pair, a tuple / list, a dict, a namedtuple or a dataclass of
tensors, nested. Two implementations:

- ``InMemoryBatches``: tensors / arrays held in memory, ``(X, y)``, ``(a, b, c)``,
  ``{"input_ids": ..., "labels": ...}``: the fast path. The whole epoch is one permutation and a
  batch is one indexing op per array (``X[idx]``), no per-sample ``__getitem__``, no collate. The
  permutation comes from a generator seeded ``seed + epoch``: the data order is a pure function of
  (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run would have seen.
- ``LoaderBatches``: a DataLoader (the user's, or one optiloop makes for a Dataset), each batch
  moved to the device by ``to_device``, which walks the structure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .errors import OptiloopError

_PLAIN = (str, bytes, int, float, bool, type(None))  # batch leaves passed through as they are


@runtime_checkable
class Batches(Protocol):
    """What the loop needs from training or validation data.

    Attributes:
        num_samples: this rank's samples per epoch, or None when unknown (an IterableDataset).
        replayable: an epoch's order can be replayed, so a mid-epoch resume is exact.
    """

    num_samples: int | None
    replayable: bool

    def __len__(self) -> int:
        """Batches per epoch (this rank's)."""

    def __iter__(self) -> Iterator[Any]:
        """One epoch of batches, already on the device."""

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` (1-based); called before each epoch."""

    def batch_sizes(self) -> list[int] | None:
        """Samples in each batch of an epoch, or None when not known in advance."""

    def fingerprint(self) -> str:
        """A short description of the data that changes when the data does (resume checks it)."""


# --- walking a batch ------------------------------------------------------------------------------
def map_batch(fn: Callable[[torch.Tensor], Any], batch: Any, *, path: str = "batch") -> Any:
    """Apply ``fn`` to every tensor in a nested tuple / list / dict / namedtuple / dataclass.

    Numpy arrays become tensors first; strings, numbers and None pass through; an object with a
    ``.to`` method of its own is left to ``fn`` too. Anything else raises one line naming where.
    """
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, np.ndarray):
        return fn(torch.from_numpy(batch))
    if isinstance(batch, _PLAIN):
        return batch
    if isinstance(batch, Mapping):
        items = {k: map_batch(fn, v, path=f"{path}[{k!r}]") for k, v in batch.items()}
        return _rebuild(type(batch), items)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_batch(fn, v, path=f"{path}.{f}") for f, v in zip(batch._fields, batch, strict=True)))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_batch(fn, v, path=f"{path}[{i}]") for i, v in enumerate(batch))
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: map_batch(fn, getattr(batch, f.name), path=f"{path}.{f.name}")
                   for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    if callable(getattr(batch, "to", None)):  # e.g. a graph-library batch object
        return fn(batch)
    raise OptiloopError(f"{path} is a {type(batch).__name__}, which optiloop cannot move to a device; "
                        "batches hold tensors (or numpy arrays, strings, numbers) in tuples, lists, dicts, "
                        "namedtuples or dataclasses, or objects with a .to(device) method")


def _rebuild(cls: type, items: dict) -> Mapping:
    if cls is dict:
        return items
    try:  # OrderedDict, transformers' BatchEncoding ...: keep the user's type
        return cls(items)
    except TypeError:
        return items


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor on ``device`` (non_blocking copies from pinned memory on CUDA)."""
    return map_batch(lambda t: t.to(device, non_blocking=non_blocking), batch)


def first_tensor(batch: Any) -> torch.Tensor | None:
    """The first tensor in a batch's structure (dict order, then position), or None."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        values = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        values = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
    else:
        return None
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def sample_count(batch: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor."""
    t = first_tensor(batch)
    if t is None or t.ndim == 0:
        raise OptiloopError(f"cannot count the samples of a batch of type {type(batch).__name__} (no tensor "
                            "with a batch dimension in it); return ol.StepOutput(loss, count=N) from step=")
    return t.shape[0]


# --- in memory: index batching -------------------------------------------------------------------
def _as_tensor(a: Any, name: str, *, target: bool = False) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise OptiloopError(f"{name} is a numpy array of Python objects; convert it to numbers first")
        t = torch.from_numpy(np.ascontiguousarray(a))
        if t.is_floating_point():
            return t.to(torch.get_default_dtype())  # numpy's float64 would not match the model
        if target and t.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
            return t.long()  # class indices for cross-entropy
        if t.dtype in (torch.int32, torch.int16, torch.int8):
            return t.long()  # token ids and labels: torch's losses and embeddings want int64
        return t
    raise OptiloopError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")


def _flatten(data: Any, path: str) -> tuple[list[tuple[str, Any]], Callable[[list], Any]]:
    """(named leaves, rebuild): rebuild(list of leaves) makes a batch of ``data``'s structure."""
    if isinstance(data, Mapping):
        keys = list(data)
        return _join([_flatten(v, f"{path}[{k!r}]") for k, v in data.items()],
                     lambda values: dict(zip(keys, values, strict=True)))
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        cls = type(data)
        return _join([_flatten(v, f"{path}.{f}") for f, v in zip(data._fields, data, strict=True)],
                     lambda values: cls(*values))
    if isinstance(data, (tuple, list)):
        names = ["X", "y"] if len(data) == 2 and path == "data" else [f"{path}[{i}]" for i in range(len(data))]
        return _join([_flatten(v, n) for n, v in zip(names, data, strict=True)], tuple)
    return [(path, data)], _single


def _single(leaves: list) -> Any:
    return leaves[0]


def _join(parts: list, make: Callable[[list], Any]):
    leaves = [leaf for part_leaves, _ in parts for leaf in part_leaves]
    if all(sub is _single for _, sub in parts):  # a flat structure: one call per batch
        return leaves, make
    sizes = [len(part_leaves) for part_leaves, _ in parts]

    def rebuild(values: list) -> Any:
        out, start = [], 0
        for (_, sub), n in zip(parts, sizes, strict=True):
            out.append(sub(values[start : start + n]))
            start += n
        return make(out)

    return leaves, rebuild


class InMemoryBatches:
    """Index-batched in-memory data: a tensor, an ``(X, y)`` pair, a tuple / dict of arrays.

    Iterating yields batches of the data's own structure, already on ``device``.
    """

    replayable = True

    def __init__(self, data: Any, *, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        named, rebuild = _flatten(data, "data")
        pair = isinstance(data, (tuple, list)) and len(data) == 2
        tensors = [_as_tensor(v, n, target=pair and n == "y") for n, v in named]
        lengths = {n: (len(t) if t.ndim else 0) for (n, _), t in zip(named, tensors, strict=True)}
        if len(set(lengths.values())) > 1:
            if list(lengths) == ["X", "y"]:
                raise OptiloopError(f"X has {lengths['X']} samples but y has {lengths['y']}")
            raise OptiloopError("every array must have the same number of samples (leading dimension); got "
                                + ", ".join(f"{n}: {k}" for n, k in lengths.items()))
        # Keep the data where the model is: on a GPU, one upload instead of one per batch.
        self.tensors = [t.to(device) for t in tensors]
        self.rebuild = rebuild
        self.length = next(iter(lengths.values()))
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.num_samples = len(self.indices())  # this rank's share

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's sample order for the current epoch."""
        n = self.length
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
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

    def fingerprint(self) -> str:
        """Sample count and a checksum of the first array: resuming on other data is refused."""
        first = self.tensors[0]
        # One sync at set-up. Row sums first: a float64 copy of the data would double its memory.
        total = first.reshape(len(first), -1).sum(dim=1).double().sum().item()
        return f"{self.num_samples} samples, sum {total:.10g}"

    def __iter__(self) -> Iterator[Any]:
        tensors, rebuild, bs = self.tensors, self.rebuild, self.batch_size
        if not self.shuffle and self.world_size == 1:
            for s in range(0, self.length, bs):  # contiguous slices: views, no copy
                yield rebuild([t[s : s + bs] for t in tensors])
            return
        order = self.indices()
        if tensors[0].is_cuda:  # pinned, so the copy is truly asynchronous: no host sync per epoch
            order = order.pin_memory().to(tensors[0].device, non_blocking=True)
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            yield rebuild([t[idx] for t in tensors])


# --- a DataLoader ---------------------------------------------------------------------------------
class LoaderBatches:
    """A DataLoader, each batch moved to the device (non_blocking on CUDA).

    ``generators`` are the loader's own generators (optiloop's loaders for a Dataset): reseeded per
    epoch, they make the order a function of (seed, epoch). A user's loader has none.
    """

    def __init__(self, loader: DataLoader, *, device: torch.device, seed: int | None = None,
                 generators: tuple[torch.Generator, ...] = ()):
        self.loader, self.device = loader, device
        self.seed, self.generators = seed, generators
        self.epoch = 0
        try:
            self.num_samples = len(loader.dataset)  # type: ignore[arg-type]
            if isinstance(loader.sampler, DistributedSampler):
                self.num_samples = loader.sampler.num_samples
        except TypeError:  # an IterableDataset without __len__
            self.num_samples = None

    @property
    def replayable(self) -> bool:
        return bool(self.generators) or isinstance(self.loader.sampler, (SequentialSampler, DistributedSampler))

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

    def fingerprint(self) -> str:
        return f"{self.num_samples} samples"

    def __iter__(self) -> Iterator[Any]:
        device, nb = self.device, self.device.type == "cuda"
        for batch in self.loader:
            yield to_device(batch, device, nb)


def _is_in_memory(data: Any) -> bool:
    """A tensor / array, or a tuple / list / dict whose leaves are all tensors or arrays."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return True
    if isinstance(data, Mapping):
        return len(data) > 0 and all(_is_in_memory(v) for v in data.values())
    if isinstance(data, (tuple, list)):
        return len(data) > 0 and all(_is_in_memory(v) for v in data)
    return False


def make_batches(data: Any, *, batch_size: int, shuffle: bool, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, role: str = "training") -> Batches:
    """Turn any accepted input into batches for one phase. Raises on empty or malformed data."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptiloopError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    batches: Batches
    if isinstance(data, Batches) and not isinstance(data, (DataLoader, Dataset)):
        batches = data  # the user's own: it orders, shards (under DDP) and moves its batches itself
    elif isinstance(data, DataLoader):
        if world_size > 1 and not isinstance(data.sampler, DistributedSampler):
            raise OptiloopError(
                f"under DDP the {role} DataLoader needs a DistributedSampler; "
                "or pass the Dataset / (X, y) and optiloop shards it"
            )
        batches = LoaderBatches(data, device=device)
    elif isinstance(data, Dataset):
        # Generators reseeded per epoch: the sampler's draws the order (the same permutation the
        # in-memory path uses); the loader's draws its worker base seed, which would otherwise come
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
    elif isinstance(data, (torch.Tensor, np.ndarray, Mapping, tuple, list)) and (
            _is_in_memory(data) or isinstance(data, (tuple, list)) and len(data) == 2):
        batches = InMemoryBatches(data, batch_size=batch_size, shuffle=shuffle, seed=seed, device=device,
                                  rank=rank, world_size=world_size, pad=shuffle)
    else:
        what = type(data).__name__
        if isinstance(data, (list, tuple)) and data:
            what += f" of {type(data[0]).__name__}"
        raise OptiloopError(
            f"{role} data must be a DataLoader, a Dataset, a tensor / array, an (X, y) pair, a tuple "
            f"or dict of equal-length tensors / arrays, or an optiloop.Batches; got a {what}"
        )
    if batches.num_samples == 0 or len(batches) == 0:
        raise OptiloopError(f"{role} data is empty")
    return batches
