"""LR schedulers by name, each carrying the moment it must be stepped.

Every name builds a torch.optim.lr_scheduler object; optiloop only adds what torch leaves to the
user: *when* to step it (``interval``), sensible lengths from ``epochs`` / ``steps_per_epoch``,
and linear warmup in front of any of them.

Intervals:
    "epoch"  stepped once after each epoch (step, multistep, exponential, cosine, ...), as the
             PyTorch docs teach; pass ``interval="step"`` to step them per optimizer step instead
             (then lengths such as ``T_max`` default to the total number of steps).
    "step"   stepped after every optimizer step (onecycle).
    "metric" stepped after each epoch's evaluation with the monitored value (plateau).

Warmup (``warmup_steps=`` or ``warmup_epochs=``) multiplies the LR the main schedule sets by
``k / W`` at optimizer step ``k`` for the first ``W`` steps, then by 1; the main schedule runs
unchanged underneath, so it works in front of every scheduler, plateau included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler as tls

from .errors import OptiloopError, choices

INTERVALS = ("epoch", "step", "metric")

# name -> (default interval, one-line description). Built by _make below.
SCHEDULERS: dict[str, tuple[str, str]] = {
    "constant": ("epoch", "the optimizer's LR throughout"),
    "step": ("epoch", "StepLR: x gamma every step_size epochs"),
    "multistep": ("epoch", "MultiStepLR: x gamma at each milestone"),
    "exponential": ("epoch", "ExponentialLR: x gamma every epoch"),
    "cosine": ("epoch", "CosineAnnealingLR: half cosine to eta_min over T_max"),
    "cosine_restarts": ("epoch", "CosineAnnealingWarmRestarts: cosine restarted every T_0 (x T_mult)"),
    "plateau": ("metric", "ReduceLROnPlateau: x factor when the monitored metric stalls"),
    "onecycle": ("step", "OneCycleLR: up to max_lr then down, per optimizer step"),
    "linear": ("epoch", "LinearLR: linear from start_factor to end_factor over total_iters"),
    "polynomial": ("epoch", "PolynomialLR: polynomial decay to 0 over total_iters"),
}


@dataclass(frozen=True)
class LinearWarmup:
    """LR multiplier ``k / steps`` for optimizer step ``k`` (1-based) up to ``steps``, then 1.

    ``multiplier(done)`` is the factor for the next step after ``done`` completed steps, so the
    first step trains at ``lr / steps`` (never a wasted step at LR 0) and step ``steps`` at ``lr``.
    """

    steps: int

    def __call__(self, done: int) -> float:
        return min(1.0, (done + 1) / self.steps) if self.steps > 0 else 1.0


class Schedule:
    """A torch LR scheduler plus its interval and optional warmup. The loop drives it.

    Attributes:
        scheduler: the torch scheduler (or None for ``constant`` with no warmup work to do).
        interval: "epoch", "step" or "metric": when the main scheduler is stepped.
        monitor: the metric a "metric" schedule reads (default ``"val_loss"``).

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
    ):
        if interval not in INTERVALS:
            raise OptiloopError(f"unknown interval {interval!r}; choose one of: {choices(INTERVALS)}")
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.interval = interval
        self.warmup = warmup
        self.monitor = monitor if interval == "metric" else None
        self.name = name
        self.steps_done = 0  # optimizer steps seen; drives warmup
        # The LRs the main schedule set, before the warmup factor: restored before each step of
        # the main scheduler so its recursive formulas (lr * gamma ...) never see warmed-down LRs.
        self._main_lrs = [g["lr"] for g in optimizer.param_groups]
        self._apply_warmup()

    # -- driven by the loop -------------------------------------------------------------------
    def step_end(self) -> None:
        """Call after every optimizer step."""
        self.steps_done += 1
        if self.interval == "step":
            self._step_main()
        else:
            self._apply_warmup()

    def epoch_end(self, metric: float | None = None) -> None:
        """Call after every epoch's evaluation; ``metric`` is required for "metric" schedules."""
        if self.interval == "epoch":
            self._step_main()
        elif self.interval == "metric":
            if metric is None:
                raise OptiloopError(f"scheduler {self.name!r} steps on a metric but got none")
            self._step_main(metric)

    # -- internals ------------------------------------------------------------------------------
    def _step_main(self, metric: float | None = None) -> None:
        if self.scheduler is not None:
            if self.warmup is not None:  # undo the warmup factor so torch's formulas see their LRs
                for g, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
                    g["lr"] = lr
            if metric is None:
                self.scheduler.step()
            else:
                self.scheduler.step(metric)
            self._main_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._apply_warmup()

    def _apply_warmup(self) -> None:
        if self.warmup is None:  # nothing to apply: leave param_groups as the scheduler set them
            return
        factor = self.warmup(self.steps_done)
        for g, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
            g["lr"] = lr * factor

    # -- inspection and persistence ---------------------------------------------------------
    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "interval": self.interval,
            "steps_done": self.steps_done,
            "main_lrs": list(self._main_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["interval"] != self.interval:
            raise OptiloopError(
                f"scheduler state is for interval {state['interval']!r}, not {self.interval!r}"
            )
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.steps_done = int(state["steps_done"])
        self._main_lrs = [float(x) for x in state["main_lrs"]]
        self._apply_warmup()

    def __repr__(self) -> str:
        w = f", warmup_steps={self.warmup.steps}" if self.warmup else ""
        return f"Schedule({self.name!r}, interval={self.interval!r}{w})"


def default_arguments(name: str, length: int | None) -> dict[str, Any]:
    """Arguments a scheduler needs but a user may not give, derived from the run's ``length``
    (epochs, or steps for per-step schedules): step every third of the run, milestones at 50% and
    75%, gamma 0.9 for exponential. Empty when ``length`` is unknown or the name needs nothing.

    Example:
        >>> default_arguments("multistep", 40)
        {'milestones': [20, 30]}
    """
    if not length:
        return {}
    if name == "step":
        return {"step_size": max(1, length // 3)}
    if name == "multistep":
        return {"milestones": sorted({max(1, length // 2), max(1, length * 3 // 4)})}
    if name == "exponential":
        return {"gamma": 0.9}
    return {}


def _need(name: str, key: str, value):
    if value is None:
        raise OptiloopError(f"scheduler {name!r} needs {key}=")
    return value


def _make(name: str, opt, length: int | None, kw: dict[str, Any]):
    """Build the torch scheduler. ``length`` is the run's length in the scheduler's own unit."""
    if name == "constant":
        return None
    kw = {**default_arguments(name, length), **kw}
    if name == "step":
        return tls.StepLR(opt, step_size=_need(name, "step_size", kw.pop("step_size", None)), **kw)
    if name == "multistep":
        return tls.MultiStepLR(opt, milestones=_need(name, "milestones", kw.pop("milestones", None)), **kw)
    if name == "exponential":
        return tls.ExponentialLR(opt, gamma=_need(name, "gamma", kw.pop("gamma", None)), **kw)
    if name == "cosine":
        return tls.CosineAnnealingLR(opt, T_max=_need(name, "T_max", kw.pop("T_max", length)), **kw)
    if name == "cosine_restarts":
        t0 = kw.pop("T_0", None) or (max(1, length // 4) if length else None)
        return tls.CosineAnnealingWarmRestarts(opt, T_0=_need(name, "T_0", t0), **kw)
    if name == "plateau":
        return tls.ReduceLROnPlateau(opt, **kw)
    if name == "onecycle":
        kw.setdefault("max_lr", [g["lr"] for g in opt.param_groups])
        total = _need(name, "total_steps (or epochs and steps_per_epoch)", kw.pop("total_steps", length))
        return tls.OneCycleLR(opt, total_steps=total, **kw)
    if name == "linear":
        kw.setdefault("start_factor", 1.0)
        kw.setdefault("end_factor", 0.0)
        return tls.LinearLR(opt, total_iters=_need(name, "total_iters", kw.pop("total_iters", length)), **kw)
    if name == "polynomial":
        return tls.PolynomialLR(opt, total_iters=_need(name, "total_iters", kw.pop("total_iters", length)), **kw)
    raise AssertionError(name)


def build_scheduler(
    spec: str | Mapping[str, Any] | Schedule | tls.LRScheduler | tls.ReduceLROnPlateau | None,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    interval: str | None = None,
    warmup_epochs: int | None = None,
    warmup_steps: int | None = None,
    monitor: str = "val_loss",
    **kwargs: Any,
) -> Schedule:
    """Build a scheduler by name and attach its interval.

    Args:
        spec: a name (``"cosine"``, ``"onecycle"`` ...; lengths and required arguments default from
            the run: see ``default_arguments``), a dict ``{"name": ..., **kwargs}``, a built
            torch scheduler (interval inferred: OneCycleLR/CyclicLR per step, ReduceLROnPlateau on
            the metric, others per epoch; pass ``interval=`` to override), or None for constant LR.
        optimizer: the optimizer whose ``param_groups`` the scheduler drives.
        epochs, steps_per_epoch: the run's length; used for default lengths (``T_max``,
            ``total_steps`` ...) and to convert ``warmup_epochs`` to steps.
        interval: override the default interval ("epoch" or "step"; "metric" is plateau's own).
        warmup_epochs / warmup_steps: linear warmup over that many optimizer steps.
        monitor: the metric a plateau schedule reads after each evaluation.
        **kwargs: torch's own keyword names for the chosen scheduler (``step_size``, ``gamma``,
            ``T_max``, ``eta_min``, ``milestones``, ``factor``, ``patience``, ``max_lr`` ...).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> ol.build_scheduler("onecycle", opt, epochs=3, steps_per_epoch=10).interval
        'step'
    """
    if isinstance(spec, (Schedule, tls.LRScheduler, tls.ReduceLROnPlateau)) and spec.optimizer is not optimizer:
        raise OptiloopError("the built scheduler drives another optimizer than the one being trained; "
                            "build the scheduler on that optimizer and pass both, or pass the scheduler's name")
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (tls.LRScheduler, tls.ReduceLROnPlateau)):
        if isinstance(spec, tls.ReduceLROnPlateau):
            inferred = "metric"
        elif isinstance(spec, (tls.OneCycleLR, tls.CyclicLR)):
            inferred = "step"
        else:
            inferred = "epoch"
        warm = _warmup(warmup_epochs, warmup_steps, steps_per_epoch)
        return Schedule(spec, optimizer, interval or inferred, warmup=warm, monitor=monitor,
                        name=type(spec).__name__)
    if spec is None:
        spec = "constant"
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise OptiloopError(f"scheduler config needs a 'name'; choose one of: {choices(SCHEDULERS)}")
        name = spec.pop("name")
        interval = spec.pop("interval", interval)
        warmup_epochs = spec.pop("warmup_epochs", warmup_epochs)
        warmup_steps = spec.pop("warmup_steps", warmup_steps)
        monitor = spec.pop("monitor", monitor)
        kwargs = {**spec, **kwargs}
    else:
        name = spec
    name = str(name).lower()
    if name not in SCHEDULERS:
        raise OptiloopError(f"unknown scheduler {name!r}; choose one of: {choices(SCHEDULERS)}")
    default_interval = SCHEDULERS[name][0]
    if interval is None:
        interval = default_interval
    elif interval != default_interval and (name in ("plateau", "onecycle") or interval == "metric"):
        raise OptiloopError(f"scheduler {name!r} steps per {default_interval}; interval={interval!r} "
                            "does not apply")
    elif interval not in ("epoch", "step"):
        raise OptiloopError(f"unknown interval {interval!r}; choose one of: epoch, step")
    if epochs is not None and epochs < 1:
        raise OptiloopError(f"epochs must be >= 1, got {epochs}")
    if interval == "step":
        length = epochs * steps_per_epoch if epochs and steps_per_epoch else None
    else:
        length = epochs
    try:
        sched = _make(name, optimizer, length, dict(kwargs))
    except (TypeError, ValueError) as e:  # a keyword torch's class does not take, or a bad value
        raise OptiloopError(f"scheduler {name!r}: {_first_line(e)}") from None
    warm = _warmup(warmup_epochs, warmup_steps, steps_per_epoch)
    return Schedule(sched, optimizer, interval, warmup=warm, monitor=monitor, name=name)


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
    interval, text = SCHEDULERS[name]
    return f"{interval:<6}  {text}"

