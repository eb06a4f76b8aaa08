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

Runs are independent: ``jobs=N`` runs N at a time in worker processes, with results identical
to ``jobs=1`` (only the timings differ).

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
import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import Monitor
from .errors import OptiloopError, choices
from .optim import OPTIMIZERS, build_optimizer, lookup
from .schedules import SCHEDULERS, build_scheduler, default_arguments

DEFAULT_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
DEFAULT_SCHEDULERS = ("cosine",)  # as `optiloop train`
DEFAULT_EPOCHS = 10  # 5 optimizers on digits: ~10-20 s on 2 CPU cores
LR_GRID_FACTOR = 10 ** 0.5  # half a decade between the LRs of a grid (0.0316, 0.1, 0.316)


def default_lr(name: str) -> float:
    """The LR ``compare`` (and ``optiloop train``) uses for ``name`` when none is given.

    Example:
        >>> default_lr("sgd"), default_lr("adagrad"), default_lr("nadam")
        (0.1, 0.01, 0.002)
    """
    return float(lookup(name).defaults["lr"])


def default_options(name: str) -> dict[str, Any]:
    """The keys besides ``lr`` each optimizer gets by default, e.g. sgd's ``momentum=0.9``."""
    return {k: v for k, v in lookup(name).defaults.items() if k != "lr"}


def scheduler_spec(name: str, epochs: int) -> dict[str, Any]:
    """A scheduler dict with the argument some names need filled in for ``epochs`` (the same
    defaults ``build_scheduler`` and ``optiloop schedule`` use), so configs record what ran."""
    return {"name": name, **default_arguments(name, epochs)}


def parse_names(text: str | Sequence[str], kind: str, known: Iterable[str]) -> list[str]:
    """``"sgd,adam"`` (or a list) -> checked, lower-case, de-duplicated names.

    Example:
        >>> parse_names("SGD, adam", "optimizer", ["sgd", "adam"])
        ['sgd', 'adam']
    """
    known = list(known)
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(n).strip().lower() for n in items if str(n).strip()]
    if not names:
        raise OptiloopError(f"no {kind} given; choose from: {choices(known)}")
    for n in names:
        if n not in known:
            raise OptiloopError(f"unknown {kind} {n!r}; choose from: {choices(known)}")
    if len(set(names)) != len(names):
        raise OptiloopError(f"each {kind} once, please (got {', '.join(names)})")
    return names


def lr_grid(center: float, n: int, factor: float = LR_GRID_FACTOR) -> list[float]:
    """``n`` LRs spaced ``factor`` apart on a log scale, centred on ``center`` (which is one of
    them when ``n`` is odd), rounded to 3 significant digits.

    Example:
        >>> lr_grid(0.1, 3), lr_grid(1e-3, 5)
        ([0.0316, 0.1, 0.316], [0.0001, 0.000316, 0.001, 0.00316, 0.01])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OptiloopError(f"lr_grid must be an integer >= 1, got {n!r}")
    return [float(f"{center * factor ** (i - (n - 1) / 2):.3g}") for i in range(n)]


def parse_lrs(text: str | float | Sequence[Any] | Mapping[str, Any] | None, optimizers: Sequence[str], *,
              what: str = "lrs", grid: int | None = None) -> dict[str, list[float]]:
    """The LRs each optimizer is tried at.

    ``text``: one LR for all (``0.01``), a list for all, ``"sgd=0.03,0.1,0.3,adam=1e-3"`` (each
    name takes the numbers after it), a dict ``{"sgd": [0.03, 0.1], "adam": 1e-3}``, or a list of
    such strings (repeated ``--lr`` flags). Optimizers not named get ``default_lr``. With ``grid=N``
    an optimizer given one LR (or none: its default) is tried at ``N`` LRs around it (``lr_grid``);
    a list given explicitly is kept. Every LR must be a finite number > 0. ``what`` names the
    argument in error messages.

    Example:
        >>> parse_lrs("sgd=0.03,0.1,0.3", ["sgd", "adam"])
        {'sgd': [0.03, 0.1, 0.3], 'adam': [0.001]}
        >>> parse_lrs(None, ["sgd", "adam"], grid=3)
        {'sgd': [0.0316, 0.1, 0.316], 'adam': [0.000316, 0.001, 0.00316]}
    """
    given: dict[str, list[Any]] = {}
    if isinstance(text, Mapping):
        given = {str(k).strip().lower(): list(v) if isinstance(v, (list, tuple)) else [v] for k, v in text.items()}
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        given = {name: [text] for name in optimizers}
    elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        given = _parse_lr_text(",".join(text), optimizers, what) if text else {}
    elif isinstance(text, (list, tuple)):
        given = {name: list(text) for name in optimizers}
    elif isinstance(text, str):
        given = _parse_lr_text(text, optimizers, what)
    elif text is not None:
        raise OptiloopError(f"lrs must be a number, a list, a string or a dict, got {type(text).__name__}")
    for key, values in given.items():
        if key not in optimizers:
            raise OptiloopError(f"{what} names {key!r}, which is not among the optimizers compared "
                                f"({', '.join(optimizers)})")
        if not values:
            raise OptiloopError(f"{what} {key}: no LR given")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (math.isfinite(value) and value > 0):
                raise OptiloopError(f"{what} {key}: must be a number > 0 (got {value!r})")
        if len(set(values)) != len(values):
            raise OptiloopError(f"{what} {key}: each LR once, please (got {', '.join(map(str, values))})")
    if grid is not None:
        lr_grid(1.0, grid)  # checks grid
    out = {}
    for name in optimizers:
        values = [float(v) for v in given.get(name, [default_lr(name)])]
        out[name] = lr_grid(values[0], grid) if grid is not None and len(values) == 1 else values
    return out


def _parse_lr_text(text: str, optimizers: Sequence[str], what: str) -> dict[str, list[float]]:
    """``"0.01"``, ``"0.01,0.1"`` (all), ``"sgd=0.03,0.1,adam=1e-3"``: numbers follow their name;
    numbers before any name go to every optimizer not named."""
    given: dict[str, list[float]] = {}
    common: list[float] = []
    name: str | None = None
    for item in text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if eq:
            name = key.strip().lower()
            if not name:
                raise OptiloopError(f"{what} {text!r}: use numbers (0.01 or 0.01,0.1) or NAME=LR[,LR...] "
                                    "groups (sgd=0.03,0.1,0.3,adam=1e-3)")
            if name in given:
                raise OptiloopError(f"{what} names {name!r} twice; list its LRs after one {name}=")
            given[name] = []
        else:
            value = key
        number = _number(value, f"{what} {name}" if name else what, text, what)
        (common if name is None else given[name]).append(number)
    if common:
        for o in optimizers:
            given.setdefault(o, list(common))
    return given


def _number(text: str, where: str, whole: str, what: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise OptiloopError(f"{where}: {text.strip()!r} is not a number (in {what} {whole!r}; use "
                            "0.01 or sgd=0.03,0.1,adam=1e-3)") from None


def parse_target(text: str | tuple[str, float] | None, *, what: str = "target"
                 ) -> tuple[str, float] | None:
    """``"val_acc=0.95"`` -> ``("val_acc", 0.95)``; the direction follows the key's name.
    ``what`` names the argument in error messages.

    Example:
        >>> parse_target("val_acc=0.95")
        ('val_acc', 0.95)
    """
    if text is None or isinstance(text, tuple):
        return text
    key, eq, value = text.partition("=")
    key = key.strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not eq or not key or not math.isfinite(number):
        raise OptiloopError(f"{what} {text!r}: use KEY=VALUE, e.g. val_acc=0.95 or val_loss=0.1")
    return key, number


def describe_target(goal: tuple[str, float] | None) -> str | None:
    """``("val_acc", 0.95)`` -> ``"val_acc ≥ 0.95"``: the direction follows the key's name.

    Example:
        >>> describe_target(("val_acc", 0.95)), describe_target(("val_loss", 0.1))
        ('val_acc ≥ 0.95', 'val_loss ≤ 0.1')
    """
    if goal is None:
        return None
    key, value = goal
    return f"{key} {'≥' if Monitor(key).mode == 'max' else '≤'} {value:g}"


def default_monitor(metrics: Sequence[str | Callable]) -> str:
    """The validation figure that picks best epochs and LRs: the first metric's, else val_loss.

    Example:
        >>> default_monitor(["accuracy"]), default_monitor([])
        ('val_acc', 'val_loss')
    """
    from .metrics import resolve_metric

    return f"val_{resolve_metric(metrics[0])[0]}" if metrics else "val_loss"


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
            run folder per run; None writes nothing.
        checkpoints: also write best.pt / last.pt in each run folder.
        device: as ``fit``.
        jobs: run this many runs at once, each in its own process (torch threads split between
            them). Every run is computed exactly as with ``jobs=1``; only the timings differ.
            The model factory, data, loss and metrics must then be picklable (module-level
            functions), or use ``config``.
        progress: called with one line once the input is checked (what will run), then one
            line per finished run with the overall ETA (the CLI prints them).
        as_frame: return a pandas DataFrame instead of a list of dicts.
        tracker: an ``optiloop.trackers.MLflowSweep`` (or any context manager with its
            ``start``, ``log_child`` and ``end``): the comparison becomes one parent run with each
            run as a child (its config, figures, per-epoch history and folder's files) as it finishes.

    Returns:
        One dict per run, in a fixed order (seed, optimizer, scheduler, LR): optimizer,
        scheduler, seed, lr, monitor, best_epoch (the epoch with the best ``monitor``; None if it
        never was finite), ``best_val_*`` (every validation figure at that epoch), ``final_*`` (at
        the last epoch), epochs to target, seconds per epoch (train + validation), the run's wall
        seconds, epochs_run, init_hash (of the initial weights), run (its folder under ``out``).
        ``summarize(rows)`` folds the seeds (mean and std per optimizer, scheduler and LR);
        ``pick_best(summarize(rows))`` keeps each optimizer's best LR.
    """
    from .loop import logged_keys, resolve_device, seed_everything

    # -- check everything before anything is trained or written
    opt_names = parse_names(optimizers, "optimizer", OPTIMIZERS)
    sched_names = parse_names(schedulers, "scheduler", SCHEDULERS)
    lr_of = parse_lrs(lrs, opt_names, grid=lr_grid)
    goal = parse_target(target)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise OptiloopError(f"jobs must be an integer >= 1, got {jobs!r}")
    seed_list = _seeds(seeds)
    device = resolve_device(device)  # 'cuda' on a machine without it fails now, not mid-report
    task = None
    if config is not None:
        if model is not None or train_data is not None:
            raise OptiloopError("give a model factory with data, or config=, not both")
        from .runs import build_task

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
    out_dir = None
    if out is not None:
        from .runs import ensure_empty

        out_dir = ensure_empty(out, "out")
    combos = [(o, s, lr) for o in opt_names for s in sched_names for lr in lr_of[o]]
    probe = model()
    if not isinstance(probe, nn.Module):
        raise OptiloopError(f"model() must return an nn.Module, got {type(probe).__name__}")
    n_train = _length(train_data)
    steps = math.ceil(n_train / batch_size) if n_train else 1
    for o, s, lr in combos:  # dry build: a bad LR or option fails here, with nothing written
        opt = build_optimizer(o, probe, lr=lr, **default_options(o))  # leaves probe as is
        build_scheduler(scheduler_spec(s, epochs), opt, epochs=epochs, steps_per_epoch=steps)
    del probe
    if goal is not None:
        want = [k for k in logged_keys(metrics) if k.startswith(("train_", "val_"))]
        if goal[0] not in want:
            raise OptiloopError(f"target {goal[0]!r} is never logged; choose one of: "
                                f"{', '.join(want)}")
    setup = _Setup(None if task else model, None if task else train_data, None if task else val_data,
                   task.config if task else None, loss, metrics, batch_size, epochs, str(device), goal, monitor,
                   checkpoints and out_dir is not None)
    if jobs > 1:
        _check_picklable(setup)

    total = len(combos) * len(seed_list)
    jobs = min(jobs, total)
    if progress is not None:  # everything checked: say what is about to run
        where = f"{task.description}, " if task else ""
        grids = "; ".join(f"{o} lr {', '.join(f'{lr:g}' for lr in lr_of[o])}" for o in opt_names)
        progress(f"{total} run{'s' if total > 1 else ''} ({', '.join(opt_names)} x "
                 f"{', '.join(sched_names)} x {len(seed_list)} seed{'s' if len(seed_list) > 1 else ''})"
                 f" of {epochs} epoch{'s' if epochs > 1 else ''}: {where}{grids}"
                 + (f"; {jobs} at a time" if jobs > 1 else "")
                 + (f" -> {out_dir}/" if out_dir is not None else ""))
    with contextlib.ExitStack() as held:
        if out_dir is not None:
            from .runs import RunFolder

            out_dir.mkdir(parents=True, exist_ok=True)
            # Held to the end: a second compare (or train) into the same folder is refused in one
            # line instead of interleaving its runs and report with ours.
            held.callback(RunFolder(out_dir).lock(new=True).release)
        # Every run of the comparison, in the order the rows come back: seed, optimizer, scheduler, LR.
        runs = [(o, s, lr, seed, _run_dir(out_dir, o, s, lr, seed, len(lr_of[o]) > 1))
                for seed in seed_list for o, s, lr in combos]
        results: dict[int, tuple[dict[str, Any], Any]] = {}
        settings = {"epochs": epochs, "batch_size": batch_size, "seeds": seed_list, "loss": _name(loss),
                    "metrics": [_name(m) for m in metrics], "target": describe_target(goal), "lrs": lr_of,
                    "monitor": monitor, "jobs": jobs, "data": task.description if task else "given in Python",
                    "options": {o: default_options(o) for o in opt_names},
                    "schedulers": {s: scheduler_spec(s, epochs) for s in sched_names}}
        if tracker is not None:
            held.enter_context(tracker)  # a comparison that fails ends its parent run as failed
            tracker.start(params=settings)
        t_start = time.perf_counter()

        def finished(i: int, row: dict[str, Any], history: Any) -> None:
            o, s, lr, seed, run_dir = runs[i]
            if run_dir is not None:
                row["run"] = str(run_dir.relative_to(out_dir))
                _write_run(run_dir, history, row, o, s, lr, epochs, batch_size, seed, task.config if task else None)
            results[i] = (row, history)
            if tracker is not None:
                cfg, _ = _run_config(o, s, lr, epochs, batch_size, seed, row["monitor"], task.config if task else None)
                figures = {k: v for k, v in row.items() if k.startswith(("best_", "final_", "epochs_", "sec"))}
                tracker.log_child(f"{o}-{s}-lr{lr:g}-seed{seed}", params=cfg, metrics=figures, history=history,
                                  artifacts=run_dir, tags={"optiloop.init_hash": row["init_hash"]})
            if progress is not None:
                done = len(results)
                eta = (time.perf_counter() - t_start) / done * (total - done)
                progress(f"[{done}/{total}] {o}+{s} lr {lr:g} seed {seed}: {_headline(row)} (ETA {_clock(eta)})")

        if jobs == 1:
            bases: dict[int, tuple[nn.Module, str]] = {}
            for i, (o, s, lr, seed, run_dir) in enumerate(runs):
                if seed not in bases:  # the initial weights follow the seed, as in `optiloop train`
                    seed_everything(seed)
                    base = model()
                    bases = {seed: (base, state_hash(base))}
                base, init_hash = bases[seed]
                # every run of a seed starts from these very weights
                finished(i, *_fit_one(setup, train_data, val_data, copy.deepcopy(base), init_hash,
                                      o, s, lr, seed, run_dir))
        else:
            _run_parallel(setup, runs, jobs, finished)
        rows = [results[i][0] for i in range(total)]
        histories = {runs[i][:4]: results[i][1] for i in range(total)}
        if out_dir is not None:
            from .report import write_report

            summary = summarize(rows)
            write_report(out_dir, rows, summary, pick_best(summary), histories, settings=settings)
        if tracker is not None:
            tracker.end(artifacts=out_dir)
        return to_frame(rows) if as_frame else rows


def _fit_one(setup: _Setup, train_data: Any, val_data: Any, net: nn.Module, init_hash: str,
             o: str, s: str, lr: float, seed: int, run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    """Train one run; the same code in this process (jobs=1) and in a worker (jobs > 1)."""
    from .loggers import StepHistory
    from .loop import fit

    callbacks: list[Any] = [StepHistory()]  # per-step LR and loss: steps.csv, per-step LR curves
    if setup.checkpoints and run_dir is not None:
        from .checkpoint import Checkpoint

        callbacks.append(Checkpoint(run_dir, monitor=setup.monitor))
    t0 = time.perf_counter()
    history = fit(net, train_data, val_data=val_data, loss=setup.loss,
                  optimizer={"name": o, **default_options(o)}, lr=lr,
                  scheduler=scheduler_spec(s, setup.epochs), epochs=setup.epochs, batch_size=setup.batch_size,
                  metrics=setup.metrics, callbacks=callbacks, device=setup.device, seed=seed,
                  progress=False, nonfinite="ignore")
    seconds = time.perf_counter() - t0
    return _row(history, o, s, seed, lr, setup.monitor, setup.goal, seconds, init_hash), history


# --- jobs > 1: one process per run at a time ------------------------------------------------------
_WORKER: dict[str, Any] = {}  # in a worker process: the setup, model factory and data, built once


def _init_worker(setup: _Setup, threads: int) -> None:
    torch.set_num_threads(threads)  # the cores are shared between the workers
    model, train_data, val_data = setup.model, setup.train_data, setup.val_data
    if setup.config is not None:
        from .runs import build_task

        task = build_task(setup.config)
        model, train_data, val_data = task.new_model, task.train_data, task.val_data
    _WORKER.update(setup=setup, model=model, train_data=train_data, val_data=val_data)


def _work(o: str, s: str, lr: float, seed: int, run_dir: Path | None) -> tuple[dict[str, Any], Any]:
    from .loop import seed_everything

    w = _WORKER
    seed_everything(seed)  # the same initial weights as jobs=1 builds for this seed
    net = w["model"]()
    return _fit_one(w["setup"], w["train_data"], w["val_data"], net, state_hash(net), o, s, lr, seed, run_dir)


def _run_parallel(setup: _Setup, runs: list[tuple], jobs: int, finished: Callable[..., None]) -> None:
    """Run in ``jobs`` fresh processes (spawned: no state inherited from this one, and no fork of
    a process whose thread pools are running); report each run as it finishes."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, torch.get_num_threads() // jobs)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(setup, threads))
    try:
        pending = {pool.submit(_work, *run): i for i, run in enumerate(runs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.get):
                i = pending.pop(future)
                finished(i, *future.result())  # a run's error surfaces here, as with jobs=1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_picklable(setup: _Setup) -> None:
    import pickle

    try:
        pickle.dumps(setup)
    except Exception as e:  # noqa: BLE001 - pickle raises several kinds; the message says which part
        raise OptiloopError(f"jobs > 1 runs each combination in its own process, so the model factory, data, loss "
                            f"and metrics must be picklable (module-level functions, not lambdas): {e}; "
                            "or use jobs=1") from None


# --- folding seeds, picking LRs ---------------------------------------------------------------------
def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fold seeds: one row per optimizer + scheduler + LR with ``KEY_mean`` and ``KEY_std`` (std
    0.0 for a single seed) for every numeric column, in the order the combinations first appear.

    Example:
        >>> summarize([{"optimizer": "sgd", "scheduler": "cosine", "seed": s, "lr": 0.1,
        ...             "best_val_loss": v} for s, v in ((0, 1.0), (1, 3.0))])[0]["best_val_loss_mean"]
        2.0
    """
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["scheduler"], r["lr"]), []).append(r)
    out = []
    for (o, s, lr), rs in groups.items():
        agg: dict[str, Any] = {"optimizer": o, "scheduler": s, "lr": lr, "seeds": len(rs)}
        if "monitor" in rs[0]:
            agg["monitor"] = rs[0]["monitor"]
        for key in rs[0]:
            if key in ("seed", "lr") or not all(isinstance(r.get(key), (int, float))
                                                 or r.get(key) is None for r in rs):
                continue
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            if not all(math.isfinite(v) for v in vals):  # a diverged run: say so, hide nothing
                agg[f"{key}_mean"] = agg[f"{key}_std"] = math.nan
                continue
            agg[f"{key}_mean"] = statistics.fmean(vals) if vals else None
            agg[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
            if key.startswith("epochs_to_"):
                agg[f"{key}_reached"] = f"{len(vals)}/{len(rs)}"
        out.append(agg)
    return out


def pick_best(summary: Sequence[Mapping[str, Any]], monitor: str | None = None) -> list[dict[str, Any]]:
    """Each optimizer + scheduler's best LR: the summary row whose mean ``best_<monitor>`` over
    seeds is best (a diverged LR never wins; ties go to the lower mean val_loss at the best
    epoch, then to the first LR tried). Each row gains
    ``lrs_tried`` and ``at_grid_edge`` (the best LR is the smallest or largest tried, so a better
    one may lie outside the grid).

    Example:
        >>> rows = [{"optimizer": "sgd", "scheduler": "cosine", "lr": lr, "seeds": 1, "best_val_acc_mean": a}
        ...         for lr, a in ((0.01, 0.8), (0.1, 0.9), (1.0, 0.5))]
        >>> best = pick_best(rows, "val_acc")[0]
        >>> best["lr"], best["lrs_tried"], best["at_grid_edge"]
        (0.1, [0.01, 0.1, 1.0], False)
    """
    if not summary:
        return []
    monitor = monitor or summary[0].get("monitor") or "val_loss"
    sign = 1.0 if Monitor(monitor).mode == "max" else -1.0
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in summary:
        groups.setdefault((r["optimizer"], r["scheduler"]), []).append(r)
    out = []
    for rs in groups.values():
        def score(r: Mapping[str, Any]) -> tuple[float, float]:
            v, loss = r.get(f"best_{monitor}_mean"), r.get("best_val_loss_mean")
            # Equal monitored figures (two LRs both at 100% accuracy) go to the lower val_loss.
            return (sign * v if _finite(v) else -math.inf, -loss if _finite(loss) else -math.inf)

        best = max(rs, key=score)  # max keeps the first of equal scores
        lrs = sorted(r["lr"] for r in rs)
        out.append({**best, "lrs_tried": lrs, "at_grid_edge": len(lrs) > 2 and best["lr"] in (lrs[0], lrs[-1])})
    return out


def to_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows as a pandas DataFrame (pandas is optional: ``pip install pandas``)."""
    try:
        import pandas as pd
    except ImportError:
        raise OptiloopError("as_frame / to_frame need pandas, which is not installed "
                            "(pip install pandas); the rows are plain dicts without it") from None
    return pd.DataFrame(list(rows))


# --- helpers -----------------------------------------------------------------------------------
def _seeds(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise OptiloopError(f"seeds must be a count >= 1 or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise OptiloopError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = list(seeds)
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) for s in out):
        raise OptiloopError(f"seeds must be a count >= 1 or a list of integers, got {seeds!r}")
    if len(set(out)) != len(out):
        raise OptiloopError(f"each seed once, please (got {out})")
    return out


def _length(data: Any) -> int:
    try:
        return len(data[0]) if isinstance(data, (tuple, list)) else len(data)
    except TypeError:
        return 0


def _name(x: Any) -> str:
    return x if isinstance(x, str) else getattr(x, "__name__", type(x).__name__)


def _run_dir(out_dir: Path | None, o: str, s: str, lr: float, seed: int, grid: bool) -> Path | None:
    if out_dir is None:
        return None
    return out_dir / "runs" / (f"{o}-{s}-lr{lr:g}-seed{seed}" if grid else f"{o}-{s}-seed{seed}")


def _row(history: Any, o: str, s: str, seed: int, lr: float, monitor: str, goal: tuple[str, float] | None,
         seconds: float, init_hash: str) -> dict[str, Any]:
    rows = history.rows
    val_keys = [k for k in history.keys() if k.startswith("val_")]
    # One best epoch per run, by the monitor; every "best_" figure is taken at that epoch, so a
    # row's best val_acc and best val_loss never come from two different epochs.
    finite = [r for r in rows if _finite(r.get(monitor))]
    pick = max if Monitor(monitor).mode == "max" else min
    best = pick(finite, key=lambda r: r[monitor]) if finite else None  # the first of equal values
    row: dict[str, Any] = {"optimizer": o, "scheduler": s, "seed": seed, "lr": lr, "monitor": monitor,
                           "best_epoch": best["epoch"] if best else None}
    for k in [monitor, *(k for k in val_keys if k != monitor)]:
        # A run whose monitor was never finite (diverged) has no best epoch: its last values show.
        row[f"best_{k}"] = (best or rows[-1]).get(k)
    for k in [monitor, *(k for k in val_keys if k != monitor), "train_loss"]:
        row[f"final_{k}"] = rows[-1].get(k)
    if goal is not None:
        key, value = goal
        better = (lambda v: v >= value) if Monitor(key).mode == "max" else (lambda v: v <= value)
        hit = next((r["epoch"] for r in rows if _finite(r.get(key)) and better(r[key])), None)
        row[f"epochs_to_{key}"] = hit
    # The loop's own per-epoch timing (train + validation): set-up costs such as the first
    # build of an optimizer class would otherwise count against whichever run comes first.
    epoch_seconds = [r["seconds"] for r in rows if _finite(r.get("seconds"))]
    row["sec_per_epoch"] = statistics.fmean(epoch_seconds) if epoch_seconds else seconds / len(rows)
    row["seconds"] = seconds
    row["epochs_run"] = len(rows)
    row["init_hash"] = init_hash
    return row


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _headline(row: Mapping[str, Any]) -> str:
    key = row.get("monitor") or "val_loss"
    v = row.get(f"best_{key}")
    text = f"{v:.4f}" if _finite(v) else f"{v}"
    return f"{key} {text} (best epoch {row['best_epoch']})" if row.get("best_epoch") else f"{key} {text}"


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
    from .runs import RunFolder

    folder = RunFolder.create(run_dir, unique=False)
    folder.write_history(history)
    folder.write_steps(history)
    folder.write_curves(history, best_epoch=row["best_epoch"], title=f"{o} lr {lr:g}, {s}, seed {seed}")
    cfg, head = _run_config(o, s, lr, epochs, batch_size, seed, row["monitor"], config)
    folder.write_config(cfg, f" compare: {o} lr {lr:g} + {s}, seed {seed}. {head}")
    folder.write_summary({"optimizer": o, "scheduler": s, "seed": seed, "lr": lr, **row,
                          "best": dict(history.rows[row["best_epoch"] - 1]) if row["best_epoch"] else None,
                          "final": dict(history.rows[-1])})
