"""Sharded checkpoints for FSDP: the sharded "what", the DCP "where", safe loading, export.

What: the model and optimizer state as torch.distributed.checkpoint (DCP) state dicts, keyed by
parameter name, each rank holding only its shards (``torch.distributed.checkpoint.state_dict``);
the rest of the training state (scheduler, position, callbacks, history, config) as one blob
that rank 0 writes; and each rank's own RNG state as a blob of its own. Both blobs are
``torch.save`` bytes: DCP stores them whole instead of splitting nested lists into keys whose
shapes would have to be known before loading.

Where: a checkpoint is a folder (``last/``, ``best/``) written by DCP: every rank writes its own
shard file, then rank 0 writes ``.metadata`` once every rank has finished: the commit. The folder
is written under a temporary name and renamed into place only after it committed, and the folder
it replaces is kept as ``last.prev/`` until then, so a crash at any moment leaves a committed
checkpoint; one without its metadata or with a missing or short shard file is never loaded.
Saving is asynchronous by default (``dcp.async_save``): the state is copied to CPU memory at once,
then written by a background thread while training goes on, with the same commit.

Loading is as safe as the plain checkpoints' ``torch.load(weights_only=True)``: ``.metadata`` is
read by an unpickler that builds DCP's own metadata classes and nothing else, and every non-tensor
value goes through ``torch.load(weights_only=True)`` before DCP sees it.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from . import distributed as D
from .errors import CheckpointError
from .files import TEMP_SUFFIX, fsync_dir
from .training_state import FORMAT

METADATA = ".metadata"  # DCP's commit file, written last
_SHARED = "train"  # the blob of the run's own state, written by rank 0
_PER_RANK = ("rng",)  # snapshot entries every rank keeps for itself


@contextmanager
def _one_process() -> Iterator[None]:
    """DCP warns on every single-process read or write; here one process is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The model's and optimizer's DCP state dicts: parameter-name keys, sharded tensors as this
    rank's shards (DTensors) under FSDP, whole tensors otherwise."""
    return get_state_dict(model, optimizer)


def rank_key(rank: int) -> str:
    return f"rank{rank}"


# --- safe reading ------------------------------------------------------------------------------------
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes and nothing else: a crafted ``.metadata`` cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module, name) in _METADATA_GLOBALS
            or (module == "torch.distributed.checkpoint.metadata" and not name.startswith("__"))
            or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            or (module.split(".")[0] == "pathlib" and name in ("Path", "PosixPath", "WindowsPath"))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")
        return super().find_class(module, name)


def read_metadata(path: str | os.PathLike) -> Metadata:
    """The checkpoint folder's DCP metadata, read safely; CheckpointError if absent or not plain."""
    file = Path(path) / METADATA
    try:
        with open(file, "rb") as f:
            md = _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is not committed: no {METADATA} (its writer "
                              "stopped before every rank had finished)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {METADATA} refused or unreadable ({e})") from None
    if not isinstance(md, Metadata):
        raise CheckpointError(f"checkpoint {path}: {METADATA} holds no DCP metadata")
    return md


class _SafeReader(FileSystemReader):
    """DCP's file reader with the metadata read by ``read_metadata`` (its own uses plain pickle)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        md = read_metadata(self.path)
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


def _plain(buffer: io.BytesIO) -> Any:
    try:
        return torch.load(buffer, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"sharded checkpoint refused: a value in it is not plain data and "
                              f"loading it could run code ({first[:160]})") from None


class _SafeLoadPlanner(DefaultLoadPlanner):
    """Reads every non-tensor value with weights_only=True first. torch's planner then reads the
    same bytes without that restriction, but bytes that passed can only rebuild plain data."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        _plain(value)
        value.seek(0)
        super().load_bytes(read_item, value)


def _first_line(e: BaseException) -> str:
    """One line for the user: the first failing rank's own error, not DCP's wrapper of them all."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextmanager
def _dcp_errors(message: str) -> Iterator[None]:
    """DCP's failures as one CheckpointError line (ours inside them pass through as they are).
    DCP's CheckpointException is a BaseException: ``except Exception`` would miss it."""
    try:
        yield
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - one line for the user
        inner = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        if isinstance(inner, CheckpointError):
            raise inner from None
        raise CheckpointError(f"{message}: {_first_line(e)}") from None


def _blob(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unblob(data: Any, what: str) -> Any:
    if not isinstance(data, bytes):
        raise CheckpointError(f"sharded checkpoint: its {what} is not an optiloop blob")
    return _plain(io.BytesIO(data))


def verify(path: str | os.PathLike) -> Metadata:
    """Raise CheckpointError unless ``path`` is a committed checkpoint folder whose every shard
    file is present and as long as the metadata says. DCP stores no checksums: a file damaged
    in place, at its full length, is not detected here."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no sharded checkpoint at {path}")
    md = read_metadata(path)
    need: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        if name is not None:
            need[name] = max(need.get(name, 0), int(info.offset) + int(info.length))
    for name, size in need.items():
        file = path / name
        if not file.is_file() or file.stat().st_size < size:
            raise CheckpointError(f"checkpoint {path} is incomplete: shard file {name} is missing or short")
    return md


def find_resumable(run_dir: str | os.PathLike) -> Path:
    """The newest committed, complete checkpoint folder of a sharded run (or the folder itself):
    ``last/``, else ``last.prev/``; one that fails ``verify`` is reported as a warning and skipped."""
    run_dir = Path(run_dir)
    if (run_dir / METADATA).exists() or any(run_dir.glob("*.distcp")):
        verify(run_dir)
        return run_dir
    errors = []
    for c in (run_dir / "last", previous_dir(run_dir / "last")):
        if not c.exists():
            continue
        try:
            verify(c)
            if errors:
                warnings.warn(f"{errors[-1]}; resuming from {c.name} instead", stacklevel=2)
            return c
        except CheckpointError as e:
            errors.append(str(e))
    if errors:
        raise CheckpointError("; ".join(errors) + "; no valid checkpoint to resume from")
    raise CheckpointError(f"nothing to resume in {run_dir}: no last/ checkpoint folder")


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The run's own state of a sharded checkpoint (no model or optimizer): what resume checks
    before loading the weights."""
    md = verify(path)
    if _SHARED not in md.state_dict_metadata:
        raise CheckpointError(f"{path} is a DCP checkpoint but not an optiloop training checkpoint")
    target: dict[str, Any] = {_SHARED: None}
    with _dcp_errors(f"checkpoint {path} cannot be read"), _one_process():  # every rank reads it on its own
        dcp.load(target, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner(), no_dist=True)
    state = _unblob(target[_SHARED], "training state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an optiloop training checkpoint")
    return state


def read_consolidated(path: str | os.PathLike) -> dict[str, Any]:
    """A sharded checkpoint as one process needs it to evaluate or predict: the run's own state
    with the model's weights whole under ``"model"`` (no optimizer state), however many processes
    wrote it."""
    state = read_train_state(path)
    state["model"] = _read_model(Path(path))
    return state


def load_into(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
              rank: int) -> dict[str, Any] | None:
    """Load a sharded checkpoint's model and optimizer state into ``model`` and ``optimizer``,
    whatever their sharding now (DCP reads each rank's part of every tensor: 2 processes' shards
    load into 1 process's whole tensors and back). Returns this rank's own saved entries (its
    RNG), or None when the checkpoint had no such rank. Every rank of a process group calls it.
    """
    md = verify(path)
    model_sd, optim_sd = state_dicts(model, optimizer)
    _check_model(path, md, model_sd)
    target: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
    mine = rank_key(rank)
    if mine in md.state_dict_metadata:
        target[mine] = None
    with _dcp_errors(f"checkpoint {path} does not fit this model and optimizer"), _one_process():
        dcp.load(target, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner(),
                 no_dist=not D.current_world().distributed)
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    return _unblob(target[mine], "per-rank state") if mine in target else None


def _model_entries(md: Metadata) -> dict[str, str]:
    """Flattened DCP key -> the model's own state_dict key."""
    paths = md.planner_data if isinstance(md.planner_data, dict) else {}
    return {flat: p[1] for flat, p in paths.items() if isinstance(p, tuple) and len(p) == 2 and p[0] == "model"}


def _check_model(path: Path, md: Metadata, model_sd: dict[str, Any]) -> None:
    saved = {key: md.state_dict_metadata[flat] for flat, key in _model_entries(md).items()}
    missing = [k for k in model_sd if k not in saved]
    unexpected = [k for k in saved if k not in model_sd]
    mismatched = [f"{k} {tuple(saved[k].size)} vs {tuple(v.shape)}" for k, v in model_sd.items()
                  if k in saved and isinstance(saved[k], TensorStorageMetadata)
                  and tuple(saved[k].size) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch (checkpoint vs model)", mismatched)) if keys]
        raise CheckpointError(f"checkpoint {path} does not fit the model; " + "; ".join(parts))


# --- where: a folder of DCP checkpoints ----------------------------------------------------------
class ShardedFolder:
    """Where checkpoints go under FSDP: ``<name>/`` DCP folders, the replaced one kept as
    ``<name>.prev/`` on request. The same calls as ``CheckpointFolder``, but collective: every
    rank calls ``save`` at the same point with its own shards, and decisions that could differ
    between ranks (wall-clock ones) go through ``agree``. Rank 0 alone renames and deletes.

    With ``async_save`` a save returns once the state is copied to CPU memory; the files are
    written in the background and the folder commits when every rank is done. At most one save
    is in flight: the next one, ``wait()`` and the end of fit wait for it first.

    Example:
        >>> folder = ShardedFolder("runs/demo")
        >>> folder.path("last").name
        'last'
    """

    collective = True

    def __init__(self, dirpath: str | os.PathLike, device: torch.device | str = "cpu", async_save: bool = True):
        self.dir = Path(dirpath)
        self.device = torch.device(device)
        self.async_save = async_save
        self.rank = D.current_world().rank
        self._count = 0  # saves so far: the same on every rank, so temporary names agree
        self._pending: _Pending | None = None

    def path(self, name: str) -> Path:
        return self.dir / name

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision for every rank (a save is collective: all ranks or none)."""
        return D.broadcast_flag(flag, self.device) if D.current_world().distributed else flag

    def save(self, name: str, state: dict[str, Any], *, keep_previous: bool = True) -> None:
        """Write ``state`` (a ``TrainState.snapshot()``) as ``<name>/``; collective."""
        self.wait()
        tmp = self.dir / f".{name}.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}.{self._count}{TEMP_SUFFIX}"
        self._count += 1
        payload = self._payload(state)
        group, alone = D.background_group(), not D.current_world().distributed
        if not self.async_save:
            with _dcp_errors(f"writing checkpoint {name} failed, the previous one is kept"), _one_process():
                dcp.save(payload, checkpoint_id=tmp, process_group=group, no_dist=alone)
            if self.rank == 0:
                self._commit(tmp, name, keep_previous)
            return
        response = dcp.async_save(payload, checkpoint_id=tmp, process_group=group, no_dist=alone)
        future = getattr(response, "upload_completion", response)  # torch returns either form
        pending = self._pending = _Pending(future, name)

        def commit(done: Future) -> None:  # runs in the writer thread once every rank has written
            try:
                if done.exception() is None and self.rank == 0:
                    self._commit(tmp, name, keep_previous)
                    with pending.lock:
                        links, pending.linked = list(pending.links), True
                    for dst, keep in links:
                        self._link(self.path(name), dst, keep)
            except BaseException as e:  # noqa: BLE001 - reported by wait() in the training thread
                pending.error = e
            finally:
                pending.committed.set()

        future.add_done_callback(commit)

    def copy(self, src: str, dst: str, *, keep_previous: bool = True) -> None:
        """Make ``dst/`` hold what ``src/`` holds (hard links, no second write). If ``src`` is
        still being written, this happens right after it commits."""
        if self.rank != 0:
            return
        pending = self._pending
        if pending is not None and pending.name == src:
            with pending.lock:
                if not pending.linked:
                    pending.links.append((dst, keep_previous))
                    return
        self._link(self.path(src), dst, keep_previous)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the save in flight (if any) has committed; raise if it failed."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            with _dcp_errors(f"writing checkpoint {pending.name} failed, the previous one is kept"):
                pending.future.result(timeout=timeout)
            if not pending.committed.wait(timeout):
                raise TimeoutError
        except TimeoutError:
            raise CheckpointError(f"checkpoint {pending.name} still unwritten after {timeout} s; "
                                  "it is not used") from None
        if pending.error is not None:
            raise CheckpointError(f"committing checkpoint {pending.name} failed: {pending.error}")

    def clean(self) -> None:
        """Remove what a killed writer left behind (uncommitted temporaries); rank 0 only."""
        if self.rank != 0 or not self.dir.is_dir():
            return
        for name in ("best", "last"):
            for stale in self.dir.glob(f".{name}.*{TEMP_SUFFIX}"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)

    # -- internals (rank 0 renames and deletes) ------------------------------------------------
    def _payload(self, state: dict[str, Any]) -> dict[str, Any]:
        own = {k: state[k] for k in _PER_RANK}
        payload = {"model": state["model"], "optimizer": state["optimizer"], rank_key(self.rank): _blob(own)}
        if self.rank == 0:  # rank 0's view of the run is the one kept, as in a plain checkpoint
            rest = {k: v for k, v in state.items() if k not in ("model", "optimizer", *_PER_RANK)}
            payload[_SHARED] = _blob(rest)
        return payload

    def _commit(self, tmp: Path, name: str, keep_previous: bool) -> None:
        if not (tmp / METADATA).is_file():
            raise CheckpointError(f"checkpoint {tmp} has no {METADATA}: not committed")
        final = self.path(name)
        self._retire(final, keep_previous)
        os.replace(tmp, final)
        fsync_dir(self.dir)

    def _retire(self, final: Path, keep_previous: bool) -> None:
        """Move the folder about to be replaced out of the way: to ``<name>.prev/`` (both renames
        atomic: a committed copy exists under one of the names at every instant) or away."""
        if not final.exists():
            return
        if keep_previous:
            prev = previous_dir(final)
            if prev.exists():
                _remove(prev)
            os.replace(final, prev)
        else:
            _remove(final)

    def _link(self, src: Path, dst: str, keep_previous: bool) -> None:
        tmp = self.dir / f".{dst}.{uuid.uuid4().hex[:8]}.link{TEMP_SUFFIX}"
        tmp.mkdir(parents=True)
        for f in src.iterdir():
            try:
                os.link(f, tmp / f.name)  # DCP never writes into an existing file: links are safe
            except OSError:
                shutil.copy2(f, tmp / f.name)
        fsync_dir(tmp)
        self._commit(tmp, dst, keep_previous)


class _Pending:
    """A save in flight: its future, the links to make once it commits, and how that went."""

    def __init__(self, future: Future, name: str):
        self.future, self.name = future, name
        self.lock = threading.Lock()  # links are added by the training thread, made by the writer's
        self.links: list[tuple[str, bool]] = []
        self.linked = False
        self.committed = threading.Event()  # set when the writer thread is done with it
        self.error: BaseException | None = None


def previous_dir(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _remove(path: Path) -> None:
    """Rename first (atomic), then delete: a crash mid-delete leaves only a temporary."""
    trash = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.trash{TEMP_SUFFIX}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --- export: one plain file ------------------------------------------------------------------------
def _export_source(path: Path, which: str) -> Path:
    """The checkpoint an export of ``path`` reads (``optiloop.exporting``): a file, a sharded
    folder, or a run folder's ``which`` (else its last)."""
    if path.is_file() or (path.is_dir() and (path / METADATA).exists()):
        return path
    if not path.is_dir():
        raise CheckpointError(f"nothing to export at {path}: no such run folder or checkpoint")
    names = [which, "last"] if which == "best" else ["last"]
    for name in names:
        for candidate in (path / name, path / f"{name}.pt", previous_dir(path / name), path / f"{name}.prev.pt"):
            if candidate.exists():
                return candidate
    raise CheckpointError(f"nothing to export in {path}: no best or last checkpoint")


def _read_model(path: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a DCP checkpoint, whole, on this process."""
    md = read_metadata(path)
    entries = _model_entries(md)
    if not entries:
        raise CheckpointError(f"{path} holds no model weights")
    model: dict[str, Any] = {}
    for flat, key in entries.items():
        meta = md.state_dict_metadata[flat]
        model[key] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype) \
            if isinstance(meta, TensorStorageMetadata) else None
    target = {"model": model}
    with _dcp_errors(f"checkpoint {path} cannot be read"), _one_process():
        dcp.load(target, storage_reader=_SafeReader(path), planner=_SafeLoadPlanner(), no_dist=True)
    return target["model"]
