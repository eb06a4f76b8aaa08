"""LR schedulers by name, each carrying the moment it must be stepped.

Every name builds a torch.optim.lr_scheduler object; optiloop only adds what torch leaves to the
user: *when* to step it (``interval``, ``frequency``), sensible lengths from ``epochs`` /
``steps_per_epoch``, checked arguments, and linear warmup in front of any of them.

Intervals:
    "epoch"  stepped once after each epoch (step, multistep, exponential, cosine, ...), as the
             PyTorch docs teach; pass ``interval="step"`` to step them per optimizer step instead
             (then lengths such as ``T_max`` default to the total number of steps).
    "step"   stepped after every optimizer step (onecycle, cyclic).
    "metric" stepped after each epoch's evaluation with the monitored value (plateau);
             ``strict=False`` warns and skips the step when the monitor is not in the logs
             (Lightning's ``strict``). ``plateau`` with ``interval="step"`` is stepped after
             every optimizer step on that step's training loss (``monitor="train_loss"``).
``frequency=N`` steps the scheduler on every N-th of those moments (Lightning's scheduler
``frequency``), counted over the whole run, not within each epoch (docs/training.md says why);
lengths derived from the run then count the scheduler's own steps.

One :class:`SchedulerInfo` per name in :data:`SCHEDULERS` holds everything optiloop knows about
it: interval, builder, the arguments derived from the run's length, and what ``optiloop schedule``
shows. Adding a name is adding a record. torch is imported only when a scheduler is built, so
listing the names costs nothing. The schedules torch lacks (``wsd``, ``polynomial`` to a non-zero
``eta_min``) are small frozen dataclasses, ``step -> multiplier``, applied through torch's
``LambdaLR``.

Warmup (``warmup_steps=`` or ``warmup_epochs=``) follows transformers and timm: the LR rises
linearly to the main schedule's starting LR over the first ``W`` optimizer steps, then the main
schedule runs over the *remaining* steps (its derived lengths shrink by ``W``; its own clock,
milestones included, starts when warmup ends, as with torch's ``SequentialLR``). Per step this
equals ``transformers.get_cosine_schedule_with_warmup`` / ``get_linear_schedule_with_warmup``
except for one deliberate difference: the first step trains at ``lr / W``, not at 0 (a step at
LR 0 is a wasted step). The plateau scheduler has no timeline to shift (it reacts to every
epoch's metric), so there, and only there, the warmup factor multiplies the LR it sets.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .directions import mode_for
from .errors import OptiloopError, choices, did_you_mean
from .intervals import INTERVALS, TORCH_SCHEDULERS, torch_interval

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler as tls



# --- our own schedules: step -> multiplier of the group's LR ------------------------------------
@dataclass(frozen=True)
class LinearWarmup:
    """Linear warmup over ``steps`` optimizer steps: multiplier ``k / steps`` for step ``k``
    (0-based), then 1, as transformers' warmup, except step 0 trains at ``1 / steps`` (never a
    wasted step at LR 0), so steps 0 and 1 share the first value.

    Example:
        >>> [LinearWarmup(4)(k) for k in range(6)]
        [0.25, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    steps: int

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return 1.0
        return max(step, 1) / self.steps


def _end_value(progress: float, shape: str) -> float:
    """Decay from 1 to 0 as ``progress`` goes from 0 to 1, in the named shape."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)  # "1-sqrt"


DECAY_SHAPES = ("cosine", "linear", "1-sqrt")


@dataclass(frozen=True)
class Polynomial:
    """``(1 - t / total) ** power`` from 1 down to ``end`` (a fraction of the LR), then ``end``:
    torch's PolynomialLR with a floor, transformers' polynomial decay with ``lr_end``.

    Example:
        >>> [Polynomial(4, 1.0, 0.2)(t) for t in range(6)]
        [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]
    """

    total: int
    power: float = 1.0
    end: float = 0.0

    def __call__(self, step: int) -> float:
        left = 1.0 - min(step, self.total) / self.total
        return (1.0 - self.end) * left**self.power + self.end


@dataclass(frozen=True)
class StableDecay:
    """The S and D of warmup-stable-decay: 1 until the last ``decay`` of ``total`` steps, then a
    decay (``shape``: cosine, linear or 1-sqrt) to ``end`` (a fraction of the LR); warmup goes in
    front as for every name. Equals transformers' ``get_wsd_schedule`` after its warmup.

    Example:
        >>> [round(StableDecay(5, 2, "linear")(t), 2) for t in range(6)]
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    """

    total: int
    decay: int
    shape: str = "cosine"
    end: float = 0.0

    def __call__(self, step: int) -> float:
        start = self.total - self.decay
        if step < start:
            return 1.0
        if step >= self.total:
            return self.end
        return (1.0 - self.end) * _end_value((step - start) / self.decay, self.shape) + self.end


# --- builders --------------------------------------------------------------------------------------
def _nothing(length: int) -> dict[str, Any]:
    return {}


def _torch(class_name: str, **fixed: Any) -> Callable[..., Any]:
    """A builder for ``torch.optim.lr_scheduler.<class_name>``; ``fixed`` are optiloop's defaults
    where torch's differ."""

    def make(optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
        from torch.optim import lr_scheduler

        return getattr(lr_scheduler, class_name)(optimizer, **{**fixed, **kwargs})

    return make


def _onecycle(optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
    from torch.optim import lr_scheduler

    kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])  # peak at the set LR
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        kwargs.setdefault("cycle_momentum", False)  # adagrad & co: no momentum to cycle (torch would refuse)
    return lr_scheduler.OneCycleLR(optimizer, **kwargs)


def _cyclic(optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
    from torch.optim import lr_scheduler

    kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])  # peak at the set LR
    peaks = kwargs["max_lr"] if isinstance(kwargs["max_lr"], (list, tuple)) else [kwargs["max_lr"]]
    kwargs.setdefault("base_lr", [p / 10 for p in peaks] if len(peaks) > 1 else peaks[0] / 10)
    return lr_scheduler.CyclicLR(optimizer, **kwargs)


def _floors(optimizer: torch.optim.Optimizer, eta_min: float) -> list[float]:
    """``eta_min`` (an LR, as torch's cosine takes it) as a fraction of each group's LR."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    if eta_min > min(lrs):
        raise ValueError(f"eta_min ({eta_min:g}) must not exceed the LR ({min(lrs):g})")
    return [eta_min / lr if lr else 0.0 for lr in lrs]


def _polynomial(optimizer: torch.optim.Optimizer, total_iters: int = 5, power: float = 1.0,
                eta_min: float = 0.0, **kwargs: Any) -> Any:
    from torch.optim import lr_scheduler

    if not eta_min:  # torch's own class, unchanged
        return lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters, power=power, **kwargs)
    return lr_scheduler.LambdaLR(
        optimizer, [Polynomial(total_iters, power, end) for end in _floors(optimizer, eta_min)], **kwargs)


def _wsd(optimizer: torch.optim.Optimizer, total_iters: int, decay_fraction: float = 0.2,
         decay: str = "cosine", eta_min: float = 0.0, **kwargs: Any) -> Any:
    from torch.optim import lr_scheduler

    if decay not in DECAY_SHAPES:
        raise ValueError(f"decay must be one of: {', '.join(DECAY_SHAPES)} (got {decay!r})")
    steps = max(1, round(decay_fraction * total_iters))
    return lr_scheduler.LambdaLR(
        optimizer, [StableDecay(total_iters, steps, decay, end) for end in _floors(optimizer, eta_min)],
        **kwargs)


@dataclass(frozen=True)
class SchedulerInfo:
    """One scheduler name. ``length`` below is the length of the scheduler's own run: epochs, or
    optimizer steps when it is stepped per step, less the warmup, divided by ``frequency``.

    Attributes:
        interval: when the loop steps it by default: "epoch", "step" or "metric".
        description: one line for ``optiloop list``.
        make: ``(optimizer, **kwargs) -> torch scheduler``; None: constant LR, nothing to step.
        needs: keywords the builder requires; each is filled from the length when not given.
        recorded: ``length -> arguments`` with no torch default (step_size ...): a run's
            config.toml records them, so it says what ran.
        lengths: ``length -> arguments`` derived when it is built (T_max ...): not recorded, so
            they follow the run when its epochs change.
        shown: ``(lr, length, epochs) -> arguments`` that ``optiloop schedule`` shows and uses
            besides the recorded ones: torch's defaults worth seeing, a plateau that visibly reacts.
        only: the one interval it can be stepped at (onecycle, cyclic: per step; plateau: on
            the metric); None: "epoch" or "step".
    """

    interval: str
    description: str
    make: Callable[..., Any] | None
    needs: tuple[str, ...] = ()
    recorded: Callable[[int], dict[str, Any]] = _nothing
    lengths: Callable[[int], dict[str, Any]] = _nothing
    shown: Callable[[float, int, int], dict[str, Any]] = field(default=lambda lr, length, epochs: {})
    only: str | None = None

    @property
    def derives(self) -> bool:
        """Whether it takes anything from the run's length."""
        return bool(self.needs) or self.recorded is not _nothing or self.lengths is not _nothing


SCHEDULERS: dict[str, SchedulerInfo] = {
    "constant": SchedulerInfo("epoch", "the optimizer's LR throughout", None),
    "step": SchedulerInfo(
        TORCH_SCHEDULERS["StepLR"],
        "StepLR: x gamma every step_size epochs", _torch("StepLR"), ("step_size",),
        recorded=lambda n: {"step_size": max(1, n // 3)},  # a drop every third of the run
        shown=lambda lr, n, epochs: {"gamma": 0.1}),
    "multistep": SchedulerInfo(
        TORCH_SCHEDULERS["MultiStepLR"],
        "MultiStepLR: x gamma at each milestone", _torch("MultiStepLR"), ("milestones",),
        recorded=lambda n: {"milestones": sorted({max(1, n // 2), max(1, n * 3 // 4)})},
        shown=lambda lr, n, epochs: {"gamma": 0.1}),
    "exponential": SchedulerInfo(
        TORCH_SCHEDULERS["ExponentialLR"],
        "ExponentialLR: x gamma every epoch", _torch("ExponentialLR"), ("gamma",),
        recorded=lambda n: {"gamma": 0.9}),
    "cosine": SchedulerInfo(
        TORCH_SCHEDULERS["CosineAnnealingLR"],
        "CosineAnnealingLR: half cosine to eta_min over T_max", _torch("CosineAnnealingLR"),
        ("T_max",), lengths=lambda n: {"T_max": n},
        shown=lambda lr, n, epochs: {"T_max": n, "eta_min": 0.0}),
    "cosine_restarts": SchedulerInfo(
        TORCH_SCHEDULERS["CosineAnnealingWarmRestarts"],
        "CosineAnnealingWarmRestarts: cosine restarted every T_0 (x T_mult)",
        _torch("CosineAnnealingWarmRestarts"), ("T_0",), lengths=lambda n: {"T_0": max(1, n // 4)},
        shown=lambda lr, n, epochs: {"T_0": max(1, n // 4)}),
    "plateau": SchedulerInfo(
        TORCH_SCHEDULERS["ReduceLROnPlateau"],
        "ReduceLROnPlateau: x factor when the monitored metric stalls (mode follows it)",
        _torch("ReduceLROnPlateau"),
        shown=lambda lr, n, epochs: {"factor": 0.5, "patience": max(1, epochs // 10)}, only="metric"),
    "onecycle": SchedulerInfo(
        TORCH_SCHEDULERS["OneCycleLR"],
        "OneCycleLR: up to max_lr then down, per optimizer step", _onecycle, ("total_steps",),
        lengths=lambda n: {"total_steps": n}, shown=lambda lr, n, epochs: {"max_lr": lr}, only="step"),
    "cyclic": SchedulerInfo(
        TORCH_SCHEDULERS["CyclicLR"],
        "CyclicLR: base_lr <-> max_lr triangles (4 cycles per run), per optimizer step",
        _cyclic, lengths=lambda n: {"step_size_up": max(1, n // 8)},
        shown=lambda lr, n, epochs: {"base_lr": lr / 10, "max_lr": lr, "step_size_up": max(1, n // 8)},
        only="step"),
    "linear": SchedulerInfo(
        TORCH_SCHEDULERS["LinearLR"],
        "LinearLR: linear from start_factor to end_factor over total_iters",
        _torch("LinearLR", start_factor=1.0, end_factor=0.0), ("total_iters",),
        lengths=lambda n: {"total_iters": n},
        shown=lambda lr, n, epochs: {"start_factor": 1.0, "end_factor": 0.0}),
    "polynomial": SchedulerInfo(
        TORCH_SCHEDULERS["PolynomialLR"],
        "PolynomialLR: (1 - t/total_iters)^power decay to eta_min (default 0)", _polynomial,
        ("total_iters",), lengths=lambda n: {"total_iters": n},
        shown=lambda lr, n, epochs: {"power": 1.0, "eta_min": 0.0}),
    "wsd": SchedulerInfo(
        "epoch", "warmup-stable-decay: constant, then a decay over the last decay_fraction (0.2)",
        _wsd, ("total_iters",), lengths=lambda n: {"total_iters": n},
        shown=lambda lr, n, epochs: {"decay_fraction": 0.2, "decay": "cosine"}),
}


def lookup(name: str) -> SchedulerInfo:
    """The record of ``name``; an unknown name is one line listing the valid ones."""
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise OptiloopError(f"unknown scheduler {name!r}{did_you_mean(name, SCHEDULERS)}; choose one of: "
                            f"{choices(SCHEDULERS)}")
    return SCHEDULERS[key]


# --- argument values, checked before anything is built ------------------------------------------
@dataclass(frozen=True)
class _Range:
    """The valid values of one numeric argument."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    per_group: bool = False  # a list with one value per param group is valid too

    def ok(self, v: Any) -> bool:
        if self.per_group and isinstance(v, (list, tuple)):
            return len(v) > 0 and all(self._one(x) for x in v)
        return self._one(v)

    def _one(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not isinstance(v, int)):
            return False
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def text(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            where = f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            where = f" {'>' if self.low_open else '>='} {self.low:g}"
        else:
            where = ""
        return kind + where + (" (or a list, one per param group)" if self.per_group else "")


_POSITIVE_INT, _COUNT = _Range(integer=True, low=1), _Range(integer=True, low=0)
_FRACTION = _Range(low=0, high=1)
ARGUMENTS: dict[str, _Range] = {
    # lengths and counts
    "step_size": _POSITIVE_INT, "T_max": _POSITIVE_INT, "T_0": _POSITIVE_INT, "T_mult": _POSITIVE_INT,
    "total_iters": _POSITIVE_INT, "total_steps": _POSITIVE_INT, "step_size_up": _POSITIVE_INT,
    "step_size_down": _POSITIVE_INT, "frequency": _POSITIVE_INT, "epochs": _POSITIVE_INT,
    "steps_per_epoch": _POSITIVE_INT, "patience": _COUNT, "cooldown": _COUNT, "warmup_steps": _COUNT,
    "warmup_epochs": _COUNT,
    # learning rates and factors
    "eta_min": _Range(low=0), "min_lr": _Range(low=0, per_group=True),
    "max_lr": _Range(low=0, low_open=True, per_group=True), "base_lr": _Range(low=0, per_group=True),
    "gamma": _Range(low=0, low_open=True), "power": _Range(low=0), "factor": _Range(low=0, high=1, low_open=True,
                                                                                  high_open=True),
    "threshold": _Range(low=0), "eps": _Range(low=0), "pct_start": _FRACTION,
    "div_factor": _Range(low=0, low_open=True), "final_div_factor": _Range(low=0, low_open=True),
    "start_factor": _Range(low=0, high=1, low_open=True), "end_factor": _FRACTION,
    "decay_fraction": _Range(low=0, high=1, low_open=True),
    "base_momentum": _Range(low=0, per_group=True), "max_momentum": _Range(low=0, per_group=True),
}
_FLAGS = ("three_phase", "cycle_momentum", "verbose")


def check_arguments(name: str, kwargs: Mapping[str, Any]) -> None:
    """One line naming the first argument whose value is out of range, and the valid range.

    Example:
        >>> check_arguments("step", {"step_size": 0})
        Traceback (most recent call last):
        ...
        optiloop.errors.OptiloopError: scheduler 'step': step_size must be an integer >= 1 (got 0)
    """
    for key, value in kwargs.items():
        if value is None:
            continue
        if key in ARGUMENTS and not ARGUMENTS[key].ok(value):
            raise OptiloopError(f"scheduler {name!r}: {key} must be {ARGUMENTS[key].text()} (got {value!r})")
        if key == "milestones" and not _increasing_ints(value):
            raise OptiloopError(f"scheduler {name!r}: milestones must be a strictly increasing list of "
                                f"integers >= 1, e.g. [30, 60] (got {value!r})")
        if key in _FLAGS and not isinstance(value, bool):
            raise OptiloopError(f"scheduler {name!r}: {key} must be true or false (got {value!r})")
        if key in ("monitor", "interval") and not isinstance(value, str):
            raise OptiloopError(f"scheduler {name!r}: {key} must be a string (got {value!r})")


def _increasing_ints(v: Any) -> bool:
    if not isinstance(v, (list, tuple)) or not v:
        return False
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
        return False
    return all(v[i] < v[i + 1] for i in range(len(v) - 1))


# --- the built schedule ------------------------------------------------------------------------
class Schedule:
    """A torch LR scheduler plus its interval, frequency and optional warmup. The loop drives it.

    Attributes:
        scheduler: the torch scheduler (or None for ``constant``).
        interval: "epoch", "step" or "metric": when the main scheduler is stepped.
        frequency: it is stepped on every ``frequency``-th of those moments.
        monitor: the metric a "metric" schedule reads (default ``"val_loss"``); a plateau
            stepped per step reads the step's training loss (``"train_loss"``).
        strict: a missing monitor is an error (True) or a warning and no step (False).
        needs_loss: it is stepped with each optimizer step's loss (plateau per step).
        warmup: the linear warmup in front, or None.
        derived: the arguments taken from the run's length (``T_max`` ...), for headers;
            ``recorded``: those of them a run's config records (``step_size`` ...).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> s = ol.build_scheduler("step", opt, epochs=30, step_size=10)
        >>> s.interval
        'epoch'
    """

    def __init__(
        self,
        scheduler: tls.LRScheduler | tls.ReduceLROnPlateau | None,
        optimizer: torch.optim.Optimizer,
        interval: str,
        *,
        warmup: LinearWarmup | None = None,
        monitor: str | None = None,
        name: str = "custom",
        frequency: int = 1,
        derived: Mapping[str, Any] | None = None,
        recorded: Mapping[str, Any] | None = None,
        strict: bool = True,
    ):
        if interval not in INTERVALS:
            raise OptiloopError(f"unknown interval {interval!r}; choose one of: {choices(INTERVALS)}")
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.interval = interval
        self.frequency = frequency
        self.warmup = warmup
        self.needs_loss = interval == "step" and _is_plateau(scheduler)
        self.monitor = monitor if interval == "metric" or self.needs_loss else None
        self.strict = strict
        self.name = name
        self.derived, self.recorded = dict(derived or {}), dict(recorded or {})
        self.steps_done = 0  # optimizer steps seen; drives warmup
        self.events = 0  # moments of the interval since the main schedule began (frequency counts them)
        self.handed_over = False  # another scheduler sets the LR now (SWA's SWALR): the loop's calls do nothing
        # The LRs the main schedule set, before any warmup factor: the warmup rises to them, and
        # (plateau) they are restored before each step so torch's formulas never see warmed-down LRs.
        self._main_lrs = [g["lr"] for g in optimizer.param_groups]
        self._apply_warmup()

    @property
    def warmup_steps(self) -> int:
        return self.warmup.steps if self.warmup is not None else 0

    def hand_over(self) -> None:
        """Stop setting the LR for good: another scheduler takes over (``ol.SWA``'s SWALR). The
        loop's calls then do nothing; a checkpoint remembers it."""
        self.handed_over = True

    # -- driven by the loop -------------------------------------------------------------------
    def step_end(self, loss: Any = None) -> None:
        """Call after every optimizer step; ``loss`` (the step's, a device scalar) for a plateau
        stepped per step (``needs_loss``): it reads it, one host sync per plateau step."""
        if self.handed_over:
            return
        self.steps_done += 1
        if self.interval == "step" and self._main_running():
            self._tick(loss if self.needs_loss else None)
        else:
            self._apply_warmup()

    def epoch_end(self, metric: float | None = None) -> None:
        """Call after every epoch's evaluation; ``metric`` is required for "metric" schedules."""
        if self.handed_over:
            return
        if self.interval == "epoch" and self._main_running():
            self._tick()
        elif self.interval == "metric":
            if metric is None:
                raise OptiloopError(f"scheduler {self.name!r} steps on a metric but got none")
            self._tick(metric)

    def monitor_missing(self, logs: Mapping[str, Any]) -> None:
        """The epoch's logs lack the monitor: one line (strict), or a warning and no step."""
        text = (f"scheduler {self.name!r} monitors {self.monitor!r}, which is not in the epoch's logs "
                f"({', '.join(logs)})")
        if self.strict:
            raise OptiloopError(f"{text}; monitor one of them, or pass strict=False to skip its step with a warning")
        warnings.warn(f"{text}: not stepped this epoch (strict=False)", UserWarning, stacklevel=3)

    # -- internals ------------------------------------------------------------------------------
    def _main_running(self) -> bool:
        """The main schedule has trained at least one step (after the warmup, when it is in front)."""
        return self.warmup_steps == 0 or self.steps_done > self.warmup_steps

    def _tick(self, metric: float | None = None) -> None:
        self.events += 1
        if self.events % self.frequency == 0:
            self._step_main(metric)

    def _step_main(self, metric: float | None = None) -> None:
        if self.scheduler is None:
            return
        warming = self.steps_done < self.warmup_steps  # only a plateau steps during its warmup
        if warming:  # undo the warmup factor so torch's formulas see their own LRs
            for g, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
                g["lr"] = lr
        if metric is None:
            self.scheduler.step()
        else:
            self.scheduler.step(metric)
        self._main_lrs = [g["lr"] for g in self.optimizer.param_groups]
        if warming:
            self._apply_warmup()

    def _apply_warmup(self) -> None:
        # Only during the warmup and at its last step: afterwards the main scheduler alone sets
        # the LR, and changes made from outside (a callback) are not undone.
        if self.warmup is None or self.steps_done > self.warmup.steps or self.handed_over:
            return
        factor = self.warmup(self.steps_done)
        for g, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
            g["lr"] = lr * factor

    # -- inspection and persistence ---------------------------------------------------------
    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,  # a resume checks it is this run's kind of schedule
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "interval": self.interval,
            "steps_done": self.steps_done,
            "events": self.events,
            "main_lrs": list(self._main_lrs),
            "lrs": self.get_last_lr(),
            "handed_over": self.handed_over,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["interval"] != self.interval:
            raise OptiloopError(
                f"scheduler state is for interval {state['interval']!r}, not {self.interval!r}"
            )
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = int(state["steps_done"])
        self.events = int(state.get("events", 0))
        self.handed_over = bool(state.get("handed_over", False))
        self._main_lrs = [float(x) for x in state["main_lrs"]]
        for g, lr in zip(self.optimizer.param_groups, state.get("lrs", self._main_lrs), strict=True):
            g["lr"] = float(lr)  # the LR the next step trains with, whoever built the optimizer
        self._apply_warmup()

    def __repr__(self) -> str:
        w = f", warmup_steps={self.warmup.steps}" if self.warmup else ""
        f = f", frequency={self.frequency}" if self.frequency != 1 else ""
        return f"Schedule({self.name!r}, interval={self.interval!r}{f}{w})"


# --- lengths ----------------------------------------------------------------------------------
def run_length(name: str, epochs: int | None, steps_per_epoch: int | None,
               interval: str | None = None) -> int | None:
    """The run's length in the scheduler's own unit: optimizer steps when it is stepped per step
    (``interval``, default the name's own), else epochs. None when it cannot be known.

    Example:
        >>> run_length("cosine", 10, 5), run_length("onecycle", 10, 5), run_length("cosine", 10, 5, "step")
        (10, 50, 50)
    """
    if (interval or lookup(name).interval) == "step":
        return epochs * steps_per_epoch if epochs and steps_per_epoch else None
    return epochs


def main_length(name: str, epochs: int | None, steps_per_epoch: int | None, interval: str | None = None,
                warmup_steps: int = 0, frequency: int = 1) -> int | None:
    """The length of the main schedule's own run: the run's length in its unit (see
    :func:`run_length`) less the warmup in front of it, in the scheduler's own steps (one per
    ``frequency`` moments). None when it cannot be known; it may be <= 0 (a warmup as long as
    the run).

    Example:
        >>> main_length("cosine", 10, 5, warmup_steps=10), main_length("cosine", 10, 5, "step", 10, frequency=2)
        (8, 20)
    """
    interval = interval or lookup(name).interval
    length = run_length(name, epochs, steps_per_epoch, interval)
    if length is None:
        return None
    if warmup_steps and interval != "metric":
        if interval == "step":
            length -= warmup_steps
        elif steps_per_epoch:
            length -= warmup_steps // steps_per_epoch  # the epochs spent wholly in warmup
        else:
            return None  # epochs of warmup unknown
    return math.ceil(length / frequency) if length > 0 else length


def default_arguments(name: str, length: int | None) -> dict[str, Any]:
    """Arguments a scheduler needs but a user may not give, derived from the schedule's
    ``length`` (see :func:`main_length`): step every third of the run, milestones at 50% and 75%,
    gamma 0.9 for exponential. Empty when ``length`` is unknown or the name needs nothing.

    Example:
        >>> default_arguments("multistep", 40)
        {'milestones': [20, 30]}
    """
    return lookup(name).recorded(length) if length and length > 0 else {}


def shown_arguments(name: str, lr: float, epochs: int, steps_per_epoch: int = 1,
                    interval: str | None = None, *, warmup_epochs: int | None = None,
                    warmup_steps: int | None = None, frequency: int = 1) -> dict[str, Any]:
    """The arguments ``optiloop schedule`` shows (and uses) for ``name`` when the user gives none,
    so every name plots. Lengths are in the schedule's own steps, after any warmup.

    Example:
        >>> shown_arguments("step", 0.1, 12)
        {'step_size': 4, 'gamma': 0.1}
        >>> shown_arguments("cosine", 0.1, 12, warmup_epochs=2)
        {'T_max': 10, 'eta_min': 0.0}
    """
    steps = warmup_steps or (warmup_epochs or 0) * steps_per_epoch
    length = main_length(name, epochs, steps_per_epoch, interval, steps, frequency)
    length = length if length and length > 0 else 1
    return {**default_arguments(name, length), **lookup(name).shown(lr, length, epochs)}


def _make(name: str, opt: torch.optim.Optimizer, length: int | None, kw: dict[str, Any],
          run: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Build the torch scheduler. ``length``: the main schedule's own length. Returns it with the
    arguments derived from the length and, of those, the ones to record."""
    info = lookup(name)
    if info.make is None:
        return None, {}, {}
    recorded = {k: v for k, v in info.recorded(length).items() if k not in kw} if length else {}
    derived = {**recorded, **{k: v for k, v in info.lengths(length).items() if k not in kw}} if length else {}
    kw = {**derived, **kw}
    for key in info.needs:
        if kw.get(key) is None:
            raise OptiloopError(f"scheduler {name!r} needs {key}= (or the run's length: {run})")
    return info.make(opt, **kw), derived, recorded


def build_scheduler(
    spec: str | Mapping[str, Any] | Schedule | tls.LRScheduler | tls.ReduceLROnPlateau | None,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    interval: str | None = None,
    frequency: int | None = None,
    warmup_epochs: int | None = None,
    warmup_steps: int | None = None,
    monitor: str | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> Schedule:
    """Build a scheduler by name and attach its interval.

    Args:
        spec: a name (``"cosine"``, ``"onecycle"``, ``"wsd"`` ...; lengths and required arguments
            default from the run: see ``default_arguments``), a dict ``{"name": ..., **kwargs}``,
            a built torch scheduler (interval inferred: OneCycleLR/CyclicLR per step,
            ReduceLROnPlateau on the metric, others per epoch; pass ``interval=`` to override),
            or None for constant LR.
        optimizer: the optimizer whose ``param_groups`` the scheduler drives.
        epochs, steps_per_epoch: the run's length; used for default lengths (``T_max``,
            ``total_steps`` ...) and to convert ``warmup_epochs`` to steps.
        interval: override the default interval ("epoch" or "step"; "metric" is plateau's own).
        frequency: step the scheduler on every N-th epoch / optimizer step / evaluation
            (Lightning's ``frequency``); derived lengths count its own steps. Default 1.
        warmup_epochs / warmup_steps: linear warmup over that many optimizer steps to the main
            schedule's starting LR, which then runs over the remaining steps (see the module
            docstring; a built scheduler keeps the lengths you gave it and starts after the
            warmup; plateau's LR is multiplied by the warmup factor instead).
        monitor: the metric a plateau schedule reads after each evaluation (default
            ``"val_loss"``); its ``mode`` follows the monitor (``optiloop.directions``) unless
            given. With ``interval="step"`` a plateau reads each optimizer step's training loss
            (``"train_loss"``, the one value a step has; one host sync per plateau step).
        strict: a plateau whose monitor is missing from an epoch's logs stops the run with one
            line (True, checked before training where the keys are known), or warns and skips
            that step (False, Lightning's ``strict``).
        **kwargs: torch's own keyword names for the chosen scheduler (``step_size``, ``gamma``,
            ``T_max``, ``eta_min``, ``milestones``, ``factor``, ``patience``, ``max_lr`` ...);
            their values are checked first (``ARGUMENTS``).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> ol.build_scheduler("onecycle", opt, epochs=3, steps_per_epoch=10).interval
        'step'
    """
    from torch.optim import lr_scheduler as tls

    if isinstance(spec, (Schedule, tls.LRScheduler, tls.ReduceLROnPlateau)) and spec.optimizer is not optimizer:
        raise OptiloopError("the built scheduler drives another optimizer than the one being trained; "
                            "build the scheduler on that optimizer and pass both, or pass the scheduler's name")
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(strict, bool):
        raise OptiloopError(f"scheduler: strict must be true or false (got {strict!r})")
    if isinstance(spec, (tls.LRScheduler, tls.ReduceLROnPlateau)):
        return _wrap_built(spec, optimizer, interval, frequency, warmup_epochs, warmup_steps, steps_per_epoch,
                           _monitor(monitor, interval, type(spec).__name__, plateau=_is_plateau(spec)), strict)
    if spec is None:
        spec = "constant"
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise OptiloopError(f"scheduler config needs a 'name'; choose one of: {choices(SCHEDULERS)}")
        name = spec.pop("name")
        interval = spec.pop("interval", interval)
        frequency = spec.pop("frequency", frequency)
        warmup_epochs = spec.pop("warmup_epochs", warmup_epochs)
        warmup_steps = spec.pop("warmup_steps", warmup_steps)
        monitor = spec.pop("monitor", monitor)
        strict = spec.pop("strict", strict)
        if not isinstance(strict, bool):
            raise OptiloopError(f"scheduler {name!r}: strict must be true or false (got {strict!r})")
        kwargs = {**spec, **kwargs}
    else:
        name = spec
    info = lookup(name)
    name = str(name).lower()
    check_arguments(name, {**kwargs, "interval": interval, "frequency": frequency, "warmup_epochs": warmup_epochs,
                           "warmup_steps": warmup_steps, "monitor": monitor, "epochs": epochs,
                           "steps_per_epoch": steps_per_epoch})
    monitor = _monitor(monitor, interval, name, plateau=info.only == "metric")
    if interval is None:
        interval = info.interval
    elif info.only == "metric" and interval == "step":
        pass  # a plateau on every optimizer step's loss (Lightning's interval="step" plateau)
    elif info.only == "metric" and interval != "metric":
        raise OptiloopError(f"scheduler {name!r} steps on its monitored metric after each evaluation (interval="
                            f"'metric', its default) or on each optimizer step's loss (interval='step'); "
                            f"interval={interval!r} does not apply")
    elif info.only is not None and interval != info.only:
        raise OptiloopError(f"scheduler {name!r} steps per {info.only}; interval={interval!r} does not apply")
    elif interval not in ("epoch", "step"):
        raise OptiloopError(f"unknown interval {interval!r}; choose one of: epoch, step")
    frequency = frequency or 1
    warm = _warmup(warmup_epochs, warmup_steps, steps_per_epoch)
    w = warm.steps if warm else 0
    length = main_length(name, epochs, steps_per_epoch, interval, w, frequency)
    if length is not None and length <= 0 and info.derives:
        raise OptiloopError(f"scheduler {name!r}: the warmup ({w} steps) leaves no {interval}s of the run for the "
                            "schedule; shorten the warmup or train longer")
    if (interval == "metric" or info.only == "metric") and "mode" not in kwargs:
        try:
            kwargs["mode"] = mode_for(monitor)
        except OptiloopError as e:
            raise OptiloopError(f"scheduler {name!r}: {e}") from None
    run = "epochs and steps_per_epoch" if interval == "step" or w else "epochs"
    try:
        sched, derived, recorded = _make(name, optimizer, length, dict(kwargs), run)
    except (TypeError, ValueError) as e:  # a keyword torch's class does not take, or a bad value
        raise OptiloopError(f"scheduler {name!r}: {_first_line(e)}") from None
    return Schedule(sched, optimizer, interval, warmup=warm, monitor=monitor, name=name, frequency=frequency,
                    derived=derived, recorded=recorded, strict=strict)


def _is_plateau(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "ReduceLROnPlateau"


def _monitor(monitor: str | None, interval: str | None, name: str, *, plateau: bool) -> str:
    """A plateau stepped per step reads the step's training loss: the one value each step has."""
    if not (plateau and interval == "step"):
        return monitor or "val_loss"
    if monitor not in (None, "train_loss"):
        raise OptiloopError(f"scheduler {name!r} with interval='step' reads each optimizer step's training loss "
                            f"(monitor='train_loss'); {monitor!r} is logged once per epoch: leave interval out to "
                            "step it on that")
    return "train_loss"


def _wrap_built(spec, optimizer, interval, frequency, warmup_epochs, warmup_steps, steps_per_epoch,
                monitor, strict=True) -> Schedule:
    """A scheduler the user built: its interval inferred or given, checked against its kind."""
    name = type(spec).__name__
    check_arguments(name, {"interval": interval, "frequency": frequency, "warmup_epochs": warmup_epochs,
                           "warmup_steps": warmup_steps, "monitor": monitor})
    inferred = torch_interval([c.__name__ for c in type(spec).__mro__])
    if inferred == "metric":
        _check_plateau_mode(spec, monitor)
    elif inferred == "step":
        if interval == "epoch":
            warnings.warn(f"{name} is meant to be stepped after every optimizer step; with interval='epoch' "
                          "it moves once per epoch and its cycle spans total_steps epochs", UserWarning,
                          stacklevel=3)
    warm = _warmup(warmup_epochs, warmup_steps, steps_per_epoch)
    return Schedule(spec, optimizer, interval or inferred, warmup=warm, monitor=monitor, name=name,
                    frequency=frequency or 1, strict=strict)


def _check_plateau_mode(spec: Any, monitor: str) -> None:
    """A built ReduceLROnPlateau whose mode contradicts a monitor of known direction would cut the
    LR while the metric improves: refuse it."""
    try:
        expected = mode_for(monitor)
    except OptiloopError:
        return  # a name of no known direction: the mode the user built it with decides
    if spec.mode != expected:
        raise OptiloopError(f"ReduceLROnPlateau(mode={spec.mode!r}) would cut the LR while {monitor} improves; "
                            f"build it with mode={expected!r}")


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


def _warmup(warmup_epochs, warmup_steps, steps_per_epoch) -> LinearWarmup | None:
    if warmup_epochs and warmup_steps:
        raise OptiloopError("give warmup_epochs or warmup_steps, not both")
    if warmup_epochs:
        if not steps_per_epoch:
            raise OptiloopError("warmup_epochs needs steps_per_epoch to count optimizer steps")
        warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps is not None and warmup_steps < 0:
        raise OptiloopError(f"warmup must be >= 0 steps, got {warmup_steps}")
    return LinearWarmup(int(warmup_steps)) if warmup_steps else None


def preview_schedule(
    spec: str | Mapping[str, Any],
    *,
    lr: float = 0.1,
    epochs: int = 10,
    steps_per_epoch: int = 1,
    metrics: Sequence[float] | None = None,
    per_step: bool = False,
    **kwargs: Any,
) -> list[float]:
    """The LR sequence a schedule produces, with no model or data.

    Returns the LR in effect for each epoch (its first optimizer step), or for each optimizer step
    with ``per_step=True``. A plateau schedule needs ``metrics``: one monitored value per epoch.

    Example:
        >>> import optiloop as ol
        >>> [round(x, 4) for x in ol.preview_schedule("step", lr=0.1, epochs=4, step_size=2)]
        [0.1, 0.1, 0.01, 0.01]
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise OptiloopError("epochs and steps_per_epoch must be >= 1")
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    sched = build_scheduler(spec, opt, epochs=epochs, steps_per_epoch=steps_per_epoch, **kwargs)
    if sched.interval == "metric":
        if metrics is None or len(metrics) < epochs:
            raise OptiloopError(
                f"a plateau schedule reacts to a metric: pass metrics= with {epochs} values"
            )
    out: list[float] = []
    for epoch in range(epochs):
        for s in range(steps_per_epoch):
            if per_step or s == 0:
                out.append(opt.param_groups[0]["lr"])
            opt.step()  # a no-op update that keeps torch's "step order" bookkeeping honest
            sched.step_end()
        sched.epoch_end(metrics[epoch] if sched.interval == "metric" else None)
    return out


def describe(name: str) -> str:
    """One line: the scheduler's interval and what it does."""
    info = lookup(name)
    return f"{info.interval:<6}  {info.description}"
