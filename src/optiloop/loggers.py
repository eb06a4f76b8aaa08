"""Loggers: callbacks that collect per-step values on the device and write them once per epoch.

Per recorded optimizer step a logger keeps the step's loss (the device tensor the loop hands
over), the LR of every param group (host floats: ``param_groups`` hold them) and the gradient
norm (a device tensor) when there is one. Nothing is read from the device during the epoch: at
the epoch's end one ``stack`` and one copy bring every point to the host, and the logger writes
them with the epoch's logs. So the step loop stays free of host syncs (the suite counts them).

Every back end implements one small protocol, the three methods of :class:`Logger`:
``log_steps`` and ``log_epoch`` once per epoch, ``close`` at the end.

- :class:`StepHistory` puts the rows into ``History.steps`` (a run folder's steps.csv).
- :class:`TensorBoard` writes them with torch's own ``torch.utils.tensorboard.SummaryWriter``
  (``pip install tensorboard``, or ``optiloop[tensorboard]``), with the run's settings in its
  HParams tab.
- ``optiloop.trackers.MLflow`` sends them to an MLflow tracking store (``optiloop[mlflow]``).

What a tracker records about the run itself comes from :func:`run_params`: the resolved config
of ``optiloop train`` as flat ``section.key`` params, or for a plain ``fit`` its own settings.

Memory is bounded: a logger records every ``every``-th step, and at most ``max_points`` steps
over the whole run (the stride grows to fit, decided at fit start from epochs x steps per epoch).

The gradient norm: with ``clip_grad_norm`` the loop computes it anyway and it is recorded for
free. Without clipping, ``grad_norm=True`` computes the total L2 norm of the (unscaled)
gradients on the device in ``on_before_optimizer_step`` of every recorded step: a few extra
kernels per step (one norm per gradient, a stack and a norm), so it is off unless asked for.

Example:
    >>> import torch, optiloop as ol
    >>> X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> h = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=2, batch_size=16, progress=False, seed=0,
    ...            callbacks=[ol.StepHistory(grad_norm=True)])
    >>> len(h.steps), h.steps.keys()
    (8, ['step', 'epoch', 'loss', 'lr', 'grad_norm'])
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .callbacks import Callback
from .errors import OptiloopError

if TYPE_CHECKING:
    from .callbacks import TrainState

DEFAULT_MAX_POINTS = 10_000  # per run: ~1 MB of host rows, and plots still show every wiggle


def _check_count(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptiloopError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}")


def grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Total L2 norm of the optimizer's gradients, as a device tensor (no host sync); None when
    no parameter has a gradient. The same figure ``clip_grad_norm_`` returns."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads or any(_sharded(g) for g in grads):  # FSDP: the norm of shards is a collective
        return None
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: foreach / fused per device
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _sharded(t: Any) -> bool:
    """A DTensor (FSDP's sharded parameters and gradients): reading it needs every rank, and a
    logger runs on rank 0 only, so its norm is not recorded."""
    return type(t).__name__ == "DTensor"


class _StepBuffer:
    """One epoch's recorded steps: device tensors and host floats, read once by ``take``."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[Any] = []  # 0-d device tensors
        self.lrs: list[list[Any]] = []  # per step, per group: floats (or tensor LRs, cloned)
        self.norms: list[Any] = []  # 0-d device tensors or None
        self.times: list[float] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, logs: Mapping[str, Any]) -> None:
        self.steps.append(step)
        self.losses.append(logs["loss"])
        # A tensor LR (torch allows them) is updated in place by the scheduler: keep a copy.
        self.lrs.append([lr.detach().clone() if hasattr(lr, "detach") else lr for lr in logs["lr"]])
        norm = logs.get("grad_norm")
        self.norms.append(None if _sharded(norm) else norm)
        self.times.append(time.time())

    def take(self, steps_per_epoch: int) -> tuple[list[dict[str, Any]], list[float]]:
        """The rows and their wall times; empties the buffer. One host sync (when not empty)."""
        if not self.steps:
            return [], []
        tensors = [t for t in self.losses if isinstance(t, torch.Tensor)]
        tensors += [n for n in self.norms if isinstance(n, torch.Tensor)]
        tensors += [lr for lrs in self.lrs for lr in lrs if isinstance(lr, torch.Tensor)]
        device = tensors[0].device if tensors else torch.device("cpu")
        # The one read of the epoch: every device value in one stack, one copy to the host.
        values = iter(torch.stack([t.detach().float().reshape(()).to(device) for t in tensors]).tolist()
                      if tensors else [])

        def host(v: Any) -> Any:
            return next(values) if isinstance(v, torch.Tensor) else v

        losses = [host(v) for v in self.losses]
        norms = [host(v) if v is not None else None for v in self.norms]
        lrs = [[host(v) for v in group] for group in self.lrs]
        rows = []
        for step, loss, lr, norm in zip(self.steps, losses, lrs, norms, strict=True):
            row: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch,
                                   "loss": float(loss), "lr": float(lr[0])}
            if len(set(lr)) > 1:  # groups at different LRs (equal ones would only repeat "lr")
                row.update({f"lr_group{i}": float(v) for i, v in enumerate(lr)})
            if norm is not None:
                row["grad_norm"] = float(norm)
            rows.append(row)
        times = self.times
        self.__init__()
        return rows, times

    def state_dict(self, steps_per_epoch: int) -> dict[str, Any]:
        # Called only when a checkpoint is written (already a sync point): plain host data.
        times = list(self.times)
        rows, _ = self.take(steps_per_epoch)
        self.restore(rows, times)
        return {"rows": rows, "times": times}

    def restore(self, rows: list[dict[str, Any]], times: list[float]) -> None:
        self.__init__()
        for row, t in zip(rows, times, strict=True):
            groups = sorted((k for k in row if k.startswith("lr_group")), key=lambda k: int(k[len("lr_group"):]))
            self.steps.append(row["step"])
            self.losses.append(row["loss"])
            self.lrs.append([row[k] for k in groups] if groups else [row["lr"]])
            self.norms.append(row.get("grad_norm"))
            self.times.append(t)


class Logger(Callback):
    """Base of the loggers: collects each recorded step's loss, LRs and gradient norm on the
    device and hands them over once per epoch. A back end implements the protocol below.

    Args:
        every: record every ``every``-th optimizer step (steps 1, 1 + every, ...).
        max_points: at most this many recorded steps over the whole run: the stride grows to
            ``ceil(epochs * steps_per_epoch / max_points)`` when ``every`` would record more.
            None: no bound.
        grad_norm: compute the gradient norm when the loop does not (it does with
            ``clip_grad_norm``); costs a few kernels per recorded step.
        flush_every: also hand the steps over every N optimizer steps, for very long epochs. Each
            time is one host sync inside the step loop; None (default): once per epoch only.

    Protocol (override these):
        log_steps(state, rows, walltimes): the recorded steps since the last call (see
            ``optiloop.history.Steps`` for the keys) and the wall time of each.
        log_epoch(state, logs): the epoch's logs (every key of the History row).
        close(): the run ended; ``self.outcome`` says how: "finished", "interrupted" (a signal or
            Ctrl-C: a checkpoint was saved, a resume continues it) or "failed".

    A back end that also wants the run's settings reads ``run_params(state)`` in its
    ``on_fit_start`` (call ``super().on_fit_start(state, logs)`` first).
    """

    order = 90  # after the callbacks that add keys to the epoch logs, before Checkpoint saves
    main_process_only = True  # rank 0's steps: per-step figures are not all-reduced (no per-step collective)

    def __init__(self, *, every: int = 1, max_points: int | None = DEFAULT_MAX_POINTS, grad_norm: bool = False,
                 flush_every: int | None = None):
        _check_count("every", every)
        _check_count("max_points", max_points, allow_none=True)
        _check_count("flush_every", flush_every, allow_none=True)
        self.every, self.max_points, self.flush_every = every, max_points, flush_every
        self.grad_norm = bool(grad_norm)
        self.stride = every
        self._buffer = _StepBuffer()
        self._steps_per_epoch = 1
        self._mine: Any = None  # the norm this logger put in the step's logs
        self._loop_norm = False  # the loop clips by norm: its norm is in the logs already
        self.outcome: str | None = None  # how the run ended, set before close()

    # -- the protocol --------------------------------------------------------------------------
    def log_steps(self, state: TrainState, rows: list[dict[str, Any]], walltimes: list[float]) -> None:
        """Write the recorded steps (once per epoch, or every ``flush_every`` steps)."""

    def log_epoch(self, state: TrainState, logs: dict[str, Any]) -> None:
        """Write the epoch's logs."""

    def close(self) -> None:
        """Release what the logger holds (files, writers)."""

    # -- events --------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is recorded."""
        return (step - 1) % self.stride == 0

    def on_fit_start(self, state, logs):
        self._steps_per_epoch = state.steps_per_epoch
        self.stride = self.every
        if self.max_points is not None:
            self.stride = max(self.every, math.ceil(state.epochs * state.steps_per_epoch / self.max_points))

    def on_before_optimizer_step(self, state, logs):
        if not self.grad_norm or self._loop_norm or not logs or not self.due(state.step + 1):
            return
        if "grad_norm" not in logs:  # another logger may have computed it for this step already
            logs["grad_norm"] = grad_norm(state.optimizer)
        self._mine = logs["grad_norm"]

    def on_step_end(self, state, logs):
        if not logs or not self.due(state.step):
            return
        norm = logs.get("grad_norm")
        if norm is not None and norm is not self._mine:
            self._loop_norm = True  # clip_grad_norm replaced ours: from now on use the loop's
        self._buffer.add(state.step, logs)
        if self.flush_every and state.step % self.flush_every == 0:
            self._hand_over(state)  # opt-in host sync

    def on_epoch_end(self, state, logs):
        self._hand_over(state)
        self.log_epoch(state, logs)

    def on_fit_end(self, state, logs):
        self.outcome = "finished"
        self.close()

    def on_exception(self, state, error):
        self.outcome = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        try:
            self._hand_over(state)  # the steps before the failure: what a person debugging wants
        finally:
            self.close()

    def _hand_over(self, state: TrainState) -> None:
        rows, times = self._buffer.take(self._steps_per_epoch)
        if rows:
            self.log_steps(state, rows, times)

    # -- resume: the steps recorded so far in a partial epoch --------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"pending": self._buffer.state_dict(self._steps_per_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pending = state.get("pending") or {"rows": [], "times": []}
        self._buffer.restore(pending["rows"], pending["times"])

    def pending_steps(self) -> list[int]:
        """Steps recorded but not yet handed over (a resumed partial epoch's, for instance)."""
        return list(self._buffer.steps)


class StepHistory(Logger):
    """Per-step rows in ``History.steps``: loss, LR of every param group, gradient norm.

    ``optiloop train`` adds one (its run folder's steps.csv); add it to ``fit``'s callbacks to
    get ``history.steps``. The rows travel in checkpoints, so a resumed run keeps its earlier ones.
    See :class:`Logger` for ``every``, ``max_points``, ``grad_norm``.

    Example:
        >>> import torch, optiloop as ol
        >>> X, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
        >>> h = ol.fit(torch.nn.Linear(3, 2), (X, y), epochs=3, batch_size=10, scheduler="onecycle",
        ...            progress=False, seed=0, callbacks=[ol.StepHistory(every=2)])
        >>> h.steps["step"], h.steps["epoch"][-1]
        ([1, 3, 5, 7, 9, 11], 2.75)
    """

    def __init__(self, *, every: int = 1, max_points: int | None = DEFAULT_MAX_POINTS, grad_norm: bool = False):
        super().__init__(every=every, max_points=max_points, grad_norm=grad_norm)
        self._restored: list[dict[str, Any]] | None = None
        self._history: Any = None

    @property
    def history(self) -> Any:
        """The run's History once the fit started (its epochs so far, if the fit raised)."""
        return self._history

    def on_fit_start(self, state, logs):
        super().on_fit_start(state, logs)
        self._history = state.history
        if self._restored is not None:  # resumed: the steps before the checkpoint come back
            state.history.steps.rows = [dict(r) for r in self._restored]
            self._restored = None

    def log_steps(self, state, rows, walltimes):
        state.history.steps.rows.extend(rows)

    def state_dict(self) -> dict[str, Any]:
        steps = self._history.steps if self._history is not None else None
        keys = steps.keys() if steps is not None else []
        # Columns, not rows: a long run's steps stay a few lists in the checkpoint.
        return {**super().state_dict(), "steps": {"keys": keys, "columns": [steps[k] for k in keys]}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("steps") or {"keys": [], "columns": []}
        rows = zip(*saved["columns"], strict=True) if saved["columns"] else []
        self._restored = [{k: v for k, v in zip(saved["keys"], values, strict=True) if v is not None}
                          for values in rows]


# --- what a tracker records about the run ------------------------------------------------------
# Config sections that are not settings: "inference" (runs.INFERENCE) is what applying the model
# needs (preprocessing statistics, the model's constructor), kept in checkpoints.
_NOT_SETTINGS = ("inference",)
# Optimizer defaults that choose an implementation, not a hyperparameter.
_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``; lists stay values, None is dropped.

    Example:
        >>> flatten({"optimizer": {"name": "sgd", "lr": 0.1, "betas": None}, "model": {"hidden": [64]}})
        {'optimizer.name': 'sgd', 'optimizer.lr': 0.1, 'model.hidden': [64]}
    """
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif value is not None:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def run_settings(state: TrainState) -> dict[str, Any]:
    """The run's settings by section: ``optiloop train``'s resolved config (``state.config``), or
    for a plain ``fit`` what it was called with, the optimizer's hyperparameters as torch holds
    them (its defaults included) and the schedule as built."""
    if state.config is not None:
        return {k: v for k, v in state.config.items() if k not in _NOT_SETTINGS}
    args = state.fit_args
    opt = state.optimizer
    given = args.get("optimizer")
    name = given if isinstance(given, str) else given.get("name") if isinstance(given, Mapping) else None
    optimizer = {"name": name or type(opt).__name__}
    optimizer.update({k: _plain(v) for k, v in getattr(opt, "defaults", {}).items() if k not in _IMPLEMENTATION})
    schedule = state.schedule
    scheduler: dict[str, Any] = {"name": schedule.name, "interval": schedule.interval}
    if isinstance(args.get("scheduler"), Mapping):
        scheduler.update({k: _plain(v) for k, v in args["scheduler"].items() if k != "name"})
    scheduler.update({k: _plain(v) for k, v in schedule.derived.items()})
    if schedule.warmup_steps:
        scheduler["warmup_steps"] = schedule.warmup_steps
    metrics = args.get("metrics") or []
    train = {"epochs": state.epochs, "batch_size": args.get("batch_size"), "grad_accum": args.get("grad_accum"),
             "clip_grad_norm": args.get("clip_grad_norm"), "clip_grad_value": args.get("clip_grad_value"),
             "amp": args.get("amp"), "seed": args.get("seed"), "nonfinite": args.get("nonfinite"),
             "loss": None if args.get("step") else _name(args.get("loss")),
             "step": _name(args["step"]) if args.get("step") else None,
             "metrics": list(metrics) if isinstance(metrics, Mapping) else [_name(m) for m in metrics],
             "device": str(state.device), "strategy": state.strategy}
    model = {"class": type(state.unwrapped_model).__name__,
             "parameters": sum(p.numel() for p in state.unwrapped_model.parameters())}
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "train": train}


def run_params(state: TrainState) -> dict[str, Any]:
    """:func:`run_settings` as flat ``section.key`` params (``optimizer.lr``, ``scheduler.name``):
    what trackers log as a run's hyperparameters.

    Example:
        >>> import torch, optiloop as ol
        >>> class Show(ol.Callback):
        ...     def on_fit_start(self, state, logs):
        ...         p = ol.loggers.run_params(state)
        ...         print(p["optimizer.name"], p["optimizer.lr"], p["scheduler.name"], p["train.batch_size"])
        >>> _ = ol.fit(torch.nn.Linear(4, 2), (torch.randn(8, 4), torch.randint(0, 2, (8,))), optimizer="sgd",
        ...            lr=0.1, epochs=1, batch_size=4, progress=False, callbacks=[Show()])
        sgd 0.1 constant 4
    """
    return flatten(run_settings(state))


def param_text(value: Any) -> str:
    """A setting as text, spelled as config.toml spells it: ``true``, ``0.001``, ``[128, 64]``, ``adamw``.

    Example:
        >>> param_text(True), param_text(0.001), param_text([128, 64]), param_text(["accuracy"])
        ('true', '0.001', '[128, 64]', '["accuracy"]')
    """
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    return str(value)


def _plain(value: Any) -> Any:
    """A setting as plain data: a tensor LR as a number, a tuple (betas) as a list."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value) if isinstance(value, tuple) else value


def _name(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return getattr(value, "__name__", type(value).__name__)


class TensorBoard(Logger):
    """Write the run to TensorBoard with torch's ``SummaryWriter``: watch it live with
    ``tensorboard --logdir DIR``.

    Tags: ``epoch/<key>`` for every number of the epoch logs (train_loss, val_acc, lr, seconds
    ...), ``step/loss``, ``step/lr`` (and ``step/lr_group<i>`` with several param groups) and
    ``step/grad_norm`` per recorded optimizer step. The x axis of every tag is the optimizer step
    (epoch figures at the step that ended the epoch), so per-step and per-epoch curves line up.
    Events are written once per epoch (per-step values were kept on the device meanwhile). On a
    resumed run, events after the checkpoint left by the interrupted run are hidden (purge_step).

    The HParams tab lists the run by its settings (:func:`run_params`: the resolved config of
    ``optiloop train``, or fit's own settings) with the last value of every ``epoch/`` figure,
    from the first epoch on; the run's status (finished / interrupted / failed) is set at its end.
    The settings are also in the Text tab (``config``), as TOML.

    Args:
        log_dir: the folder for the event files (created).
        every, max_points, grad_norm, flush_every: see :class:`Logger`.

    Example:
        >>> import torch, optiloop as ol                                   # doctest: +SKIP
        >>> ol.fit(model, data, callbacks=[ol.TensorBoard("runs/tb", grad_norm=True)])  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike, *, every: int = 1, max_points: int | None = DEFAULT_MAX_POINTS,
                 grad_norm: bool = False, flush_every: int | None = None):
        super().__init__(every=every, max_points=max_points, grad_norm=grad_norm, flush_every=flush_every)
        require_tensorboard()  # a missing package fails now, before training
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def on_fit_start(self, state, logs):
        super().on_fit_start(state, logs)
        pending = self.pending_steps()
        # Resumed: events the interrupted run wrote after this point are not this run's.
        purge = pending[0] if pending else (state.step + 1 if state.step else None)
        self.writer = require_tensorboard()(log_dir=str(self.log_dir), purge_step=purge)
        self._write_hparams(state)

    def _write_hparams(self, state: TrainState) -> None:
        """The run's settings for the HParams tab, with the ``epoch/`` figures as its metrics
        (the tab shows each one's last value), and as text."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else param_text(v)
                  for k, v in run_params(state).items()}
        metrics = {f"epoch/{k}": 0.0 for k in state.log_keys if k != "epoch"}
        experiment, start, _ = hparams(values, metrics)
        writer = self.writer._get_file_writer()
        writer.add_summary(experiment)
        writer.add_summary(start)
        self.writer.add_text("config", settings_markdown(run_settings(state)))
        self.writer.flush()

    def log_steps(self, state, rows, walltimes):
        add = self.writer.add_scalar
        for row, t in zip(rows, walltimes, strict=True):
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    add(f"step/{key}", value, global_step=row["step"], walltime=t)
        self.writer.flush()

    def log_epoch(self, state, logs):
        for key, value in logs.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, global_step=state.step)
        self.writer.flush()  # visible in a running TensorBoard now, not after flush_secs

    def close(self) -> None:
        if self.writer is not None:
            self.writer._get_file_writer().add_summary(_session_end(self.outcome))
            self.writer.close()
            self.writer = None


def _session_end(outcome: str | None) -> Any:
    """The HParams tab's end-of-run record: finished -> success, interrupted -> aborted, else failure."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = {"finished": "STATUS_SUCCESS", "interrupted": "STATUS_ABORTED"}.get(outcome or "", "STATUS_FAILURE")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=Status.Value(status), end_time_secs=time.time()),
                                version=PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                  content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=meta)])


def settings_markdown(settings: Mapping[str, Any]) -> str:
    """Settings by section as TOML in a Markdown code block (TensorBoard's Text tab renders Markdown)."""
    import tomli_w

    def plain(v: Any) -> Any:  # TOML has no None, and only these types
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items() if x is not None}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v if x is not None]
        return v if isinstance(v, (bool, int, float, str)) else str(v)

    text = tomli_w.dumps(plain(settings))
    return "\n".join("    " + line for line in text.splitlines())  # indented: a code block


def require_tensorboard() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # the optional tensorboard package: only when asked
    except ImportError:
        raise OptiloopError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                            "(or optiloop[tensorboard])") from None
    return SummaryWriter
