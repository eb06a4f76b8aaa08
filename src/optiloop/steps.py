"""The step contract: how one batch becomes a loss.

``step(model, batch)`` returns the loss tensor (a scalar), or a ``StepOutput`` when metrics need
the outputs and targets, or when the batch's weight in averages is not its leading dimension
(tokens, for a language model). The loop calls it under autocast, does backward and the optimizer
step itself, and calls it again under ``no_grad`` for validation.

Three ways to get one:
- ``loss="cross_entropy"`` (or any name / callable(output, target)): the default step,
  ``loss_fn(model(x), y)`` on ``(x, y)`` batches.
- ``loss="model"``: the model computes its own loss: ``model(**batch)`` for a dict batch,
  ``model(*batch)`` for a tuple, ``model(batch)`` for a tensor; the loss is the result's ``.loss``
  or ``["loss"]`` (transformers' convention). Metrics then read the result's ``.logits`` against
  the batch's ``labels`` (the Hugging Face Trainer's ``compute_metrics`` gets the same pair).
- ``step=fn``: anything else, e.g. ``step=lambda model, batch: model(*batch)[1]`` for a model that
  returns ``(logits, loss)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .data import sample_count
from .errors import OptiloopError
from .metrics import get_loss

MODEL_LOSS = "model"


@dataclass
class StepOutput:
    """What a step may return besides the loss.

    Attributes:
        loss: the batch's mean loss, a scalar tensor with gradients (training).
        outputs, targets: what metrics are computed on (``metric(outputs, targets)``).
        count: the batch's weight in epoch averages and in gradient accumulation: a Python int or
            a 0-d tensor (e.g. ``(labels != -100).sum()``, read without a host sync). Default:
            the leading dimension of ``outputs``, else of the batch's first tensor.
        logs: the step's own values to record, ``{"kl": kl, "rec": rec}`` (scalar tensors or
            numbers; Lightning's ``self.log``): averaged over the epoch weighted by ``count``
            like the loss, with no host sync per step, and logged as ``train_kl`` /
            ``val_kl`` (History, history.csv, curves, TensorBoard). Every step of a phase gives
            the same keys (under DDP they are all-reduced together).

    Example:
        >>> import torch, optiloop as ol
        >>> def step(model, batch):
        ...     x, y = batch
        ...     logits = model(x)
        ...     return ol.StepOutput(torch.nn.functional.cross_entropy(logits, y), outputs=logits, targets=y)
    """

    loss: torch.Tensor
    outputs: Any = None
    targets: Any = None
    count: int | torch.Tensor | None = None
    logs: Mapping[str, Any] | None = None


# A step as the loop runs it: (model, batch) -> (loss, outputs, targets, count, logs).
Step = Callable[[Any, Any], tuple]


def supervised_step(loss_fn: Callable) -> Step:
    """The default step: ``loss_fn(model(x), y)`` on an ``(x, y)`` batch."""

    def step(model, batch):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise OptiloopError(_not_a_pair(batch))  # (a dict would unpack to its keys)
        x, y = batch
        out = model(x)
        return loss_fn(out, y), out, y, None, None

    return step


def _not_a_pair(batch: Any) -> str:
    if isinstance(batch, Mapping):
        shape = f"a dict with keys {', '.join(map(str, batch))}"
    elif isinstance(batch, (tuple, list)):
        shape = f"a {type(batch).__name__} of {len(batch)}"
    else:
        shape = f"a {type(batch).__name__}"
    return (f"the batch is {shape}, but a loss function takes (inputs, targets) pairs; "
            "pass loss='model' if the model computes its own loss, or step=fn(model, batch) -> loss")


def model_loss_step(model, batch):
    """``loss="model"``: call the model on the batch and read the loss it computed."""
    if isinstance(batch, Mapping):
        result = model(**batch)
    elif isinstance(batch, (tuple, list)):
        result = model(*batch)
    else:
        result = model(batch)
    loss = getattr(result, "loss", None)
    if loss is None and isinstance(result, Mapping):
        loss = result.get("loss")
    if loss is None:
        if isinstance(result, (tuple, list)):
            raise OptiloopError(
                f"loss='model': the model returned a {type(result).__name__} of {len(result)}, not an "
                "object with .loss; for a (logits, loss) tuple pass step=lambda model, batch: model(*batch)[1]")
        got = (f"a dict with keys {', '.join(map(str, result))}" if isinstance(result, Mapping)
               else f"a {type(result).__name__}")
        raise OptiloopError(f"loss='model': the model returned {got} with no loss in it (.loss or ['loss']); "
                            "include the labels in the batch, or pass step=fn(model, batch) -> loss")
    # The HF convention for metrics: the result's logits against the batch's labels, when both exist.
    logits = getattr(result, "logits", None)
    if logits is None and isinstance(result, Mapping):
        logits = result.get("logits")
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if logits is None or labels is None:
        return loss, None, None, None, None
    return loss, logits, labels, None, None


def user_step(fn: Callable) -> Step:
    """Wrap a user's ``fn(model, batch) -> loss | StepOutput`` into the loop's form."""

    def step(model, batch):
        result = fn(model, batch)
        if isinstance(result, torch.Tensor):
            return result, None, None, None, None
        if isinstance(result, StepOutput):
            return result.loss, result.outputs, result.targets, result.count, result.logs
        raise OptiloopError(f"step must return the loss tensor or ol.StepOutput(loss, ...), "
                            f"got {type(result).__name__}")

    return step


def resolve_step(step: Callable | None, loss: str | Callable | None) -> Step:
    """The loop's step from fit's ``step=`` and ``loss=`` arguments."""
    if step is not None:
        if not callable(step):
            raise OptiloopError(f"step must be a function (model, batch) -> loss, got {type(step).__name__}")
        return user_step(step)
    if loss == MODEL_LOSS:
        return model_loss_step
    return supervised_step(get_loss(loss))


def check_loss(loss: Any) -> None:
    """A loss the loop can train on: a floating scalar tensor. Costs no host sync."""
    if not isinstance(loss, torch.Tensor):
        raise OptiloopError(f"the step's loss must be a tensor, got {type(loss).__name__}")
    if loss.ndim != 0:
        raise OptiloopError(f"the step's loss must be a scalar, got shape {tuple(loss.shape)}; "
                            "reduce it (e.g. .mean())")
    if not loss.is_floating_point():
        raise OptiloopError(f"the step's loss must be a floating-point tensor, got {loss.dtype}")


def default_count(outputs: Any, batch: Any) -> int:
    """A batch's weight when its step gives no count: the leading dimension of the outputs, else
    of the batch's first tensor. Shapes live on the host: no sync."""
    if isinstance(outputs, torch.Tensor) and outputs.ndim:
        return outputs.shape[0]
    return sample_count(batch)
