"""Measured optimizer comparisons: every optimizer x scheduler x seed, same weights, same data order.

``compare`` trains one run per combination and returns one row per run (the rows of
``results.csv``); ``summarize`` folds the seeds into mean and std per combination (the table the
CLI prints). Fairness comes from three things: per seed the model is built once and every
combination starts from a deep copy of it; ``fit(seed=...)`` gives every combination the same
data order; and each optimizer starts from its command-line defaults unless told (the one table,
``optiloop.optim.OPTIMIZERS``: sgd lr 0.1 with momentum 0.9, adam / adamw / rmsprop 1e-3, adagrad
1e-2), so a comparison at one shared LR does not only show which optimizer likes that LR.

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> rows = ol.compare(lambda: torch.nn.Linear(4, 2), (X, y), (X, y), optimizers=["sgd", "adam"],
    ...                   epochs=2, metrics=["accuracy"])
    >>> [r["optimizer"] for r in rows], sorted(k for k in rows[0] if k.startswith("best_val"))
    (['sgd', 'adam'], ['best_val_acc', 'best_val_loss'])
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def parse_lrs(text: str | float | Mapping[str, float] | None, optimizers: Sequence[str], *,
              what: str = "lrs") -> dict[str, float]:
    """Per-optimizer learning rates from ``"0.01"``, ``"sgd=0.1,adam=1e-3"``, a number or a dict.

    Optimizers not named get ``default_lr``. Every LR must be a finite number > 0. ``what`` names
    the argument in error messages (the command line passes ``--lr``).

    Example:
        >>> parse_lrs("sgd=0.05", ["sgd", "adam"])
        {'sgd': 0.05, 'adam': 0.001}
    """
    given: dict[str, Any] = {}
    if isinstance(text, Mapping):
        given = dict(text)
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        given = dict.fromkeys(optimizers, text)
    elif isinstance(text, str) and "=" not in text:
        given = dict.fromkeys(optimizers, _number(text, what, text, what))
    elif isinstance(text, str):
        for item in text.split(","):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not key:
                raise OptiloopError(f"{what} {text!r}: use one number (0.01) or NAME=LR pairs "
                                    "separated by commas (sgd=0.1,adam=1e-3)")
            given[key] = _number(value, f"{what} {key}", text, what)
    elif text is not None:
        raise OptiloopError(f"lrs must be a number, a string or a dict, got {type(text).__name__}")
    for key, value in given.items():
        if key not in optimizers:
            raise OptiloopError(f"{what} names {key!r}, which is not among the optimizers compared "
                                f"({', '.join(optimizers)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not (math.isfinite(value) and value > 0):
            raise OptiloopError(f"{what} {key}: must be a number > 0 (got {value!r})")
    return {name: float(given.get(name, default_lr(name))) for name in optimizers}


def _number(text: str, where: str, whole: str, what: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise OptiloopError(f"{where}: {text.strip()!r} is not a number (in {what} {whole!r}; use "
                            "0.01 or sgd=0.1,adam=1e-3)") from None


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


def state_hash(model: nn.Module) -> str:
    """A short hash of a model's weights: equal hashes mean bit-identical starting points."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- the comparison ----------------------------------------------------------------------------
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
    lrs: float | str | Mapping[str, float] | None = None,
    loss: str | Callable | None = None,
    metrics: Sequence[str | Callable] | None = None,
    batch_size: int | None = None,
    target: str | tuple[str, float] | None = None,
    out: str | os.PathLike | None = None,
    checkpoints: bool = False,
    device: str | torch.device = "auto",
    progress: Callable[[str], None] | None = None,
    as_frame: bool = False,
) -> list[dict[str, Any]] | Any:
    """Train every optimizer x scheduler x seed from the same initial weights and data order.

    Args:
        model: a callable returning a fresh model (called once per seed, after seeding), or None
            with ``config``.
        train_data, val_data: as ``fit`` takes them; val_data is required (the table is about it).
        config: instead of model / data: a resolved ``optiloop train`` config (config.resolve);
            it also supplies loss, metrics and batch size unless given here.
        optimizers, schedulers: names, as a list or ``"sgd,adam"``.
        epochs: epochs per run (no early stopping: every run gets the same budget).
        seeds: how many seeds (0, 1, ...), or the seeds themselves.
        lrs: one LR for all, ``{"sgd": 0.1}`` / ``"sgd=0.1,adam=1e-3"`` per optimizer; the rest
            get ``default_lr`` (sgd 0.1 with momentum 0.9, adam / adamw / rmsprop 1e-3, adagrad
            1e-2; every name's in ``optiloop list``), and every optimizer its other defaults.
        loss, metrics, batch_size: as ``fit`` (defaults cross_entropy, accuracy, 64).
        target: ``"val_acc=0.95"``: also report the first epoch that reaches it.
        out: a new (or empty) folder for results.csv, report.md / report.html, the overlay
            PNGs and one run folder per combination; None writes nothing.
        checkpoints: also write best.pt / last.pt in each run folder.
        device: as ``fit``.
        progress: called with one line once the input is checked (what will run), then one
            line per finished run with the overall ETA (the CLI prints them).
        as_frame: return a pandas DataFrame instead of a list of dicts.

    Returns:
        One dict per run: optimizer, scheduler, seed, lr, best / final val loss and metric, the
        best epoch (lowest val_loss; None if it never was finite), epochs to target, seconds per
        epoch (train + validation), the run's wall seconds, epochs_run, init_hash (of the
        initial weights), run (its folder under ``out``).
        ``summarize(rows)`` gives mean and std per combination.
    """
    from .loop import fit, logged_keys, resolve_device, seed_everything

    # -- check everything before anything is trained or written
    opt_names = parse_names(optimizers, "optimizer", OPTIMIZERS)
    sched_names = parse_names(schedulers, "scheduler", SCHEDULERS)
    lr_of = parse_lrs(lrs, opt_names)
    goal = parse_target(target)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
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
    out_dir = None
    if out is not None:
        from .runs import ensure_empty

        out_dir = ensure_empty(out, "out")
    combos = [(o, s) for o in opt_names for s in sched_names]
    probe = model()
    if not isinstance(probe, nn.Module):
        raise OptiloopError(f"model() must return an nn.Module, got {type(probe).__name__}")
    n_train = _length(train_data)
    steps = math.ceil(n_train / batch_size) if n_train else 1
    for o, s in combos:  # dry build: a bad LR or option fails here, with nothing written
        opt = build_optimizer(o, probe, lr=lr_of[o], **default_options(o))  # leaves probe as is
        build_scheduler(scheduler_spec(s, epochs), opt, epochs=epochs, steps_per_epoch=steps)
    del probe
    if goal is not None:
        want = [k for k in logged_keys(metrics) if k.startswith(("train_", "val_"))]
        if goal[0] not in want:
            raise OptiloopError(f"target {goal[0]!r} is never logged; choose one of: "
                                f"{', '.join(want)}")

    total = len(combos) * len(seed_list)
    if progress is not None:  # everything checked: say what is about to run
        where = f"{task.description}, " if task else ""
        progress(f"{total} run{'s' if total > 1 else ''} ({', '.join(opt_names)} x "
                 f"{', '.join(sched_names)} x {len(seed_list)} seed{'s' if len(seed_list) > 1 else ''})"
                 f" of {epochs} epoch{'s' if epochs > 1 else ''}: "
                 f"{where}lr {', '.join(f'{o} {lr:g}' for o, lr in lr_of.items())}"
                 + (f" -> {out_dir}/" if out_dir is not None else ""))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    histories: dict[tuple[str, str, int], Any] = {}
    t_start = time.perf_counter()
    for seed in seed_list:
        seed_everything(seed)  # the initial weights follow the seed, as in `optiloop train`
        base = model()
        init_hash = state_hash(base)
        for o, s in combos:
            net = copy.deepcopy(base)  # every combination starts from these very weights
            run_dir = out_dir / "runs" / f"{o}-{s}-seed{seed}" if out_dir is not None else None
            callbacks: list[Any] = []
            if checkpoints and run_dir is not None:
                from .checkpoint import Checkpoint

                callbacks.append(Checkpoint(run_dir, monitor="val_loss"))
            t0 = time.perf_counter()
            history = fit(net, train_data, val_data=val_data, loss=loss,
                          optimizer={"name": o, **default_options(o)}, lr=lr_of[o],
                          scheduler=scheduler_spec(s, epochs), epochs=epochs, batch_size=batch_size,
                          metrics=metrics, callbacks=callbacks, device=device, seed=seed,
                          progress=False, nonfinite="ignore")
            seconds = time.perf_counter() - t0
            row = _row(history, o, s, seed, lr_of[o], goal, seconds, init_hash)
            if run_dir is not None:
                row["run"] = str(run_dir.relative_to(out_dir))
                _write_run(run_dir, history, row, o, s, lr_of[o], epochs, batch_size, seed,
                           task.config if task else None)
            rows.append(row)
            histories[(o, s, seed)] = history
            if progress is not None:
                done = len(rows)
                eta = (time.perf_counter() - t_start) / done * (total - done)
                progress(f"[{done}/{total}] {o}+{s} seed {seed}: {_headline(row)} "
                         f"(ETA {_clock(eta)})")
    if out_dir is not None:
        from .report import write_report

        write_report(out_dir, rows, summarize(rows), histories, settings={
            "epochs": epochs, "batch_size": batch_size, "seeds": seed_list, "loss": _name(loss),
            "metrics": [_name(m) for m in metrics], "target": goal, "lrs": lr_of,
            "data": task.description if task else "given in Python",
            "options": {o: default_options(o) for o in opt_names},
            "schedulers": {s: scheduler_spec(s, epochs) for s in sched_names},
        })
    return to_frame(rows) if as_frame else rows


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fold seeds: one row per optimizer + scheduler with ``KEY_mean`` and ``KEY_std`` (std 0.0
    for a single seed) for every numeric column, in the order the combinations first appear.

    Example:
        >>> summarize([{"optimizer": "sgd", "scheduler": "cosine", "seed": s, "lr": 0.1,
        ...             "best_val_loss": v} for s, v in ((0, 1.0), (1, 3.0))])[0]["best_val_loss_mean"]
        2.0
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["scheduler"]), []).append(r)
    out = []
    for (o, s), rs in groups.items():
        agg: dict[str, Any] = {"optimizer": o, "scheduler": s, "lr": rs[0]["lr"], "seeds": len(rs)}
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


def _row(history: Any, o: str, s: str, seed: int, lr: float, goal: tuple[str, float] | None,
         seconds: float, init_hash: str) -> dict[str, Any]:
    rows = history.rows
    metric_keys = [k for k in history.keys() if k.startswith("val_") and k != "val_loss"]
    finite = [r for r in rows if _finite(r.get("val_loss"))]
    # A run whose val_loss was never finite (diverged) has no best epoch; its loss stays NaN.
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    row: dict[str, Any] = {"optimizer": o, "scheduler": s, "seed": seed, "lr": lr,
                           "best_val_loss": (best or rows[-1]).get("val_loss"),
                           "final_val_loss": rows[-1].get("val_loss")}
    for k in metric_keys:
        vals = [r[k] for r in rows if _finite(r.get(k))]
        pick = max if Monitor(k).mode == "max" else min
        row[f"best_{k}"] = pick(vals) if vals else None
        row[f"final_{k}"] = rows[-1].get(k)
    row["best_epoch"] = best["epoch"] if best else None
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
    return isinstance(v, (int, float)) and math.isfinite(v)


def _headline(row: Mapping[str, Any]) -> str:
    keys = [k for k in row if k.startswith("best_val_") and k != "best_val_loss"]
    key = keys[0] if keys else "best_val_loss"
    v = row[key]
    return f"{key[len('best_'):]} {v:.4f}" if _finite(v) else f"{key[len('best_'):]} {v}"


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _write_run(run_dir: Path, history: Any, row: Mapping[str, Any], o: str, s: str, lr: float,
               epochs: int, batch_size: int, seed: int, config: Mapping[str, Any] | None) -> None:
    """One combination's run folder, shaped like `optiloop train`'s."""
    from .runs import RunFolder

    folder = RunFolder.create(run_dir, unique=False)
    folder.write_history(history)
    folder.write_curves(history, best_epoch=row["best_epoch"], title=f"{o} lr {lr:g}, {s}, seed {seed}")
    opt_section = {"name": o, "lr": lr, **default_options(o)}
    sched_section = scheduler_spec(s, epochs)
    if config is not None:  # a config that `optiloop train --config` re-runs as this combination
        cfg = copy.deepcopy(dict(config))
        cfg["optimizer"], cfg["scheduler"] = opt_section, sched_section
        cfg["train"] = {**cfg["train"], "epochs": epochs, "seed": seed, "early_stopping": 0}
        head = "Re-run it with: optiloop train --config config.toml"
    else:
        cfg = {"optimizer": opt_section, "scheduler": sched_section,
               "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed}}
        head = "Model and data were given in Python; only these settings are recorded"
    folder.write_config(cfg, f" compare: {o} + {s}, seed {seed}. {head}")
    folder.write_summary({"optimizer": o, "scheduler": s, "seed": seed, "lr": lr, **row,
                          "best": dict(history.rows[row["best_epoch"] - 1]) if row["best_epoch"] else None,
                          "final": dict(history.rows[-1])})
