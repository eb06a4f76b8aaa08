"""Schedule-free optimizers (the ``schedulefree`` package) driven at the right moments.

A schedule-free optimizer (Defazio et al., "The Road Less Scheduled", 2024) trains at one point
(``y``) and evaluates at another (``x``, an average of its iterates), and its parameters hold
whichever its mode says: ``optimizer.train()`` before training steps, ``optimizer.eval()`` before
validation and before saving, as the package's documentation asks. A script that forgets
evaluates and saves the wrong weights, silently. The loop does it (``ScheduleFree``):

- ``train()`` at the start of every epoch's training;
- ``eval()`` after it, before validation, the epoch's checkpoints and the run's end; then, for
  models with BatchNorm, the statistics are recomputed at ``x`` on up to 50 training batches
  (the package's advice, done as PreciseBN: torch's ``update_bn``), without touching the RNG;
- a mid-epoch checkpoint (``every_n_steps``, a signal) keeps the training point ``y`` as its
  ``model`` (resume continues exactly) and the evaluation point ``x`` as its ``eval_model``
  (predict / export), made on a copy without disturbing training.

The switches are part of the run: an uninterrupted run and a resumed one make the same ones at
the same moments, so resume stays bit-exact. A scheduler other than warmup is refused: the
optimizer replaces the LR schedule (the averaging is the schedule), so a decaying one would undo
it; warm up with ``scheduler={"name": "constant", "warmup_steps": N}`` or the optimizer's own
``warmup_steps``.

Example:
    >>> import torch, optiloop as ol   # doctest: +SKIP
    >>> ol.fit(model, (X, y), optimizer="adamw_schedulefree", lr=2.5e-3)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .averaging import recompute_batchnorm
from .errors import OptiloopError

BN_BATCHES = 50  # the package's example recomputes BatchNorm statistics on 50 training batches


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer keeps train / eval modes (schedulefree's ``train_mode`` in every group)."""
    return (callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
            and bool(optimizer.param_groups) and all("train_mode" in g for g in optimizer.param_groups))


def in_train_mode(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.param_groups[0]["train_mode"])


def check_schedule(schedule: Any) -> None:
    """Warmup only (``constant``, with or without ``warmup_steps``): one line otherwise."""
    if schedule.scheduler is not None or schedule.name != "constant":
        raise OptiloopError(f"scheduler {schedule.name!r} with a schedule-free optimizer: it needs no LR schedule "
                            "(its averaging replaces one) and a decaying one would undo it; use no scheduler, "
                            "warmup only (scheduler={'name': 'constant', 'warmup_steps': N}), or the "
                            "optimizer's own warmup_steps")


class ScheduleFree:
    """The loop's driver of one schedule-free optimizer's modes (see the module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        self.optimizer, self.model = optimizer, model

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, model: nn.Module, schedule: Any, sharded: bool
           ) -> ScheduleFree | None:
        """The driver when ``optimizer`` is schedule-free (checking its schedule), else None."""
        if not is_schedule_free(optimizer):
            return None
        if sharded:
            raise OptiloopError("a schedule-free optimizer is not supported under strategy='fsdp' (its train / eval "
                                "switch and BatchNorm pass are not written for sharded parameters); use 'ddp'")
        check_schedule(schedule)
        return cls(optimizer, model)

    @property
    def training(self) -> bool:
        return in_train_mode(self.optimizer)

    def train(self) -> None:
        """Before training steps: the parameters become the training point y."""
        self.optimizer.train()

    def eval(self, batches: Iterable[Any] | None = None, step: Callable | None = None) -> None:
        """Before validation and saving: the parameters become the evaluation point x; BatchNorm
        statistics are recomputed there on up to ``BN_BATCHES`` training batches."""
        was_training = self.training
        self.optimizer.eval()
        if was_training and batches is not None and step is not None:
            recompute_batchnorm(self.model, batches, step, limit=BN_BATCHES)

    @torch.no_grad()
    def eval_weights(self) -> dict[str, torch.Tensor]:
        """The evaluation point's weights as of now, without leaving the training point: the
        parameters are switched with the package's own ``eval()``, copied, and restored bit for bit."""
        if not self.training:
            return self.model.state_dict()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        kept = [p.detach().clone() for p in params]
        self.optimizer.eval()
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for p, saved in zip(params, kept, strict=True):
            p.copy_(saved)
        for g in self.optimizer.param_groups:
            g["train_mode"] = True
        return weights
