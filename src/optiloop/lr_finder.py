"""The LR range test: sweep the learning rate up exponentially and watch the training loss.

Every step trains one batch at a learning rate ``min_lr * (max_lr / min_lr) ** (i / (steps - 1))``.
The loss is smoothed with an exponential moving average (bias-corrected, as Adam's moments), and
the sweep stops early once the smoothed loss exceeds ``diverge`` x its best value or the loss is
not finite. Afterwards the model, the optimizer and torch's RNG are exactly as before: the test
trains a throwaway trajectory, not your model.

Two rules turn the curve into a suggestion:

- ``"valley"`` (the default; fastai's rule): find the longest stretch of steps over which the
  smoothed loss keeps falling (the longest decreasing subsequence) and take the LR in its middle.
  It lands inside the broad basin of good LRs rather than at its noisy edges.
- ``"steepest"``: the LR where the smoothed loss falls fastest against log10(LR) (most negative
  slope), searched up to the minimum of the smoothed loss.

Example:
    >>> import torch, optiloop as ol
    >>> X = torch.randn(256, 4); y = (X[:, 0] > 0).long()
    >>> model = torch.nn.Linear(4, 2)
    >>> before = {k: v.clone() for k, v in model.state_dict().items()}
    >>> r = ol.lr_find(model, (X, y), optimizer="sgd", steps=50, seed=0)
    >>> r.rule, 1e-7 <= r.suggestion <= 10, all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ('valley', True, True)
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import make_batches
from .distributed import resolve_device
from .errors import OptiloopError, choices
from .files import atomic_open
from .optim import build_optimizer
from .steps import check_loss, resolve_step

RULES = ("valley", "steepest")


@dataclass
class LRFindResult:
    """What the range test saw and what it suggests.

    Attributes:
        lrs: the LR of every step run.
        losses: the raw training loss of each step.
        smoothed: the bias-corrected exponential moving average of ``losses``.
        suggestion: the suggested LR (by ``rule``).
        rule: "valley" or "steepest".
        suggestions: every rule's suggestion, e.g. ``{"valley": 3e-3, "steepest": 1e-2}``.
        stop_reason: why the sweep ended early ("diverged: ...", "non-finite loss"), or None.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    rule: str
    suggestions: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None

    def plot(self, path: str | os.PathLike, title: str | None = None) -> None:
        """Write the loss-vs-LR plot (log x axis) with the suggestions marked."""
        from .plots import plot_lr_find  # matplotlib: imported when a picture is drawn

        plot_lr_find(self.lrs, self.losses, path, smoothed=self.smoothed,
                     suggestions=self.suggestions, chosen=self.rule, title=title)

    def to_csv(self, path: str | os.PathLike) -> None:
        """One row per step: step, lr, loss, smoothed_loss."""
        with atomic_open(path, "w") as f:
            f.write("step,lr,loss,smoothed_loss\n")
            for i, (lr, loss, s) in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True)):
                f.write(f"{i + 1},{lr:.6g},{loss:.6g},{s:.6g}\n")


def suggest_valley(lrs: list[float], smoothed: list[float]) -> float:
    """The LR in the middle of the longest stretch of falling smoothed loss (fastai's "valley").

    Example:
        >>> suggest_valley([1, 2, 3, 4, 5, 6], [5.0, 4.0, 3.0, 2.0, 1.0, 9.0])
        3
    """
    n = len(smoothed)
    if n < 2:
        return lrs[0]
    # longest[i]: length of the longest strictly decreasing subsequence ending at i. O(n^2) is
    # fine: a range test has hundreds of steps, not millions.
    longest = [1] * n
    end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[j] + 1 > longest[i]:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    start = end - longest[end] + 1  # the stretch of steps the valley spans
    return lrs[start + (end - start) // 2]


def suggest_steepest(lrs: list[float], smoothed: list[float]) -> float:
    """The LR where the smoothed loss falls fastest per decade of LR, up to the loss minimum.

    Example:
        >>> suggest_steepest([1e-3, 1e-2, 1e-1, 1.0], [1.0, 0.9, 0.2, 0.1])
        0.01
    """
    n = len(smoothed)
    if n < 3:
        return lrs[int(np.argmin(smoothed))]
    # The first tenth is skipped: there the average still follows single batches, and their
    # batch-to-batch noise divided by a tiny step in log LR reads as a steep slope.
    skip = n // 10
    upto = max(int(np.argmin(smoothed)) + 1, skip + 3)  # past the minimum the loss only rises
    # Slope over a window of +-k steps (a twentieth of the sweep) rather than between
    # neighbours: what is left of the noise would otherwise pick the answer.
    k = max(1, n // 20)
    s = np.asarray(smoothed, dtype=float)
    x = np.log10(np.asarray(lrs, dtype=float))
    idx = np.arange(skip, upto)
    lo, hi = np.maximum(idx - k, 0), np.minimum(idx + k, n - 1)
    slope = (s[hi] - s[lo]) / (x[hi] - x[lo])
    return float(lrs[int(idx[int(np.argmin(slope))])])


_SUGGEST: dict[str, Callable[[list[float], list[float]], float]] = {
    "valley": suggest_valley, "steepest": suggest_steepest}


def lr_find(
    model: nn.Module,
    train_data: Any,
    *,
    loss: str | Callable = "cross_entropy",
    step: Callable | None = None,
    optimizer: str | Mapping[str, Any] | torch.optim.Optimizer = "adamw",
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    batch_size: int = 64,
    smoothing: float = 0.95,
    diverge: float = 4.0,
    rule: str = "valley",
    device: str | torch.device = "auto",
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
    **optimizer_kwargs: Any,
) -> LRFindResult:
    """Run an LR range test on ``model`` and suggest a learning rate; the model is left unchanged.

    Args:
        model: the model to probe. Its weights (and a given optimizer's state) are restored
            bit for bit afterwards.
        train_data: as ``fit`` takes it; cycled if ``steps`` exceeds one epoch of batches.
        loss, step: as ``fit`` takes them (a loss name or callable(output, target), ``"model"``,
            or ``step(model, batch) -> loss | StepOutput``).
        optimizer: a name / dict (built here with ``optimizer_kwargs``) or a built optimizer,
            whose state and LRs are restored afterwards. Every param group gets the swept LR.
        min_lr, max_lr, steps: the exponential sweep (defaults 1e-7 .. 10 in 100 steps).
        batch_size: batch size of ``train_data`` (tensors / arrays).
        smoothing: EMA factor of the loss (0 = raw loss; 0.95 averages ~20 steps, so the curve
            lags the raw loss by little over a 100-step sweep; fastai uses 0.98).
        diverge: stop once the smoothed loss exceeds this multiple of its best value.
        rule: which suggestion to return: "valley" (default) or "steepest".
        device: as ``fit``; the model comes back on its original device.
        seed: seeds the data order; torch's RNG state is restored afterwards either way.
        progress: called with one line when the sweep stops early.

    Returns:
        An LRFindResult; ``.suggestion`` is the LR, ``.plot(path)`` draws the curve.
    """
    if rule not in RULES:
        raise OptiloopError(f"unknown rule {rule!r}; choose one of: {choices(RULES)}")
    for name, v in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise OptiloopError(f"{name} must be a number > 0 (got {v!r})")
    if not min_lr < max_lr:
        raise OptiloopError(f"min_lr must be below max_lr (got {min_lr:g} and {max_lr:g})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 3:
        raise OptiloopError(f"steps must be an integer >= 3 (got {steps!r})")
    if not 0 <= smoothing < 1:
        raise OptiloopError(f"smoothing must be >= 0 and < 1 (got {smoothing!r})")
    if not diverge > 1:
        raise OptiloopError(f"diverge must be > 1 (got {diverge!r})")
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    dev = resolve_device(device)
    step_fn = resolve_step(step, loss)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    # Everything the sweep touches, copied now and put back in `finally`: weights, buffers
    # (BatchNorm statistics), the train/eval mode, a given optimizer's state, the RNG.
    saved_model = copy.deepcopy(model.state_dict())
    saved_modes = {name: m.training for name, m in model.named_modules()}
    built = isinstance(optimizer, torch.optim.Optimizer)
    if built and optimizer_kwargs:
        raise OptiloopError("a built optimizer takes no extra keywords; configure it directly")
    saved_opt = copy.deepcopy(optimizer.state_dict()) if built else None
    saved_rng = torch.get_rng_state()
    try:
        model.to(dev)
        opt = optimizer if built else build_optimizer(optimizer, model, lr=min_lr, **optimizer_kwargs)
        data_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        if seed is not None:
            torch.manual_seed(seed)
        batches = make_batches(train_data, batch_size=batch_size, shuffle=True, seed=data_seed,
                               device=dev, role="training")
        lrs, losses, smoothed, stop_reason = _sweep(model, opt, batches, step_fn, min_lr, max_lr, steps,
                                       smoothing, diverge)
    finally:
        model.load_state_dict(saved_model)
        model.to(home)
        for name, m in model.named_modules():
            m.train(saved_modes.get(name, m.training))
        if built:
            optimizer.load_state_dict(saved_opt)
        torch.set_rng_state(saved_rng)
    if len(lrs) < 3:
        raise OptiloopError(f"the loss diverged within {len(lrs)} steps of min_lr {min_lr:g} "
                            f"({stop_reason}); lower min_lr")
    suggestions = {r: float(_SUGGEST[r](lrs, smoothed)) for r in RULES}
    if stop_reason and progress is not None:
        progress(f"stopped after {len(lrs)} of {steps} steps: {stop_reason}")
    return LRFindResult(lrs, losses, smoothed, suggestions[rule], rule,
                        {rule: suggestions[rule], **suggestions}, stop_reason)


def _sweep(model, opt, batches, step_fn, min_lr, max_lr, steps, smoothing, diverge):
    factor = (max_lr / min_lr) ** (1 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, stop = 0.0, math.inf, None
    model.train()
    epoch = 0
    it = iter(())
    for i in range(steps):
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            batches.set_epoch(epoch)  # a fresh order each pass when steps > one epoch
            it = iter(batches)
            batch = next(it)
        lr = min_lr * factor**i
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = step_fn(model, batch)[0]
        check_loss(loss)
        loss.backward()
        opt.step()
        # A host sync per step: the stopping rule needs the value now (this is a probe, not a
        # training loop; 100 syncs cost nothing next to the steps themselves).
        value = float(loss.item())
        if not math.isfinite(value):
            stop = f"non-finite loss at lr {lr:.3g}"
            break
        avg = smoothing * avg + (1 - smoothing) * value
        s = avg / (1 - smoothing ** (i + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(s)
        best = min(best, s)
        if s > diverge * best:
            stop = f"diverged at lr {lr:.3g} (smoothed loss {s:.3g} > {diverge:g} x best {best:.3g})"
            break
    opt.zero_grad(set_to_none=True)
    return lrs, losses, smoothed, stop
