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
  of them is on disk (written atomically, as always), the warnings drawing gave are issued here
  and the first drawing error is raised. Outside a block, or without a helper, ``draw`` draws
  here and returns.
- A helper that cannot start, dies, stops answering or is handed something it cannot take costs
  only time: the pictures it did not confirm are drawn here.
- ``stop()`` ends the helper and its drawers (a drawer stopped mid-picture removes its temporary
  file); Ctrl-C is the command's to handle (the helper has a session of its own). If the command
  is killed, the helper ends when its pipe closes, and a drawer finishes the picture it draws.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["draw", "pictures", "start", "stop"]

Job = tuple[str, tuple, dict]  # (a function of optiloop.plots, its args, its keywords)
# A drawer's answer: (the error to raise or None, the warnings drawing gave), or _LOST.
Answer = tuple[BaseException | None, list[tuple[str, type[Warning], str, int]]]
_LOST = "lost"  # a picture whose drawer ended without answering: drawn here

_helper: _Helper | None = None
_batch: list[Job] | None = None  # the jobs handed to the helper in the open pictures() block


def start() -> None:
    """Start the helper: from a command that will draw, before it imports torch. Not started
    where it cannot help: matplotlib already imported here, one usable core, or a torchrun rank
    other than 0 (rank 0 draws the pictures)."""
    global _helper
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if _helper is not None or "matplotlib" in sys.modules or cores < 2 or os.environ.get("RANK", "0") != "0":
        return
    try:
        _helper = _Helper()
    except OSError:  # no interpreter to start (an embedded Python ...): pictures are drawn here
        _helper = None


def stop() -> None:
    """End the helper and anything it still draws: the command is done drawing."""
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
    except Exception:
        _batch = None
        with contextlib.suppress(Exception):  # the block's own error is the one to report
            _finish(jobs)
        raise
    except BaseException:  # Ctrl-C, exit: not waited for (stop() ends the drawers)
        _batch = None
        raise
    _batch = None
    _finish(jobs)


def _finish(jobs: list[Job]) -> None:
    if not jobs:
        return
    answers = _helper.answers() if _helper is not None else None
    if answers is None or len(answers) != len(jobs):  # the helper is gone: draw them here
        answers = [_LOST] * len(jobs)
    error = None
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, str):  # _LOST
            _draw_here(job)
            continue
        raised, said = answer
        for message, category, filename, lineno in said:  # as if drawn here: the user sees them
            warnings.warn_explicit(message, category, filename, lineno)
        error = error or raised
    if error is not None:
        raise error


def _draw_here(job: Job) -> None:
    from . import plots  # matplotlib: imported when a picture is drawn

    function, args, kwargs = job
    getattr(plots, function)(*args, **kwargs)


class _Helper:
    """The command's end of the helper: jobs go down its stdin, answers come up its stdout."""

    # A helper or drawer that stops (hung, or stopped by hand) must not hang the command: past
    # this, the pictures are drawn here. (A 300-epoch run's job is about 0.4 MB.)
    SECONDS = 300.0

    def __init__(self):
        # The helper imports what this process would (its sys.path), and needs no BLAS threads
        # (none to carry over a fork either).
        code = f"import sys; sys.path[:] = {sys.path!r}; from optiloop.drawing import serve; serve()"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self.alive = True

    def send(self, job: Job) -> bool:
        """Hand ``job`` over; False when it is to be drawn here."""
        if not self.alive:
            return False
        try:
            data = pickle.dumps(("draw", job))  # whole before writing: a failed pickle leaves the pipe clean
        except Exception:  # noqa: BLE001 - something only this process can hold: drawn here
            return False
        return self._write(data)

    def answers(self) -> list[Answer | str] | None:
        """One answer per job sent since the last call, or None when the helper is gone or does
        not answer in time."""
        if not (self.alive and self._write(pickle.dumps(("wait", None)))):
            return None
        try:
            if os.name == "posix":  # (select takes no pipes on Windows)
                ready, _, _ = select.select([self.proc.stdout], [], [], self.SECONDS)
                if not ready:
                    raise TimeoutError
            return pickle.load(self.proc.stdout)
        except BaseException as e:
            self.alive = False  # (an answer half read leaves the pipe unusable)
            if isinstance(e, Exception):
                return None
            raise

    def _write(self, data: bytes) -> bool:
        """Write ``data`` whole within SECONDS (a helper that stops reading cannot hang us); any
        failure or interruption leaves the helper unusable, since a job half written would
        garble the next one."""
        fd, view = self.proc.stdin.fileno(), memoryview(data)
        deadline = time.monotonic() + self.SECONDS
        try:
            while view:
                if os.name == "posix":  # (select takes no pipes on Windows: a blocking write there)
                    _, ready, _ = select.select([], [fd], [], max(0.0, deadline - time.monotonic()))
                    if not ready:
                        raise TimeoutError
                view = view[os.write(fd, view[:select.PIPE_BUF] if os.name == "posix" else view):]
            return True
        except BaseException as e:
            self.alive = False
            if isinstance(e, Exception):
                return False
            raise

    def close(self) -> None:
        """End the helper and its drawers (its process group); a drawer stopped mid-picture
        removes its temporary file."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        if os.name != "posix":
            self.proc.terminate()
            self.proc.wait()
            return
        group = self.proc.pid  # (the helper leads its own session; its pid is not reused before wait)
        deadline = time.monotonic() + 5.0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:  # drawers finishing their SIGTERM (a file to remove)
                os.killpg(group, 0)
                time.sleep(0.01)
            os.killpg(group, signal.SIGKILL)  # what did not end (stopped, hung)
        self.proc.wait()


# --- the helper's side ---------------------------------------------------------------------------
def _terminated(signum, frame):
    raise SystemExit(1)  # unwinds: atomic_open removes a half-written temporary file


def serve() -> None:
    """The helper's loop: import matplotlib, then draw each job handed over until the pipe closes."""
    signal.signal(signal.SIGTERM, _terminated)  # (forked drawers inherit it)
    from . import plots  # the import this process exists for, while the command imports torch

    with contextlib.suppress(Exception):  # (a rehearsal: its failure only costs time later)
        _warm_up(plots)
    gc.freeze()  # the objects made so far are never collected: a forked drawer copies fewer pages

    jobs, answers = sys.stdin.buffer, sys.stdout.buffer
    pending: list[Any] = []  # per job: a _Drawer, or its answer when it was drawn here
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
    """Rehearse the run's two pictures on made-up figures, in memory, while the command is still
    importing torch: fonts, glyphs, the text layouts of the labels and the PNG writer are then
    loaded here, once, and every drawer forked later starts with them (measured: a tenth to a
    fifth of a picture's time)."""
    import numpy as np

    from .history import History

    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_acc": 0.5 + 0.1 * e,
             "val_acc": 0.45 + 0.1 * e, "lr": 0.001} for e in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plots.plot_history(History(rows), io.BytesIO(), best_epoch=2, title="warm-up: a run")
        digits = [str(i) for i in range(10)]  # (the default run's classes: their labels' sizes)
        plots.plot_confusion(np.eye(10, dtype=int), digits, io.BytesIO(), title="warm-up")


def _answer(plots: Any, job: Job) -> Answer:
    """Draw ``job``: the error it raised (picklable, so that the command can raise it) and the
    warnings it gave (the command issues them)."""
    function, args, kwargs = job
    error = None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # the command's filters decide what is shown
        try:
            getattr(plots, function)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - handed back to the command, which raises it
            error = e
    if error is not None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001
            error = RuntimeError(f"{type(error).__name__}: {error}")
    return error, [(str(w.message), w.category, w.filename, w.lineno) for w in said]


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

    def answer(self) -> Answer | str:
        with os.fdopen(self.read, "rb") as f:
            data = f.read()
        os.waitpid(self.pid, 0)
        try:
            return pickle.loads(data)
        except Exception:  # noqa: BLE001 - it died before it answered
            return _LOST
