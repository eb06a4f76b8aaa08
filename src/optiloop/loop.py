"""fit(): the epoch / step loop that couples model, optimizer, scheduler and callbacks.

Reading order: ``fit`` sets up (device, data, optimizer, scheduler, callbacks, resume), then per
epoch ``_train_epoch`` (the hot path) and ``_evaluate``, then the epoch's bookkeeping.

Host syncs: none per step. Per-batch losses and metric sums stay on the device and are read once
per epoch in ``MetricSet.compute`` (and, throttled by wall time, by the progress bar). The only
opt-in per-step syncs are ``nonfinite="skip"`` (must know before stepping) and fp16 loss scaling
(the scheduler must not step when the scaler skipped the optimizer step).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .callbacks import Callback, Monitor, ProgressBar, TerminateOnNaN
from .data import make_batches
from .errors import NonFiniteLossError, OptiloopError, choices
from .history import History
from .metrics import MetricSet, get_loss, resolve_metric
from .optim import build_optimizer
from .schedules import Schedule, build_scheduler

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NONFINITE = ("stop", "skip", "ignore")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: cuda, then mps, then cpu. Anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptiloopError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptiloopError("device 'cuda' asked for but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def logged_keys(metrics: Sequence[str | Callable], validation: bool = True) -> list[str]:
    """The keys of fit's per-epoch logs (the History's columns) for these metrics: what a
    monitor may name. Raises on an unknown metric."""
    keys = ["loss", *(resolve_metric(m)[0] for m in metrics)]
    return ["epoch", *(f"train_{k}" for k in keys), *(f"val_{k}" for k in keys if validation),
            "lr", "seconds"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """What callbacks see. Mutable by the loop; callbacks only read it and set ``stop``."""

    model: nn.Module  # as called in the loop (maybe DDP- or compile-wrapped)
    unwrapped_model: nn.Module  # the user's module: what checkpoints hold
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    history: History
    train_metrics: MetricSet
    callbacks: list[Callback]
    device: torch.device
    world: D.World
    epochs: int
    batches_per_epoch: int
    steps_per_epoch: int
    data_seed: int
    log_keys: list[str]
    settings: dict[str, Any]  # what must not change on resume (batch size, accumulation ...)
    config: dict[str, Any] | None = None
    epoch: int = 0  # current epoch, 1-based
    epoch_done: bool = True  # False while an epoch is under way (mid-epoch checkpoints)
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps done in the whole run
    epoch_lr: float = 0.0  # group 0's LR at the epoch's first step: the history's "lr"
    stop: bool = False
    stop_reason: str | None = None
    nonfinite_step: int | None = None
    skipped_batches: int = 0  # batches dropped by nonfinite="skip"
    partial_ranks: tuple[int, list] | None = None  # DDP: (step, every rank's partial-epoch figures)

    def request_stop(self, reason: str) -> None:
        self.stop, self.stop_reason = True, reason

    def running_logs(self) -> dict[str, float]:
        """This rank's train figures so far in the epoch. One host sync: call sparingly."""
        return {f"train_{k}": v for k, v in self.train_metrics.compute().items()}

    def callback_states(self) -> dict[str, Any]:
        return {key: cb.state_dict() for key, cb in _keyed(self.callbacks)}

    def load_callback_states(self, states: Mapping[str, Any]) -> None:
        for key, cb in _keyed(self.callbacks):
            if key in states:
                cb.load_state_dict(states[key])


def _keyed(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Stable keys for callback state: the class name, numbered from the second of a kind, so
    adding or removing a callback of another kind does not mix up whose state is whose."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
    return out


def _overrides(cb: Callback, event: str) -> bool:
    return getattr(type(cb), event) is not getattr(Callback, event)


def _accumulation_weights(sizes: Sequence[int] | None, n_batches: int, accum: int) -> list[float]:
    """Per-batch loss factor so a group's summed gradients equal one big batch's mean gradient.

    A group of micro-batches with sizes n_i contributes sum_i n_i * mean_i / sum_i n_i: a short
    last batch (or short last group) weighs exactly its share, as in one large batch.
    """
    weights = []
    for start in range(0, n_batches, accum):
        group = range(start, min(start + accum, n_batches))
        if sizes is not None:
            total = sum(sizes[i] for i in group)
            weights += [sizes[i] / total for i in group]
        else:
            weights += [1.0 / len(group)] * len(group)
    return weights


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    loss: str | Callable = "cross_entropy",
    optimizer: str | Mapping[str, Any] | torch.optim.Optimizer = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    scheduler: str | Mapping[str, Any] | Any = None,
    epochs: int = 10,
    batch_size: int = 32,
    metrics: Sequence[str | Callable] = (),
    callbacks: Iterable[Callback] = (),
    device: str | torch.device = "auto",
    seed: int | None = None,
    grad_accum: int = 1,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    amp: str | None = None,
    progress: bool = True,
    nonfinite: str = "stop",
    resume: str | None = None,
    force_resume: bool = False,
    compile: bool | Mapping[str, Any] = False,
    channels_last: bool = False,
    fast: bool = True,
    config: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` and return its per-epoch History.

    Args:
        model: any nn.Module; moved to ``device``.
        train_data, val_data: a DataLoader, a Dataset, or an ``(X, y)`` pair of tensors / arrays
            (batched by index: the fast path). val_data is evaluated after every epoch.
        loss: a name (cross_entropy, mse, l1, bce, huber, smooth_l1, nll) or callable(out, y).
        optimizer, lr, weight_decay: see ``build_optimizer``; lr/weight_decay None = torch default.
        scheduler: see ``build_scheduler``; None = constant LR. Stepped by its interval.
        epochs, batch_size: run length and batch size (per process under DDP).
        metrics: names (accuracy, top5, mse, mae) or callables(out, y) -> batch mean.
        callbacks: EarlyStopping, Checkpoint, LRMonitor, your own Callback subclasses.
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps".
        seed: seeds python / numpy / torch and the data order; None leaves global RNG as is.
        grad_accum: micro-batches per optimizer step; gradients equal the big batch's.
        clip_grad_norm / clip_grad_value: clip gradients before each optimizer step.
        amp: None, "bf16" or "fp16" (fp16 adds a GradScaler; bf16 needs none). On CPU both run
            (torch's CPU autocast), but only CPUs with native half-precision units gain speed.
        progress: show a tqdm bar and a summary line per epoch (rank 0 only).
        nonfinite: "stop" (default: raise NonFiniteLossError at the epoch's end, before any
            checkpoint), "skip" (drop batches whose loss is NaN/inf; one sync per step), "ignore".
        resume: a checkpoint file or run folder to continue from (see optiloop.checkpoint).
            Refused if batch size, accumulation, world size or the training data changed,
            unless ``force_resume=True``.
        compile: wrap the model in torch.compile; a dict passes its keywords (e.g.
            ``{"mode": "max-autotune"}``). Checkpoints hold the uncompiled module's weights.
        channels_last: NHWC memory format for the model and 4-D inputs (faster convs on GPUs).
        fast: use the fastest optimizer implementation torch has for the device.
        config: a resolved config to store in checkpoints (the CLI passes its own).

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> h = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=2, progress=False, seed=0)
        >>> len(h["train_loss"])
        2
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
    if grad_accum < 1:
        raise OptiloopError(f"grad_accum must be >= 1, got {grad_accum}")
    if nonfinite not in NONFINITE:
        raise OptiloopError(f"unknown nonfinite={nonfinite!r}; choose one of: {choices(NONFINITE)}")
    if amp is not None and amp not in AMP_DTYPES:
        raise OptiloopError(f"unknown amp={amp!r}; choose one of: {choices(AMP_DTYPES)} or None")
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    dev = resolve_device(device)
    world = D.setup(dev)
    dev = D.local_device(dev, world)
    if nonfinite == "skip" and world.distributed:
        raise OptiloopError("nonfinite='skip' is not supported under DDP (ranks would step apart); "
                            "use 'stop'")
    if seed is not None:
        seed_everything(seed)
    data_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    data_seed = D.broadcast_int(data_seed, dev)  # every rank must shard the same permutation
    loss_fn = get_loss(loss)
    model.to(dev, memory_format=torch.channels_last) if channels_last else model.to(dev)

    train = make_batches(train_data, batch_size=batch_size, shuffle=True, seed=data_seed, device=dev,
                         rank=world.rank, world_size=world.world_size, role="training")
    val = None
    if val_data is not None:
        val = make_batches(val_data, batch_size=batch_size, shuffle=False, seed=data_seed, device=dev,
                           rank=world.rank, world_size=world.world_size, role="validation")
    batches_per_epoch = len(train)
    steps_per_epoch = math.ceil(batches_per_epoch / grad_accum)

    if isinstance(optimizer, torch.optim.Optimizer) and (lr is not None or weight_decay is not None):
        raise OptiloopError("lr/weight_decay go to build_optimizer; a built optimizer is used as is")
    opt_kwargs = {} if isinstance(optimizer, torch.optim.Optimizer) else {"lr": lr, "weight_decay": weight_decay}
    opt = build_optimizer(optimizer, model, fast=fast, **opt_kwargs)
    schedule = build_scheduler(scheduler, opt, epochs=epochs, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None

    metric_names = list(metrics)
    train_metrics = MetricSet(metric_names, dev)
    val_metrics = MetricSet(metric_names, dev) if val is not None else None
    log_keys = logged_keys(metric_names, validation=val is not None)
    if schedule.interval == "metric":
        Monitor(schedule.monitor or "val_loss").check_available(log_keys)

    cbs = list(callbacks)
    if nonfinite == "stop" and not any(isinstance(c, TerminateOnNaN) for c in cbs):
        cbs.append(TerminateOnNaN())
    if progress and not any(isinstance(c, ProgressBar) for c in cbs):
        cbs.append(ProgressBar())
    cbs.sort(key=lambda c: c.order)  # stable: equal orders keep the user's order
    active = [c for c in cbs if world.is_main or not c.main_process_only]

    # Mid-epoch checkpoints under DDP hold every rank's partial-epoch figures. Gathering them is a
    # collective, so the loop does it on every rank at each step where rank 0 may save (the gcd of
    # its savers' every_n_steps), wherever the user created the Checkpoint.
    gather_every = 0
    if world.distributed:
        for c in active:
            gather_every = math.gcd(gather_every, getattr(c, "every_n_steps", None) or 0)
        gather_every = D.broadcast_int(gather_every, dev)

    run_model = D.wrap(model, dev, world)
    if compile:
        run_model = torch.compile(run_model, **(dict(compile) if isinstance(compile, Mapping) else {}))
    state = TrainState(
        model=run_model, unwrapped_model=model, optimizer=opt, schedule=schedule, scaler=scaler,
        history=History(), train_metrics=train_metrics, callbacks=cbs, device=dev, world=world,
        epochs=epochs, batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch,
        data_seed=data_seed, log_keys=log_keys, config=config,
        settings={"batch_size": batch_size, "grad_accum": grad_accum, "world_size": world.world_size,
                  "train_data": _fingerprint(train)},
    )
    if resume is not None:
        _resume(state, resume, force_resume)
    if state.data_seed != data_seed:  # resumed a run whose seed was drawn: replay its order
        train = make_batches(train_data, batch_size=batch_size, shuffle=True, seed=state.data_seed,
                             device=dev, rank=world.rank, world_size=world.world_size, role="training")
    if resume is not None:
        _warn_if_order_not_reproducible(state, train)
    ctx = _Context(state, train, val, val_metrics, loss_fn, grad_accum, clip_grad_norm,
                   clip_grad_value, AMP_DTYPES.get(amp), nonfinite, active, channels_last, gather_every)
    _fire(active, "on_fit_start", state, {})
    try:
        first = state.epoch + 1 if state.epoch_done else state.epoch
        for epoch in range(first, epochs + 1):
            if state.stop:  # asked at fit start, e.g. a resumed run early stopping had ended
                break
            _run_epoch(ctx, epoch)
            if state.stop:
                break
        at_end = sorted(active, key=lambda c: c.order if c.fit_end_order is None else c.fit_end_order)
        _fire(at_end, "on_fit_end", state, {"stop_reason": state.stop_reason})
    except BaseException as error:
        for cb in active:
            cb.on_exception(state, error)
        raise
    return state.history


def _fingerprint(batches: Any) -> str:
    """Sample count, and for in-memory data a checksum of it: resuming on other data is refused."""
    X = getattr(batches, "X", None)
    if X is None:
        return f"{batches.num_samples} samples"
    # One sync at set-up. Row sums first: a float64 copy of X would double its memory.
    total = X.reshape(len(X), -1).sum(dim=1).double().sum().item()
    return f"{batches.num_samples} samples, sum {total:.10g}"


def _warn_if_order_not_reproducible(state: TrainState, train: Any) -> None:
    """A mid-epoch resume replays the epoch's order and skips what was done: only exact if the
    order can be replayed (optiloop's own batching, or a DistributedSampler)."""
    from torch.utils.data import DistributedSampler, SequentialSampler

    loader = getattr(train, "loader", None)
    if state.epoch_done or loader is None or getattr(train, "generators", ()):
        return
    if not isinstance(loader.sampler, (SequentialSampler, DistributedSampler)):
        warnings.warn("resuming mid-epoch with your own shuffling DataLoader: its order cannot be "
                      "replayed, so the rest of this epoch may repeat or miss samples; pass the "
                      "Dataset or (X, y) and optiloop makes the order reproducible", stacklevel=3)


def _resume(state: TrainState, path: str, force: bool) -> None:
    from .checkpoint import find_resumable, load_checkpoint, restore_training_state

    # On the CPU: RNG states must stay CPU tensors; model / optimizer load_state_dict move the
    # rest to where the parameters live.
    ckpt = load_checkpoint(find_resumable(path), map_location="cpu")
    saved = ckpt.get("settings", {})
    changed = [f"{k} {saved[k]} -> {v}" for k, v in state.settings.items() if k in saved and saved[k] != v]
    if changed and not force:
        raise OptiloopError(f"cannot resume {path}: settings changed ({'; '.join(changed)}); "
                            "pass force_resume=True to continue anyway")
    restore_training_state(state, ckpt)


@dataclass
class _Context:
    """The loop's fixed parts for one fit() call."""

    state: TrainState
    train: Any
    val: Any
    val_metrics: MetricSet | None
    loss_fn: Callable
    grad_accum: int
    clip_norm: float | None
    clip_value: float | None
    amp_dtype: torch.dtype | None
    nonfinite: str
    callbacks: list[Callback]
    channels_last: bool = False
    gather_every: int = 0  # DDP: gather every rank's partial-epoch figures every N steps (0: never)


def _fire(cbs: list[Callback], event: str, state: TrainState, logs: dict[str, Any]) -> None:
    for cb in cbs:
        getattr(cb, event)(state, logs)


def _run_epoch(ctx: _Context, epoch: int) -> None:
    state = ctx.state
    resuming_mid_epoch = not state.epoch_done and state.epoch == epoch
    if not resuming_mid_epoch:
        state.epoch, state.batch = epoch, 0
        state.train_metrics.reset()
        state.epoch_lr = state.optimizer.param_groups[0]["lr"]
    state.epoch_done, state.nonfinite_step = False, None
    ctx.train.set_epoch(epoch)
    _fire(ctx.callbacks, "on_epoch_start", state, {})
    t0 = time.perf_counter()

    _train_epoch(ctx)
    if state.train_metrics.count == 0:
        raise NonFiniteLossError(f"every batch of epoch {epoch} had a non-finite loss; nothing was trained")
    reduce = D.all_reduce_sum if state.world.distributed else None
    logs: dict[str, Any] = {"epoch": epoch}
    logs.update({f"train_{k}": v for k, v in state.train_metrics.compute(reduce).items()})
    if not math.isfinite(logs["train_loss"]):
        bad = state.train_metrics.first_nonfinite()
        state.nonfinite_step = (bad // ctx.grad_accum + 1) if bad is not None else None
    if ctx.val is not None:
        logs.update({f"val_{k}": v for k, v in _evaluate(ctx).items()})
        _fire(ctx.callbacks, "on_eval_end", state, logs)
    logs["lr"] = state.epoch_lr
    logs["seconds"] = time.perf_counter() - t0

    # The one epoch-level scheduler call: per-epoch schedules step here, plateau with its metric.
    metric = logs[state.schedule.monitor] if state.schedule.interval == "metric" else None
    state.schedule.epoch_end(metric)
    state.epoch_done, state.batch = True, 0
    state.history.rows.append(logs)  # the same dict: epoch-end callbacks may add keys to it
    _fire(ctx.callbacks, "on_epoch_end", state, logs)
    # Every rank saw the same all-reduced logs, so early stopping decided the same everywhere; a
    # stop from a rank-0-only callback is broadcast. The collective also keeps every rank behind
    # rank 0's checkpoint write.
    if state.world.distributed:
        state.stop = D.broadcast_flag(state.stop, state.device)


def _train_epoch(ctx: _Context) -> None:
    """The hot path. Nothing here reads a device value unless nonfinite='skip' or fp16 asks."""
    state = ctx.state
    model, opt, schedule, scaler = state.model, state.optimizer, state.schedule, state.scaler
    metrics, loss_fn, accum = state.train_metrics, ctx.loss_fn, ctx.grad_accum
    step_cbs = [c for c in ctx.callbacks if _overrides(c, "on_step_end")]
    n = state.batches_per_epoch
    weights = _accumulation_weights(ctx.train.batch_sizes(), n, accum) if accum > 1 else None
    params = [p for g in opt.param_groups for p in g["params"]]
    ddp_module = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    ddp = isinstance(ddp_module, nn.parallel.DistributedDataParallel)
    no_op = contextlib.nullcontext()  # reusable: one object for every step
    autocast = torch.autocast(state.device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype else no_op
    step_logs: dict[str, Any] = {}
    skip_until = state.batch  # batches already done before a mid-epoch resume
    # Settings as locals: the body below runs per micro-batch, where attribute lookups add up.
    channels_last, skip_bad = ctx.channels_last, ctx.nonfinite == "skip"
    clip_norm, clip_value, gather_every = ctx.clip_norm, ctx.clip_value, ctx.gather_every

    model.train()
    opt.zero_grad(set_to_none=True)
    kept = 0  # micro-batches of the current accumulation group that contributed gradients
    for i, (x, y) in enumerate(ctx.train):
        if i < skip_until:
            continue
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        boundary = (i + 1) % accum == 0 or i + 1 == n
        # Under DDP, all-reduce gradients only on the micro-batch that ends an accumulation group.
        with ddp_module.no_sync() if ddp and not boundary else no_op:
            with autocast:
                out = model(x)
                loss = loss_fn(out, y)
            if skip_bad and not torch.isfinite(loss):  # opt-in host sync
                # The bad micro-batch adds nothing; the group's others keep their weights.
                state.skipped_batches += 1
                state.batch = i + 1
                if not boundary or kept == 0:
                    if boundary:
                        opt.zero_grad(set_to_none=True)
                    continue
                out = None
            else:
                scaled = loss * weights[i] if weights is not None else loss
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                kept += 1
        if out is not None:
            metrics.update(out.detach(), y, loss)
        state.batch = i + 1
        if not boundary:
            continue
        kept = 0
        if scaler is not None and (clip_norm or clip_value):
            scaler.unscale_(opt)
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if clip_value:
            torch.nn.utils.clip_grad_value_(params, clip_value)
        if scaler is not None:
            scale = scaler.get_scale()  # host sync (fp16 only): was this step skipped?
            scaler.step(opt)
            scaler.update()
            stepped = scaler.get_scale() >= scale
        else:
            opt.step()
            stepped = True
        opt.zero_grad(set_to_none=True)
        if stepped:  # a step GradScaler skipped moves neither the schedule nor the step count
            schedule.step_end()  # the one step-level scheduler call
            state.step += 1
            if gather_every and state.step % gather_every == 0 and i + 1 < n:
                state.partial_ranks = (state.step, D.all_gather_object(metrics.state_dict()))
            for cb in step_cbs:
                cb.on_step_end(state, step_logs)


@torch.no_grad()
def _evaluate(ctx: _Context) -> dict[str, float]:
    state, ms = ctx.state, ctx.val_metrics
    model = state.model
    model.eval()
    ms.reset()
    autocast = (torch.autocast(state.device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype
                else contextlib.nullcontext())
    for x, y in ctx.val:
        with autocast:
            out = model(x)
            loss = ctx.loss_fn(out, y)
        ms.update(out, y, loss)
    model.train()
    return ms.compute(D.all_reduce_sum if state.world.distributed else None)


def evaluate(model: nn.Module, data: Any, *, loss: str | Callable = "cross_entropy",
             metrics: Sequence[str | Callable] = (), batch_size: int = 256,
             device: str | torch.device = "auto") -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data`` (no gradients), e.g. ``{"loss": .., "acc": ..}``.

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
        >>> sorted(ol.evaluate(torch.nn.Linear(3, 2), (X, y), metrics=["accuracy"]))
        ['acc', 'loss']
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    batches = make_batches(data, batch_size=batch_size, shuffle=False, seed=0, device=dev, role="evaluation")
    ms = MetricSet(list(metrics), dev)
    loss_fn = get_loss(loss)
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            ms.update(out, y, loss_fn(out, y))
    return ms.compute()
