"""How ``fit`` trains: one frozen object of every setting besides the model, the data and the
callbacks, checked when it is made.

``fit(...)`` makes one from its keywords; ``runs.TrainingRun`` makes one from a run config before
any folder exists (so a bad value is one line with nothing written) and hands it to the loop.

Example:
    >>> s = FitSettings(optimizer="sgd", lr=0.1, epochs=3, amp="bf16")
    >>> s.epochs, s.amp_dtype
    (3, torch.bfloat16)
    >>> FitSettings(epochs=0)
    Traceback (most recent call last):
    ...
    optiloop.errors.OptiloopError: epochs must be an integer >= 1, got 0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import OptiloopError, choices

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NONFINITE = ("stop", "skip", "ignore")


def check_fraction(fraction: Any) -> None:
    """``validation_split``: a share of the rows, strictly between 0 and 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise OptiloopError(f"validation_split must be a fraction between 0 and 1 (e.g. 0.2), got {fraction!r}")


@dataclass(frozen=True, eq=False)
class FitSettings:
    """The settings of one training run; ``fit``'s docstring says what each means."""

    loss: str | Callable = "cross_entropy"
    step: Callable | None = None
    eval_step: Callable | None = None
    optimizer: str | Mapping[str, Any] | torch.optim.Optimizer = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    scheduler: str | Mapping[str, Any] | Any = None
    epochs: int = 10
    batch_size: int = 32
    metrics: Any = ()
    device: str | torch.device = "auto"
    seed: int | None = None
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    amp: str | None = None
    progress: bool = True
    nonfinite: str = "stop"
    compile: bool | Mapping[str, Any] = False
    channels_last: bool = False
    fast: bool = True
    strategy: Any = "auto"
    config: dict[str, Any] | None = None
    validation_split: float | None = None  # fit() holds the rows out before the loop is built

    def __post_init__(self) -> None:
        epochs, accum = self.epochs, self.grad_accum
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
        if not isinstance(accum, int) or isinstance(accum, bool) or accum < 1:
            raise OptiloopError(f"grad_accum must be an integer >= 1, got {accum!r}")
        if self.nonfinite not in NONFINITE:
            raise OptiloopError(f"unknown nonfinite={self.nonfinite!r}; choose one of: {choices(NONFINITE)}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise OptiloopError(f"unknown amp={self.amp!r}; choose one of: {choices(AMP_DTYPES)} or None")
        if self.step is not None and self.loss not in ("cross_entropy", None):
            raise OptiloopError("give step= or loss=, not both: a step computes its own loss")
        if self.eval_step is not None and not callable(self.eval_step):
            raise OptiloopError("eval_step must be a function (model, batch) -> loss, got "
                                f"{type(self.eval_step).__name__}")
        if isinstance(self.optimizer, torch.optim.Optimizer) and (self.lr is not None
                                                                  or self.weight_decay is not None):
            raise OptiloopError("lr/weight_decay go to build_optimizer; a built optimizer is used as is")
        if self.validation_split is not None:
            check_fraction(self.validation_split)
        if not isinstance(self.metrics, Mapping):  # a generator would be used up by the first look
            object.__setattr__(self, "metrics", list(self.metrics))

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES.get(self.amp) if self.amp is not None else None

    @property
    def default_step(self) -> bool:
        """The loop's own ``loss(model(x), y)`` step (its batch sizes are known before an epoch)."""
        return self.step is None and self.loss != "model"
