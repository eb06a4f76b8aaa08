"""``ol.tune``: search optimizer, LR, schedule and friends on Optuna; every trial is a real run.

A trial samples the space into config overrides, builds a :class:`~optiloop.runs.TrainingRun` from
the base config with them and trains it into ``OUT/trials/trial-NNNN/``, a normal run folder
(``optiloop train --config OUT/trials/trial-NNNN/config.toml`` re-runs it). An
:class:`OptunaPruning` callback reports the monitored value after every epoch and stops a run its
pruner gives up on; a run that diverges (non-finite loss) is pruned as well, and so is a trial
whose settings cannot be built together (each is checked alone before the search starts), before
it trains: both are as bad as a trial can be, which is what the sampler should learn (a failed
trial would teach it nothing). The trial's note says which. The trial's value is the run's best
monitored value over its epochs (the epoch best.pt holds).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DiskError, NonFiniteLossError, OptiloopError
from ..formatting import fmt
from .result import TuneResult
from .space import Space, SpaceLike, check_space, default_space, overrides_of, parse_space, trial_config
from .study import (
    NOTE_ATTR,
    PRUNERS,
    SAMPLERS,
    PrunerSpec,
    SamplerSpec,
    Storage,
    StudySpec,
    WorkerResult,
    continued_storage,
    counted,
    digest,
    fail_dead_trials,
    folder_study,
    optimize,
    require_optuna,
    startup_trials,
    write_folder_study,
)

DEFAULT_TRIALS = 20
DEFAULT_EPOCHS = 10  # as compare: long enough to rank settings, short enough for many trials
DEFAULT_PRUNER = "median"
DEFAULT_SAMPLER = "tpe"
DB_FILE = "study.db"  # the default storage, in the tune folder
TRIALS_DIR = "trials"
# Settings of how a run is carried out, not what it computes: a study continues across them.
_EXECUTION = {"device", "checkpoint_every", "checkpoint_seconds", "tensorboard", "grad_norm", "strategy"}


def tune(
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    space: SpaceLike = None,
    trials: int | None = None,
    timeout: float | None = None,
    monitor: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    pruner: str | Any | None = None,
    sampler: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    jobs: int | None = None,
    out: str | os.PathLike | None = None,
    fixed: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    tracker: Any = None,
) -> TuneResult:
    """Search the settings of a run on Optuna: each trial trains a real run folder, bad ones are pruned.

    Args:
        config: the run to tune: a TOML file or a mapping of its sections (``data``, ``model``,
            ``optimizer``, ``scheduler``, ``train``, as ``optiloop train`` reads them), with an
            optional ``tune`` table (``space``, ``trials``, ``monitor``, ``pruner``, ``sampler``,
            ``timeout``, ``storage``, ``study``, ``jobs``) that the arguments here override. None:
            the default run (digits, mlp).
        space: what to search: a ``Space``, a ``[tune.space]``-style dict (``{"optimizer.lr": {"low":
            1e-4, "high": 0.3, "log": True}, "scheduler.name": ["cosine", "onecycle"]}``), or a
            function of the Optuna trial returning config overrides (define-by-run:
            ``lambda t: {"optimizer.lr": t.suggest_float("lr", 1e-4, 1e-1, log=True)}``). None:
            the default space (``default_space``), less the keys in ``fixed``.
        trials: the study's total number of trials (finished ones, complete or pruned; default 20,
            the grid's size with ``sampler="grid"``). Run again, a search continues to this total.
        timeout: seconds after which no new trial starts.
        monitor: the validation figure to optimize (default: the first metric's, e.g. val_acc; else
            val_loss). Maximized or minimized by the one direction rule (``optiloop.directions``).
        epochs: epochs per trial (default: the config's train.epochs, else 10), no early stopping.
        seed: the runs' seed (every trial starts from the same weights and data order) and the
            sampler's (default: the config's train.seed, 0).
        pruner: "median" (default), "halving", "hyperband", "none", or an Optuna pruner object.
        sampler: "tpe" (default), "random", or "grid" (every dimension a list of choices).
        storage: an Optuna storage URL: ``sqlite:///PATH.db``, ``postgresql://...``, ``journal:PATH``
            (see ``optiloop.tuning.study``). Default: ``OUT/study.db``.
        study: the study's name (default ``tune-<data>-<model>-<hash of the search>``).
        jobs: run this many processes on the study at once (default 1): this one and ``jobs - 1``
            started with ``spawn``, so a script calling ``tune(jobs=2)`` needs the usual
            ``if __name__ == "__main__":`` guard, and a space function must be picklable.
        out: the tune folder (default ``runs/<study>``): new or empty, or this study's own folder
            (then the search continues).
        fixed: config keys set on the command line that the default space leaves alone
            (``"train.batch_size"``).
        progress: called with one line per event (the header, each finished trial); the CLI prints.
        tracker: an ``optiloop.trackers.MLflowSweep``: once the search ends, the study becomes one
            parent run with each new trial as a child (its config, value, history, run folder's files;
            pruned trials as killed runs), so the tracker's comparison views line the trials up.

    Returns:
        A :class:`TuneResult`.

    Example:
        >>> result = ol.tune({"data": {"name": "wine"}}, trials=8, epochs=5, out="runs/tune-wine")  # doctest: +SKIP
        >>> result.best["value"], result.best["config"]["optimizer"]                              # doctest: +SKIP
    """
    from ..config import read_toml, resolve, validate_tune
    from ..runs import build_task, short

    optuna = require_optuna()
    say = progress or (lambda line: None)
    sections = dict(read_toml(config) if isinstance(config, (str, os.PathLike)) else (config or {}))
    table = validate_tune(sections.pop("tune", {}))
    trials = _pick(trials, table.get("trials"), None)
    timeout = _pick(timeout, table.get("timeout"), None)
    pruner = _pick(pruner, table.get("pruner"), DEFAULT_PRUNER)
    sampler = _pick(sampler, table.get("sampler"), DEFAULT_SAMPLER)
    jobs = _pick(jobs, table.get("jobs"), 1)
    _check_counts(trials, timeout, jobs)
    if isinstance(pruner, str) and pruner not in PRUNERS:
        raise OptiloopError(f"unknown pruner {pruner!r}; choose one of: {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise OptiloopError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")

    # The base run: the config, the search's length and seed, no early stopping (the pruner stops runs).
    user_train = dict(sections.get("train") or {})
    layer: dict[str, Any] = {}
    if epochs is not None or "epochs" not in user_train:
        layer["epochs"] = epochs if epochs is not None else DEFAULT_EPOCHS
    if seed is not None:
        layer["seed"] = seed
    if "early_stopping" not in user_train:
        layer["early_stopping"] = 0
    base = resolve({**sections, "train": {**user_train, **layer}})
    task = build_task(base)
    monitor = _pick(monitor, table.get("monitor"), user_train.get("monitor"))
    if monitor is None:
        from ..grid import default_monitor

        monitor = default_monitor(task.metrics)
    direction = _direction(monitor, task.metrics)
    base["train"]["monitor"] = monitor
    epochs = base["train"]["epochs"]

    spc = _space(_pick(space, table.get("space"), None), base, task, epochs, fixed)
    grid = None
    if sampler == "grid":
        if not isinstance(spc, Space):
            raise OptiloopError("sampler 'grid' needs a space of lists ([tune.space] or a dict), not a function")
        if spc.default:
            raise OptiloopError("sampler 'grid' needs a space of lists of values ([tune.space]); the default "
                                "space has continuous ranges")
        grid = spc.grid()
        size = math.prod(len(v) for v in grid.values())
        trials = trials if trials is not None else size
    trials = trials if trials is not None else DEFAULT_TRIALS
    if jobs > 1:
        _check_picklable(spc, pruner, progress)

    signature = _signature(spc, monitor, direction, base)
    named = _pick(study, table.get("study"), None)
    default_name = f"tune-{short(base['data']['name'])}-{short(base['model']['name'])}-{digest(signature)}"
    folder = Path(out) if out is not None else Path("runs") / (named or default_name)
    saved = folder_study(folder, "tune")  # this folder's own study, if it is a tune folder already
    name = named or (saved["study"] if saved else default_name)
    given = _pick(storage, table.get("storage"), None)
    if saved:
        store = continued_storage(folder, saved, Storage.parse(given) if given is not None else None, name)
    else:
        store = Storage.parse(given) if given is not None else Storage.sqlite((folder / DB_FILE).resolve())
    seed_value = base["train"]["seed"]
    spec = StudySpec(store, name, direction,
                     SamplerSpec(sampler, seed_value, grid, startup_trials(trials)),
                     PrunerSpec(pruner if isinstance(pruner, str) else type(pruner).__name__, epochs,
                                None if isinstance(pruner, str) else pruner))

    # Everything checked but the study itself; then the folder, the storage and the study.
    existing = None
    if given is not None or saved:
        existing = spec.find(store.open(create=given is not None))
        if existing is not None:
            spec.check(existing, signature)
    folder.mkdir(parents=True, exist_ok=True)
    if not saved:
        write_folder_study(folder, spec.storage, spec.name, "tune")
    handle = existing if existing is not None else spec.create(signature)
    dead = fail_dead_trials(handle)
    have = counted(handle)

    say(_header(task.description, spc, spec, monitor, trials, epochs, jobs, have, dead, pruner))
    objective = TrialObjective(base, spc, monitor, folder.resolve(), progress)
    t0 = time.perf_counter()
    workers: list[WorkerResult] = []
    if have < trials:
        workers = optimize(spec, objective, trials=trials, jobs=jobs, timeout=timeout)
    handle = optuna.load_study(study_name=name, storage=store.open())
    new = sorted(n for w in workers for n in w.trials)
    result = TuneResult(folder, handle, store.shown, name, monitor, direction, _best(handle), new, workers,
                        dashboard=store.dashboard())
    from .report import write_results

    result.files = write_results(result, spc, task.description, seconds=time.perf_counter() - t0)
    if tracker is not None:
        _log_trials(tracker, handle, new, folder, {"study": name, "monitor": monitor, "direction": direction,
                                                   "trials": trials, "epochs": epochs, "data": task.description})
    errors = [w.error for w in workers if w.error]  # after the files: they show what the others did
    if errors:
        raise OptiloopError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more "
                            "processes failed)")
    return result


def _log_trials(tracker: Any, study: Any, numbers: Sequence[int], folder: Path, settings: Mapping[str, Any]) -> None:
    """The search as one parent run of the tracker, each of these trials a child of it (from this
    process, after the workers: a child is logged once, whichever process trained it)."""
    from ..history import History

    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    with tracker:
        tracker.start(params=settings)
        for n in numbers:
            t = by_number[n]
            run_dir = folder / t.user_attrs["run"] if t.user_attrs.get("run") else None
            history = History.from_csv(run_dir / "history.csv") if run_dir and (run_dir / "history.csv").is_file() \
                else None
            figures = {"value": t.value, "best_epoch": t.user_attrs.get("best_epoch"),
                       "epochs": t.user_attrs.get("epochs"), "seconds": t.user_attrs.get("seconds")}
            tracker.log_child(f"trial-{n:04d}", params=t.user_attrs.get("config") or dict(t.params),
                              metrics=figures, history=history, artifacts=run_dir,
                              tags={"optuna.trial": n, "optuna.state": t.state.name,
                                    "optuna.note": t.user_attrs.get(NOTE_ATTR, "")},
                              outcome="finished" if t.state.name == "COMPLETE" else "interrupted")
        tracker.end(artifacts=folder)


def _pick(*values: Any) -> Any:
    """The first value that is not None (an argument, then the [tune] table, then the default)."""
    return next((v for v in values if v is not None), None)


def _check_counts(trials: Any, timeout: Any, jobs: Any) -> None:
    for what, v in (("trials", trials), ("jobs", jobs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise OptiloopError(f"{what}: must be an integer >= 1 (got {v!r})")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not math.isfinite(timeout) or timeout <= 0):
        raise OptiloopError(f"timeout: must be a number of seconds > 0 (got {timeout!r})")


def _direction(monitor: str, metrics: Sequence[str]) -> str:
    from ..callbacks import Monitor, check_logged
    from ..loop import logged_keys

    try:
        check_logged(monitor, logged_keys(metrics))
        mode = Monitor(monitor).mode
    except OptiloopError as e:
        raise OptiloopError(f"monitor: {e}") from None
    return "maximize" if mode == "max" else "minimize"


def _space(given: SpaceLike, base: dict[str, Any], task: Any, epochs: int, fixed: Sequence[str]) -> Any:
    """A checked Space (given, from a table, or the default), or the user's define-by-run function."""
    if given is None:
        spc = default_space(epochs, fixed)
        if not spc.dimensions:
            raise OptiloopError("nothing left to search: the command line fixes every setting of the default "
                                "space; give a space ([tune.space])")
    elif isinstance(given, Space):
        spc = given
    elif isinstance(given, Mapping):
        spc = parse_space(given, base)
    elif callable(given):
        return given
    else:
        raise OptiloopError(f"space must be a dict of ranges and choices, a Space or a function of the trial; "
                            f"got {type(given).__name__}")
    check_space(spc, base, task)
    return spc


def _check_picklable(space: Any, pruner: Any, progress: Any) -> None:
    try:
        pickle.dumps((space, pruner, progress))
    except Exception as e:  # noqa: BLE001 - pickle raises several kinds; the message says which part
        raise OptiloopError(f"jobs > 1 runs trials in other processes, so the space function, pruner and progress "
                            f"callback must be picklable (module-level, not lambdas): {e}; or use jobs=1") from None


def _signature(space: Any, monitor: str, direction: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a study this search: a study continues only with the same (as JSON, as stored)."""
    if isinstance(space, Space):
        shown: Any = space.to_plain()
    else:
        shown = f"{getattr(space, '__module__', '?')}.{getattr(space, '__qualname__', type(space).__name__)}"
    run = {s: {k: v for k, v in section.items() if not (s == "train" and k in _EXECUTION)}
           for s, section in base.items()}
    return json.loads(json.dumps({"space": shown, "monitor": monitor, "direction": direction, "run": run},
                                 sort_keys=True))


def _header(data: str, space: Any, spec: StudySpec, monitor: str, trials: int, epochs: int, jobs: int,
            have: int, dead: list[int], pruner: Any) -> str:
    what = ("; ".join(space.describe()) if isinstance(space, Space)
            else f"define-by-run {getattr(space, '__name__', type(space).__name__)}")
    lines = [f"optiloop tune: {data}; {spec.direction} {monitor} over {trials} trials of up to {epochs} epochs"
             + (f", {jobs} processes" if jobs > 1 else ""),
             f"  space{' (default)' if isinstance(space, Space) and space.default else ''}: {what}",
             f"  sampler {spec.sampler.name} (seed {spec.sampler.seed}), pruner {spec.pruner.name}; study "
             f"{spec.name!r} on {spec.storage.shown}"]
    if have:
        lines.append(f"  continuing: {have} trial{'s' if have != 1 else ''} already "
                     f"{'there' if have < trials else f'there, {trials} asked for: nothing to run'}")
    if dead:
        lines.append(f"  marked failed (their process died): trial {', '.join(map(str, dead))}")
    lines.append(f"  dashboard: {spec.storage.dashboard()}")
    return "\n".join(lines)


def _best(study: Any) -> dict[str, Any] | None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    t = study.best_trial
    return {"number": t.number, "value": t.value, "config": t.user_attrs.get("config"),
            "run": t.user_attrs.get("run"), "epochs": t.user_attrs.get("epochs"),
            "best_epoch": t.user_attrs.get("best_epoch"), "params": dict(t.params)}


# --- one trial: a real run ---------------------------------------------------------------------------------
@dataclass
class TrialObjective:
    """``trial -> value``: sample the space, train the run into ``out/trials/trial-NNNN/``, report every
    epoch to the trial's pruner. Picklable: ``jobs > 1`` sends it to each worker process."""

    base: dict[str, Any]
    space: Any
    monitor: str
    out: Path
    progress: Callable[[str], None] | None = None

    def __call__(self, trial: Any) -> float:
        import optuna

        from ..runs import TrainingRun
        from .pruning import OptunaPruning

        n = trial.number
        if isinstance(self.space, Space):
            overrides = self.space(trial, self.base)
        else:
            overrides = overrides_of(self.space(trial), "the space function")
        run_name = f"{TRIALS_DIR}/trial-{n:04d}"
        try:
            run = TrainingRun(trial_config(self.base, overrides), out=self.out / run_name)
        except DiskError:
            raise
        except OptiloopError as e:  # settings that cannot go together (checked one at a time up front)
            trial.set_user_attr("epochs", 0)
            trial.set_user_attr(NOTE_ATTR, f"rejected: {e}")
            self._say(f"trial {n}: {describe(overrides)} -> rejected before training: {e}")
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("run", run_name)
        trial.set_user_attr("config", run.cfg)
        run.open_folder()
        pruning = OptunaPruning(trial, self.monitor)
        try:
            result = run.train(progress=False, callbacks=[pruning])
        except NonFiniteLossError as e:  # a setting that diverges: as bad as a run can be, and its run stops
            reason = str(e).split(":")[0]
            trial.set_user_attr("epochs", pruning.epoch)
            trial.set_user_attr(NOTE_ATTR, f"diverged: {reason}")
            self._say(f"trial {n}: {describe(overrides)} -> diverged ({reason})")
            raise optuna.TrialPruned(reason) from None
        history = result.history
        values = [r.get(self.monitor) for r in history.rows]
        finite = [(v, i + 1) for i, v in enumerate(values) if isinstance(v, (int, float)) and math.isfinite(v)]
        pick = max if trial.study.direction.name == "MAXIMIZE" else min
        value, best_epoch = pick(finite, key=lambda p: p[0]) if finite else (math.nan, None)
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("best_epoch", best_epoch)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if pruning.pruned:
            trial.set_user_attr(NOTE_ATTR, f"pruned after epoch {pruning.pruned_epoch}")
            self._say(f"trial {n}: {describe(overrides)} -> pruned after epoch {pruning.pruned_epoch} "
                      f"({self.monitor} {pruning.value:.4g})")
            pruning.check_pruned()
        self._say(f"trial {n}: {describe(overrides)} -> {self.monitor} {value:.4f} (best of {len(history)} epochs, "
                  f"{result.seconds:.1f} s)")
        return value

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def describe(overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """A trial's settings in a few words: ``adamw lr 0.00231 weight_decay 1.2e-05 · cosine · batch_size 64``."""
    parts = []
    for section in ("optimizer", "scheduler", "model", "train"):
        values = overrides.get(section) or {}
        words = [str(values["name"])] if "name" in values else []
        words += [f"{k} {fmt(v, 3)}" for k, v in values.items() if k != "name"]
        if words:
            parts.append(" ".join(words))
    return " · ".join(parts) or "the base config"
