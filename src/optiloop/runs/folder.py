"""A run's folder: the one writer of a run's files, its lock, and the one "must be new or empty"
check.

:class:`RunFolder` writes config.toml, history.csv, steps.csv, curves.png, summary.json, and for
classification confusion_matrix.png / .csv and per_class.csv, each atomically, into a folder that
was new or empty: runs are never overwritten. ``lock`` holds it for one process.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
import torch

from .. import drawing
from .._version import __version__
from ..errors import OptiloopError
from ..files import LOCK_NAME, TEMP_SUFFIX, FolderLock, write_text


def _candidates(path: Path):
    """``path``, then ``path-2``, ``path-3`` ... (default names never collide)."""
    yield path
    for i in range(2, 1000):
        yield path.with_name(f"{path.name}-{i}")


def free_name(path: str | os.PathLike) -> Path:
    """``path``, or the first of ``path-2``, ``path-3`` ... that does not exist."""
    for candidate in _candidates(Path(path)):
        if not candidate.exists():
            return candidate
    raise OptiloopError(f"cannot find a free folder name next to {path}")


def _leftover(name: str) -> bool:
    """optiloop's own bookkeeping (a lock, a killed writer's temporary): not a result."""
    return name == LOCK_NAME or name.endswith(TEMP_SUFFIX)


def ensure_empty(path: str | os.PathLike, what: str = "out", hint: str = "") -> Path:
    """Refuse a ``path`` that exists and is not an empty folder (results are never overwritten).
    ``what`` names the argument in the message; ``hint`` is appended to it. A folder holding only
    optiloop's own leftovers (a lock file, a temporary) counts as empty."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(not _leftover(p.name) for p in path.iterdir())):
        raise OptiloopError(f"{what} {path} already exists and is not an empty folder; choose a new "
                            f"folder (results are never overwritten){hint}")
    return path


def stamp() -> str:
    """The time part of default folder names: ``20250131-142502``."""
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def short(spec: str) -> str:
    """A readable piece of a folder name: 'digits', 'mydata' for mydata.csv, 'fn' for pkg.mod:fn."""
    s = spec.rpartition(":")[2] if ":" in spec and not Path(spec).exists() else Path(spec).stem
    return "".join(c if c.isalnum() or c in "_" else "-" for c in s)[:24] or "data"


class RunFolder:
    """A run's folder and the files in it, written atomically.

    Example:
        >>> import tempfile
        >>> folder = RunFolder.create(Path(tempfile.mkdtemp()) / "demo", unique=True)
        >>> folder.write_summary({"best": {"val_loss": 0.1}}); folder.files()
        ['summary.json']
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock: FolderLock | None = None

    def lock(self, *, new: bool, what: str = "out") -> RunFolder:
        """Hold the folder for this process (a second optiloop process is refused in one line)
        before anything is written in it; ``new``: then check it is still empty, since another
        run may have filled it between our check and our lock."""
        if self._lock is None:
            self._lock = FolderLock(self.path).acquire()
            if new:
                try:
                    ensure_empty(self.path, what)
                except OptiloopError:
                    self.release()
                    raise
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @classmethod
    def create(cls, path: str | os.PathLike, *, unique: bool) -> RunFolder:
        """Make the folder. ``unique``: ``path`` or the first free ``path-N``, created atomically
        (two runs started in the same second get different folders); otherwise ``path`` itself,
        which the caller checked with ``ensure_empty`` (or is resuming)."""
        path = Path(path)
        if not unique:
            path.mkdir(parents=True, exist_ok=True)
            return cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for candidate in _candidates(path):
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise OptiloopError(f"cannot find a free run folder name next to {path}")

    def write_config(self, cfg: Mapping[str, Any], note: str) -> None:
        """config.toml: ``cfg`` as TOML under a comment line (``note``) saying how to re-run it."""
        write_text(self.path / "config.toml", f"# optiloop {__version__}{note}\n\n" + tomli_w.dumps(dict(cfg)))

    def write_history(self, history: Any) -> None:
        history.to_csv(self.path / "history.csv")

    def write_curves(self, history: Any, *, best_epoch: int | None, title: str) -> None:
        drawing.draw("plot_history", history, self.path / "curves.png", best_epoch=best_epoch, title=title)

    def write_steps(self, history: Any) -> None:
        """steps.csv: the recorded per-step rows (``History.steps``), when there are any."""
        if len(history.steps):
            history.steps.to_csv(self.path / "steps.csv")

    def write_class_report(self, report: Any, *, title: str | None = None) -> list[str]:
        """confusion_matrix.png / .csv and per_class.csv of a ``classification.ClassReport``."""
        return report.write(self.path, title=title)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "optiloop": __version__}
