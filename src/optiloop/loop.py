"""fit(): the epoch / step loop that couples model, step, optimizer, scheduler and callbacks.

Reading order: ``fit`` checks its arguments, builds the run (``_Loop.__init__``: device, data,
step, optimizer, scheduler, callbacks), resumes if asked, and runs the epochs (``_Loop.run``): per
epoch ``_train_epoch`` (the hot path) and ``_evaluate``, then the epoch's bookkeeping.

The step is a parameter (see optiloop.steps): ``loss_fn(model(x), y)`` by default, the model's own
loss with ``loss="model"``, or any ``step(model, batch)``. Whatever it is, the loop owns backward,
accumulation, clipping, AMP, the optimizer and scheduler steps, and the averages.

Host syncs: none per step. Per-batch losses and metric sums stay on the device and are read once
per epoch in ``MetricSet.compute`` (and, throttled by wall time, by the progress bar). The only
opt-in per-step syncs are ``nonfinite="skip"`` (must know before stepping) and fp16 loss scaling
(the scheduler must not step when the scaler skipped the optimizer step).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .callbacks import Callback, CallbackList, TrainState, check_logged
from .checkpoint import (
    FORMAT,
    VERSION,
    CheckpointFolder,
    load_model_weights,
    load_resumable,
    rng_state,
    set_rng_state,
)
from .data import make_batches, map_batch
from .errors import CheckpointError, NonFiniteLossError, OptiloopError, TrainingInterrupted, choices
from .history import History
from .metrics import Metrics, MetricSet, metric_keys
from .optim import build_optimizer
from .schedules import build_scheduler
from .steps import check_loss, default_count, resolve_step, user_step

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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptiloopError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OptiloopError("device 'mps' asked for but MPS is not available on this machine; "
                            "use device='auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OptiloopError(f"unknown device {device!r}; choose one of: auto, cpu, cuda, cuda:N, mps")
    return dev


def logged_keys(metrics: Metrics, validation: bool = True) -> list[str]:
    """The keys of fit's per-epoch logs (the History's columns) for these metrics: what a
    monitor may name. Raises on an unknown metric."""
    keys = ["loss", *metric_keys(metrics)]
    return ["epoch", *(f"train_{k}" for k in keys), *(f"val_{k}" for k in keys if validation),
            "lr", "seconds"]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class _Options:
    """How each optimizer step is taken."""

    grad_accum: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    amp_dtype: torch.dtype | None = None
    nonfinite: str = "stop"
    channels_last: bool = False


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any = None,
    *,
    loss: str | Callable = "cross_entropy",
    step: Callable | None = None,
    eval_step: Callable | None = None,
    optimizer: str | Mapping[str, Any] | torch.optim.Optimizer = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    scheduler: str | Mapping[str, Any] | Any = None,
    epochs: int = 10,
    batch_size: int = 32,
    metrics: Metrics = (),
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
    strategy: str | D.FSDP = "auto",
    config: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` and return its per-epoch History.

    Args:
        model: any nn.Module; moved to ``device``.
        train_data, val_data: a DataLoader, a Dataset, or in-memory tensors / numpy arrays: an
            ``(X, y)`` pair, a tuple, or a dict of equal-length arrays (batched by index: the fast
            path). A batch may have any structure (tuple, dict, namedtuple, dataclass of tensors);
            it is moved to the device whole. val_data is evaluated after every epoch.
        loss: a name (cross_entropy, mse, l1, bce, huber, smooth_l1, nll) or callable(out, y),
            used as ``loss(model(x), y)`` on ``(x, y)`` batches; or ``"model"``: the model
            computes its own loss (``model(**batch).loss`` for a dict batch, ``model(*batch)``
            for a tuple; ``.loss`` or ``["loss"]`` of the result).
        step: ``step(model, batch)`` returning the loss tensor or ``ol.StepOutput(loss,
            outputs=, targets=, count=)``; replaces ``loss``. The loop does backward and steps.
        eval_step: the same for validation (default: ``step``), run under ``torch.no_grad()``.
        optimizer, lr, weight_decay: see ``build_optimizer``; lr/weight_decay None = torch default.
        scheduler: see ``build_scheduler``; None = constant LR. Stepped by its interval.
        epochs, batch_size: run length and batch size (per process under DDP).
        metrics: names (accuracy, top5, mse, mae), callables(out, y) -> batch mean (the epoch's
            value: the mean of batch means weighted by batch size), or torchmetrics ``Metric``
            objects (exact epoch values: F1, AUROC, R² ...; named by class, ``MulticlassF1Score``
            -> ``f1``), on the step's outputs and targets; a dict names them:
            ``{"f1_macro": MulticlassF1Score(10, average="macro")}``.
        callbacks: EarlyStopping, Checkpoint, LRMonitor, your own Callback subclasses.
        device: "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps".
        seed: seeds python / numpy / torch and the data order; None leaves global RNG as is.
        grad_accum: micro-batches per optimizer step; gradients equal the big batch's, each
            micro-batch weighted by its sample count (or the count its step returns).
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
        strategy: how several processes (launched by torchrun) share the work: "auto" (ddp
            under torchrun, none for one process), "none", "ddp" (a full model copy per process),
            "fsdp" (FSDP2: parameters, gradients and optimizer state sharded across processes,
            per repeated block and the root; checkpoints become sharded DCP folders), or
            ``ol.FSDP(blocks=(MyBlock,))`` to choose the blocks. Under fsdp, ``amp="bf16"`` is
            FSDP's own mixed precision, and the optimizer is passed by name or dict (it is
            built on the sharded parameters).
        config: a resolved config to store in checkpoints (the CLI passes its own).

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> h = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=2, progress=False, seed=0)
        >>> len(h["train_loss"])
        2
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise OptiloopError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise OptiloopError(f"grad_accum must be an integer >= 1, got {grad_accum!r}")
    if nonfinite not in NONFINITE:
        raise OptiloopError(f"unknown nonfinite={nonfinite!r}; choose one of: {choices(NONFINITE)}")
    if amp is not None and amp not in AMP_DTYPES:
        raise OptiloopError(f"unknown amp={amp!r}; choose one of: {choices(AMP_DTYPES)} or None")
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if step is not None and loss not in ("cross_entropy", None):
        raise OptiloopError("give step= or loss=, not both: a step computes its own loss")
    if eval_step is not None and not callable(eval_step):
        raise OptiloopError(f"eval_step must be a function (model, batch) -> loss, got {type(eval_step).__name__}")
    options = _Options(grad_accum, clip_grad_norm, clip_grad_value, AMP_DTYPES.get(amp), nonfinite,
                       channels_last)
    run = _Loop(model, train_data, val_data, loss=loss, step=step, eval_step=eval_step, optimizer=optimizer,
                lr=lr, weight_decay=weight_decay, scheduler=scheduler, epochs=epochs, batch_size=batch_size,
                metrics=metrics if isinstance(metrics, Mapping) else list(metrics), callbacks=callbacks,
                device=device, seed=seed, progress=progress, compile=compile, fast=fast, strategy=strategy,
                config=config, options=options)
    if resume is not None:
        run.resume(resume, force_resume)
    return run.run()


class _Loop:
    """One fit() call: the built run, its position, and the loop that advances it."""

    def __init__(self, model, train_data, val_data, *, loss, step, eval_step, optimizer, lr, weight_decay,
                 scheduler, epochs, batch_size, metrics, callbacks, device, seed, progress, compile, fast,
                 strategy, config, options: _Options):
        self.options = opts = options
        dev = resolve_device(device)
        world = D.setup(dev)
        dev = D.local_device(dev, world)
        self.strategy, fsdp = D.resolve_strategy(strategy, world)
        if opts.nonfinite == "skip" and world.distributed:
            raise OptiloopError(f"nonfinite='skip' is not supported under {self.strategy.upper()} (ranks would "
                                "step apart); use 'stop'")
        if fsdp is not None:
            check_fsdp(optimizer, scheduler, opts.amp_dtype, compile)
        if seed is not None:
            seed_everything(seed)
        data_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.data_seed = D.broadcast_int(data_seed, dev)  # every rank must shard the same permutation
        self.step_fn = resolve_step(step, loss)
        self.eval_fn = user_step(eval_step) if eval_step is not None else self.step_fn
        model.to(dev, memory_format=torch.channels_last) if opts.channels_last else model.to(dev)

        self._make_train = lambda seed: make_batches(
            train_data, batch_size=batch_size, shuffle=True, seed=seed, device=dev, rank=world.rank,
            world_size=world.world_size, role="training")
        self.train = self._make_train(self.data_seed)
        self.val = None if val_data is None else make_batches(
            val_data, batch_size=batch_size, shuffle=False, seed=self.data_seed, device=dev, rank=world.rank,
            world_size=world.world_size, role="validation")
        batches_per_epoch = len(self.train)
        steps_per_epoch = math.ceil(batches_per_epoch / opts.grad_accum)

        if isinstance(optimizer, torch.optim.Optimizer) and (lr is not None or weight_decay is not None):
            raise OptiloopError("lr/weight_decay go to build_optimizer; a built optimizer is used as is")
        if fsdp is not None:  # before the optimizer: it must hold the sharded parameters
            D.shard(model, dev, world, fsdp, param_dtype=opts.amp_dtype)
        # FSDP casts parameters itself (its MixedPrecisionPolicy); autocast is for the others.
        self.autocast_dtype = opts.amp_dtype if fsdp is None else None
        opt_kwargs = {} if isinstance(optimizer, torch.optim.Optimizer) else {"lr": lr, "weight_decay": weight_decay}
        opt = build_optimizer(optimizer, model, fast=fast, **opt_kwargs)
        schedule = build_scheduler(scheduler, opt, epochs=epochs, steps_per_epoch=steps_per_epoch)
        scaler = torch.amp.GradScaler(dev.type) if opts.amp_dtype == torch.float16 else None

        self.train_metrics = MetricSet(metrics, dev)
        self.val_metrics = MetricSet(metrics, dev) if self.val is not None else None
        log_keys = logged_keys(metrics, validation=self.val is not None)
        if schedule.interval == "metric":
            check_logged(schedule.monitor or "val_loss", log_keys)
        self.callbacks = CallbackList(callbacks, progress=progress, is_main=world.is_main,
                                      sharded=fsdp is not None)
        self.callbacks.reset()  # each fit starts every callback afresh; a resume then restores them
        if fsdp is not None:
            _check_same_savers(self.callbacks)
        # Mid-epoch snapshots under DDP hold every rank's partial-epoch figures. Gathering them is
        # a collective, so every rank does it at each step where some rank's callback may snapshot,
        # wherever the user created that callback (rank 0's declaration is broadcast).
        self.gather_every = D.broadcast_int(self.callbacks.snapshot_every(), dev) if world.distributed else 0

        run_model = D.wrap(model, dev, world) if self.strategy == "ddp" else model
        if compile:
            run_model = torch.compile(run_model, **(dict(compile) if isinstance(compile, Mapping) else {}))
        self.state = TrainState(
            model=run_model, unwrapped_model=model, optimizer=opt, schedule=schedule, scaler=scaler,
            history=History(), device=dev, world=world, epochs=epochs, batches_per_epoch=batches_per_epoch,
            steps_per_epoch=steps_per_epoch, log_keys=log_keys, config=config, strategy=self.strategy,
            _loop=self)
        self.settings = {"batch_size": batch_size, "grad_accum": opts.grad_accum, "world_size": world.world_size,
                         "train_data": self.train.fingerprint()}
        # Accumulation weights known before the epoch (the default step on batches of known
        # sizes); otherwise each micro-batch is weighted by the count its step reports.
        sizes = self.train.batch_sizes()
        default_step = step is None and loss != "model"
        self.weights = (_accumulation_weights(sizes, batches_per_epoch, opts.grad_accum)
                        if opts.grad_accum > 1 and default_step and sizes else None)
        self.params = [p for g in opt.param_groups for p in g["params"]]
        # Where the run stands, besides the public position in self.state.
        self.epoch_done = True  # False while an epoch is under way (mid-epoch checkpoints)
        self.epoch_lr = 0.0  # group 0's LR at the epoch's first step: the history's "lr"
        self.nonfinite_step: int | None = None
        self.skipped_batches = 0  # batches dropped by nonfinite="skip"
        self.gathered: tuple[int, list] | None = None  # DDP: (step, every rank's partial figures)
        self.final_weights: Mapping[str, Any] | None = None  # loaded once fit ends (restore_best)
        self.signals = _Signals()  # installed while run() runs

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> History:
        state, callbacks = self.state, self.callbacks
        callbacks.fire("on_fit_start", state, {})
        with _Signals() as self.signals:
            try:
                first = state.epoch + 1 if self.epoch_done else state.epoch
                for epoch in range(first, state.epochs + 1):
                    if state.stop:  # asked at fit start, e.g. a resumed run early stopping had ended
                        break
                    self._run_epoch(epoch)
                callbacks.fire("on_fit_end", state, {"stop_reason": state.stop_reason})
            except BaseException as error:
                # Still under our handlers: a second Ctrl-C cannot cut the checkpoint write short.
                callbacks.fire_exception(state, error)
                raise
        if self.final_weights is not None:
            state.unwrapped_model.load_state_dict(self.final_weights)
        return state.history

    def _run_epoch(self, epoch: int) -> None:
        state, callbacks = self.state, self.callbacks
        if not (not self.epoch_done and state.epoch == epoch):  # not resuming mid-epoch
            state.epoch, state.batch = epoch, 0
            self.train_metrics.reset()
            self.epoch_lr = state.optimizer.param_groups[0]["lr"]
        self.epoch_done, self.nonfinite_step = False, None
        self.train.set_epoch(epoch)
        callbacks.fire("on_epoch_start", state, {})
        t0 = time.perf_counter()

        self._train_epoch()
        if self.train_metrics.batches == 0:
            raise NonFiniteLossError(f"every batch of epoch {epoch} had a non-finite loss; nothing was trained")
        reduce = D.all_reduce_sum if state.world.distributed else None
        logs: dict[str, Any] = {"epoch": epoch}
        logs.update({f"train_{k}": v for k, v in self.train_metrics.compute(reduce).items()})
        if not math.isfinite(logs["train_loss"]):
            bad = self.train_metrics.first_nonfinite()
            self.nonfinite_step = (bad // self.options.grad_accum + 1) if bad is not None else None
            if self.options.nonfinite == "stop":  # before anything is saved or evaluated
                where = f", step {self.nonfinite_step}" if self.nonfinite_step is not None else ""
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}{where}: stopped before saving; lower the LR, "
                    "clip gradients, or skip bad batches (nonfinite='skip')")
        if not self._params_finite():  # one sync per epoch: broken weights are never saved or evaluated
            raise NonFiniteLossError(
                f"non-finite weights after epoch {epoch}: stopped before saving; lower the LR or clip gradients")
        if self.val is not None:
            logs.update({f"val_{k}": v for k, v in self._evaluate().items()})
            if not math.isfinite(logs["val_loss"]):  # whatever nonfinite= says: that governs batches
                raise NonFiniteLossError(f"non-finite validation loss at epoch {epoch}: stopped before saving")
            callbacks.fire("on_eval_end", state, logs)
        logs["lr"] = self.epoch_lr
        logs["seconds"] = time.perf_counter() - t0

        # The one epoch-level scheduler call: per-epoch schedules step here, plateau with its metric.
        metric = logs[state.schedule.monitor] if state.schedule.interval == "metric" else None
        state.schedule.epoch_end(metric)
        self.epoch_done, state.batch = True, 0
        state.history.rows.append(logs)  # the same dict: epoch-end callbacks may add keys to it
        callbacks.fire("on_epoch_end", state, logs)
        # Every rank saw the same all-reduced logs, so early stopping decided the same everywhere; a
        # stop from a rank-0-only callback is broadcast. The collective also keeps every rank behind
        # rank 0's checkpoint write.
        if state.world.distributed:
            state.stop = D.broadcast_flag(state.stop, state.device)
            # Ranks get a signal at different steps: they agree on it here, at the epoch's end.
            signum = D.max_int(self.signals.signum or 0, state.device)
            if signum:
                raise TrainingInterrupted(signum, epoch, state.step)
        elif self.signals.signum is not None:
            raise TrainingInterrupted(self.signals.signum, epoch, state.step)

    def _params_finite(self) -> bool:
        """Every weight finite (one host sync). Under FSDP each rank checks its own shards and the
        ranks agree (a collective: every rank calls this there); DDP's replicas are identical."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.state.unwrapped_model.parameters()]
        local = [p for p in local if p.numel()]
        ok = torch.stack([torch.isfinite(p).all() for p in local]).all() if local else torch.tensor(True)
        if self.strategy == "fsdp":
            return bool(D.all_reduce_sum((~ok).to(torch.int32).reshape(1)).item() == 0)
        return bool(ok)

    def _train_epoch(self) -> None:
        """The hot path. Nothing here reads a device value unless nonfinite='skip' or fp16 asks."""
        state, opts = self.state, self.options
        model, opt, schedule, scaler = state.model, state.optimizer, state.schedule, state.scaler
        metrics, step_fn, accum, weights, params = self.train_metrics, self.step_fn, opts.grad_accum, \
            self.weights, self.params
        before_step = self.callbacks.listeners("on_before_optimizer_step")
        step_end = self.callbacks.listeners("on_step_end")
        step_logs = bool(before_step or step_end)  # build per-step logs only for a listener
        counted = weights is None and accum > 1  # weigh micro-batches by their reported counts
        n = state.batches_per_epoch
        ddp_module = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
        ddp = isinstance(ddp_module, nn.parallel.DistributedDataParallel)
        no_op = contextlib.nullcontext()  # reusable: one object for every step
        autocast = torch.autocast(state.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else no_op
        skip_until = state.batch  # batches already done before a mid-epoch resume
        # Settings as locals: the body below runs per micro-batch, where attribute lookups add up.
        channels_last, skip_bad = opts.channels_last, opts.nonfinite == "skip"
        clip_norm, clip_value, gather_every = opts.clip_grad_norm, opts.clip_grad_value, self.gather_every
        unscale = scaler is not None and bool(clip_norm or clip_value or before_step)
        signals, distributed = self.signals, state.world.distributed

        model.train()
        opt.zero_grad(set_to_none=True)
        kept = 0  # micro-batches of the current accumulation group that contributed gradients
        first = total = loss_sum = None  # counted groups: first kept count, kept counts, weighted losses
        for i, batch in enumerate(self.train):
            if i < skip_until:
                continue
            if channels_last:
                batch = map_batch(_nhwc, batch)
            boundary = (i + 1) % accum == 0 or i + 1 == n
            contributed = False
            # Under DDP, all-reduce gradients only on the micro-batch that ends an accumulation group.
            # FSDP reduce-scatters after every micro-batch: skipping it would keep whole, unsharded
            # gradients on every rank, the memory that sharding exists to save.
            with ddp_module.no_sync() if ddp and not boundary else no_op:
                with autocast:
                    loss, outputs, targets, count = step_fn(model, batch)
                check_loss(loss)
                if count is None:
                    count = default_count(outputs, batch)
                if skip_bad and not torch.isfinite(loss):  # opt-in host sync
                    # The bad micro-batch adds nothing; the group's others keep their weights.
                    self.skipped_batches += 1
                elif not loss.requires_grad:
                    raise OptiloopError("the step's loss does not require grad: it depends on no trainable "
                                        "parameter (was it computed under no_grad, or detached?)")
                else:
                    if weights is not None:
                        scaled = loss * weights[i]
                    elif counted:
                        # Micro-batch j's gradient weighs count_j / (the group's total count), known
                        # only at the group's end: until then weigh by count_j / first, then rescale
                        # the sum once, before the last backward (so DDP reduces the final sum).
                        if kept == 0:
                            first = total = count
                            scaled = loss
                        else:
                            total = total + count
                            if boundary:
                                _scale_grads(params, first / total)
                                scaled = loss * (count / total)
                            else:
                                scaled = loss * (count / first)
                    else:
                        scaled = loss
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    kept += 1
                    contributed = True
                    if step_logs and accum > 1:
                        part = loss.detach() * (weights[i] if weights is not None else count)
                        loss_sum = part if loss_sum is None else loss_sum + part
                    metrics.update(loss, count, outputs, targets)
            state.batch = i + 1
            if not boundary:
                continue
            if kept == 0:  # every micro-batch of the group was skipped
                opt.zero_grad(set_to_none=True)
                continue
            if counted and not contributed and kept > 1:  # the group's last was skipped: rescale now
                _scale_grads(params, first / total)
            logs: dict[str, Any] = {}
            if step_logs:
                if accum == 1:
                    step_loss = loss.detach()
                else:
                    step_loss = loss_sum / total if counted else loss_sum
                logs = {"loss": step_loss, "lr": [g["lr"] for g in opt.param_groups]}
            kept, first, total, loss_sum = 0, None, None, None
            if unscale:
                scaler.unscale_(opt)
            for cb in before_step:
                cb.on_before_optimizer_step(state, logs)
            if clip_norm:
                norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
                if step_logs:
                    logs["grad_norm"] = norm
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
                    self.gathered = (state.step, D.all_gather_object(metrics.state_dict()))
                for cb in step_end:
                    cb.on_step_end(state, logs)
                if signals.signum is not None and not distributed and i + 1 < n:
                    # A signal arrived: stop after this whole step (the epoch's end checks too).
                    raise TrainingInterrupted(signals.signum, state.epoch, state.step)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        state, ms, eval_fn = self.state, self.val_metrics, self.eval_fn
        model = state.model
        model.eval()
        ms.reset()
        autocast = (torch.autocast(state.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        for batch in self.val:
            if self.options.channels_last:
                batch = map_batch(_nhwc, batch)
            with autocast:
                loss, outputs, targets, count = eval_fn(model, batch)
            check_loss(loss)
            ms.update(loss, default_count(outputs, batch) if count is None else count, outputs, targets)
        model.train()
        return ms.compute(D.all_reduce_sum if state.world.distributed else None)

    # -- what callbacks ask of the run (through TrainState) --------------------------------------
    def running_logs(self) -> dict[str, float]:
        # exact=False: torchmetrics' compute is a collective under DDP, and this runs on one rank
        return {f"train_{k}": v for k, v in self.train_metrics.compute(exact=False).items()}

    def _partial_figures(self) -> list[dict] | dict | None:
        """The partial epoch's per-batch figures: this rank's, or under DDP every rank's."""
        if self.epoch_done:
            return None
        if not self.state.world.distributed:
            return self.train_metrics.state_dict()
        if self.gathered is None or self.gathered[0] != self.state.step:
            raise OptiloopError("a mid-epoch snapshot under DDP needs every rank's figures: declare the "
                                "steps with Callback.snapshot_every_n_steps")
        return self.gathered[1]

    def checkpoint_folder(self, dirpath: Any, async_save: bool) -> Any:
        if self.strategy == "fsdp":
            from .sharded import ShardedFolder

            return ShardedFolder(dirpath, self.state.device, async_save=async_save)
        return CheckpointFolder(dirpath)

    def healthy(self) -> bool:
        partial = self._partial_figures()
        if partial is None:
            losses = [self.train_metrics.losses]
        else:
            losses = [r["losses"] for r in partial] if isinstance(partial, list) else [partial["losses"]]
        finite_losses = all(bool(torch.isfinite(torch.stack(x)).all()) for x in losses if x)
        return self._params_finite() and finite_losses

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the checkpoint format)."""
        state = self.state
        partial = self._partial_figures()
        if self.strategy == "fsdp":  # parameter-name keys, this rank's shards: for sharded.ShardedFolder
            from .sharded import state_dicts

            model_state, optimizer_state = state_dicts(state.unwrapped_model, state.optimizer)
        else:
            model_state, optimizer_state = state.unwrapped_model.state_dict(), state.optimizer.state_dict()
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": state.schedule.state_dict(),
            "scaler": state.scaler.state_dict() if state.scaler is not None else None,
            "epoch": state.epoch,
            "epoch_done": self.epoch_done,
            "batch": state.batch,
            "step": state.step,
            "data_seed": self.data_seed,
            "epoch_lr": self.epoch_lr,
            "partial_train": {"ranks": partial} if isinstance(partial, list) else partial,
            "rng": rng_state(),  # this rank's (a plain checkpoint keeps rank 0's; a sharded one every rank's)
            "callbacks": self.callbacks.state_dict(),
            "history": state.history.state_dict(),
            "settings": dict(self.settings),
            "config": state.config,
        }

    # -- resume ------------------------------------------------------------------------------------
    def resume(self, path: str, force: bool) -> None:
        """Continue from a checkpoint file or run folder (the newest valid last.pt)."""
        # On the CPU: RNG states must stay CPU tensors; model / optimizer load_state_dict move the
        # rest to where the parameters live.
        sharded = _sharded_run(path)
        if sharded:  # DCP folders: first the run's own state, weights only once settings agree
            from . import sharded as S

            source = S.find_resumable(path)
            ckpt = S.read_train_state(source)
            if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
                raise CheckpointError("not an optiloop training checkpoint (no whole training state in it)")
        elif self.strategy == "fsdp":
            raise CheckpointError(f"{path} holds whole-state .pt checkpoints; strategy='fsdp' resumes sharded "
                                  "checkpoints only: resume it with 'ddp' or on one process")
        else:  # verified, loaded, its shape checked and its kind this run's: nothing of it is used before that
            from .checkpoint_checks import check_fits

            source, ckpt = load_resumable(path, fits=lambda c, p: check_fits(
                c, p, optimizer=self.state.optimizer, schedule=self.state.schedule))
        saved = ckpt.get("settings", {})
        changed = [f"{k} {saved[k]} -> {v}" for k, v in self.settings.items() if k in saved and saved[k] != v]
        if changed and not force:
            raise OptiloopError(f"cannot resume {path}: settings changed ({'; '.join(changed)}); "
                                "pass force_resume=True to continue anyway")
        if sharded:  # resharded to this run's processes by DCP, whatever their number then
            state = self.state
            own = S.load_into(source, state.unwrapped_model, state.optimizer, state.world.rank)
            ckpt["rng"] = own["rng"] if own is not None else None  # a rank the saved run did not have keeps its own
        self._load(ckpt)
        if self.data_seed != ckpt["data_seed"]:  # resumed a run whose seed was drawn: replay its order
            self.data_seed = ckpt["data_seed"]
            self.train = self._make_train(self.data_seed)
        if not self.epoch_done and not self.train.replayable:
            warnings.warn("resuming mid-epoch with your own shuffling DataLoader: its order cannot be "
                          "replayed, so the rest of this epoch may repeat or miss samples; pass the "
                          "Dataset or (X, y) and optiloop makes the order reproducible", stacklevel=3)

    def _load(self, ckpt: dict[str, Any]) -> None:
        state = self.state
        if "model" in ckpt:  # a sharded checkpoint's weights and optimizer state are loaded already
            load_model_weights(state.unwrapped_model, ckpt["model"])
            state.optimizer.load_state_dict(ckpt["optimizer"])
        state.schedule.load_state_dict(ckpt["scheduler"])
        if state.scaler is not None and ckpt["scaler"] is not None:
            state.scaler.load_state_dict(ckpt["scaler"])
        state.epoch, self.epoch_done = ckpt["epoch"], ckpt["epoch_done"]
        state.batch, state.step = ckpt["batch"], ckpt["step"]
        self.epoch_lr = ckpt["epoch_lr"]
        partial = ckpt["partial_train"]
        if partial is not None and "ranks" in partial:
            if len(partial["ranks"]) != state.world.world_size:
                raise CheckpointError(f"a mid-epoch checkpoint of {len(partial['ranks'])} processes cannot "
                                      f"resume on {state.world.world_size}; resume from an epoch's end")
            partial = partial["ranks"][state.world.rank]
        if partial is not None:
            self.train_metrics.load_state_dict(partial)
        self.callbacks.load_state_dict(ckpt["callbacks"])
        state.history.load_state_dict(ckpt["history"])
        if ckpt["rng"] is not None:
            set_rng_state(ckpt["rng"])


def _sharded_run(path: str) -> bool:
    """A sharded (DCP) checkpoint folder, or a run folder holding them (a run holds one kind)."""
    p = Path(path)
    return p.is_dir() and ((p / "last").is_dir() or (p / "last.prev").is_dir() or (p / ".metadata").exists()
                           or any(p.glob("*.distcp")))


def check_fsdp(optimizer: Any, scheduler: Any = None, amp_dtype: torch.dtype | None = None,
               compile: Any = False) -> None:
    """Refuse, in one line, what strategy='fsdp' cannot take (fit calls it before sharding; a
    command line calls it before writing anything)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise OptiloopError("under strategy='fsdp' pass the optimizer by name or dict: it must be built on "
                            "the sharded parameters, which do not exist before fit shards the model")
    name = optimizer.get("name") if isinstance(optimizer, Mapping) else optimizer
    if str(name).lower() == "muon":
        raise OptiloopError("optimizer 'muon' is not supported under strategy='fsdp' (it orthogonalises "
                            "whole matrices, and each rank holds a shard); use adamw, or strategy='ddp'")
    if scheduler is not None and not isinstance(scheduler, (str, Mapping)):
        raise OptiloopError("under strategy='fsdp' pass the scheduler by name or dict: a built one drives an "
                            "optimizer of the unsharded parameters")
    if amp_dtype == torch.float16:
        raise OptiloopError("amp='fp16' is not supported under strategy='fsdp' (its loss scaler would see "
                            "only this rank's shards); use amp='bf16'")
    if compile:
        raise OptiloopError("compile= is not supported under strategy='fsdp' yet; use strategy='ddp' to compile")


def _check_same_savers(callbacks: CallbackList) -> None:
    """Under FSDP a checkpoint save is collective: every rank must hold the same savers."""
    mine = [type(c).__name__ for c in callbacks.active if c.collective_when_sharded]
    ranks = D.all_gather_object(mine)
    if any(r != ranks[0] for r in ranks):
        found = "; ".join(f"rank {i}: {', '.join(r) or 'none'}" for i, r in enumerate(ranks))
        raise OptiloopError(f"under strategy='fsdp' every process must create the same checkpoint callbacks "
                            f"(each writes its own shards); found {found}")


class _Signals:
    """While training runs: SIGTERM (schedulers, preemption), SIGINT (Ctrl-C) and SIGUSR1 ask it
    to stop after the current optimizer step instead of dying in the middle of one. The first
    signal is recorded; later ones are ignored until training has saved and returned, so a
    second Ctrl-C cannot cut the checkpoint write short. The previous handlers come back at the
    end. Only the main thread can install handlers: elsewhere signals keep their own effect; an
    ignored signal stays ignored."""

    NAMES = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                num = getattr(signal, name, None)
                # An ignored signal stays ignored (a shell's `&` ignores SIGINT, nohup SIGHUP): the
                # process that started us decided it must not stop training.
                if num is not None and signal.getsignal(num) is not signal.SIG_IGN:
                    self._previous[num] = signal.signal(num, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _scale_grads(params: list[torch.Tensor], factor: float | torch.Tensor) -> None:
    """Multiply every gradient by ``factor`` (a float or a 0-d device tensor: no host sync)."""
    if isinstance(factor, float) and factor == 1.0:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def _accumulation_weights(sizes: Sequence[int], n_batches: int, accum: int) -> list[float]:
    """Per-batch loss factor so a group's summed gradients equal one big batch's mean gradient.

    A group of micro-batches with sizes n_i contributes sum_i n_i * mean_i / sum_i n_i: a short
    last batch (or short last group) weighs exactly its share, as in one large batch.
    """
    weights = []
    for start in range(0, n_batches, accum):
        group = range(start, min(start + accum, n_batches))
        total = sum(sizes[i] for i in group)
        weights += [sizes[i] / total for i in group]
    return weights


def evaluate(model: nn.Module, data: Any, *, loss: str | Callable = "cross_entropy", step: Callable | None = None,
             metrics: Metrics = (), batch_size: int = 256,
             device: str | torch.device = "auto") -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data`` (no gradients), e.g. ``{"loss": .., "acc": ..}``.

    ``data``, ``loss`` and ``step`` are as ``fit`` takes them.

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
        >>> sorted(ol.evaluate(torch.nn.Linear(3, 2), (X, y), metrics=["accuracy"]))
        ['acc', 'loss']
    """
    dev = resolve_device(device)
    model.to(dev).eval()
    batches = make_batches(data, batch_size=batch_size, shuffle=False, seed=0, device=dev, role="evaluation")
    ms = MetricSet(metrics if isinstance(metrics, Mapping) else list(metrics), dev)
    step_fn = resolve_step(step, loss)
    with torch.no_grad():
        for batch in batches:
            loss_value, outputs, targets, count = step_fn(model, batch)
            check_loss(loss_value)
            ms.update(loss_value, default_count(outputs, batch) if count is None else count, outputs, targets)
    return ms.compute()
