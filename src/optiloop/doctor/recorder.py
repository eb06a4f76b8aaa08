"""Instrument torch through its public hooks and record a Timeline; undo it all on ``uninstall``.

What is watched, and how:

- optimizer steps: ``torch.optim.optimizer.register_optimizer_step_post_hook`` (every optimizer,
  fused or not); each step appends its seq and every param group's LR (a Python float read from
  ``param_groups``: no host sync) to lists.
- optimizers built: ``Optimizer.__init__`` wrapped (class, call site).
- gradient clearing: ``Optimizer.zero_grad`` and ``nn.Module.zero_grad`` wrapped, plus a weak
  reference to one parameter's ``.grad``: a new grad object also means it was cleared (``p.grad =
  None`` by hand).
- schedulers: ``__init__`` and ``step`` of every ``LRScheduler`` class wrapped (torch's at install,
  a script's own subclasses when first built). Steps made while building a scheduler, or by a
  SequentialLR / ChainedScheduler on its parts, are not the script's and are not counted.
- epochs: ``DataLoader.__iter__`` wrapped; each pass over a data set is a candidate epoch.
- checkpoints: ``torch.save`` wrapped; what the saved object holds (model / optimizer / scheduler
  state) is classified from its structure, never by reading tensors. ``torch.load`` wrapped to
  note which files the script reads back (a best-model snapshot loaded for a test pass).
- child processes: ``multiprocessing``'s ``Process.start`` wrapped to count the processes the
  script starts (``torch.multiprocessing.spawn`` ...; DataLoader workers aside): the doctor does
  not follow them, and says so when the optimizers were built there.
- losses (only once a ReduceLROnPlateau exists): the loss functions of ``torch.nn.functional``
  (which ``nn.*Loss`` modules call) wrapped to keep each scalar loss, detached, with its batch size
  and whether it was computed with gradients; at each plateau step they are read (one host sync
  per plateau step, where the script's own ``float(metric)`` syncs anyway) and summarised.
- GradScaler: ``GradScaler.step`` wrapped to note steps it skipped (inf/NaN gradients).
- schedule-free optimizers (``train_mode`` in their param groups): at each pass over a data set
  and each ``torch.save``, which of them (having stepped) were in train mode: a dict read.

Nothing here changes what the script computes; every wrapper calls the original first or last and
returns its result unchanged.
"""

from __future__ import annotations

import functools
import itertools
import math
import multiprocessing.process
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as tls
from torch.optim.optimizer import Optimizer, register_optimizer_step_post_hook
from torch.utils.data import DataLoader

from ..errors import OptiloopError
from .timeline import (
    LoaderRecord,
    LoadRecord,
    ModeCheck,
    OptimizerRecord,
    PlateauEvidence,
    SaveRecord,
    SchedulerRecord,
    Timeline,
)

# Loss functions of torch.nn.functional watched for the plateau check (nn.*Loss modules call them).
LOSS_FUNCTIONS = ("cross_entropy", "nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
                  "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div", "poisson_nll_loss",
                  "gaussian_nll_loss")
# Scheduler attributes worth showing and judging by (lengths, factors).
_PARAMS = ("step_size", "milestones", "gamma", "T_max", "eta_min", "T_0", "T_mult", "total_steps",
           "total_iters", "start_factor", "end_factor", "factor", "power", "mode", "patience",
           "threshold", "cooldown", "min_lrs")
_MAX_LOSSES = 1_000_000  # losses kept between two plateau steps; a bound on memory, never reached in practice
_HERE = os.path.dirname(os.path.abspath(__file__))
_OPTILOOP = os.path.dirname(_HERE) + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep

_active: Recorder | None = None


class Recorder:
    """Watches torch while installed and builds the Timeline of what happened.

    Example:
        >>> import torch
        >>> from optiloop.doctor.recorder import Recorder
        >>> r = Recorder(); r.install()
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> opt.step()
        >>> r.uninstall(); r.timeline().optimizers[0].steps
        1
    """

    def __init__(self) -> None:
        self._seq = itertools.count()
        self._opts: list[OptimizerRecord] = []
        self._opt_index: dict[int, int] = {}
        self._opt_live: list[Any] = []  # the objects, so their ids stay unique while watching
        self._probe: list[Any] = []  # per optimizer: (parameter, weakref to its last grad, resets seen)
        self._scheds: list[SchedulerRecord] = []
        self._sched_index: dict[int, int] = {}
        self._sched_live: list[Any] = []
        self._sched_sites: list[dict[tuple[Any, int], int]] = []  # per scheduler: (code, line) of step() calls
        self._loaders: list[LoaderRecord] = []
        self._loader_index: dict[int, int] = {}
        self._loader_live: list[Any] = []
        self._saves: list[SaveRecord] = []
        self._loads: list[LoadRecord] = []
        self._children = 0
        self._plateau: list[PlateauEvidence] = []
        self._schedule_free: list[tuple[int, Any]] = []  # (index, optimizer) of those with train / eval modes
        self._mode_checks: list[ModeCheck] = []
        self._resets = 0  # zero_grad calls seen
        self._depth = 0  # > 0 while inside a scheduler's __init__ / step: nested steps are not the script's
        self._last_loader: int | None = None
        self._last_opt_seq = -1
        self._losses: list[tuple[int, torch.Tensor, int, bool, int | None]] | None = None
        self._undo: list[tuple[Any, str, Any]] = []
        self._handles: list[Any] = []
        self._wrapped: set[tuple[type, str]] = set()
        self._installed = False

    # ---------------------------------------------------------------------------------------------
    # install / uninstall
    # ---------------------------------------------------------------------------------------------
    def install(self) -> None:
        """Instrument torch. One recorder at a time per process."""
        global _active
        if _active is not None:
            raise OptiloopError("the doctor is already watching this process (another watch() block is open, "
                                "or optiloop doctor runs this script); use one watch at a time")
        _active = self
        self._installed = True
        try:
            self._handles.append(register_optimizer_step_post_hook(self._on_optimizer_step))
            self._patch(Optimizer, "__init__", self._wrap_optimizer_init)
            self._patch(Optimizer, "zero_grad", self._wrap_zero_grad)
            self._patch(nn.Module, "zero_grad", self._wrap_zero_grad)
            self._patch(DataLoader, "__iter__", self._wrap_loader_iter)
            self._patch(torch, "save", self._wrap_save)
            self._patch(torch.serialization, "save", self._wrap_save)
            self._patch(torch, "load", self._wrap_load)
            self._patch(torch.serialization, "load", self._wrap_load)
            self._patch(multiprocessing.process.BaseProcess, "start", self._wrap_process_start)
            self._patch(torch.amp.GradScaler, "step", self._wrap_scaler_step)
            for cls in _subclasses(tls.LRScheduler):
                self._wrap_scheduler_class(cls)
            self._wrap_scheduler_class(tls.LRScheduler)
        except BaseException:
            self.uninstall()  # never leave torch half-instrumented
            raise

    def uninstall(self) -> None:
        """Put every patched attribute back; remove the optimizer hook. Safe to call twice."""
        global _active
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()
        self._wrapped.clear()
        self._installed = False
        if _active is self:
            _active = None

    def _patch(self, owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self._undo.append((owner, name, original))
        setattr(owner, name, make(original))

    def _wrap_scheduler_class(self, cls: type) -> None:
        """Wrap ``__init__`` / ``step`` where this class defines them (once)."""
        for name, make in (("__init__", self._wrap_scheduler_init), ("step", self._wrap_scheduler_step)):
            if name in cls.__dict__ and (cls, name) not in self._wrapped:
                self._wrapped.add((cls, name))
                self._patch(cls, name, make)

    # ---------------------------------------------------------------------------------------------
    # optimizers
    # ---------------------------------------------------------------------------------------------
    def _wrap_optimizer_init(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def __init__(opt, *args, **kwargs):
            _blame_caller(original, opt, *args, **kwargs)
            if rec._installed and id(opt) not in rec._opt_index:
                rec._register_optimizer(opt, created=True)

        return __init__

    def _register_optimizer(self, opt: Optimizer, created: bool) -> int:
        index = len(self._opts)
        self._opt_index[id(opt)] = index
        self._opt_live.append(opt)
        self._opts.append(OptimizerRecord(
            index=index, cls=type(opt).__name__, site=_user_site(opt) if created else None,
            created_seq=next(self._seq) if created else None, groups=len(opt.param_groups)))
        probe = next((p for g in opt.param_groups for p in g["params"] if p.requires_grad), None)
        self._probe.append([probe, None, self._resets])
        if opt.param_groups and "train_mode" in opt.param_groups[0]:
            self._opts[index].schedule_free = True
            self._schedule_free.append((index, opt))
        return index

    def _check_modes(self, event: str, **where: Any) -> None:
        """Note the schedule-free optimizers in train mode now (those that stepped)."""
        in_train = [i for i, opt in self._schedule_free
                    if opt.param_groups[0].get("train_mode") and self._opts[i].steps]
        if in_train:
            self._mode_checks.append(ModeCheck(seq=next(self._seq), event=event, in_train=in_train, **where))

    def _on_optimizer_step(self, opt: Optimizer, args: Any, kwargs: Any) -> None:
        # The per-step path: list appends and float reads only (no host sync, no allocation on device).
        index = self._opt_index.get(id(opt))
        if index is None:
            index = self._register_optimizer(opt, created=False)
        rec = self._opts[index]
        seq = next(self._seq)
        rec.step_seq.append(seq)
        lrs = [g["lr"] for g in opt.param_groups]
        if not isinstance(lrs[0], float):
            lrs = [_lr_value(lr) for lr in lrs]
        rec.lrs.append(lrs)
        probe = self._probe[index]
        grad = probe[0].grad if probe[0] is not None else None
        if grad is not None and probe[2] == self._resets and probe[1] is not None and probe[1]() is grad:
            rec.stale.append(seq)  # same grad object, no zero_grad since the last step: it accumulated
        probe[1] = weakref.ref(grad) if grad is not None else None
        probe[2] = self._resets
        self._last_opt_seq = seq

    def _wrap_zero_grad(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def zero_grad(obj, *args, **kwargs):
            rec._resets += 1
            return original(obj, *args, **kwargs)

        return zero_grad

    def _wrap_scaler_step(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def step(scaler, optimizer, *args, **kwargs):
            index = rec._opt_index.get(id(optimizer))
            before = rec._opts[index].steps if index is not None else 0
            out = original(scaler, optimizer, *args, **kwargs)
            index = rec._opt_index.get(id(optimizer))
            if rec._installed and index is not None and rec._opts[index].steps == before:
                rec._opts[index].skipped.append(next(rec._seq))
            elif rec._installed and index is None:  # skipped before the optimizer ever stepped
                index = rec._register_optimizer(optimizer, created=False)
                rec._opts[index].skipped.append(next(rec._seq))
            return out

        return step

    # ---------------------------------------------------------------------------------------------
    # schedulers
    # ---------------------------------------------------------------------------------------------
    def _wrap_scheduler_init(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def __init__(sched, *args, **kwargs):
            if not rec._installed:
                return original(sched, *args, **kwargs)
            outermost = rec._depth == 0
            if outermost:
                for cls in type(sched).__mro__:  # a script's own scheduler class: watch it too
                    if isinstance(cls, type) and issubclass(cls, tls.LRScheduler):
                        rec._wrap_scheduler_class(cls)
            rec._depth += 1
            try:
                _blame_caller(original, sched, *args, **kwargs)
            finally:
                rec._depth -= 1
            if outermost and id(sched) not in rec._sched_index:
                rec._register_scheduler(sched, created=True)

        return __init__

    def _wrap_scheduler_step(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def step(sched, *args, **kwargs):
            if rec._depth or not rec._installed:  # building, or a SequentialLR stepping its parts
                return original(sched, *args, **kwargs)
            rec._depth += 1
            try:
                rec._on_scheduler_step(sched, args, kwargs, sys._getframe(1))
                # torch warns (stacklevel=2) on a scheduler's first step and when given an epoch
                if getattr(sched, "_step_count", 2) <= 1 or "epoch" in kwargs or \
                        len(args) > (1 if isinstance(sched, tls.ReduceLROnPlateau) else 0):
                    return _blame_caller(original, sched, *args, **kwargs)
                return original(sched, *args, **kwargs)
            finally:
                rec._depth -= 1

        return step

    def _register_scheduler(self, sched: Any, created: bool) -> int:
        index = len(self._scheds)
        self._sched_index[id(sched)] = index
        self._sched_live.append(sched)
        opt = getattr(sched, "optimizer", None)
        opt_index = self._opt_index.get(id(opt))
        if opt_index is None and isinstance(opt, Optimizer):
            opt_index = self._register_optimizer(opt, created=False)
        groups = opt.param_groups if isinstance(opt, Optimizer) else []
        rec = SchedulerRecord(
            index=index, cls=type(sched).__name__, optimizer=-1 if opt_index is None else opt_index,
            params=_scheduler_params(sched), site=_user_site() if created else None,
            created_seq=next(self._seq) if created else None,
            lr_at_creation=[float(g["lr"]) for g in groups] or None,
            base_lrs=[float(v) for v in getattr(sched, "base_lrs", [])] or
            [float(g.get("initial_lr", g["lr"])) for g in groups] or None)
        self._scheds.append(rec)
        self._sched_sites.append({})
        for part in getattr(sched, "_schedulers", None) or []:  # SequentialLR / ChainedScheduler
            part_index = self._sched_index.get(id(part))
            if part_index is None:
                part_index = self._register_scheduler(part, created=False)
            self._scheds[part_index].parent = index
        if isinstance(sched, tls.ReduceLROnPlateau) and self._losses is None:
            self._watch_losses()
        return index

    def _on_scheduler_step(self, sched: Any, args: tuple, kwargs: dict, caller: Any) -> None:
        index = self._sched_index.get(id(sched))
        if index is None:
            index = self._register_scheduler(sched, created=False)
        rec = self._scheds[index]
        seq = next(self._seq)
        rec.step_seq.append(seq)
        sites = self._sched_sites[index]
        key = (caller.f_code, caller.f_lineno)  # formatted into "file:line" only when the timeline is built
        sites[key] = sites.get(key, 0) + 1
        if args or kwargs:
            value = _number(args[0] if args else kwargs.get("metrics", kwargs.get("epoch")))
            rec.step_arg.append(value)
            if value is not None and isinstance(sched, tls.ReduceLROnPlateau):
                self._plateau_evidence(index, seq, value)
        else:
            rec.step_arg.append(None)

    # ---------------------------------------------------------------------------------------------
    # losses, for the plateau check
    # ---------------------------------------------------------------------------------------------
    def _watch_losses(self) -> None:
        """Start keeping scalar losses: only scripts with a ReduceLROnPlateau pay for it."""
        self._losses = []
        functional = torch.nn.functional
        for name in LOSS_FUNCTIONS:
            if hasattr(functional, name):
                self._patch(functional, name, self._wrap_loss)

    def _wrap_loss(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def loss(*args, **kwargs):
            out = original(*args, **kwargs)
            losses = rec._losses
            if (losses is not None and rec._installed and isinstance(out, torch.Tensor) and out.ndim == 0
                    and not torch.compiler.is_compiling()):
                first = args[0] if args else None
                n = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 0 else 1
                if len(losses) >= _MAX_LOSSES:
                    del losses[: _MAX_LOSSES // 2]
                losses.append((next(rec._seq), out.detach(), n, out.requires_grad, rec._last_loader))
            return out

        return loss

    def _plateau_evidence(self, index: int, seq: int, metric: float) -> None:
        window, self._losses = self._losses or [], []
        if not window:
            return
        values = _to_floats([t for _, t, _, _, _ in window])
        groups: dict[tuple[str, int | None], list[tuple[float, int]]] = {}
        for (q, _, n, with_grad, loader), v in zip(window, values, strict=True):
            phase = "train" if with_grad and q < self._last_opt_seq else "eval"
            groups.setdefault((phase, loader), []).append((v, n))
        summary = []
        for (phase, loader), items in groups.items():
            total = sum(n for _, n in items)
            summary.append({"phase": phase, "loader": loader, "n": len(items),
                            "mean": math.fsum(v for v, _ in items) / len(items),
                            "wmean": math.fsum(v * n for v, n in items) / total if total else None,
                            "last": items[-1][0]})
        self._plateau.append(PlateauEvidence(scheduler=index, seq=seq, metric=metric, groups=summary))

    # ---------------------------------------------------------------------------------------------
    # data and checkpoints
    # ---------------------------------------------------------------------------------------------
    def _wrap_loader_iter(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def __iter__(loader):
            if rec._installed:
                rec._on_loader_iter(loader)
            return original(loader)

        return __iter__

    def _on_loader_iter(self, loader: DataLoader) -> None:
        dataset = loader.dataset  # keyed by data set: a script may build a new DataLoader per epoch
        index = self._loader_index.get(id(dataset))
        if index is None:
            index = len(self._loaders)
            self._loader_index[id(dataset)] = index
            self._loader_live.append(dataset)
            try:
                size = f"({len(dataset)})"
            except TypeError:
                size = ""
            self._loaders.append(LoaderRecord(index=index, dataset=f"{type(dataset).__name__}{size}"))
        rec = self._loaders[index]
        try:
            rec.length = len(loader)
        except TypeError:
            pass
        rec.iter_seq.append(next(self._seq))
        self._last_loader = index
        if self._schedule_free:
            self._check_modes("iterate", loader=index)

    def _wrap_save(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def save(obj, f, *args, **kwargs):
            if rec._installed:
                holds = sorted(_holds(obj))
                rec._saves.append(SaveRecord(seq=next(rec._seq), path=_path_of(f), holds=holds))
                # optiloop's own mid-epoch checkpoints keep the evaluation point beside the training one
                if rec._schedule_free and "model" in holds and not (
                        isinstance(obj, Mapping) and obj.get("eval_model") is not None):
                    rec._check_modes("save", path=_path_of(f))
            return _blame_caller(original, obj, f, *args, **kwargs)

        return save

    def _wrap_load(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def load(f, *args, **kwargs):
            if rec._installed:
                rec._loads.append(LoadRecord(seq=next(rec._seq), path=_path_of(f)))
            return _blame_caller(original, f, *args, **kwargs)

        return load

    def _wrap_process_start(self, original: Callable) -> Callable:
        rec = self

        @functools.wraps(original)
        def start(process, *args, **kwargs):
            target = getattr(process, "_target", None)
            if rec._installed and not getattr(target, "__module__", "").startswith("torch.utils.data"):
                rec._children += 1  # (DataLoader workers only load data)
            return original(process, *args, **kwargs)

        return start

    # ---------------------------------------------------------------------------------------------
    # the result
    # ---------------------------------------------------------------------------------------------
    def timeline(self, **run: Any) -> Timeline:
        """The record so far (``run`` fills script, exit_code, error, completed ...)."""
        for rec in self._opts:  # LRs kept as device tensors (tensor LRs off the CPU) are read now
            if any(not isinstance(v, float) for lrs in rec.lrs for v in lrs):
                rec.lrs = [[float(v) for v in lrs] for lrs in rec.lrs]
        for rec, sites in zip(self._scheds, self._sched_sites, strict=True):
            rec.sites = {}
            for (code, line), count in sites.items():
                where = f"{_display_path(code.co_filename)}:{line}"
                rec.sites[where] = rec.sites.get(where, 0) + count
        return Timeline(torch_version=torch.__version__, optimizers=self._opts, schedulers=self._scheds,
                        loaders=self._loaders, saves=self._saves, plateau=self._plateau, loads=self._loads,
                        mode_checks=self._mode_checks, zero_grad_calls=self._resets,
                        child_processes=self._children, **run)

    def release(self) -> None:
        """Drop the references to the script's objects (after uninstall)."""
        self._opt_live.clear()
        self._schedule_free.clear()
        self._sched_live.clear()
        self._loader_live.clear()
        self._probe.clear()
        self._losses = None


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------
def _blame_caller(original: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``original`` so that torch's ``warnings.warn(..., stacklevel=N)`` inside it still blames
    the script's line, not the doctor's wrapper frame in between (which Python would count).

    ``warnings.warn`` is swapped for a shim only during the call (no filter change, so warnings
    the script saw once are not shown again); used on rare calls only (building optimizers and
    schedulers, a scheduler's first step, torch.save).
    """
    real = warnings.warn
    if getattr(real, "_doctor_shim", False):
        return original(*args, **kwargs)
    warnings.warn = functools.partial(_warn_past_doctor, real)  # a partial adds no Python frame
    warnings.warn._doctor_shim = True  # type: ignore[attr-defined]
    try:
        return original(*args, **kwargs)
    finally:
        warnings.warn = real


def _warn_past_doctor(real: Callable, message: Any, category: Any = None, stacklevel: int = 1,
                      *args: Any, **kwargs: Any) -> None:
    level = max(1, stacklevel)
    try:
        frame = sys._getframe(level)  # the frame the warning would blame, seen from its caller
    except ValueError:
        frame = None
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _HERE:
        frame, level = frame.f_back, level + 1  # skip the doctor's wrapper frames
    real(message, category, level + 1, *args, **kwargs)  # + 1: this shim's own frame


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _lr_value(lr: Any) -> Any:
    """A float, or for a tensor LR on a device a detached copy read at the end (no sync per step)."""
    if isinstance(lr, torch.Tensor):
        return float(lr) if lr.device.type == "cpu" else lr.detach().clone()
    return float(lr)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())  # ReduceLROnPlateau.step does float(metrics) itself right after
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_floats(tensors: list[torch.Tensor]) -> list[float]:
    """Read many scalars with one transfer per device."""
    out: list[float | None] = [None] * len(tensors)
    by_device: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():
        values = torch.stack([tensors[i].float() for i in idx]).tolist()
        for i, v in zip(idx, values, strict=True):
            out[i] = v
    return out  # type: ignore[return-value]


def _scheduler_params(sched: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in _PARAMS:
        value = getattr(sched, name, None)
        if isinstance(value, (bool, int, float, str)):
            params[name] = value
        elif name == "milestones" and value is not None:  # MultiStepLR keeps a Counter
            params[name] = sorted(int(m) for m in value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
            params[name] = list(value)
    if isinstance(sched, tls.OneCycleLR):
        params["warmup_steps"] = int(sched._schedule_phases[0]["end_step"]) + 1
        params["max_lr"] = [float(g["max_lr"]) for g in sched.optimizer.param_groups]
    if isinstance(sched, tls.CyclicLR):
        params["cycle_steps"] = int(round(sched.total_size))
    parts = getattr(sched, "_schedulers", None)  # SequentialLR / ChainedScheduler
    if parts:
        params["schedulers"] = [type(p).__name__ for p in parts]
        if getattr(sched, "_milestones", None) is not None:
            params["milestones"] = [int(m) for m in sched._milestones]
    return params


def _holds(obj: Any, depth: int = 0) -> set[str]:
    """What a saved object holds, from its structure: model / optimizer / scheduler / scaler state."""
    if isinstance(obj, nn.Module):
        return {"model"}
    if isinstance(obj, Optimizer):
        return {"optimizer"}
    if isinstance(obj, (tls.LRScheduler, tls.ReduceLROnPlateau)):
        return {"scheduler"}
    if isinstance(obj, torch.amp.GradScaler):
        return {"scaler"}
    if depth > 4:
        return set()
    if isinstance(obj, Mapping):
        if hasattr(obj, "_metadata"):  # what nn.Module.state_dict() returns
            return {"model"}
        keys = {k for k in obj if isinstance(k, str)}
        if {"state", "param_groups"} <= keys:
            return {"optimizer"}
        if "last_epoch" in keys and keys & {"base_lrs", "_step_count", "best", "_schedulers"}:
            return {"scheduler"}
        if {"scale", "growth_factor"} <= keys:
            return {"scaler"}
        values = list(obj.values())
        if values and all(isinstance(v, torch.Tensor) for v in values) and any(
                "." in k or k in ("weight", "bias") for k in keys):
            return {"model"}  # a state dict rebuilt as a plain dict
        found: set[str] = set()
        for v in itertools.islice(values, 200):
            if not isinstance(v, torch.Tensor):
                found |= _holds(v, depth + 1)
        return found
    if isinstance(obj, (list, tuple)):
        found = set()
        for v in itertools.islice(obj, 200):
            if not isinstance(v, torch.Tensor):
                found |= _holds(v, depth + 1)
        return found
    return set()


def _path_of(f: Any) -> str | None:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else None


def _site(frame: Any) -> str:
    return f"{_display_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def _user_site(built: Any = None) -> str | None:
    """The innermost calling frame outside torch and optiloop: the script's own line. Frames of
    ``built``'s own methods (a subclass's ``__init__`` in another package, calling torch's) are
    skipped too."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        inside = built is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is built
        if not (inside or name.startswith(_TORCH) or name.startswith(_OPTILOOP) or name.startswith("<frozen")):
            return _site(frame)
        fallback = fallback or frame
        frame = frame.f_back
    return _site(fallback) if fallback is not None else None


@functools.lru_cache(maxsize=256)
def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith("..") else rel
