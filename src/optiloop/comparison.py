"""Measured optimizer comparisons: every optimizer x LR x scheduler x seed, same weights, same
data order.

``compare`` trains one run per combination and returns one row per run (the rows of
``results.csv``); ``summarize`` folds the seeds into mean and std per optimizer, scheduler and LR
(the full-grid table); ``pick_best`` keeps each optimizer's best LR on the validation figure (the
best-of-each table the CLI prints). Fairness comes from four things: per seed every run starts
from the same initial weights (built once after seeding; a worker process rebuilds the very same
ones); ``fit(seed=...)`` gives every run the same data order; each optimizer starts from its
command-line defaults unless told (the one table, ``optiloop.optim.OPTIMIZERS``: sgd lr 0.1 with
momentum 0.9, adam / adamw / rmsprop 1e-3, adagrad 1e-2); and with an LR grid (``lrs`` lists or
``lr_grid=N``) each optimizer is judged at its own best LR, so "Adam beats SGD" does not only mean
"Adam's default LR suits this task". The LR is chosen on the validation split the tables report:
those figures are optimistic for the chosen LR; confirm on data the choice never saw.

Runs are independent. With a folder (``out``), ``jobs > 1`` or a ``storage``, they are the trials of
an Optuna study on its grid sampler (``optiloop.tuning.sweep``): the same comparison run again
continues where it stopped (a killed run is trained again from its start), ``jobs=N`` runs N at a
time in processes, and processes or machines naming one storage and study share the grid; results
are identical to ``jobs=1`` (only the timings differ). Without Optuna installed, a comparison runs
here, one run after the other, and cannot be resumed (``pip install 'optiloop[tune]'``).

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> rows = ol.compare(lambda: torch.nn.Linear(4, 2), (X, y), (X, y), optimizers=["sgd", "adam"],
    ...                   epochs=2, metrics=["accuracy"])
    >>> [r["optimizer"] for r in rows], sorted(k for k in rows[0] if k.startswith("best_val"))
    (['sgd', 'adam'], ['best_val_acc', 'best_val_loss'])
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import Monitor
from .distributed import resolve_device, seed_everything
from .errors import NonFiniteLossError, OptiloopError
from .grid import (
    DEFAULT_EPOCHS,
    DEFAULT_OPTIMIZERS,
    DEFAULT_SCHEDULERS,
    default_monitor,
    default_options,
    describe_target,
    parse_lrs,
    parse_names,
    parse_seeds,
    parse_target,
    scheduler_spec,
)
from .loggers import StepHistory
from .loop import fit, logged_keys
from .optim import OPTIMIZERS, build_optimizer
from .results import headline, pick_best, run_row, summarize, to_frame
from .schedules import SCHEDULERS, build_scheduler
from .tuning.study import Storage, continued_storage, digest, folder_study, require_optuna, write_folder_study


def state_hash(model: nn.Module) -> str:
    """A short hash of a model's weights: equal hashes mean bit-identical starting points."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- the comparison ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Setup:
    """What every run of a comparison shares; pickled once per worker process with ``jobs > 1``
    (a config is rebuilt there with ``build_task``, which is deterministic)."""

    model: Callable[[], nn.Module] | None
    train_data: Any
    val_data: Any
    config: Mapping[str, Any] | None
    loss: Any
    metrics: list[Any]
    batch_size: int
    epochs: int
    device: str
    goal: tuple[str, float] | None
    monitor: str
    checkpoints: bool


@dataclass(frozen=True)
class _Plan:
    """A checked comparison: what runs, in which order, and what the report says about it."""

    setup: _Setup
    task: Any  # runs.Task, with config=
    optimizers: list[str]
    schedulers: list[str]
    lrs: dict[str, list[float]]
    seeds: list[int]
    runs: list[tuple[str, str, float, int, Path | None]]  # optimizer, scheduler, LR, seed, run folder
    out: Path | None
    jobs: int
    on_study: bool  # the runs are trials of an Optuna study (resumable, shared); else a loop here
    storage: Storage | None  # the study's storage (None on a study: a temporary one)
    study: str
    continuing: bool  # out holds this comparison's study already
    given: dict[str, Any] | None  # a model factory and data given in Python: what they are, by hashes




def compare(
    model: Callable[[], nn.Module] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    *,
    config: Mapping[str, Any] | None = None,
    optimizers: str | Sequence[str] = DEFAULT_OPTIMIZERS,
    schedulers: str | Sequence[str] = DEFAULT_SCHEDULERS,
    epochs: int = DEFAULT_EPOCHS,
    seeds: int | Sequence[int] = 1,
    lrs: float | str | Sequence[Any] | Mapping[str, Any] | None = None,
    lr_grid: int | None = None,
    monitor: str | None = None,
    loss: str | Callable | None = None,
    metrics: Sequence[str | Callable] | None = None,
    batch_size: int | None = None,
    target: str | tuple[str, float] | None = None,
    out: str | os.PathLike | None = None,
    checkpoints: bool = False,
    device: str | torch.device = "auto",
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    as_frame: bool = False,
    tracker: Any = None,
    storage: str | None = None,
    study: str | None = None,
) -> list[dict[str, Any]] | Any:
    """Train every optimizer x LR x scheduler x seed from the same initial weights and data order.

    Args:
        model: a callable returning a fresh model (called once per seed, after seeding), or None
            with ``config``.
        train_data, val_data: as ``fit`` takes them; val_data is required (the table is about it).
        config: instead of model / data: a resolved ``optiloop train`` config (config.resolve);
            it also supplies loss, metrics and batch size unless given here.
        optimizers, schedulers: names, as a list or ``"sgd,adam"``.
        epochs: epochs per run (no early stopping: every run gets the same budget).
        seeds: how many seeds (0, 1, ...), or the seeds themselves.
        lrs: the LRs to try (see ``parse_lrs``): one for all, ``"sgd=0.03,0.1,0.3,adam=1e-3"``,
            ``{"sgd": [0.03, 0.1, 0.3]}``; the rest get ``default_lr`` (sgd 0.1 with momentum 0.9,
            adam / adamw / rmsprop 1e-3, adagrad 1e-2; every name's in ``optiloop list``), and
            every optimizer its other defaults.
        lr_grid: try each optimizer at this many LRs around its one LR (given or default), half a
            decade apart (``lr_grid(0.1, 3)`` = 0.0316, 0.1, 0.316).
        monitor: the validation figure that picks each run's best epoch and each optimizer's
            best LR (default: the first metric's, ``val_acc``; else ``val_loss``).
        loss, metrics, batch_size: as ``fit`` (defaults cross_entropy, accuracy, 64).
        target: ``"val_acc=0.95"``: also report the first epoch that reaches it (val_acc ≥ 0.95;
            ``val_loss=0.1`` means val_loss ≤ 0.1).
        out: a new (or empty) folder for results.csv, report.md / report.html, the PNGs and one
            run folder per run, and (with Optuna) the study in ``study.db``: the same comparison
            into the same folder continues it; None writes nothing.
        checkpoints: also write best.pt / last.pt in each run folder.
        device: as ``fit``.
        jobs: run this many runs at once, each in its own process (torch threads split between
            them) on one Optuna study. Every run is computed exactly as with ``jobs=1``; only the
            timings differ. The model factory, data, loss, metrics and ``progress`` must then be
            picklable (module-level functions), or use ``config``; a script needs the usual
            ``if __name__ == "__main__":`` guard (the processes are spawned).
        progress: called with one line once the input is checked (what will run), then one
            line per finished run with the overall ETA (the CLI prints them).
        as_frame: return a pandas DataFrame instead of a list of dicts.
        tracker: an ``optiloop.trackers.MLflowSweep`` (or any context manager with its
            ``start``, ``log_child`` and ``end``): the comparison becomes one parent run with each
            run as a child (its config, figures, per-epoch history and folder's files), in the
            table's order once every run is done.
        storage: an Optuna storage URL shared by every process that names it (``sqlite:///PATH.db``,
            ``postgresql://...``, ``journal:PATH``; see ``optiloop.tuning.study``): several processes
            or machines running the same comparison on it split its runs. Default: ``out/study.db``.
        study: the study's name in the storage (default: the folder's name, else
            ``compare-<hash of the comparison>``).

    Returns:
        One dict per run, in a fixed order (seed, optimizer, scheduler, LR): optimizer,
        scheduler, seed, lr, monitor, best_epoch (the epoch with the best ``monitor``; None if it
        never was finite), ``best_val_*`` (every validation figure at that epoch), ``final_*`` (at
        the last epoch), epochs to target, seconds per epoch (train + validation), the run's wall
        seconds, epochs_run, init_hash (of the initial weights), run (its folder under ``out``).
        ``summarize(rows)`` folds the seeds (mean and std per optimizer, scheduler and LR);
        ``pick_best(summarize(rows))`` keeps each optimizer's best LR.
    """
    plan = _plan(model, train_data, val_data, config=config, optimizers=optimizers, schedulers=schedulers,
                 epochs=epochs, seeds=seeds, lrs=lrs, lr_grid=lr_grid, monitor=monitor, loss=loss, metrics=metrics,
                 batch_size=batch_size, target=target, out=out, checkpoints=checkpoints, device=device, jobs=jobs,
                 storage=storage, study=study, progress=progress)
    if progress is not None:  # everything checked: say what is about to run
        progress(_announce(plan))
    with contextlib.ExitStack() as held:
        if plan.out is not None:
            from .runs import RunFolder  # the run folder's writer: only when there is a folder

            plan.out.mkdir(parents=True, exist_ok=True)
            # Held to the end: a second compare (or train) into the same folder is refused in one
            # line instead of interleaving its runs and report with ours.
            held.callback(RunFolder(plan.out).lock(new=not plan.continuing).release)
        if tracker is not None:
            held.enter_context(tracker)  # a comparison that fails ends its parent run as failed
            tracker.start(params=_settings(plan))
        rows, histories = _run_all(plan, progress)
        if plan.out is not None:
            _report(plan, rows, {run[:4]: h for run, h in zip(plan.runs, histories, strict=True)})
        if tracker is not None:
            _log_children(plan, rows, histories, tracker)
            tracker.end(artifacts=plan.out)
        return to_frame(rows) if as_frame else rows


def _plan(model, train_data, val_data, *, config, optimizers, schedulers, epochs, seeds, lrs, lr_grid, monitor,
          loss, metrics, batch_size, target, out, checkpoints, device, jobs, storage, study, progress) -> _Plan:
    """Check everything before anything is trained or written; one line names the first problem."""
    opt_names = parse_names(optimizers, "optimizer", OPTIMIZERS)
    sched_names = parse_names(schedulers, "scheduler", SCHEDULERS)
    lr_of = parse_lrs(lrs, opt_names, grid=lr_grid)
    goal = parse_target(target)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise OptiloopError(f"jobs must be an integer >= 1, got {jobs!r}")
    seed_list = parse_seeds(seeds)
    device = resolve_device(device)  # 'cuda' on a machine without it fails now, not mid-report
    task = None
    if config is not None:
        if model is not None or train_data is not None:
            raise OptiloopError("give a model factory with data, or config=, not both")
        from .runs import build_task  # the config's data set: only a comparison of a config loads one

        task = build_task(config)
        model, train_data, val_data = task.new_model, task.train_data, task.val_data
    if model is None or not callable(model) or isinstance(model, nn.Module):
        raise OptiloopError("model must be a callable returning a fresh nn.Module (e.g. a lambda), "
                            "so every seed starts from its own initial weights")
    if train_data is None or val_data is None:
        raise OptiloopError("compare needs train_data and val_data (the table compares val figures)")
    loss = loss or (task.loss if task else "cross_entropy")
    metrics = list(metrics if metrics is not None else (task.metrics if task else ["accuracy"]))
    batch_size = batch_size or (task.batch_size if task else 64)
    monitor = monitor or default_monitor(metrics)
    val_keys = [k for k in logged_keys(metrics) if k.startswith("val_")]
    if monitor not in val_keys:
        raise OptiloopError(f"monitor {monitor!r} is not a validation figure of this comparison; choose one "
                            f"of: {', '.join(val_keys)}")
    # On a study when there is something to resume or share; Optuna is needed for jobs and storage.
    on_study = storage is not None or jobs > 1 or (out is not None and _have_optuna())
    if on_study:
        require_optuna()  # without it: one line saying how to install it
    store = Storage.parse(storage) if storage is not None else None
    if store is not None:
        store.open()  # an unreachable storage (no server, no driver, no folder) is one line, before any folder
    out_dir, saved = (Path(out), None) if out is not None else (None, None)
    if out_dir is not None:
        if on_study:
            saved = folder_study(out_dir, "compare", "out")  # a new or empty folder, or this comparison's own
        else:
            from .runs import ensure_empty  # (as above)

            ensure_empty(out_dir, "out")
    if saved is not None:
        store = continued_storage(out_dir, saved, store, study)
    elif out_dir is not None and on_study and store is None:
        store = Storage.sqlite((out_dir / "study.db").resolve())  # the same from any working folder
    combos = [(o, s, lr) for o in opt_names for s in sched_names for lr in lr_of[o]]
    for o in opt_names:  # a run is named by its LR as printed: two that print alike would be one run
        shown = [f"{lr:g}" for lr in lr_of[o]]
        twice = next((x for x in shown if shown.count(x) > 1), None)
        if twice is not None:
            raise OptiloopError(f"{o}: two of its LRs both read {twice} to 6 significant digits; give LRs that "
                                "differ there")
    n_train = _length(train_data)
    _dry_build(model, combos, epochs, math.ceil(n_train / batch_size) if n_train else 1)
    if goal is not None:
        want = [k for k in logged_keys(metrics) if k.startswith(("train_", "val_"))]
        if goal[0] not in want:
            raise OptiloopError(f"target {goal[0]!r} is never logged; choose one of: {', '.join(want)}")
    setup = _Setup(None if task else model, None if task else train_data, None if task else val_data,
                   task.config if task else None, loss, metrics, batch_size, epochs, str(device), goal, monitor,
                   checkpoints and out_dir is not None)
    if jobs > 1:
        _check_picklable(setup, progress)
    # Every run of the comparison, in the order the rows come back: seed, optimizer, scheduler, LR.
    runs = [(o, s, lr, seed, _run_dir(out_dir, o, s, lr, seed, len(lr_of[o]) > 1))
            for seed in seed_list for o, s, lr in combos]
    given = None  # (a config names its data and model; the study's signature holds it)
    if on_study and task is None:
        given = {"init": {seed: _SeededModels(model)(seed)[1] for seed in seed_list},
                 "train": _fingerprint(train_data), "val": _fingerprint(val_data)}
    plan = _Plan(setup, task, opt_names, sched_names, lr_of, seed_list, runs, out_dir, min(jobs, len(runs)),
                 on_study, store, "", saved is not None, given)
    name = study or (saved["study"] if saved else out_dir.name if out_dir is not None
                     else f"compare-{digest(_signature(plan))}")
    return dataclasses.replace(plan, study=name)


def _dry_build(model: Callable[[], nn.Module], combos: list[tuple[str, str, float]], epochs: int,
               steps: int) -> None:
    """Build every optimizer and schedule once on a probe model: a bad LR or option fails here,
    with nothing written."""
    probe = model()
    if not isinstance(probe, nn.Module):
        raise OptiloopError(f"model() must return an nn.Module, got {type(probe).__name__}")
    for o, s, lr in combos:
        opt = build_optimizer(o, probe, lr=lr, **default_options(o))  # leaves probe as is
        build_scheduler(scheduler_spec(s, epochs), opt, epochs=epochs, steps_per_epoch=steps)


def _announce(plan: _Plan) -> str:
    """The line that says what is about to run."""
    total, setup, seeds = len(plan.runs), plan.setup, len(plan.seeds)
    where = f"{plan.task.description}, " if plan.task else ""
    grids = "; ".join(f"{o} lr {', '.join(f'{lr:g}' for lr in plan.lrs[o])}" for o in plan.optimizers)
    return (f"{total} run{'s' if total > 1 else ''} ({', '.join(plan.optimizers)} x "
            f"{', '.join(plan.schedulers)} x {seeds} seed{'s' if seeds > 1 else ''})"
            f" of {setup.epochs} epoch{'s' if setup.epochs > 1 else ''}: {where}{grids}"
            + (f"; {plan.jobs} at a time" if plan.jobs > 1 else "")
            + (f" -> {plan.out}/" if plan.out is not None else "")
            + (f"; study {plan.study!r} on {plan.storage.shown}" if plan.storage is not None else "")
            + ("; not resumable without Optuna (pip install 'optiloop[tune]')"
               if plan.out is not None and not plan.on_study else ""))


def _run_all(plan: _Plan, progress: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], list[Any]]:
    """Train every run: as trials of the plan's Optuna study, or one after the other here.
    Rows and histories in the plan's order."""
    if plan.on_study:
        from .tuning.sweep import CellObjective, run_grid

        names = tuple(run_name(*run[:4]) for run in plan.runs)
        objective = CellObjective(tuple(plan.runs), names, functools.partial(run_cell, setup=plan.setup, out=plan.out),
                                  functools.partial(_data_of, plan.setup),
                                  Monitor(plan.setup.monitor).mode == "max", progress, progress_line, time.time(), 0)
        objective._built = _data_of(plan.setup, plan.task)  # this process has them already
        def opened(storage: Storage) -> None:  # the study is open and is this comparison's
            if plan.out is not None and not plan.continuing:  # the same comparison here continues it
                write_folder_study(plan.out, storage, plan.study, "compare")

        result = run_grid(objective, storage=plan.storage, study=plan.study, signature=_signature(plan),
                          direction="maximize" if objective.maximize else "minimize", jobs=plan.jobs,
                          say=progress or (lambda line: None), opened=opened)
        return result.rows, result.histories
    setup = plan.setup
    built = _data_of(setup, plan.task)
    rows, histories = [], []
    t_start = time.perf_counter()
    for i, run in enumerate(plan.runs):
        row, history = run_cell(*built, run, setup=setup, out=plan.out)
        rows.append(row)
        histories.append(history)
        if progress is not None:
            eta = (time.perf_counter() - t_start) / (i + 1) * (len(plan.runs) - i - 1)
            progress(progress_line(run, row, i + 1, len(plan.runs), eta))
    return rows, histories


def progress_line(run: tuple, row: Mapping[str, Any], done: int, total: int, eta: float) -> str:
    """The line a finished run prints: ``[3/8] sgd+cosine lr 0.1 seed 0: val_acc 0.9611 (best epoch 9) (ETA 0:12)``."""
    o, s, lr, seed = run[:4]
    return f"[{done}/{total}] {o}+{s} lr {lr:g} seed {seed}: {headline(row)} (ETA {_clock(eta)})"


class _SeededModels:
    """The initial weights of each seed, built once after seeding (as ``optiloop train`` builds
    them); every run of the seed gets a copy of the very same weights and their hash."""

    def __init__(self, factory: Callable[[], nn.Module]):
        self.factory = factory
        self._last: tuple[int, nn.Module, str] | None = None  # one seed's: the loop here runs seed by seed

    def __call__(self, seed: int) -> tuple[nn.Module, str]:
        if self._last is None or self._last[0] != seed:
            seed_everything(seed)
            base = self.factory()
            self._last = (seed, base, state_hash(base))
        return copy.deepcopy(self._last[1]), self._last[2]


def _data_of(setup: _Setup, task: Any = None) -> tuple[_SeededModels, Any, Any]:
    """The initial weights and data of a comparison, in whichever process trains its runs (a
    config is built again with ``build_task``, which is deterministic, unless ``task`` is it)."""
    if setup.config is not None:
        if task is None:
            from .runs import build_task  # (as in _plan)

            task = build_task(setup.config)
        return _SeededModels(task.new_model), task.train_data, task.val_data
    return _SeededModels(setup.model), setup.train_data, setup.val_data


def run_cell(models: _SeededModels, train_data: Any, val_data: Any, run: tuple, *, setup: _Setup,
             out: Path | None) -> tuple[dict[str, Any], Any]:
    """One run of the grid, the same in this process and in a worker: the seed's initial weights,
    the fit, the run's folder. Returns its row and history."""
    o, s, lr, seed, run_dir = run
    net, init_hash = models(seed)
    if run_dir is not None and run_dir.exists():  # left by a killed trial of this run: it starts over
        shutil.rmtree(run_dir)
    row, history = _fit_one(setup, train_data, val_data, net, init_hash, o, s, lr, seed, run_dir)
    if run_dir is not None and out is not None:
        row["run"] = str(run_dir.relative_to(out))
        _write_run(run_dir, history, row, o, s, lr, setup.epochs, setup.batch_size, seed, setup.config)
    return row, history


def _log_children(plan: _Plan, rows: Sequence[Mapping[str, Any]], histories: Sequence[Any], tracker: Any) -> None:
    """Each run as a child of the tracker's parent run, in the table's order."""
    for run, row, history in zip(plan.runs, rows, histories, strict=True):
        o, s, lr, seed, run_dir = run
        cfg, _ = _run_config(o, s, lr, plan.setup.epochs, plan.setup.batch_size, seed, row["monitor"],
                             plan.setup.config)
        figures = {k: v for k, v in row.items() if k.startswith(("best_", "final_", "epochs_", "sec"))}
        tracker.log_child(run_name(o, s, lr, seed), params=cfg, metrics=figures, history=history,
                          artifacts=run_dir if run_dir is not None and run_dir.is_dir() else None,
                          tags={"optiloop.init_hash": row["init_hash"]})


def _signature(plan: _Plan) -> dict[str, Any]:
    """What makes a study this comparison: it continues only with the same (as JSON, as stored)."""
    settings = {k: v for k, v in _settings(plan).items() if k != "jobs"}
    run = {"config": {k: v for k, v in plan.setup.config.items() if k in ("data", "model")}
           if plan.setup.config is not None else None, "given": plan.given,
           "runs": [list(run[:4]) for run in plan.runs], "checkpoints": plan.setup.checkpoints}
    return json.loads(json.dumps({"command": "compare", "settings": settings, "run": run}, sort_keys=True,
                                 default=str))


def _fingerprint(data: Any) -> str:
    """What a comparison's data given in Python is, for its study's signature: tensors and arrays
    by their shape, type and bytes (the first 64 MiB), anything else by its type and length."""
    import numpy as np

    h = hashlib.sha256()
    for part in data if isinstance(data, (tuple, list)) else [data]:
        if isinstance(part, torch.Tensor):
            h.update(f"tensor {tuple(part.shape)} {part.dtype}".encode())
            raw = part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        elif isinstance(part, np.ndarray) and part.dtype != object:
            h.update(f"array {part.shape} {part.dtype}".encode())
            raw = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
        else:
            h.update(f"{type(part).__name__} {_length(part)}".encode())
            continue
        h.update(memoryview(raw)[:64 << 20])
    return h.hexdigest()[:16]


def _settings(plan: _Plan) -> dict[str, Any]:
    """What the comparison was, for its report and its tracker's parent run."""
    setup, epochs = plan.setup, plan.setup.epochs
    return {"epochs": epochs, "batch_size": setup.batch_size, "seeds": plan.seeds, "loss": _name(setup.loss),
            "metrics": [_name(m) for m in setup.metrics], "target": describe_target(setup.goal), "lrs": plan.lrs,
            "monitor": setup.monitor, "jobs": plan.jobs,
            "data": plan.task.description if plan.task else "given in Python",
            "options": {o: default_options(o) for o in plan.optimizers},
            "schedulers": {s: scheduler_spec(s, epochs) for s in plan.schedulers}}


def _report(plan: _Plan, rows: list[dict[str, Any]], histories: Mapping[tuple, Any]) -> None:
    """results.csv, report.md / report.html and the pictures, into the plan's folder."""
    from .report import write_report  # matplotlib: imported when the pictures are drawn

    summary = summarize(rows)
    write_report(plan.out, rows, summary, pick_best(summary), histories, settings=_settings(plan))


def _fit_one(setup: _Setup, train_data: Any, val_data: Any, net: nn.Module, init_hash: str,
             o: str, s: str, lr: float, seed: int, run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """Train one run; the same code in this process (jobs=1) and in a worker (jobs > 1)."""
    callbacks: list[Any] = [StepHistory()]  # per-step LR and loss: steps.csv, per-step LR curves
    if setup.checkpoints and run_dir is not None:
        from .checkpoint import Checkpoint  # only a comparison that keeps checkpoints

        callbacks.append(Checkpoint(run_dir, monitor=setup.monitor))
    t0 = time.perf_counter()
    try:
        history = fit(net, train_data, val_data=val_data, loss=setup.loss,
                      optimizer={"name": o, **default_options(o)}, lr=lr,
                      scheduler=scheduler_spec(s, setup.epochs), epochs=setup.epochs, batch_size=setup.batch_size,
                      metrics=setup.metrics, callbacks=callbacks, device=setup.device, seed=seed,
                      progress=False, nonfinite="ignore")
    except NonFiniteLossError:
        # Diverged (its validation loss is no longer finite): the run ends there and its row says
        # so (final figures nan); the other runs of the comparison go on.
        history = callbacks[0].history  # the epochs it finished
        if history is None:
            raise
        history.append({"epoch": len(history) + 1, "train_loss": math.nan, "val_loss": math.nan,
                        setup.monitor: math.nan, "lr": history.rows[-1]["lr"] if len(history) else lr})
    seconds = time.perf_counter() - t0
    return run_row(history, o, s, seed, lr, setup.monitor, setup.goal, seconds, init_hash), history


def _check_picklable(setup: _Setup, progress: Any) -> None:
    try:
        pickle.dumps((setup, progress))
    except Exception as e:  # noqa: BLE001 - pickle raises several kinds; the message says which part
        raise OptiloopError(f"jobs > 1 runs each combination in its own process, so the model factory, data, loss, "
                            f"metrics and progress callback must be picklable (module-level functions, not lambdas): "
                            f"{e}; or use jobs=1") from None


# --- helpers -----------------------------------------------------------------------------------
def _have_optuna() -> bool:
    """Whether Optuna can be imported, without importing it (a None entry: imports of it fail)."""
    if "optuna" in sys.modules:
        return sys.modules["optuna"] is not None
    return importlib.util.find_spec("optuna") is not None


def _length(data: Any) -> int:
    try:
        return len(data[0]) if isinstance(data, (tuple, list)) else len(data)
    except TypeError:
        return 0


def _name(x: Any) -> str:
    return x if isinstance(x, str) else getattr(x, "__name__", type(x).__name__)


def run_name(o: str, s: str, lr: float, seed: int) -> str:
    """A run's name in the study, the tracker and (with an LR grid) its folder: ``sgd-cosine-lr0.1-seed0``."""
    return f"{o}-{s}-lr{lr:g}-seed{seed}"


def _run_dir(out_dir: Path | None, o: str, s: str, lr: float, seed: int, grid: bool) -> Path | None:
    if out_dir is None:
        return None
    return out_dir / "runs" / (run_name(o, s, lr, seed) if grid else f"{o}-{s}-seed{seed}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _run_config(o: str, s: str, lr: float, epochs: int, batch_size: int, seed: int, monitor: str,
                config: Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    """One run's settings as a config, and how to re-run it."""
    opt_section = {"name": o, "lr": lr, **default_options(o)}
    sched_section = scheduler_spec(s, epochs)
    if config is not None:  # a config that `optiloop train --config` re-runs as this combination
        cfg = copy.deepcopy(dict(config))
        cfg["optimizer"], cfg["scheduler"] = opt_section, sched_section
        cfg["train"] = {**cfg["train"], "epochs": epochs, "seed": seed, "early_stopping": 0, "monitor": monitor}
        return cfg, "Re-run it with: optiloop train --config config.toml"
    cfg = {"optimizer": opt_section, "scheduler": sched_section,
           "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed}}
    return cfg, "Model and data were given in Python; only these settings are recorded"


def _write_run(run_dir: Path, history: Any, row: Mapping[str, Any], o: str, s: str, lr: float,
               epochs: int, batch_size: int, seed: int, config: Mapping[str, Any] | None) -> None:
    """One run's folder, shaped like `optiloop train`'s."""
    from .runs import RunFolder  # (as in compare)

    folder = RunFolder.create(run_dir, unique=False)
    folder.write_history(history)
    folder.write_steps(history)
    folder.write_curves(history, best_epoch=row["best_epoch"], title=f"{o} lr {lr:g}, {s}, seed {seed}")
    cfg, head = _run_config(o, s, lr, epochs, batch_size, seed, row["monitor"], config)
    folder.write_config(cfg, f" compare: {o} lr {lr:g} + {s}, seed {seed}. {head}")
    folder.write_summary({"optimizer": o, "scheduler": s, "seed": seed, "lr": lr, **row,
                          "best": dict(history.rows[row["best_epoch"] - 1]) if row["best_epoch"] else None,
                          "final": dict(history.rows[-1])})
