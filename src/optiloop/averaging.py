"""Averaged weights as callbacks: ``EMA`` and ``SWA`` on ``torch.optim.swa_utils``.

Both keep torch's own ``AveragedModel`` (``ema.averaged``, ``swa.averaged``) and declare the
averaging capability to the loop (``Callback.average``): once averaging has started, validation,
``best.pt`` (its ``eval_model``), ``predict``, ``export`` and the model ``fit`` leaves behind use the
averaged weights, while the History keeps the raw weights' validation figures as ``val_*_raw``.
The average lives in the callback's state, so it is in every checkpoint and a resume continues it
exactly.

``EMA`` updates after every ``every``-th optimizer step with ``get_ema_multi_avg_fn(decay)``;
``SWA`` follows the PyTorch documentation's recipe: the user's schedule until ``start_epoch``, then
``SWALR`` anneals to ``swa_lr`` and the weights at the end of every epoch from ``start_epoch`` on
enter an equal-weight average; ``update_bn`` recomputes BatchNorm statistics for the average at the
end.

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> ema = ol.EMA(decay=0.9)
    >>> h = ol.fit(torch.nn.Linear(4, 2), (X, y), val_data=(X, y), epochs=2, callbacks=[ema],
    ...            progress=False, seed=0)
    >>> int(ema.averaged.n_averaged), "val_loss_raw" in h.rows[0]
    (4, True)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import swa_utils

from .callbacks import Callback, TrainState
from .errors import OptiloopError


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class _StepForward(nn.Module):
    """The run's step as a module, so torch's ``update_bn`` can drive any batch structure: it
    calls ``model(batch[0])``, and each batch is handed to it as a one-element list."""

    def __init__(self, module: nn.Module, step: Callable):
        super().__init__()
        self.module, self.step = module, step

    def forward(self, batch: Any) -> None:
        self.step(self.module, batch)


def recompute_batchnorm(module: nn.Module, batches: Iterable[Any], step: Callable, *,
                        limit: int | None = None) -> None:
    """BatchNorm statistics of ``module`` recomputed by torch's ``update_bn`` (running averages
    reset, then a cumulative mean over the batches: PreciseBN) through the run's step, on the
    first ``limit`` batches (all: None). The random generators are left as they were, so dropout
    in these forward passes does not change the training that follows."""
    if not has_batchnorm(module):
        return
    chosen = batches if limit is None else itertools.islice(batches, limit)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        swa_utils.update_bn(([b] for b in chosen), _StepForward(module, step))


class _Averaging(Callback):
    """What EMA and SWA share: the ``AveragedModel``, its state, and the weights fit ends with."""

    order = -10  # before other callbacks: a checkpoint or early stopping sees this step's average

    def __init__(self, load_at_end: bool):
        self.load_at_end = load_at_end
        self.averaged: swa_utils.AveragedModel | None = None

    def reset(self) -> None:
        self.averaged = None
        self._loaded: dict[str, Any] | None = None  # a resumed state, applied once the model is known

    def _make(self, model: nn.Module) -> swa_utils.AveragedModel:
        raise NotImplementedError

    def on_fit_start(self, state: TrainState, logs: dict[str, Any]) -> None:
        if state.strategy == "fsdp":
            raise OptiloopError(f"{type(self).__name__} keeps a whole copy of the model; under strategy='fsdp' each "
                                "process holds a shard of it: use strategy='ddp' or one process")
        self.averaged = self._make(state.unwrapped_model)
        if self._loaded is not None:
            self.averaged.load_state_dict(self._loaded["averaged"])
            self._restore(state, self._loaded)
            self._loaded = None

    def _restore(self, state: TrainState, saved: dict[str, Any]) -> None:
        """What a subclass keeps besides the average."""

    @property
    def started(self) -> bool:
        return self.averaged is not None and self._count() > 0

    def _count(self) -> int:
        return int(self.averaged.n_averaged)  # once per epoch at most: a host sync there is free

    def on_fit_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        if self.load_at_end and self.started:
            state.load_at_end(self.averaged.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict() if self.averaged is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = state if state.get("averaged") is not None else None


class EMA(_Averaging):
    """An exponential moving average of the weights, updated after every ``every``-th optimizer
    step: ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=use_buffers)``, kept in ``ema.averaged``.

    The first update copies the weights (torch's rule); each later one moves the average
    ``1 - decay`` of the way to the current weights. Validation, ``best.pt``, ``predict`` and
    ``export`` use the average from the first update on; ``val_loss_raw`` (and every other
    ``val_*_raw``) are the raw weights' figures. With ``load_at_end`` the model ends with the
    averaged weights (as Keras' and Lightning's averaging do); ``last.pt`` keeps the raw ones, so a
    resume continues training them.

    Args:
        decay: in [0, 1); 0.999 suits runs of thousands of steps, 0.99 hundreds (the average
            spans about ``1 / (1 - decay)`` steps).
        every: update after every N-th optimizer step.
        use_buffers: also average buffers (BatchNorm statistics), as torch's EMA example does;
            False copies the model's buffers at each update instead.
        load_at_end: the model holds the averaged weights once fit returns.

    Example:
        >>> import optiloop as ol
        >>> ema = ol.EMA(decay=0.999)        # fit(..., callbacks=[ema]); ema.averaged.module
    """

    def __init__(self, decay: float = 0.999, every: int = 1, *, use_buffers: bool = True, load_at_end: bool = True):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise OptiloopError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise OptiloopError(f"EMA every must be an integer >= 1 (optimizer steps), got {every!r}")
        super().__init__(load_at_end)
        self.decay, self.every, self.use_buffers = float(decay), every, bool(use_buffers)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.updates = 0  # the AveragedModel's n_averaged, kept on the host: no sync per step

    def _make(self, model: nn.Module) -> swa_utils.AveragedModel:
        avg = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(self.decay),
                                      use_buffers=self.use_buffers)
        averaged, current, self._buffers = _tensor_pairs(avg, model, self.use_buffers)
        self._tensors = (averaged, current)
        self._groups = _by_device_and_dtype(averaged, current)  # as update_parameters groups them
        return avg

    def _restore(self, state: TrainState, saved: dict[str, Any]) -> None:
        self.updates = int(self.averaged.n_averaged)

    def _count(self) -> int:
        return self.updates

    def on_step_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        if state.step % self.every == 0:
            self._update()

    def _update(self) -> None:
        # AveragedModel.update_parameters, without its `if n_averaged == 0` (a host sync per step
        # on a GPU): the count is kept here. Same torch functions, same order, same values.
        avg = self.averaged
        if self.updates == 0:
            torch._foreach_copy_(*self._tensors)
        else:
            for a, c in self._groups:
                avg.multi_avg_fn(a, c, avg.n_averaged)
        if self._buffers is not None and self._buffers[0]:
            torch._foreach_copy_(*self._buffers)
        avg.n_averaged += 1
        self.updates += 1

    def average(self, state: TrainState) -> nn.Module | None:
        return self.averaged.module if self.updates else None


class SWA(_Averaging):
    """Stochastic Weight Averaging as the PyTorch documentation teaches it.

    Epochs before ``start_epoch`` train with the run's own schedule. From the end of epoch
    ``start_epoch`` on, the weights at the end of every epoch enter an equal-weight average
    (``AveragedModel(model)``, kept in ``swa.averaged``) and ``SWALR`` takes over the LR: it
    anneals from the LR reached to ``swa_lr`` over ``anneal_epochs`` epochs and holds it. After
    the last epoch's training, models with BatchNorm get their statistics recomputed for the
    average (``update_bn`` over the training data) before the last validation, so ``best.pt``,
    ``last.pt`` and the model fit leaves behind hold them. Until then, BatchNorm statistics of the
    average are the model's own (torch's ``AveragedModel`` copies buffers), as in the recipe.

    ``SWA(start_epoch=S)`` is the recipe's ``if epoch > swa_start`` with ``swa_start = S - 2``
    (the recipe counts epochs from 0 and averages after the epoch *after* ``swa_start``).

    Args:
        start_epoch: the first epoch (1-based) whose final weights are averaged.
        swa_lr: the LR SWALR anneals to (one per param group, or one for all); None keeps the LR
            the schedule had reached.
        anneal_epochs: epochs of annealing to ``swa_lr`` (0: at once).
        anneal_strategy: "cos" or "linear".
        load_at_end: the model holds the averaged weights once fit returns.

    Example:
        >>> import optiloop as ol
        >>> swa = ol.SWA(start_epoch=75, swa_lr=0.05)     # fit(..., epochs=100, callbacks=[swa])
    """

    def __init__(self, start_epoch: int, swa_lr: float | list[float] | None = None, anneal_epochs: int = 10,
                 anneal_strategy: str = "cos", *, load_at_end: bool = True):
        if not isinstance(start_epoch, int) or isinstance(start_epoch, bool) or start_epoch < 1:
            raise OptiloopError(f"SWA start_epoch must be an integer >= 1 (an epoch, counted from 1), "
                                f"got {start_epoch!r}")
        lrs = swa_lr if isinstance(swa_lr, (list, tuple)) else [swa_lr]
        if swa_lr is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and math.isfinite(v) and v >= 0 for v in lrs):
            raise OptiloopError(f"SWA swa_lr must be a finite number >= 0 (or one per param group), got {swa_lr!r}")
        if not isinstance(anneal_epochs, int) or isinstance(anneal_epochs, bool) or anneal_epochs < 0:
            raise OptiloopError(f"SWA anneal_epochs must be an integer >= 0, got {anneal_epochs!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise OptiloopError(f"SWA anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        super().__init__(load_at_end)
        self.start_epoch, self.swa_lr = start_epoch, swa_lr
        self.anneal_epochs, self.anneal_strategy = anneal_epochs, anneal_strategy
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.scheduler: swa_utils.SWALR | None = None

    def _make(self, model: nn.Module) -> swa_utils.AveragedModel:
        return swa_utils.AveragedModel(model)  # the recipe's: equal weights (get_swa_multi_avg_fn)

    def on_fit_start(self, state: TrainState, logs: dict[str, Any]) -> None:
        if not isinstance(state.optimizer, torch.optim.Optimizer):
            raise OptiloopError("SWA's SWALR takes over one optimizer's LR; with several optimizers use ol.EMA")
        if self.start_epoch > state.epochs:
            raise OptiloopError(f"SWA(start_epoch={self.start_epoch}) never starts in a run of {state.epochs} "
                                f"epochs; choose a start_epoch <= {state.epochs}")
        super().on_fit_start(state, logs)

    def _restore(self, state: TrainState, saved: dict[str, Any]) -> None:
        if saved.get("scheduler") is not None:
            self._make_scheduler(state)
            self.scheduler.load_state_dict(saved["scheduler"])

    def _make_scheduler(self, state: TrainState) -> None:
        opt = state.optimizer
        lrs = [g["lr"] for g in opt.param_groups]
        swa_lr = lrs if self.swa_lr is None else self.swa_lr
        self.scheduler = swa_utils.SWALR(opt, swa_lr, anneal_epochs=self.anneal_epochs,
                                         anneal_strategy=self.anneal_strategy)
        for g, lr in zip(opt.param_groups, lrs, strict=True):  # building it may set an LR: the step does
            g["lr"] = lr

    def average(self, state: TrainState) -> nn.Module | None:
        if state.epoch < self.start_epoch:
            return None
        model = state.unwrapped_model
        if self.scheduler is None:
            state.schedule.hand_over()  # from now on SWALR sets the LR (on_epoch_end)
        self.averaged.update_parameters(model)
        if state.epoch == state.epochs and has_batchnorm(model):
            state.update_bn(self.averaged.module)
        return self.averaged.module

    def on_epoch_end(self, state: TrainState, logs: dict[str, Any]) -> None:
        if state.epoch < self.start_epoch:
            return
        if self.scheduler is None:
            self._make_scheduler(state)
        with warnings.catch_warnings():
            # Built after the optimizer's steps (the recipe builds it before them), torch would
            # take this first SWALR step for one taken before any optimizer step.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}


def _tensor_pairs(avg: swa_utils.AveragedModel, model: nn.Module, use_buffers: bool
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[list, list] | None]:
    """The tensors an update averages (the average's, the model's) and the buffers it copies."""
    own = list(avg.module.parameters()) + (list(avg.module.buffers()) if use_buffers else [])
    theirs = list(model.parameters()) + (list(model.buffers()) if use_buffers else [])
    if len(own) != len(theirs):
        raise OptiloopError("the averaged copy and the model differ in their parameters")
    buffers = None if use_buffers else ([b.detach() for b in avg.module.buffers()],
                                        [b.detach() for b in model.buffers()])
    return [t.detach() for t in own], [t.detach() for t in theirs], buffers


def _by_device_and_dtype(averaged: list[torch.Tensor], current: list[torch.Tensor]
                         ) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    groups: dict[tuple, tuple[list, list]] = {}
    for a, c in zip(averaged, current, strict=True):
        ga, gc = groups.setdefault((a.device, a.dtype), ([], []))
        ga.append(a)
        gc.append(c)
    return list(groups.values())
