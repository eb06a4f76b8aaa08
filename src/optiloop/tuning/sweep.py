"""``compare``'s grid as an Optuna study: one trial per run, on Optuna's grid sampler and storage.

Every run of a comparison (optimizer x scheduler x LR x seed) is one point of a ``GridSampler``
over a single categorical parameter, ``run`` (``sgd-cosine-lr0.1-seed0``). A trial trains that run
(``comparison.run_cell``: its folder, its row), stores the row and its history in the trial, and
returns the run's best monitored value (the study's direction is the monitor's), so
optuna-dashboard ranks the runs as the report does. The report is written from the study, so it
holds every run, whichever process or machine trained it.

Resuming: running the same comparison again opens the same study and trains only the runs without
a complete trial. A run whose process was killed stays FAIL in the storage; the grid sampler counts
it as visited, so it is queued again (``enqueue_trial``) and trained from its start. Two processes
that pick the same run (a queued run taken twice) keep one: a trial that finds its run complete, or
running elsewhere, stops at once without training (FAIL, with a note), and the run is not counted twice.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OptiloopError
from .study import (
    NOTE_ATTR,
    WORKER_ATTR,
    PrunerSpec,
    SamplerSpec,
    Storage,
    StudySpec,
    alive,
    fail_dead_trials,
    optimize,
    require_optuna,
)

PARAM = "run"  # the grid's one parameter: the run's name
WAIT_SECONDS = 2.0  # between looks at runs another process is training


class _Taken(Exception):  # noqa: N818 - not an error: the run is complete, or running elsewhere
    """This trial's run is already complete or being trained by another trial."""


@dataclass
class CellObjective:
    """``trial -> value``: train the trial's run of the grid. Picklable (``jobs > 1`` sends it to
    each worker process); ``run`` is ``comparison.run_cell`` and ``build`` returns what it needs
    (initial weights, train data, validation data), built once per process on its first trial."""

    runs: tuple[tuple[Any, ...], ...]  # (optimizer, scheduler, LR, seed, run folder), in the plan's order
    names: tuple[str, ...]
    run: Callable[..., tuple[dict[str, Any], Any]]
    build: Callable[[], tuple[Any, Any, Any]]
    maximize: bool
    progress: Callable[[str], None] | None
    line: Callable[[tuple, Mapping[str, Any], int, int, float], str]  # a finished run's progress line
    started: float  # time.time() when the comparison started: the ETA
    done_before: int  # runs complete before it started
    _built: Any = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_built": None}  # a worker builds its own data

    def __call__(self, trial: Any) -> float:
        name = trial.suggest_categorical(PARAM, list(self.names))
        if _taken(trial, name):
            trial.set_user_attr(NOTE_ATTR, f"not run: {name} is complete or running in another trial")
            raise _Taken(name)
        if self._built is None:
            self._built = self.build()
        run = self.runs[self.names.index(name)]
        row, history = self.run(*self._built, run)
        trial.set_user_attr("row", row)
        trial.set_user_attr("history", history.state_dict())
        trial.set_user_attr("steps", [dict(r) for r in history.steps.rows])
        if self.progress is not None:
            done = len(_complete(trial.study, self.names)) + 1  # this one is not marked complete yet
            elapsed = time.time() - self.started
            eta = elapsed / max(1, done - self.done_before) * (len(self.names) - done)
            self.progress(self.line(run, row, done, len(self.names), eta))
        value = row.get(f"best_{row['monitor']}")
        if not isinstance(value, (int, float)) or not math.isfinite(value):  # diverged: as bad as can be
            return -math.inf if self.maximize else math.inf  # (Optuna fails a trial that returns NaN)
        return float(value)


def _taken(trial: Any, name: str) -> bool:
    """Whether another trial holds ``name``: complete, or running in a live process."""
    from optuna.trial import TrialState

    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.number == trial.number or t.params.get(PARAM) != name:
            continue
        if t.state == TrialState.COMPLETE or alive(t.user_attrs.get(WORKER_ATTR)):
            return True
    return False


def _complete(study: Any, names: Sequence[str]) -> dict[str, Any]:
    """Run name -> its first complete trial."""
    from optuna.trial import TrialState

    done: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.params.get(PARAM)
        if name in names and name not in done:
            done[name] = t
    return done


def _running(study: Any, names: Sequence[str]) -> set[str]:
    """The runs that a live process is training now (here or, by its heartbeat, elsewhere)."""
    from optuna.trial import TrialState

    return {t.params[PARAM] for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.params.get(PARAM) in names and alive(t.user_attrs.get(WORKER_ATTR))}


def _queue_again(study: Any, missing: Sequence[str]) -> None:
    """Queue the missing runs (``enqueue_trial``) unless queued already: on a study that has trials,
    the grid sampler counts a run whose trial ended unfinished (killed, failed) as visited and would
    not give it again."""
    from optuna.trial import TrialState

    waiting = {(t.system_attrs.get("fixed_params") or t.params).get(PARAM)
               for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    for name in missing:
        if name not in waiting:
            study.enqueue_trial({PARAM: name}, skip_if_exists=False)


@dataclass(frozen=True)
class GridResult:
    """The rows and histories of every run, in the plan's order."""

    rows: list[dict[str, Any]]
    histories: list[Any]


def run_grid(objective: CellObjective, *, storage: Storage | None, study: str, signature: Mapping[str, Any],
             direction: str, jobs: int, say: Callable[[str], None], opened: Callable[[Storage], None]) -> GridResult:
    """Train every run of the grid that the study does not hold complete, in ``jobs`` processes,
    then return them all from the study. ``storage`` None: a temporary SQLite file (the processes
    of this call share it; nothing to resume). ``opened``: called once the study is open and
    checked (the folder's study.toml is written then, not before)."""
    require_optuna()
    names = list(objective.names)
    with contextlib.ExitStack() as stack:
        if storage is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optiloop-compare-")))
            storage = Storage.sqlite(tmp / "study.db")
        spec = StudySpec(storage, study, direction, SamplerSpec("grid", 0, {PARAM: names}), PrunerSpec("none"))
        handle = spec.find(storage.open())
        if handle is not None:
            spec.check(handle, signature)
        else:
            handle = spec.create(signature)
        opened(storage)
        dead = fail_dead_trials(handle)
        done = _complete(handle, names)
        if done or dead:
            say(f"  continuing study {study!r} on {storage.shown}: {len(done)} of {len(names)} runs already done"
                + (f"; trial {', '.join(str(n) for n in dead)} marked failed (its process died)" if dead else ""))
        objective.done_before = len(done)
        waited, stalled = False, 0
        while True:
            fail_dead_trials(handle)
            done = _complete(handle, names)
            if len(done) == len(names):
                break
            missing = set(names) - set(done) - _running(handle, names)
            if not missing:
                # The rest are being trained by other processes: their trials end the wait (or their
                # process's death: at once on this machine, by the heartbeat on others; a journal
                # storage has none, so a run lost on another machine is waited for until Ctrl-C).
                if not waited:
                    say(f"  waiting for {len(names) - len(done)} runs that other processes are training")
                    waited = True
                time.sleep(WAIT_SECONDS)
                continue
            if handle.get_trials(deepcopy=False):  # (on a fresh study the grid sampler hands out every run)
                _queue_again(handle, [n for n in names if n in missing])
            workers = optimize(spec, objective, trials=len(names), jobs=min(jobs, len(missing)), catch=(_Taken,))
            errors = [w.error for w in workers if w.error]
            if errors:
                raise OptiloopError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more "
                                    "processes failed)")
            # A round may end with nothing new when two processes took the same queued run (both step
            # back); three such rounds in a row mean the study cannot finish this grid.
            stalled = stalled + 1 if len(_complete(handle, names)) == len(done) else 0
            if stalled >= 3:
                raise OptiloopError(f"study {study!r} on {storage.shown}: no run of the grid could be completed; "
                                    "use another --study or --out")
    from ..history import History

    rows, histories = [], []
    for name in names:
        t = done[name]
        rows.append(dict(t.user_attrs["row"]))
        histories.append(History(t.user_attrs.get("history") or (), t.user_attrs.get("steps") or ()))
    return GridResult(rows, histories)
