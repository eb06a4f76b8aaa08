"""What a comparison runs: the optimizer and scheduler names, the LRs each is tried at (the
``"sgd=0.03,0.1,adam=1e-3"`` parser and half-decade grids), the seeds, the target and the
monitor; and the defaults ``optiloop compare`` and ``ol.compare`` share. torch-free: the command
line's ``--help`` reads its defaults here.

Example:
    >>> parse_lrs("sgd=0.03,0.1", ["sgd", "adam"])
    {'sgd': [0.03, 0.1], 'adam': [0.001]}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .callbacks import Monitor
from .errors import OptiloopError, choices, did_you_mean
from .optim import lookup

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
    from .schedules import default_arguments  # torch: only when a comparison is planned

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
            raise OptiloopError(f"unknown {kind} {n!r}{did_you_mean(n, known)}; choose from: {choices(known)}")
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
    from .metrics import resolve_metric  # torch: only when a comparison is planned

    return f"val_{resolve_metric(metrics[0])[0]}" if metrics else "val_loss"


def parse_seeds(seeds: int | Sequence[int]) -> list[int]:
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
