"""Whole-state checkpoints: atomic save, verified safe load, and the Checkpoint callback.

A checkpoint holds everything a run needs to continue as if never stopped: model, optimizer,
scheduler, grad scaler, epoch / step / batch position, every RNG state, callback state, history,
the data seed and the resolved config.

Saving writes a temporary sibling, fsyncs it and ``os.replace``s it over the real name; the file it
replaces is first kept as ``<name>.prev.pt``, so a crash at any moment leaves at least one valid
checkpoint. Loading first verifies the zip's CRC-32 of every record (torch's reader does not), then
uses ``torch.load(weights_only=True)``: nothing in a checkpoint can execute code.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .callbacks import Callback, Monitor
from .errors import CheckpointError, DiskError, OptiloopError, TrainingInterrupted
from .files import TEMP_SUFFIX, atomic_open, fsync_dir
from .training_state import check_training_state


# --- files -----------------------------------------------------------------------------------------
def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike, *, keep_previous: bool = True) -> None:
    """Atomically write ``obj`` with torch.save; the replaced file survives as ``*.prev.pt``.

    The old file is rotated only once the new one is durable: a write that fails (disk full, an
    I/O error at fsync, an interrupt) leaves both the old ``path`` and its ``.prev.pt`` as they
    were. A file-system failure is one ``DiskError`` line naming the file and the cause.
    """
    path = Path(path)
    with atomic_open(path, "wb", before_replace=(lambda: keep_as_previous(path)) if keep_previous else None) as f:
        writer = _Recording(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:  # torch reports a failed write as "unexpected pos": say why
                raise writer.error from None
            raise


class _Recording(io.RawIOBase):
    """A file that remembers the OSError its write raised (torch.save hides it in a RuntimeError)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def keep_as_previous(path: Path) -> None:
    """Make ``*.prev.pt`` the file ``path`` holds now, just before a new file replaces it: a hard
    link, so ``path`` itself never disappears (a rename where links are not supported)."""
    if not path.exists():
        return
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.{os.getpid()}.link{TEMP_SUFFIX}")
    try:
        os.link(path, tmp)
    except OSError:
        os.replace(path, prev)
        return
    try:
        os.replace(tmp, prev)
    except OSError:
        with contextlib.suppress(OSError):  # (a folder made read-only keeps it: the next start removes it)
            tmp.unlink()
        raise


# The files optiloop writes into a run or checkpoint folder: their temporaries are ``.NAME.*`` + TEMP_SUFFIX.
_WRITTEN = ("best.pt", "last.pt", "last.prev.pt", "config.toml", "history.csv", "steps.csv", "summary.json",
            "curves.png", "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries a killed writer left, or one that could not remove its own (a folder
    made read-only mid-write): ``.best.pt.*.optiloop-tmp``, ``.history.csv.*.optiloop-tmp`` and
    the like, of the files optiloop writes; nothing else in the folder is touched."""
    folder = Path(folder)
    stale = [f for name in _WRITTEN for f in folder.glob(f".{name}.*{TEMP_SUFFIX}")] \
        if folder.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, *, keep_previous: bool = False) -> None:
    """Atomically make ``dst`` the same file as ``src``: a hard link (no second serialization or
    write), or an atomic copy where the file system has no links. Safe because optiloop never
    writes into an existing file: every save creates a new one, so the link keeps its bytes.
    With ``keep_previous`` the replaced ``dst`` survives as ``*.prev.pt``, as in save_checkpoint."""
    src, dst = Path(src), Path(dst)
    rotate = (lambda: keep_as_previous(dst)) if keep_previous else None
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link{TEMP_SUFFIX}")
    try:
        os.link(src, tmp)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with atomic_open(dst, "wb", before_replace=rotate) as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        return
    try:
        if rotate is not None:
            rotate()
        os.replace(tmp, dst)
        fsync_dir(dst.parent)  # as atomic_open does: the new name survives a power cut
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DiskError(f"cannot write {dst}: {e.strerror or e}") from None


_ATOMS = frozenset({int, float, bool, str, bytes, type(None)})


def cpu_copy(obj: Any) -> Any:
    """A copy of a nested state whose tensors are new CPU tensors: later training steps, which
    update parameters and optimizer state in place, cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        if all(type(v) in _ATOMS for v in obj.values()):  # fast path: a history row
            out = dict(obj)
        else:
            out = {k: cpu_copy(v) for k, v in obj.items()}
        if isinstance(obj, OrderedDict):  # a module state_dict: keep its type and _metadata
            out = OrderedDict(out)
            if hasattr(obj, "_metadata"):
                out._metadata = cpu_copy(obj._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _ATOMS for v in obj):  # fast path: python's 625-word RNG state
            return obj if isinstance(obj, tuple) else list(obj)  # a tuple of atoms is immutable
        items = [cpu_copy(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def previous_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def verify(path: str | os.PathLike) -> None:
    """Raise CheckpointError if the file is missing, truncated, its zip structure damaged, or any
    record fails its CRC."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:  # noqa: BLE001 - a flipped header bit raises anything from zipfile/zlib
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: record {bad} fails its checksum")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else "") or type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify and safely load a checkpoint (``weights_only=True``: no code runs)."""
    verify(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} refused: it holds objects that are not plain data "
                              f"and loading them could run code ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - any failure to read it is damage, said in one line
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(e)})") from None
    return obj


def find_resumable(run_dir: str | os.PathLike) -> Path:
    """The newest valid whole-state checkpoint of a run folder (or the file itself): see
    ``load_resumable``, which also returns it loaded."""
    return load_resumable(run_dir)[0]


def load_resumable(run_dir: str | os.PathLike, fits: Callable[[dict[str, Any], Path], None] | None = None
                   ) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run folder that reads, loads and has the shape of a training
    state, loaded: ``last.pt``, else ``last.prev.pt`` with a warning naming both files and why.
    Any failure to read or load one counts as damage, and so does a state ``fits`` (called with
    the loaded state and its path) refuses: another run's optimizer or scheduler. A file given
    directly gets no fallback.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir] if run_dir.is_file() else [run_dir / "last.pt", previous_path(run_dir / "last.pt")]
    for c in candidates:  # saves write these names: a folder there is no damage to fall back from
        if c.exists() and not c.is_file():
            raise CheckpointError(f"{c} is a folder, not a checkpoint: move it out of the way to resume "
                                  f"{run_dir} (its checkpoints are written under that name)")
    errors = []
    for c in candidates:
        if not c.exists():
            continue
        try:
            ckpt = check_training_state(load_checkpoint(c, map_location="cpu"), c)
            if fits is not None:
                fits(ckpt, c)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"{errors[-1]}; resuming from {c} instead", stacklevel=2)
        return c, ckpt
    if errors:
        raise CheckpointError("; ".join(errors) + "; no valid checkpoint to resume from")
    raise CheckpointError(f"nothing to resume in {run_dir}: no last.pt")


# --- where: a folder of atomic files ---------------------------------------------------------------
class CheckpointFolder:
    """Where checkpoints go: ``<name>.pt`` files in one folder, each written atomically, the one
    it replaces kept as ``<name>.prev.pt`` on request. ``Checkpoint`` decides *when* and takes
    *what* from the loop; this class only writes.

    Example:
        >>> folder = CheckpointFolder("runs/demo")
        >>> folder.path("last").name
        'last.pt'
    """

    def __init__(self, dirpath: str | os.PathLike):
        self.dir = Path(dirpath)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def save(self, name: str, state: dict[str, Any], *, keep_previous: bool = True) -> None:
        save_checkpoint(state, self.path(name), keep_previous=keep_previous)

    def copy(self, src: str, dst: str, *, keep_previous: bool = True) -> None:
        """Make ``dst`` hold what ``src`` holds, without serializing it again."""
        link_or_copy(self.path(src), self.path(dst), keep_previous=keep_previous)

    def clean(self) -> None:
        """Remove what a killed writer left behind."""
        remove_stale_temporaries(self.dir)

    # One process writes these files: nothing to agree on or wait for (see sharded.ShardedFolder).
    collective = False

    def agree(self, flag: bool) -> bool:
        return flag

    def wait(self, timeout: float | None = None) -> None:
        pass


# --- when: the callback ---------------------------------------------------------------------------
class Checkpoint(Callback):
    """Keep ``best.pt`` (best ``monitor``) and ``last.pt`` (the latest state) in ``dirpath``.

    Both hold the whole training state (``TrainState.snapshot()``), so either can be resumed or
    evaluated.

    When: at the end of an epoch once ``every_seconds`` have passed since the last save, and at the
    end of the run (its last epoch, an early stop, or ``fit`` returning). A crash therefore costs
    at most about ``every_seconds`` plus one epoch of work, while runs whose epochs take
    milliseconds do not spend their time writing files. ``every_seconds=0`` saves every epoch.
    ``every_n_steps`` also writes ``last.pt`` every N optimizer steps, mid-epoch ones resumable
    with the same data order.

    A best epoch that falls between saves is kept in memory as a CPU copy (written at once
    instead when the state exceeds ``SNAPSHOT_LIMIT`` bytes) and written before the next
    ``last.pt``, or when training raises: ``best.pt`` is never older than the best score that
    ``last.pt`` records, so a resumed run never keeps a stale best.

    Runs after every other epoch-end callback (order 100), so their state (early-stopping
    counters) is saved as of this epoch.

    Under ``strategy="fsdp"`` the files are sharded DCP folders (``best/``, ``last/``,
    ``last.prev/``; see optiloop.sharded): every rank writes its own shards, so this callback then
    runs on every rank, and must be created on every rank. Saves are asynchronous there unless
    ``async_save=False``, and a best epoch is written when it happens rather than kept in memory.

    Example:
        >>> import optiloop as ol
        >>> ck = ol.Checkpoint("runs/demo", monitor="val_loss", every_seconds=60)
    """

    order = 100
    main_process_only = True
    collective_when_sharded = True  # under FSDP every rank writes its shards
    SNAPSHOT_LIMIT = 512 * 2**20  # bytes of tensors: above it a best state is written, not kept

    def __init__(self, dirpath: str | os.PathLike, monitor: str | None = "val_loss", mode: str = "auto",
                 save_best: bool = True, save_last: bool = True, every_n_steps: int | None = None,
                 every_seconds: float = 60.0, async_save: bool = True):
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise OptiloopError(f"every_n_steps must be an integer >= 1 or None, got {every_n_steps!r}")
        if not isinstance(every_seconds, (int, float)) or not every_seconds >= 0:
            raise OptiloopError(f"every_seconds must be a number >= 0, got {every_seconds!r}")
        self.folder = CheckpointFolder(dirpath)
        self.monitor = Monitor(monitor, mode) if monitor and save_best else None
        self.save_last, self.every_n_steps = save_last, every_n_steps
        self.every_seconds = float(every_seconds)
        self.async_save = bool(async_save)
        self.best_epoch: int | None = None
        self._last_save = 0.0  # time.monotonic() of the last save (or of the fit's start)
        self._unsaved = False  # an epoch ended after the last save
        self._pending_best: dict[str, Any] | None = None  # a best state not yet on disk (CPU)
        self._saved_at: tuple[int, int, int] | None = None  # (epoch, step, batch) last.pt holds

    def watches(self) -> Monitor | None:
        return self.monitor

    @property
    def snapshot_every_n_steps(self) -> int | None:  # declared to the CallbackList
        return self.every_n_steps if self.save_last else None

    @property
    def dir(self) -> Path:
        return self.folder.dir

    @property
    def best_path(self) -> Path:
        return self.folder.path("best")

    @property
    def last_path(self) -> Path:
        return self.folder.path("last")

    def on_fit_start(self, state, logs):
        if self.monitor is not None:
            self.monitor.check_available(state.log_keys)
        # Where the run's state can go: .pt files, or under FSDP sharded DCP folders.
        self.folder = state.checkpoint_folder(self.dir, async_save=self.async_save)
        self.folder.clean()
        self._last_save, self._unsaved, self._pending_best = time.monotonic(), False, None

    def on_step_end(self, state, logs):
        if not (self.save_last and self.every_n_steps and state.step % self.every_n_steps == 0
                and state.batch < state.batches_per_epoch):
            return
        # Never rotate a good checkpoint away for a broken state: the NaN check normally waits
        # for the epoch's end; here it costs one sync per save, which syncs anyway.
        if state.healthy():
            self._flush_best()
            self.folder.save("last", state.snapshot())
            self._last_save, self._saved_at = time.monotonic(), self._position(state)

    def on_epoch_end(self, state, logs):
        improved = False
        if self.monitor is not None:
            improved = self.monitor.update(self.monitor.value(logs))
            if improved:
                self.best_epoch = state.epoch
        final = state.stop or state.epoch >= state.epochs
        step_due = bool(self.every_n_steps) and state.step % self.every_n_steps == 0
        # Clocks differ between ranks; a collective save needs every rank's "yes" (rank 0's).
        if final or step_due or self.folder.agree(time.monotonic() - self._last_save >= self.every_seconds):
            self._save(state, improved)
            return
        self._unsaved = True
        if improved:
            snapshot = state.snapshot()
            # The weights and optimizer state are what can be big; the rest is a few KiB. A kept
            # copy of shards could only be written by a collective save, which on_exception cannot
            # count on (a peer may be gone): sharded runs write it now.
            if self.folder.collective or \
                    tensor_bytes([snapshot["model"], snapshot["optimizer"]]) > self.SNAPSHOT_LIMIT:
                self._pending_best = None
                self.folder.save("best", snapshot, keep_previous=False)
            else:
                self._pending_best = cpu_copy(snapshot)

    def on_fit_end(self, state, logs):
        # Only when a stop came from a callback that ran after this one: save what is unsaved.
        if self._unsaved:
            self._save(state, improved=False)
        self.folder.wait()  # an asynchronous save commits before fit returns

    def on_exception(self, state, error):
        if isinstance(error, TrainingInterrupted):
            # A signal stopped the run between two steps: the state is whole, and it is what a
            # resume wants (not the best epoch, which may lie far behind).
            try:
                self._flush_best()
                if self.save_last and self._saved_at != self._position(state) and state.healthy():
                    self.folder.save("last", state.snapshot())
                    self._saved_at = self._position(state)
                self.folder.wait()  # a sharded save in the background commits before we go
            except Exception as e:  # noqa: BLE001 - the interruption is what must surface
                warnings.warn(f"could not save the interrupted state: {e}", stacklevel=2)
            return
        # The state at a failure may be broken (NaN, a half-done step): it is never written. A
        # kept best is a finished epoch newer than last.pt, so it becomes both files: resuming
        # then starts from it, with the best score that best.pt really holds.
        try:  # a sharded save in flight holds an earlier, good state: let it commit (bounded)
            self.folder.wait(timeout=60)
        except Exception as e:  # noqa: BLE001 - the user's own error is what must surface
            warnings.warn(f"the checkpoint being written when training failed is not used: {e}", stacklevel=2)
        if self._pending_best is None:
            return
        try:
            self._flush_best()
            if self.save_last:
                self.folder.copy("best", "last")
        except Exception as e:  # noqa: BLE001 - the user's own error is what must surface
            warnings.warn(f"could not write the best state after the error: {e}", stacklevel=2)

    def _save(self, state, improved: bool) -> None:
        # best.pt first: a crash in between leaves last.pt older than best.pt, never the reverse.
        if improved:
            self._pending_best = None
            self.folder.save("best", state.snapshot(), keep_previous=False)
            if self.save_last:  # the same bytes: a hard link, no second serialization or write
                self.folder.copy("best", "last")
        else:
            self._flush_best()
            if self.save_last:
                self.folder.save("last", state.snapshot())
        self._last_save, self._unsaved = time.monotonic(), False
        self._saved_at = self._position(state) if self.save_last else None

    @staticmethod
    def _position(state) -> tuple[int, int, int]:
        return state.epoch, state.step, state.batch

    def _flush_best(self) -> None:
        if self._pending_best is not None:
            self.folder.save("best", self._pending_best, keep_previous=False)
            self._pending_best = None

    def reset(self):  # a Checkpoint reused for another fit: its best is that fit's own
        if self.monitor is not None:
            self.monitor.reset()
        self.best_epoch = None

    def state_dict(self):
        return {"monitor": self.monitor.state_dict() if self.monitor else None, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        if self.monitor is not None and state["monitor"] is not None:
            self.monitor.load_state_dict(state["monitor"])
        self.best_epoch = state["best_epoch"]
