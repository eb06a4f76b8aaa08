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

One :class:`SchedulerInfo` per name in :data:`SCHEDULERS` holds everything optiloop knows about
it: interval, builder, the arguments derived from the run's length, and what ``optiloop schedule``
shows. Adding a name is adding a record. torch is imported only when a scheduler is built, so
listing the names costs nothing.

Warmup (``warmup_steps=`` or ``warmup_epochs=``) multiplies the LR the main schedule sets by
``k / W`` at optimizer step ``k`` for the first ``W`` steps, then by 1; the main schedule runs
unchanged underneath, so it works in front of every scheduler, plateau included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import OptiloopError, choices

if TYPE_CHECKING:
    import torch
    from torch.optim import lr_scheduler as tls

INTERVALS = ("epoch", "step", "metric")


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
    return lr_scheduler.OneCycleLR(optimizer, **kwargs)


@dataclass(frozen=True)
class SchedulerInfo:
    """One scheduler name. ``length`` below is the run's length in the scheduler's own unit:
    epochs, or optimizer steps when it is stepped per step.

    Attributes:
        interval: when the loop steps it by default: "epoch", "step" or "metric".
        description: one line for ``optiloop list``.
        make: ``(optimizer, **kwargs) -> torch scheduler``; None: constant LR, nothing to step.
        needs: keywords the torch class requires; each is filled from the length when not given.
        recorded: ``length -> arguments`` with no torch default (step_size ...): a run's
            config.toml records them, so it says what ran.
        lengths: ``length -> arguments`` derived when it is built (T_max ...): not recorded, so
            they follow the run when its epochs change.
        shown: ``(lr, length, epochs) -> arguments`` that ``optiloop schedule`` shows and uses
            besides the recorded ones: torch's defaults worth seeing, a plateau that visibly reacts.
    """

    interval: str
    description: str
    make: Callable[..., Any] | None
    needs: tuple[str, ...] = ()
    recorded: Callable[[int], dict[str, Any]] = _nothing
    lengths: Callable[[int], dict[str, Any]] = _nothing
    shown: Callable[[float, int, int], dict[str, Any]] = field(default=lambda lr, length, epochs: {})


SCHEDULERS: dict[str, SchedulerInfo] = {
    "constant": SchedulerInfo("epoch", "the optimizer's LR throughout", None),
    "step": SchedulerInfo(
        "epoch", "StepLR: x gamma every step_size epochs", _torch("StepLR"), ("step_size",),
        recorded=lambda n: {"step_size": max(1, n // 3)},  # a drop every third of the run
        shown=lambda lr, n, epochs: {"gamma": 0.1}),
    "multistep": SchedulerInfo(
        "epoch", "MultiStepLR: x gamma at each milestone", _torch("MultiStepLR"), ("milestones",),
        recorded=lambda n: {"milestones": sorted({max(1, n // 2), max(1, n * 3 // 4)})},
        shown=lambda lr, n, epochs: {"gamma": 0.1}),
    "exponential": SchedulerInfo(
        "epoch", "ExponentialLR: x gamma every epoch", _torch("ExponentialLR"), ("gamma",),
        recorded=lambda n: {"gamma": 0.9}),
    "cosine": SchedulerInfo(
        "epoch", "CosineAnnealingLR: half cosine to eta_min over T_max", _torch("CosineAnnealingLR"),
        ("T_max",), lengths=lambda n: {"T_max": n},
        shown=lambda lr, n, epochs: {"T_max": n, "eta_min": 0.0}),
    "cosine_restarts": SchedulerInfo(
        "epoch", "CosineAnnealingWarmRestarts: cosine restarted every T_0 (x T_mult)",
        _torch("CosineAnnealingWarmRestarts"), ("T_0",), lengths=lambda n: {"T_0": max(1, n // 4)},
        shown=lambda lr, n, epochs: {"T_0": max(1, n // 4)}),
    "plateau": SchedulerInfo(
        "metric", "ReduceLROnPlateau: x factor when the monitored metric stalls",
        _torch("ReduceLROnPlateau"),
        shown=lambda lr, n, epochs: {"factor": 0.5, "patience": max(1, epochs // 10)}),
    "onecycle": SchedulerInfo(
        "step", "OneCycleLR: up to max_lr then down, per optimizer step", _onecycle, ("total_steps",),
        lengths=lambda n: {"total_steps": n}, shown=lambda lr, n, epochs: {"max_lr": lr}),
    "linear": SchedulerInfo(
        "epoch", "LinearLR: linear from start_factor to end_factor over total_iters",
        _torch("LinearLR", start_factor=1.0, end_factor=0.0), ("total_iters",),
        lengths=lambda n: {"total_iters": n},
        shown=lambda lr, n, epochs: {"start_factor": 1.0, "end_factor": 0.0}),
    "polynomial": SchedulerInfo(
        "epoch", "PolynomialLR: polynomial decay to 0 over total_iters", _torch("PolynomialLR"),
        ("total_iters",), lengths=lambda n: {"total_iters": n},
        shown=lambda lr, n, epochs: {"power": 1.0}),
}


def lookup(name: str) -> SchedulerInfo:
    """The record of ``name``; an unknown name is one line listing the valid ones."""
    key = str(name).lower()
    if key not in SCHEDULERS:
        raise OptiloopError(f"unknown scheduler {name!r}; choose one of: {choices(SCHEDULERS)}")
    return SCHEDULERS[key]


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


def default_arguments(name: str, length: int | None) -> dict[str, Any]:
    """Arguments a scheduler needs but a user may not give, derived from the run's ``length``
    (see :func:`run_length`): step every third of the run, milestones at 50% and 75%, gamma 0.9
    for exponential. Empty when ``length`` is unknown or the name needs nothing.

    Example:
        >>> default_arguments("multistep", 40)
        {'milestones': [20, 30]}
    """
    return lookup(name).recorded(length) if length else {}


def shown_arguments(name: str, lr: float, epochs: int, steps_per_epoch: int = 1,
                    interval: str | None = None) -> dict[str, Any]:
    """The arguments ``optiloop schedule`` shows (and uses) for ``name`` when the user gives none,
    so every name plots. Lengths are in the schedule's own unit.

    Example:
        >>> shown_arguments("step", 0.1, 12)
        {'step_size': 4, 'gamma': 0.1}
    """
    length = run_length(name, epochs, steps_per_epoch, interval) or epochs
    return {**default_arguments(name, length), **lookup(name).shown(lr, length, epochs)}


def _make(name: str, opt: torch.optim.Optimizer, length: int | None, interval: str,
          kw: dict[str, Any]) -> Any:
    """Build the torch scheduler. ``length`` is the run's length in the scheduler's own unit."""
    info = lookup(name)
    if info.make is None:
        return None
    if length:
        kw = {**info.recorded(length), **info.lengths(length), **kw}
    for key in info.needs:
        if kw.get(key) is None:
            run = "epochs and steps_per_epoch" if interval == "step" else "epochs"
            raise OptiloopError(f"scheduler {name!r} needs {key}= (or the run's length: {run})")
    return info.make(opt, **kw)


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
    from torch.optim import lr_scheduler as tls

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
    default_interval = lookup(name).interval
    if interval is None:
        interval = default_interval
    elif interval != default_interval and (name in ("plateau", "onecycle") or interval == "metric"):
        raise OptiloopError(f"scheduler {name!r} steps per {default_interval}; interval={interval!r} "
                            "does not apply")
    elif interval not in ("epoch", "step"):
        raise OptiloopError(f"unknown interval {interval!r}; choose one of: epoch, step")
    if epochs is not None and epochs < 1:
        raise OptiloopError(f"epochs must be >= 1, got {epochs}")
    length = run_length(name, epochs, steps_per_epoch, interval)
    try:
        sched = _make(name, optimizer, length, interval, dict(kwargs))
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

