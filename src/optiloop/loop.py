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
import dataclasses
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed as D
from . import several
from . import training_state as TS
from .averaging import recompute_batchnorm
from .callbacks import Callback, CallbackList, LogKeys, TrainState, check_logged
from .checkpoint import CheckpointFolder, load_resumable
from .data import make_batches, map_batch
from .distributed import check_fsdp, resolve_device, seed_everything
from .errors import CheckpointError, NonFiniteLossError, OptiloopError, SettingsChanged, TrainingInterrupted
from .fit_inputs import prepared
from .history import History
from .metrics import Metrics, MetricSet, metric_keys
from .optim import build_optimizer
from .schedule_free import ScheduleFree
from .schedules import build_scheduler
from .settings import FitSettings
from .steps import check_loss, default_count, resolve_step, user_step


def logged_keys(metrics: Metrics, validation: bool = True, averaged: bool = False) -> list[str]:
    """The keys of fit's per-epoch logs (the History's columns) for these metrics: what a
    monitor may name. ``averaged``: a callback averages the weights (EMA, SWA), so validation
    also logs the raw weights' figures (``val_loss_raw`` ...). Raises on an unknown metric."""
    keys = ["loss", *metric_keys(metrics)]
    return ["epoch", *(f"train_{k}" for k in keys), *(f"val_{k}" for k in keys if validation),
            *(f"val_{k}_raw" for k in keys if validation and averaged), "lr", "seconds"]


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
    batch_size: int | None = None,
    metrics: Metrics = (),
    callbacks: Iterable[Callback] | Callback = (),
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
    out: str | None = None,
    compile: bool | Mapping[str, Any] = False,
    channels_last: bool = False,
    fast: bool = True,
    strategy: str | D.FSDP = "auto",
    config: dict[str, Any] | None = None,
    validation_split: float | None = None,
) -> History:
    """Train ``model`` and return its per-epoch History.

    Args:
        model: any nn.Module; moved to ``device``.
        train_data, val_data: a DataLoader, a Dataset, or in-memory tensors / numpy arrays: an
            ``(X, y)`` pair (pandas DataFrame / Series too), a tuple, or a dict of equal-length
            arrays (batched by index: the fast path). A batch may have any structure (tuple, dict,
            namedtuple, dataclass of tensors); it is moved to the device whole. val_data is
            evaluated after every epoch.
        loss: a name (cross_entropy, mse, l1, bce, huber, smooth_l1, nll) or callable(out, y),
            used as ``loss(model(x), y)`` on ``(x, y)`` batches; or ``"model"``: the model
            computes its own loss (``model(**batch).loss`` for a dict batch, ``model(*batch)``
            for a tuple; ``.loss`` or ``["loss"]`` of the result).
        step: ``step(model, batch)`` returning the loss tensor or ``ol.StepOutput(loss,
            outputs=, targets=, count=, logs=)`` (``logs``: the step's own values, averaged per
            epoch as ``train_<key>`` / ``val_<key>``); replaces ``loss``. The loop does backward
            and steps. With several optimizers: one loss each (a dict by name), or
            ``ol.manual(fn)``: ``fn(model, batch, optimizers)`` steps them itself.
        eval_step: the same for validation (default: ``step``), run under ``torch.no_grad()``.
        optimizer, lr, weight_decay: see ``build_optimizer``; lr/weight_decay None = torch default.
            Schedule-free ones by name (``"adamw_schedulefree"`` ...: the loop switches their
            train / eval modes). Several optimizers: a dict of named ones, ``{"generator":
            {"name": "adam", "params": "generator", "scheduler": ...}, ...}`` (optiloop.several).
        scheduler: see ``build_scheduler``; None = constant LR. Stepped by its interval.
        epochs, batch_size: run length and batch size (per process under DDP; default 32). A
            DataLoader batches by itself: a different batch_size warns.
        metrics: names (accuracy, top5, mse, mae), callables(out, y) -> batch mean (the epoch's
            value: the mean of batch means weighted by batch size), or torchmetrics ``Metric``
            objects (exact epoch values: F1, AUROC, R² ...; named by class, ``MulticlassF1Score``
            -> ``f1``), on the step's outputs and targets; a dict names them:
            ``{"f1_macro": MulticlassF1Score(10, average="macro")}``.
        callbacks: EarlyStopping, Checkpoint, LRMonitor, EMA / SWA (validation, best.pt and
            predict then use the averaged weights), your own Callback subclasses (one or a list).
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
            unless ``force_resume=True``. A run folder ``out=`` made is continued in place.
        out: a new (or empty) run folder to train into, as ``optiloop train`` does: config.toml,
            history.csv after every epoch, steps.csv, best.pt / last.pt (at an epoch's end once
            60 s passed, and at the end; an ``ol.Checkpoint(out, ...)`` of yours sets when),
            curves.png, summary.json, and for classification the confusion matrix and per-class
            figures. ``optiloop predict`` / ``eval`` apply it to new rows when the model can be
            rebuilt (see ``ol.make_model``) and the data were ``(X, y)`` arrays.
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
        validation_split: hold out this share of in-memory ``train_data`` as ``val_data``, drawn
            with ``seed`` (0 when None), per class for cross_entropy / nll (Keras' name).

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> h = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=2, progress=False, seed=0)
        >>> len(h["train_loss"])
        2
    """
    args = locals()  # fit's keywords by name: the settings take theirs
    args.update(prepared(model, args))  # pandas, validation_split, one callback, a DataLoader's batch size
    settings = FitSettings(**{f.name: args[f.name] for f in dataclasses.fields(FitSettings)})
    train_data, val_data, callbacks = args["train_data"], args["val_data"], args["callbacks"]
    if out is not None or resume is not None:
        from .runs.fitted import fit_in_folder, wants_folder  # only a run folder needs its writers

        if wants_folder(out, resume):
            return fit_in_folder(run_fit, model, train_data, val_data, settings, callbacks=callbacks, out=out,
                                 resume=resume, force_resume=force_resume)
    return run_fit(model, train_data, val_data, settings, callbacks=callbacks, resume=resume,
                   force_resume=force_resume)


def run_fit(model: nn.Module, train_data: Any, val_data: Any, settings: FitSettings, *,
            callbacks: Iterable[Callback] = (), resume: str | None = None,
            force_resume: bool = False) -> History:
    """``fit`` with its settings made already (``runs.TrainingRun`` makes them from a config)."""
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    run = _Loop(model, train_data, val_data, settings, callbacks)
    # fit's own settings by name: what trackers record for a run without a config
    run.state.fit_args = {k: getattr(settings, k) for k in (
        "loss", "step", "optimizer", "lr", "weight_decay", "scheduler", "epochs", "batch_size", "metrics", "seed",
        "grad_accum", "clip_grad_norm", "clip_grad_value", "amp", "nonfinite")}
    if resume is not None:
        run.resume(resume, force_resume)
    return run.run()


class _Loop:
    """One fit() call: the built run, its position, and the loop that advances it."""

    def __init__(self, model: nn.Module, train_data: Any, val_data: Any, settings: FitSettings,
                 callbacks: Iterable[Callback]):
        self.options = opts = settings
        dev = resolve_device(opts.device)
        world = D.setup(dev)
        dev = D.local_device(dev, world)
        self.strategy, fsdp = D.resolve_strategy(opts.strategy, world)
        if opts.nonfinite == "skip" and world.distributed:
            raise OptiloopError(f"nonfinite='skip' is not supported under {self.strategy.upper()} (ranks would "
                                "step apart); use 'stop'")
        if fsdp is not None:
            check_fsdp(opts.optimizer, opts.scheduler, opts.amp_dtype, opts.compile)
        if opts.seed is not None:
            seed_everything(opts.seed)
        data_seed = opts.seed if opts.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.data_seed = D.broadcast_int(data_seed, dev)  # every rank must shard the same permutation
        self.several = several.is_several(opts.optimizer)  # named optimizers (optiloop.several)
        if self.several:
            names = list(opts.optimizer)
            self.step_fn = None if isinstance(opts.step, several.ManualStep) else several.step_for(opts.step, names)
            self.eval_fn = several.step_for(opts.eval_step, names) if opts.eval_step is not None else self.step_fn
        else:
            if isinstance(opts.step, several.ManualStep):
                raise OptiloopError("ol.manual(step) drives named optimizers: optimizer={'main': {'name': 'adam', "
                                    "'params': lambda model: model.parameters()}} (one or more)")
            self.step_fn = resolve_step(opts.step, opts.loss)
            self.eval_fn = user_step(opts.eval_step) if opts.eval_step is not None else self.step_fn
        model.to(dev, memory_format=torch.channels_last) if opts.channels_last else model.to(dev)

        self._make_train = lambda seed: make_batches(
            train_data, batch_size=opts.batch_size, shuffle=True, seed=seed, device=dev, rank=world.rank,
            world_size=world.world_size, role="training")
        self.train = self._make_train(self.data_seed)
        self.val = None if val_data is None else make_batches(
            val_data, batch_size=opts.batch_size, shuffle=False, seed=self.data_seed, device=dev, rank=world.rank,
            world_size=world.world_size, role="validation")
        batches_per_epoch = len(self.train)
        steps_per_epoch = math.ceil(batches_per_epoch / opts.grad_accum)

        if fsdp is not None:  # before the optimizer: it must hold the sharded parameters
            D.shard(model, dev, world, fsdp, param_dtype=opts.amp_dtype)
        # FSDP casts parameters itself (its MixedPrecisionPolicy); autocast is for the others.
        self.autocast_dtype = opts.amp_dtype if fsdp is None else None
        if self.several:
            opt, schedule = several.build(opts.optimizer, model, lr=opts.lr, weight_decay=opts.weight_decay,
                                          scheduler=opts.scheduler, fast=opts.fast, epochs=opts.epochs,
                                          steps_per_epoch=steps_per_epoch)
        else:
            built = isinstance(opts.optimizer, torch.optim.Optimizer)
            opt_kwargs = {} if built else {"lr": opts.lr, "weight_decay": opts.weight_decay}
            opt = build_optimizer(opts.optimizer, model, fast=opts.fast, **opt_kwargs)
            schedule = build_scheduler(opts.scheduler, opt, epochs=opts.epochs, steps_per_epoch=steps_per_epoch)
        # A schedule-free optimizer: the loop switches its train / eval modes (optiloop.schedule_free).
        self.schedule_free = ScheduleFree.of(opt, model, schedule, sharded=fsdp is not None)
        scaler = torch.amp.GradScaler(dev.type) if opts.amp_dtype == torch.float16 else None

        metrics = opts.metrics
        self.train_metrics = MetricSet(metrics, dev)
        self.val_metrics = MetricSet(metrics, dev) if self.val is not None else None
        self.callbacks = CallbackList(callbacks, progress=opts.progress, is_main=world.is_main,
                                      sharded=fsdp is not None)
        # A step of the user's may log keys of its own (StepOutput.logs): monitors on them are open.
        log_keys = LogKeys(logged_keys(metrics, validation=self.val is not None, averaged=self.callbacks.averages),
                           open=opts.step is not None or opts.eval_step is not None)
        if schedule.interval == "metric" and schedule.strict:
            check_logged(schedule.monitor or "val_loss", log_keys)
        self.callbacks.reset()  # each fit starts every callback afresh; a resume then restores them
        if fsdp is not None:
            _check_same_savers(self.callbacks)
        # Mid-epoch snapshots under DDP hold every rank's partial-epoch figures. Gathering them is
        # a collective, so every rank does it at each step where some rank's callback may snapshot,
        # wherever the user created that callback (rank 0's declaration is broadcast).
        self.gather_every = D.broadcast_int(self.callbacks.snapshot_every(), dev) if world.distributed else 0

        run_model = D.wrap(model, dev, world) if self.strategy == "ddp" else model
        if opts.compile:
            compile_kwargs = dict(opts.compile) if isinstance(opts.compile, Mapping) else {}
            run_model = torch.compile(run_model, **compile_kwargs)
        self.state = TrainState(
            model=run_model, unwrapped_model=model, optimizer=opt, schedule=schedule, scaler=scaler,
            history=History.watching(self.callbacks.monitor()), device=dev, world=world, epochs=opts.epochs,
            batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch, log_keys=log_keys,
            config=opts.config, strategy=self.strategy,
            _loop=self)
        # What a resume must not change silently (saved as the checkpoint's "settings").
        self.resume_guard = {"batch_size": opts.batch_size, "grad_accum": opts.grad_accum,
                             "world_size": world.world_size, "train_data": self.train.fingerprint()}
        # Accumulation weights known before the epoch (the default step on batches of known
        # sizes); otherwise each micro-batch is weighted by the count its step reports.
        sizes = self.train.batch_sizes()
        self.weights = (_accumulation_weights(sizes, batches_per_epoch, opts.grad_accum)
                        if opts.grad_accum > 1 and opts.default_step and sizes else None)
        self.params = [p for g in opt.param_groups for p in g["params"]]
        # Where the run stands, besides the public position in self.state.
        self.epoch_done = True  # False while an epoch is under way (mid-epoch checkpoints)
        self.epoch_lr = 0.0  # group 0's LR at the epoch's first step: the history's "lr"
        self.nonfinite_step: int | None = None
        self.skipped_batches = 0  # batches dropped by nonfinite="skip"
        self.gathered: tuple[int, list] | None = None  # DDP: (step, every rank's partial figures)
        self.final_weights: Mapping[str, Any] | None = None  # loaded once fit ends (restore_best)
        self.eval_module: nn.Module | None = None  # what validation runs when not the model (EMA / SWA)
        self.signals = _Signals()  # installed while run() runs
        self.saved = self._training_state()
        if self.several:
            several.check(self, manual_mode=self.step_fn is None)

    def _training_state(self) -> TS.TrainingState:
        """The checkpoint's parts, in the order a resume loads them (see optiloop.training_state)."""
        state, gather = self.state, None
        if self.strategy == "fsdp":  # parameter-name keys, this rank's shards: for sharded.ShardedFolder
            from .sharded import state_dicts as gather  # torch.distributed.checkpoint: FSDP runs only
        weights = TS.Weights(state.unwrapped_model, state.optimizer, gather)
        return TS.TrainingState(_Position(self), {
            "model": weights,
            "optimizer": TS.OptimizerState(weights),
            "scheduler": state.schedule,
            "scaler": TS.MaybeAbsent(state.scaler),
            "partial_train": _PartialEpoch(self),
            "callbacks": self.callbacks,
            "history": state.history,
            "settings": TS.Fixed(lambda: dict(self.resume_guard)),
            "config": TS.Fixed(lambda: state.config),
            "eval_model": TS.Fixed(self._eval_weights),  # for predict / export; never loaded back
            "rng": TS.RNG(),  # last: loading the rest must not draw from the restored generators
        })

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
                if self.schedule_free is not None:  # saved as it stood; the model left holds x
                    self.schedule_free.eval()
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

        self._train_epoch() if not self.several else several.train_epoch(self)
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
        if self.schedule_free is not None:  # validation and saving see the evaluation point
            self.schedule_free.eval(self.train, self.step_fn)
        if not self._params_finite():  # one sync per epoch: broken weights are never saved or evaluated
            raise NonFiniteLossError(
                f"non-finite weights after epoch {epoch}: stopped before saving; lower the LR or clip gradients")
        if callbacks.averages:  # EMA / SWA: from the start of averaging, validation runs the average
            self.eval_module = callbacks.average(state)
        if self.val is not None:
            val = self._evaluate(self.eval_module)
            logs.update({f"val_{k}": v for k, v in val.items()})
            if callbacks.averages:  # and the raw weights' figures stay visible
                raw = self._evaluate() if self.eval_module is not None else val
                logs.update({f"val_{k}_raw": v for k, v in raw.items()})
            if not math.isfinite(logs["val_loss"]):  # whatever nonfinite= says: that governs batches
                raise NonFiniteLossError(f"non-finite validation loss at epoch {epoch}: stopped before saving")
            callbacks.fire("on_eval_end", state, logs)
        logs["lr"] = self.epoch_lr
        logs["seconds"] = time.perf_counter() - t0

        # The one epoch-level scheduler call: per-epoch schedules step here, plateau with its metric.
        schedule = state.schedule
        if schedule.interval == "metric" and schedule.monitor not in logs:
            schedule.monitor_missing(logs)  # strict: one line; strict=False: a warning and no step
        else:
            schedule.epoch_end(logs[schedule.monitor] if schedule.interval == "metric" else None)
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
        needs_loss = schedule.needs_loss  # a plateau stepped per step reads each step's loss
        step_loss = None
        want_loss = step_logs or needs_loss
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
        if self.schedule_free is not None:
            self.schedule_free.train()
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
                    loss, outputs, targets, count, values = step_fn(model, batch)
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
                    if want_loss and accum > 1:
                        part = loss.detach() * (weights[i] if weights is not None else count)
                        loss_sum = part if loss_sum is None else loss_sum + part
                    metrics.update(loss, count, outputs, targets, values)
            state.batch = i + 1
            if not boundary:
                continue
            if kept == 0:  # every micro-batch of the group was skipped
                opt.zero_grad(set_to_none=True)
                continue
            if counted and not contributed and kept > 1:  # the group's last was skipped: rescale now
                _scale_grads(params, first / total)
            logs: dict[str, Any] = {}
            if want_loss:
                if accum == 1:
                    step_loss = loss.detach()
                else:
                    step_loss = loss_sum / total if counted else loss_sum
            if step_logs:
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
                schedule.step_end(step_loss)  # the one step-level scheduler call
                state.step += 1
                if gather_every and state.step % gather_every == 0 and i + 1 < n:
                    self.gathered = (state.step, D.all_gather_object(metrics.state_dict()))
                for cb in step_end:
                    cb.on_step_end(state, logs)
                if signals.signum is not None and not distributed and i + 1 < n:
                    # A signal arrived: stop after this whole step (the epoch's end checks too).
                    raise TrainingInterrupted(signals.signum, state.epoch, state.step)

    @torch.no_grad()
    def _evaluate(self, module: nn.Module | None = None) -> dict[str, float]:
        state, ms, eval_fn = self.state, self.val_metrics, self.eval_fn
        model = module if module is not None else state.model
        model.eval()
        ms.reset()
        autocast = (torch.autocast(state.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        for batch in self.val:
            if self.options.channels_last:
                batch = map_batch(_nhwc, batch)
            with autocast:
                loss, outputs, targets, count, values = eval_fn(model, batch)
            check_loss(loss)
            ms.update(loss, default_count(outputs, batch) if count is None else count, outputs, targets, values)
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
            from .sharded import ShardedFolder  # torch.distributed.checkpoint: FSDP runs only

            return ShardedFolder(dirpath, self.state.device, async_save=async_save)
        return CheckpointFolder(dirpath)

    def update_bn(self, module: nn.Module) -> None:
        recompute_batchnorm(module, self.train, self.step_fn)

    def _eval_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights validation uses when they are not the model's (see training_state.OPTIONAL)."""
        if self.eval_module is not None:
            return self.eval_module.state_dict()
        if self.schedule_free is not None and self.schedule_free.training:  # mid-epoch
            return self.schedule_free.eval_weights()
        return None

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
        return self.saved.state_dict()

    # -- resume ------------------------------------------------------------------------------------
    def resume(self, path: str, force: bool) -> None:
        """Continue from a checkpoint file or run folder (the newest valid last.pt)."""
        # On the CPU: RNG states must stay CPU tensors; model / optimizer load_state_dict move the
        # rest to where the parameters live.
        sharded = _sharded_run(path)
        if sharded:  # DCP folders: first the run's own state, weights only once settings agree
            from . import sharded as S  # (as above)

            source = S.find_resumable(path)
            ckpt = S.read_train_state(source)
            if not isinstance(ckpt, dict) or ckpt.get("format") != TS.FORMAT:
                raise CheckpointError("not an optiloop training checkpoint (no whole training state in it)")
        elif self.strategy == "fsdp":
            raise CheckpointError(f"{path} holds whole-state .pt checkpoints; strategy='fsdp' resumes sharded "
                                  "checkpoints only: resume it with 'ddp' or on one process")
        else:  # verified, loaded, its shape checked and its kind this run's: nothing of it is used before that
            from .checkpoint_checks import check_fits

            source, ckpt = load_resumable(path, fits=lambda c, p: check_fits(
                c, p, optimizer=self.state.optimizer, schedule=self.state.schedule))
        saved = ckpt.get("settings", {})
        changed = [f"{k} {saved[k]} -> {v}" for k, v in self.resume_guard.items() if k in saved and saved[k] != v]
        if changed and not force:
            raise SettingsChanged(path, "; ".join(changed))
        if sharded:  # resharded to this run's processes by DCP, whatever their number then
            state = self.state
            own = S.load_into(source, state.unwrapped_model, state.optimizer, state.world.rank)
            ckpt["rng"] = own["rng"] if own is not None else None  # a rank the saved run did not have keeps its own
        self.saved.load_state_dict(ckpt)
        if self.data_seed != ckpt["data_seed"]:  # resumed a run whose seed was drawn: replay its order
            self.data_seed = ckpt["data_seed"]
            self.train = self._make_train(self.data_seed)
        if not self.epoch_done and not self.train.replayable:
            warnings.warn("resuming mid-epoch with your own shuffling DataLoader: its order cannot be "
                          "replayed, so the rest of this epoch may repeat or miss samples; pass the "
                          "Dataset or (X, y) and optiloop makes the order reproducible", stacklevel=4)



class _Position:
    """Where the run stands: epoch, batch and step (public, on TrainState), whether the epoch is
    done, its first LR and the data order's seed (the loop's own)."""

    def __init__(self, loop: _Loop):
        self.loop = loop

    def state_dict(self) -> dict[str, Any]:
        loop, state = self.loop, self.loop.state
        return {"epoch": state.epoch, "epoch_done": loop.epoch_done, "batch": state.batch, "step": state.step,
                "data_seed": loop.data_seed, "epoch_lr": loop.epoch_lr}

    def load_state_dict(self, position: Mapping[str, Any]) -> None:
        loop, state = self.loop, self.loop.state
        state.epoch, loop.epoch_done = position["epoch"], position["epoch_done"]
        state.batch, state.step = position["batch"], position["step"]
        loop.epoch_lr = position["epoch_lr"]  # data_seed: resume() replays the saved order itself


class _PartialEpoch:
    """The partial epoch's per-batch training figures (None at an epoch's end): this rank's, or
    under DDP every rank's (``{"ranks": [...]}``), so a mid-epoch resume averages exactly."""

    def __init__(self, loop: _Loop):
        self.loop = loop

    def state_dict(self) -> dict | None:
        partial = self.loop._partial_figures()
        return {"ranks": partial} if isinstance(partial, list) else partial

    def load_state_dict(self, partial: dict | None) -> None:
        world = self.loop.state.world
        if partial is not None and "ranks" in partial:
            if len(partial["ranks"]) != world.world_size:
                raise CheckpointError(f"a mid-epoch checkpoint of {len(partial['ranks'])} processes cannot "
                                      f"resume on {world.world_size}; resume from an epoch's end")
            partial = partial["ranks"][world.rank]
        if partial is not None:
            self.loop.train_metrics.load_state_dict(partial)


def _sharded_run(path: str) -> bool:
    """A sharded (DCP) checkpoint folder, or a run folder holding them (a run holds one kind)."""
    p = Path(path)
    return p.is_dir() and ((p / "last").is_dir() or (p / "last.prev").is_dir() or (p / ".metadata").exists()
                           or any(p.glob("*.distcp")))


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
            loss_value, outputs, targets, count, values = step_fn(model, batch)
            check_loss(loss_value)
            ms.update(loss_value, default_count(outputs, batch) if count is None else count, outputs, targets,
                      values)
    return ms.compute()
