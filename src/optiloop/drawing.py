"""Where a run's pictures are drawn: here, or in a helper process that the command line starts
with ``optiloop train``, so that matplotlib's import and the drawing leave the training's
critical path.

Why a process: matplotlib's import and two figures (curves.png, confusion_matrix.png) cost about
a second of CPU, a fifth of a short run's whole time, and all of it Python holding the GIL (a
thread gains nothing: tried). The helper imports matplotlib on another core while the command
imports torch; once training is over, each picture it is handed is drawn in a process of its own
(forked from the helper, Linux), side by side with the rest of the run's files.

The rules that keep it exact:
- Only pictures drawn inside ``with pictures():`` go to the helper; when the block ends every one
  of them is on disk (written atomically, as always) and the first drawing error is raised, as it
  would have been here. Outside a block, or without a helper, ``draw`` draws here and returns.
- A helper that cannot start, dies, or is handed something it cannot take costs nothing but
  time: the pictures it did not confirm are drawn here.
- The helper reads jobs from its own pipe and ends when that pipe closes (a killed command
  included) or when the command is done with it. It runs in a session of its own: Ctrl-C is the
  command's to handle. A drawer forked for a picture finishes that picture and exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["draw", "pictures", "start", "stop"]

Job = tuple[str, tuple, dict]  # (a function of optiloop.plots, its args, its keywords)

_helper: _Helper | None = None
_batch: list[Job] | None = None  # the jobs handed to the helper in the open pictures() block


def start() -> None:
    """Start the helper: from a command that will draw, before it imports torch. Not started
    where it cannot help: matplotlib already imported here, one core, or a torchrun rank other
    than 0 (rank 0 draws the pictures)."""
    global _helper
    if _helper is not None or "matplotlib" in sys.modules or (os.cpu_count() or 1) < 2 \
            or os.environ.get("RANK", "0") != "0":
        return
    try:
        _helper = _Helper()
    except OSError:  # no interpreter to start (an embedded Python ...): pictures are drawn here
        _helper = None


def stop() -> None:
    """End the helper: the command is done drawing."""
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        helper.close()


def draw(function: str, *args: Any, **kwargs: Any) -> None:
    """``optiloop.plots.<function>(*args, **kwargs)``: by the helper inside a ``pictures()``
    block, otherwise here, now."""
    if _batch is not None and _helper is not None and _helper.send((function, args, kwargs)):
        _batch.append((function, args, kwargs))
        return
    _draw_here((function, args, kwargs))


@contextlib.contextmanager
def pictures() -> Iterator[None]:
    """A block whose pictures may be drawn while it goes on; all are on disk when it ends."""
    global _batch
    if _helper is None or _batch is not None:  # nothing to hand over to, or an outer block waits
        yield
        return
    _batch = jobs = []
    try:
        yield
    except BaseException:
        _batch = None
        with contextlib.suppress(Exception):  # the block's own error is the one to report
            _finish(jobs)
        raise
    _batch = None
    _finish(jobs)


def _finish(jobs: list[Job]) -> None:
    if not jobs:
        return
    results = _helper.results() if _helper is not None else None
    if results is None or len(results) != len(jobs):  # the helper is gone: draw them here
        results = [_LOST] * len(jobs)
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, str) and result == _LOST:
            _draw_here(job)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _draw_here(job: Job) -> None:
    from . import plots  # matplotlib: imported when a picture is drawn

    function, args, kwargs = job
    getattr(plots, function)(*args, **kwargs)


_LOST = "lost"  # a picture whose drawing process ended without an answer


class _Helper:
    """The command's end of the helper: jobs go down its stdin, answers come up its stdout."""

    ANSWER_SECONDS = 300.0  # a drawer that hangs must not hang the command: past this, drawn here

    def __init__(self):
        # The helper imports what this process would (its sys.path), and needs no BLAS threads
        # (none to carry over a fork either).
        code = f"import sys; sys.path[:] = {sys.path!r}; from optiloop.drawing import serve; serve()"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self.alive = True

    def send(self, job: Job) -> bool:
        if not self.alive:
            return False
        try:
            data = pickle.dumps(("draw", job))  # whole before writing: a failed pickle leaves the pipe clean
        except Exception:  # noqa: BLE001 - something only this process can hold: drawn here
            return False
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()  # drawing starts now, not when the block ends
            return True
        except (OSError, ValueError):
            self.alive = False
            return False

    def results(self) -> list[Any] | None:
        """One answer per job sent since the last call (None: drawn; an exception: to raise;
        ``_LOST``), or None when the helper is gone or does not answer in time."""
        if not self.alive:
            return None
        try:
            self.proc.stdin.write(pickle.dumps(("wait", None)))
            self.proc.stdin.flush()
            if os.name == "posix":  # (select takes no pipes on Windows)
                ready, _, _ = select.select([self.proc.stdout], [], [], self.ANSWER_SECONDS)
                if not ready:
                    raise TimeoutError
            return pickle.load(self.proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):  # (TimeoutError is an OSError)
            self.alive = False
            return None

    def close(self) -> None:
        """Kill it: every answer it owed has come (or never will). A drawer still drawing (a
        command interrupted while it waited) is a process of its own and finishes its file."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()


# --- the helper's side ---------------------------------------------------------------------------
def serve() -> None:
    """The helper's loop: import matplotlib, then draw each job handed over until the pipe closes."""
    from . import plots  # the import this process exists for, while the command imports torch

    with contextlib.suppress(Exception):  # (a rehearsal: its failure only costs time later)
        _warm_up(plots)

    jobs, answers = sys.stdin.buffer, sys.stdout.buffer
    pending: list[Any] = []  # per job: a _Drawer, or the answer when it was drawn here
    while True:
        try:
            kind, job = pickle.load(jobs)
        except Exception:  # noqa: BLE001 - the pipe closed (the command is done, or gone), or a job
            os._exit(0)  # could not be read here: the command draws what it was not told is drawn
        if kind == "draw":
            # Linux forks a drawer per picture (fork is safe there without threads; macOS's is not)
            pending.append(_Drawer(plots, job) if sys.platform == "linux" else _answer(plots, job))
        else:
            answers.write(pickle.dumps([p.answer() if isinstance(p, _Drawer) else p for p in pending]))
            answers.flush()
            pending.clear()


def _warm_up(plots: Any) -> None:
    """Rehearse the run's two pictures on made-up figures, while the command is still importing
    torch: fonts, glyphs, the text layouts of the labels and the PNG writer are then loaded here,
    once, and every drawer forked later starts with them (measured: a tenth to a fifth of a
    picture's time)."""
    import tempfile

    import numpy as np

    from .history import History

    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.5 + 0.1 * e,
             "val_acc": 0.45 + 0.1 * e, "lr": 0.001} for e in (1, 2)]
    with tempfile.TemporaryDirectory(prefix="optiloop-warm-up-") as folder:
        plots.plot_history(History(rows), Path(folder) / "curves.png", best_epoch=2, title="warm-up: a run")
        digits = [str(i) for i in range(10)]  # (the default run's classes: their labels' sizes)
        plots.plot_confusion(np.eye(10, dtype=int), digits, Path(folder) / "confusion.png", title="warm-up")
    gc.freeze()  # the objects made so far are never collected: a forked drawer copies fewer pages


def _answer(plots: Any, job: Job) -> Any:
    """None when drawn, else the error (picklable, so that the command can raise it)."""
    function, args, kwargs = job
    try:
        getattr(plots, function)(*args, **kwargs)
        return None
    except Exception as e:  # noqa: BLE001 - handed back to the command, which raises it
        try:
            pickle.dumps(e)
            return e
        except Exception:  # noqa: BLE001
            return RuntimeError(f"{type(e).__name__}: {e}")


class _Drawer:
    """One picture drawn in a process of its own, forked from the helper (matplotlib already
    imported), so that two pictures take the time of one on two cores."""

    def __init__(self, plots: Any, job: Job):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the drawer: draw, answer, exit (no cleanup of the helper's state)
            gc.disable()  # it lives for one picture
            os.close(read)
            devnull = os.open(os.devnull, os.O_RDWR)  # the helper's pipes are not the drawer's to hold:
            os.dup2(devnull, 0)  # a helper that dies is then seen gone at once, not once its drawers end
            os.dup2(devnull, 1)
            try:
                with os.fdopen(write, "wb") as out:
                    out.write(pickle.dumps(_answer(plots, job)))
            finally:
                os._exit(0)
        os.close(write)
        self.read = read

    def answer(self) -> Any:
        with os.fdopen(self.read, "rb") as f:
            data = f.read()
        os.waitpid(self.pid, 0)
        try:
            return pickle.loads(data)
        except Exception:  # noqa: BLE001 - it died before it answered
            return _LOST
