"""Several optimizers in one run: named parts of one step (a GAN's generator and discriminator).

``fit(optimizer={"generator": {...}, "discriminator": {...}})`` builds one optimizer per name, each
on its own parameters and with its own scheduler at its own interval:

    optimizer={
        "generator": {"name": "adam", "lr": 2e-4, "betas": (0.5, 0.999),
                      "scheduler": {"name": "step", "step_size": 10}},        # per epoch
        "discriminator": {"name": "adam", "lr": 2e-4, "params": "critic",
                          "scheduler": {"name": "cosine", "interval": "step"}},  # per step
    }

``params`` chooses a part's parameters: a submodule's name (default: the part's own name), or a
function ``model -> parameters``; no parameter may belong to two parts. ``scheduler`` is any
``build_scheduler`` spec, stepped by the loop at its interval (and ``frequency``) after its own
optimizer's steps. Checkpoints hold every optimizer and scheduler (``Optimizers`` and
``Schedules`` are the state's ``optimizer`` and ``scheduler`` parts), so resume is exact.

Two ways to train them:

- automatic: the step returns one loss per optimizer, ``{"generator": g_loss, "discriminator":
  d_loss}`` (or ``ol.StepOutput(loss={...}, ...)``). Each optimizer steps on the gradients of its
  own loss with respect to its own parameters (``loss.backward(inputs=params)``), all computed at
  the same weights before any of them steps (simultaneous updates), with the loop's accumulation,
  clipping (per optimizer) and bf16 autocast.
- manual (``step=ol.manual(fn)``, Lightning's manual optimization): ``fn(model, batch,
  optimizers)`` receives the optimizers by name and does its own ``zero_grad`` / ``backward`` /
  ``step`` (alternating updates: a GAN's discriminator first, then the generator against the
  updated discriminator). The loop still steps each scheduler at its interval (per call of the
  step, or per epoch) and records what the step returns.

The History's ``train_loss`` / ``val_loss`` is the sum of the parts' losses (one number for
monitors); each part's is logged as ``train_loss_<name>`` / ``val_loss_<name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import map_batch
from .errors import OptiloopError, TrainingInterrupted
from .optim import build_optimizer
from .schedules import Schedule, build_scheduler
from .steps import StepOutput, check_loss, default_count


def is_several(spec: Any) -> bool:
    """``optimizer=`` names several optimizers: a mapping of name -> mapping, without a ``name``."""
    return (isinstance(spec, Mapping) and bool(spec) and "name" not in spec
            and all(isinstance(v, Mapping) for v in spec.values()))


@dataclass(frozen=True)
class ManualStep:
    """A step that does its own optimization: ``fn(model, batch, optimizers)`` (see ``manual``)."""

    fn: Callable[[nn.Module, Any, Mapping[str, torch.optim.Optimizer]], Any]


def manual(fn: Callable[[nn.Module, Any, Mapping[str, torch.optim.Optimizer]], Any]) -> ManualStep:
    """Mark ``fn(model, batch, optimizers)`` as a manual step (Lightning's manual optimization).

    ``optimizers`` maps each name of ``fit(optimizer={...})`` to its torch optimizer; the step calls
    ``zero_grad()``, ``backward()`` and ``step()`` itself and returns its losses (a tensor, a dict
    of tensors by name, or an ``ol.StepOutput``) for the record. The loop steps the schedulers.

    Example:
        >>> import optiloop as ol
        >>> def gan_step(model, batch, opt):
        ...     ...  # opt["discriminator"].zero_grad(); d_loss.backward(); opt["discriminator"].step() ...
        >>> step = ol.manual(gan_step)      # fit(gan, data, optimizer={...}, step=step)
    """
    if not callable(fn):
        raise OptiloopError(f"ol.manual takes a function (model, batch, optimizers), got {type(fn).__name__}")
    return ManualStep(fn)


@dataclass
class Part:
    """One named optimizer: its parameters and its schedule."""

    name: str
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    params: list[nn.Parameter]


class Optimizers:
    """The run's optimizers by name: what ``TrainState.optimizer`` is with several of them.

    ``optimizers["generator"]`` is a torch optimizer; ``param_groups`` lists every part's groups in
    order (group 0, the History's ``lr``, is the first part's); ``state_dict`` holds them all.
    """

    def __init__(self, parts: Mapping[str, Part]):
        self.parts = dict(parts)

    def __getitem__(self, name: str) -> torch.optim.Optimizer:
        return self.parts[name].optimizer

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def items(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(n, p.optimizer) for n, p in self.parts.items()]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for p in self.parts.values() for g in p.optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parts.values():
            p.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {n: p.optimizer.state_dict() for n, p in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.parts):
            raise OptiloopError(f"the checkpoint holds optimizers {', '.join(state)}; this run has "
                                f"{', '.join(self.parts)}")
        for n, p in self.parts.items():
            p.optimizer.load_state_dict(state[n])

    def __repr__(self) -> str:
        return f"Optimizers({', '.join(f'{n}={type(p.optimizer).__name__}' for n, p in self.parts.items())})"


class Schedules:
    """Every part's schedule, as the loop drives one: ``epoch_end`` steps the epoch and metric
    ones (each at its frequency); per-step ones are stepped after their own optimizer's steps."""

    def __init__(self, parts: Mapping[str, Part]):
        self.parts = dict(parts)
        monitors = {p.schedule.monitor for p in self.parts.values() if p.schedule.interval == "metric"}
        if len(monitors) > 1:
            raise OptiloopError(f"the plateau schedulers watch different metrics ({', '.join(sorted(monitors))}); "
                                "watch one")
        self.monitor = next(iter(monitors), None)
        self.interval = "metric" if monitors else "epoch"  # what the loop must pass to epoch_end
        self.strict = all(p.schedule.strict for p in self.parts.values() if p.schedule.interval == "metric")
        self.needs_loss = False  # each part's per-step plateau gets its own optimizer's loss (train_epoch)
        self.name = ", ".join(f"{n}: {p.schedule.name}" for n, p in self.parts.items())
        self.scheduler = None

    def step_end(self) -> None:  # the parts step after their own optimizers (train_epoch)
        pass

    def epoch_end(self, metric: float | None = None) -> None:
        for p in self.parts.values():
            p.schedule.epoch_end(metric if p.schedule.interval == "metric" else None)

    def monitor_missing(self, logs: Mapping[str, Any]) -> None:
        for p in self.parts.values():
            if p.schedule.interval == "metric":
                p.schedule.monitor_missing(logs)
            else:
                p.schedule.epoch_end()

    def hand_over(self) -> None:
        raise OptiloopError("SWA takes over one optimizer's LR; with several optimizers use ol.EMA")

    def get_last_lr(self) -> list[float]:
        return [lr for p in self.parts.values() for lr in p.schedule.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        return {n: p.schedule.state_dict() for n, p in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for n, p in self.parts.items():
            p.schedule.load_state_dict(state[n])


def build(spec: Mapping[str, Mapping[str, Any]], model: nn.Module, *, lr: float | None,
          weight_decay: float | None, scheduler: Any, fast: bool, epochs: int, steps_per_epoch: int
          ) -> tuple[Optimizers, Schedules]:
    """The parts of ``fit(optimizer={...})``: an optimizer and a schedule per name."""
    if scheduler is not None:
        raise OptiloopError("with several optimizers each one takes its own scheduler: "
                            "optimizer={'generator': {'name': 'adam', 'scheduler': 'cosine'}, ...}")
    parts: dict[str, Part] = {}
    owner: dict[int, str] = {}
    for name, part_spec in spec.items():
        cfg = dict(part_spec)
        chosen = cfg.pop("params", name)
        sched_spec = cfg.pop("scheduler", None)
        if "name" not in cfg:
            raise OptiloopError(f"optimizer {name!r} needs a 'name' (adam, sgd ...)")
        params = _params(model, name, chosen)
        for p in params:
            if id(p) in owner:
                raise OptiloopError(f"a parameter is in optimizers {owner[id(p)]!r} and {name!r}; give each its own")
            owner[id(p)] = name
        defaults = {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay)) if v is not None}
        try:
            opt = build_optimizer({**defaults, **cfg}, params, fast=fast)
            schedule = build_scheduler(sched_spec, opt, epochs=epochs, steps_per_epoch=steps_per_epoch)
        except OptiloopError as e:
            raise OptiloopError(f"optimizer {name!r}: {e}") from None
        parts[name] = Part(name, opt, schedule, [p for g in opt.param_groups for p in g["params"]])
    return Optimizers(parts), Schedules(parts)


def _params(model: nn.Module, name: str, chosen: Any) -> list[nn.Parameter]:
    if callable(chosen):
        params = [p for p in chosen(model) if p.requires_grad]
    elif isinstance(chosen, str):
        try:
            params = [p for p in model.get_submodule(chosen).parameters() if p.requires_grad]
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children()) or "none"
            raise OptiloopError(f"optimizer {name!r}: the model has no submodule {chosen!r} (its submodules: "
                                f"{children}); choose its parameters with params='submodule' or "
                                "params=lambda model: ...") from None
    else:
        raise OptiloopError(f"optimizer {name!r}: params must be a submodule's name or a function model -> "
                            f"parameters, got {type(chosen).__name__}")
    if not params:
        raise OptiloopError(f"optimizer {name!r} has no trainable parameters")
    return params


def step_for(fn: Callable | ManualStep, names: list[str]) -> Callable:
    """The user's step in the loop's form ``(model, batch) -> (loss, outputs, targets, count,
    logs)``: ``loss`` the parts' sum, each part's loss in ``logs`` as ``loss_<name>``."""
    if isinstance(fn, ManualStep):
        raise OptiloopError("a manual step trains; give eval_step= for validation")
    if not callable(fn):
        raise OptiloopError(f"step must be a function (model, batch) -> losses, got {type(fn).__name__}")

    def step(model, batch):
        return split(fn(model, batch), names)

    return step


def split(result: Any, names: list[str]) -> tuple:
    """A step's result as (total loss, outputs, targets, count, logs with each part's loss)."""
    out = result if isinstance(result, StepOutput) else StepOutput(result)
    losses, logs = out.loss, dict(out.logs or {})
    if isinstance(losses, Mapping):
        if set(losses) != set(names):
            raise OptiloopError(f"the step returned losses for {', '.join(map(str, losses)) or 'nothing'}; "
                                f"the optimizers are {', '.join(names)}: one loss each")
        for n in names:
            check_loss(losses[n])
            logs[f"loss_{n}"] = losses[n]
        total = sum(losses[n] for n in names)
    elif isinstance(losses, torch.Tensor):
        total = losses
    else:
        raise OptiloopError(f"the step must return one loss per optimizer ({', '.join(names)}) as a dict, "
                            f"got {type(losses).__name__}")
    return total, out.outputs, out.targets, out.count, logs


def check(loop: Any, manual_mode: bool) -> None:
    """What several optimizers do not support yet, refused in one line each."""
    opts = loop.options
    if loop.state.world.distributed:
        raise OptiloopError("several optimizers train on one process for now (their per-optimizer backward "
                            "does not fit DDP's gradient reduction)")
    if opts.nonfinite == "skip":
        raise OptiloopError("nonfinite='skip' with several optimizers is not supported; use 'stop' or 'ignore'")
    if opts.amp == "fp16":
        raise OptiloopError("amp='fp16' with several optimizers is not supported (one loss scaler per "
                            "optimizer); use amp='bf16'")
    if manual_mode:
        for key, value, default in (("grad_accum", opts.grad_accum, 1), ("clip_grad_norm", opts.clip_grad_norm, None),
                                    ("clip_grad_value", opts.clip_grad_value, None), ("amp", opts.amp, None)):
            if value != default:
                raise OptiloopError(f"a manual step does its own optimization: {key}={value!r} does not apply "
                                    "(accumulate, clip or autocast inside the step)")
        if loop.val is not None and opts.eval_step is None:
            raise OptiloopError("a manual step trains; validation needs eval_step=fn(model, batch) -> losses")


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _scale(params: list[torch.Tensor], factor: float | torch.Tensor) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def train_epoch(loop: Any) -> None:
    """One epoch with several optimizers: the loop's second hot path (see ``_Loop._train_epoch``
    for the first). No host sync per step."""
    state, opts = loop.state, loop.options
    model, optimizers = state.model, state.optimizer
    parts = list(optimizers.parts.values())
    metrics, step_fn, accum, n = loop.train_metrics, loop.step_fn, opts.grad_accum, state.batches_per_epoch
    manual_mode = isinstance(opts.step, ManualStep)
    before_step = loop.callbacks.listeners("on_before_optimizer_step")
    step_end = loop.callbacks.listeners("on_step_end")
    step_logs = bool(before_step or step_end)
    autocast = (torch.autocast(state.device.type, dtype=loop.autocast_dtype) if loop.autocast_dtype
                else contextlib.nullcontext())
    clip_norm, clip_value, channels_last = opts.clip_grad_norm, opts.clip_grad_value, opts.channels_last
    all_params = loop.params
    skip_until = state.batch
    model.train()
    optimizers.zero_grad(set_to_none=True)
    kept, first, total = 0, None, None
    for i, batch in enumerate(loop.train):
        if i < skip_until:
            continue
        if channels_last:
            batch = map_batch(_nhwc, batch)
        boundary = (i + 1) % accum == 0 or i + 1 == n
        if manual_mode:
            loss, outputs, targets, count, values = split(opts.step.fn(model, batch, optimizers), list(optimizers))
        else:
            with autocast:
                loss, outputs, targets, count, values = step_fn(model, batch)
            if not loss.requires_grad:
                raise OptiloopError("the step's losses do not require grad: they depend on no trainable parameter")
        check_loss(loss)
        if count is None:
            count = default_count(outputs, batch)
        if not manual_mode:
            # Each micro-batch weighs count / (the group's total count), known at the group's end (as
            # the main loop does): weigh by count / first until then, rescale the sum once at the end.
            if accum == 1:
                factor = None
            elif kept == 0:
                first = total = count
                factor = None
            else:
                total = total + count
                if boundary:
                    _scale(all_params, first / total)
                    factor = count / total
                else:
                    factor = count / first
            for k, part in enumerate(parts):
                part_loss = values[f"loss_{part.name}"]
                (part_loss if factor is None else part_loss * factor).backward(
                    inputs=part.params, retain_graph=k + 1 < len(parts))
            kept += 1
        metrics.update(loss, count, outputs, targets, values)
        state.batch = i + 1
        if not boundary:
            continue
        logs: dict[str, Any] = {"loss": loss.detach(), "lr": [g["lr"] for g in optimizers.param_groups]} \
            if step_logs else {}
        if not manual_mode:
            kept, first, total = 0, None, None
            for cb in before_step:
                cb.on_before_optimizer_step(state, logs)
            for part in parts:
                if clip_norm:
                    torch.nn.utils.clip_grad_norm_(part.params, clip_norm)
                if clip_value:
                    torch.nn.utils.clip_grad_value_(part.params, clip_value)
                part.optimizer.step()
                part.optimizer.zero_grad(set_to_none=True)
                part.schedule.step_end(values[f"loss_{part.name}"].detach() if part.schedule.needs_loss else None)
        else:
            for part in parts:  # the step stepped its optimizers: the per-step schedules follow
                part.schedule.step_end(values[f"loss_{part.name}"] if part.schedule.needs_loss else None)
        state.step += 1
        for cb in step_end:
            cb.on_step_end(state, logs)
        if loop.signals.signum is not None and i + 1 < n:
            raise TrainingInterrupted(loop.signals.signum, state.epoch, state.step)
