"""Callbacks on a small fixed event set, the CallbackList that fires them, and the one Monitor that
EarlyStopping and Checkpoint share.

Events, in order (each receives the loop's ``TrainState`` and a ``logs`` dict):
    on_fit_start, on_epoch_start,
    on_before_optimizer_step (gradients present, unscaled, before clipping and optimizer.step()),
    on_step_end (after the optimizer and scheduler; logs hold the step's loss and LRs),
    on_eval_end, on_epoch_end, on_fit_end; on_exception if training raises.
A callback stops training with ``state.request_stop(reason)``, never by raising. Callbacks run in
``order`` (lower first); ``main_process_only`` ones run on rank 0 only. A ``CallbackList`` owns
all of this: the loop never looks inside a callback.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .directions import mode_for
from .errors import OptiloopError

if TYPE_CHECKING:
    import torch

    from .distributed import World
    from .history import History
    from .schedules import Schedule


@dataclass(eq=False)
class TrainState:
    """What callbacks see: the run's parts and where it stands.

    Callbacks read it; the only changes they make go through ``request_stop`` and
    ``load_at_end``. ``model`` is the module as the loop calls it (maybe DDP- or compile-wrapped),
    ``unwrapped_model`` the user's own module (what checkpoints hold). ``epoch`` is 1-based,
    ``batch`` counts the batches done in the current epoch, ``step`` the optimizer steps of the run.
    """

    model: torch.nn.Module
    unwrapped_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    history: History
    device: torch.device
    world: World
    epochs: int
    batches_per_epoch: int
    steps_per_epoch: int
    log_keys: list[str]  # every key the epoch logs will hold: what a monitor may name
    config: dict[str, Any] | None = None
    # fit's own arguments by name (optimizer, lr, scheduler, epochs, batch_size ...): the settings
    # trackers record for a run without a config
    fit_args: dict[str, Any] = field(default_factory=dict)
    strategy: str = "none"  # "none", "ddp" or "fsdp" (then model and optimizer state are sharded)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    stop: bool = False
    stop_reason: str | None = None
    _loop: Any = field(default=None, repr=False)  # the loop behind this view

    def request_stop(self, reason: str) -> None:
        """End training after the current epoch."""
        self.stop, self.stop_reason = True, reason

    def running_logs(self) -> dict[str, float]:
        """This rank's train figures so far in the epoch. One host sync: call sparingly."""
        return self._loop.running_logs()

    def snapshot(self) -> dict[str, Any]:
        """The whole training state as of now, to save: model, optimizer, scheduler, scaler,
        position, RNG, callbacks, history, config. Mid-epoch under DDP only at the steps a
        callback declared in ``snapshot_every_n_steps`` (every rank's figures are gathered then)."""
        return self._loop.snapshot()

    def checkpoint_folder(self, dirpath: Any, *, async_save: bool = True) -> Any:
        """Where this run's snapshots can be saved in ``dirpath``: a ``CheckpointFolder`` of .pt
        files, or under FSDP a ``sharded.ShardedFolder`` of DCP folders (every rank writes)."""
        return self._loop.checkpoint_folder(dirpath, async_save)

    def healthy(self) -> bool:
        """False if a training loss of the epoch so far was NaN/inf (one host sync)."""
        return self._loop.healthy()

    def load_at_end(self, weights: Mapping[str, Any]) -> None:
        """Load these weights into the model once fit ends, after every ``on_fit_end``: callbacks
        at the end (a final checkpoint) still see the run as it ended."""
        self._loop.final_weights = weights

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The module the last validation ran: an averaging callback's average once it has
        started (see ``Callback.average``), else ``unwrapped_model``."""
        module = self._loop.eval_module
        return module if module is not None else self.unwrapped_model

    def update_bn(self, module: torch.nn.Module) -> None:
        """Recompute ``module``'s BatchNorm statistics with one pass of the run's step over the
        training data (torch's ``update_bn``); the random generators are left as they were."""
        self._loop.update_bn(module)


class Callback:
    """Base class: override the events you need. State to resume goes in ``state_dict``.

    Declarations (class or instance attributes, read by the CallbackList):
        order: lower runs first at every event.
        main_process_only: under DDP, run on rank 0 only.
        snapshot_every_n_steps: this callback calls ``state.snapshot()`` mid-epoch every N
            optimizer steps (Checkpoint(every_n_steps=N) does), so under DDP every rank must
            gather its figures at those steps.
        collective_when_sharded: under FSDP this callback runs on every rank whatever
            ``main_process_only`` says: it saves the sharded state, which every rank holds a part
            of (Checkpoint does).

    Capability (a method a callback overrides; the CallbackList calls only those that do):
        average(state): weight averaging (ol.EMA, ol.SWA). Called once per epoch after its
            training, before its validation: bring the average up to date and return the module
            that validation, best.pt, predict and export use from then on (None: the model).
    """

    order: int = 0
    main_process_only: bool = False
    snapshot_every_n_steps: int | None = None
    collective_when_sharded: bool = False

    def on_fit_start(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_epoch_start(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_before_optimizer_step(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_step_end(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_eval_end(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_epoch_end(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_fit_end(self, state: TrainState, logs: dict[str, Any]) -> None: ...
    def on_exception(self, state: TrainState, error: BaseException) -> None: ...

    def average(self, state: TrainState) -> torch.nn.Module | None:
        """Averaging callbacks only: see the class docstring."""
        return None

    def reset(self) -> None:
        """Forget everything from an earlier fit. Called when each fit starts, before a resume
        loads ``state_dict``: a callback reused for a second fit starts fresh."""

    def watches(self) -> Monitor | None:
        """The value this callback acts on (EarlyStopping's, Checkpoint's): the run's monitor, which
        ``History.best()`` defaults to. None: it watches nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


EVENTS = ("on_fit_start", "on_epoch_start", "on_before_optimizer_step", "on_step_end", "on_eval_end",
          "on_epoch_end", "on_fit_end")


class CallbackList:
    """The run's callbacks: adds the default ones, orders them, fires events, fans out errors.

    Each event goes only to the callbacks that override it, so a step event with no listener
    costs nothing. Example:
        >>> cl = CallbackList([EarlyStopping()], progress=False)
        >>> [type(c).__name__ for c in cl.listeners("on_epoch_end")]
        ['EarlyStopping']
    """

    def __init__(self, callbacks: Iterable[Callback] = (), *, progress: bool = False, is_main: bool = True,
                 sharded: bool = False):
        cbs = list(callbacks)
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise OptiloopError(f"callbacks must be ol.Callback instances, got {type(cb).__name__}")
        if progress and not any(isinstance(c, ProgressBar) for c in cbs):
            cbs.append(ProgressBar())
        cbs.sort(key=lambda c: c.order)  # stable: equal orders keep the user's order
        self.callbacks = cbs  # every callback: their state is saved whichever rank runs them
        self.active = [c for c in cbs if is_main or not c.main_process_only
                       or (sharded and c.collective_when_sharded)]
        self._listeners = {e: [c for c in self.active if _overrides(c, e)] for e in EVENTS}
        averagers = [c for c in self.active if _overrides(c, "average")]
        if len(averagers) > 1:
            raise OptiloopError("one weight-averaging callback per run; got "
                                f"{', '.join(type(c).__name__ for c in averagers)}")
        self._averager = averagers[0] if averagers else None

    @property
    def averages(self) -> bool:
        """A callback averages the weights (validation then also logs the raw weights' figures)."""
        return self._averager is not None

    def average(self, state: TrainState) -> torch.nn.Module | None:
        """The module to validate after this epoch's training (None: the model); see ``Callback``."""
        return self._averager.average(state) if self._averager is not None else None

    def listeners(self, event: str) -> list[Callback]:
        return self._listeners[event]

    def fire(self, event: str, state: TrainState, logs: dict[str, Any]) -> None:
        for cb in self._listeners[event]:
            getattr(cb, event)(state, logs)

    def fire_exception(self, state: TrainState, error: BaseException) -> None:
        """Every callback hears of the error, even if one of them fails doing so (it warns): the
        user's own error is what surfaces."""
        for cb in self.active:
            try:
                cb.on_exception(state, error)
            except Exception as e:  # noqa: BLE001 - never hide the error training raised
                warnings.warn(f"{type(cb).__name__}.on_exception failed: {e}", stacklevel=2)

    def monitor(self) -> Monitor | None:
        """The run's monitored value: the first (in order) that a callback watches, or None.

        Example:
            >>> CallbackList([EarlyStopping(monitor="val_acc")]).monitor().mode
            'max'
        """
        return next((m for m in (cb.watches() for cb in self.callbacks) if m is not None), None)

    def snapshot_every(self) -> int:
        """Every how many steps some callback snapshots mid-epoch (the gcd of their declarations; 0: never)."""
        every = 0
        for cb in self.active:
            every = math.gcd(every, cb.snapshot_every_n_steps or 0)
        return every

    def reset(self) -> None:
        """Every callback forgets earlier fits (see ``Callback.reset``)."""
        for cb in self.callbacks:
            cb.reset()

    def state_dict(self) -> dict[str, Any]:
        return {key: cb.state_dict() for key, cb in self._keyed()}

    def load_state_dict(self, states: Mapping[str, Any]) -> None:
        for key, cb in self._keyed():
            if key in states:
                cb.load_state_dict(states[key])

    def _keyed(self) -> list[tuple[str, Callback]]:
        """Stable keys for callback state: the class name, numbered from the second of a kind, so
        adding or removing a callback of another kind does not mix up whose state is whose."""
        seen: dict[str, int] = {}
        out = []
        for cb in self.callbacks:
            name = type(cb).__name__
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
        return out


def _overrides(cb: Callback, event: str) -> bool:
    return getattr(type(cb), event) is not getattr(Callback, event)


class Monitor:
    """Which logged value to watch, in which direction, and the best seen so far.

    ``mode="auto"`` follows the one direction rule (``optiloop.directions.mode_for``) that
    EarlyStopping, Checkpoint, the plateau scheduler and ``History.best`` share: known names
    (loss, error, mae ... -> min; acc, f1, iou, dice, r2 ... -> max) decide; any other name needs
    ``mode="min"`` or ``"max"``.

    Example:
        >>> m = Monitor("val_acc")          # mode "auto": accuracy is maximised
        >>> m.mode, m.update(0.9), m.update(0.8), m.best
        ('max', True, False, 0.9)
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, mode_for(monitor, mode), abs(min_delta)
        self.best: float | None = None

    def check_available(self, keys: list[str]) -> None:
        """Fail before training if the monitored key will never be logged."""
        check_logged(self.monitor, keys)

    def value(self, logs: dict[str, Any]) -> float:
        if self.monitor not in logs:
            raise OptiloopError(f"monitor {self.monitor!r} is not in the logs; logged keys: "
                                f"{', '.join(logs)}")
        return float(logs[self.monitor])

    def is_improvement(self, value: float, reference: float | None = None) -> bool:
        """``value`` beats ``reference`` (default: the best so far) by more than ``min_delta``."""
        reference = self.best if reference is None else reference
        if not math.isfinite(value):
            return False
        if reference is None:
            return True
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def update(self, value: float) -> bool:
        """Record ``value``; True if it is the new best."""
        if self.is_improvement(value):
            self.best = value
            return True
        return False

    def reset(self) -> None:
        self.best = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


class LogKeys(list):
    """The keys the epoch logs will hold (``TrainState.log_keys``). ``open``: the run's step may
    add keys of its own (``StepOutput.logs``: ``val_kl``, a part's ``val_loss_<name>``), known
    only once it runs; a monitor naming a ``train_`` / ``val_`` key not listed is then checked at
    the first epoch's end instead (``Monitor.value`` names the keys logged)."""

    def __init__(self, keys: list[str], open: bool = False):
        super().__init__(keys)
        self.open = open


def check_logged(monitor: str, keys: list[str]) -> None:
    """One line before training if ``monitor`` will never be among the logged ``keys``."""
    if monitor in keys:
        return
    if isinstance(keys, LogKeys) and keys.open and monitor.startswith(("train_", "val_")) \
            and any(k.startswith(monitor.split("_")[0] + "_") for k in keys):
        return  # maybe one of the step's own logs: Monitor.value checks it when the epoch ends
    if monitor.startswith("val_") and not any(k.startswith("val_") for k in keys):
        raise OptiloopError(f"monitor {monitor!r} needs val_data; pass val_data= or "
                            f"monitor one of: {', '.join(keys)}")
    raise OptiloopError(f"monitor {monitor!r} is never logged; logged keys: {', '.join(keys)}")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Keras' semantics, including its two options:
        baseline: a value the monitor must beat. An epoch that improves on the best so far but
            not on ``baseline`` still counts toward ``patience``, so a run that never reaches
            the baseline stops after ``patience`` epochs.
        start_from_epoch: epochs not watched at all at the start (a warm-up in which no
            improvement is expected): the first ``start_from_epoch`` epochs neither count
            toward patience nor set the best.

    With ``restore_best=True`` the model ends with the weights of its best epoch.
    A non-finite monitored value stops training at once (warm-up epochs included), with the
    reason in ``state.stop_reason``. Each ``fit`` starts it afresh; a resumed run continues its
    counters, and a run it had stopped stays stopped.

    Example:
        >>> import optiloop as ol
        >>> es = ol.EarlyStopping(monitor="val_loss", patience=2, baseline=0.5, start_from_epoch=3)
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", patience: int = 5,
                 min_delta: float = 0.0, restore_best: bool = False, baseline: float | None = None,
                 start_from_epoch: int = 0):
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise OptiloopError(f"patience must be an integer >= 1, got {patience!r}")
        if not isinstance(start_from_epoch, int) or isinstance(start_from_epoch, bool) or start_from_epoch < 0:
            raise OptiloopError(f"start_from_epoch must be an integer >= 0, got {start_from_epoch!r}")
        if baseline is not None and (isinstance(baseline, bool) or not isinstance(baseline, (int, float))
                                     or not math.isfinite(baseline)):
            raise OptiloopError(f"baseline must be a finite number or None, got {baseline!r}")
        self.monitor = Monitor(monitor, mode, min_delta)
        self.patience, self.restore_best = patience, restore_best
        self.baseline, self.start_from_epoch = baseline, start_from_epoch
        self.reset()

    def reset(self) -> None:
        self.monitor.reset()
        self.wait = 0
        self.best_epoch: int | None = None
        self.best_weights: dict | None = None
        self.stop_reason: str | None = None  # set once it stopped the run

    def on_fit_start(self, state, logs):
        self.monitor.check_available(state.log_keys)
        if self.stop_reason:  # resumed after it had stopped the run: nothing more to train
            state.request_stop(self.stop_reason)

    def watches(self) -> Monitor:
        return self.monitor

    def _stop(self, state, reason: str) -> None:
        self.stop_reason = reason
        state.request_stop(reason)

    def on_epoch_end(self, state, logs):
        value = self.monitor.value(logs)
        name = self.monitor.monitor
        if not math.isfinite(value):
            self._stop(state, f"early stopping: {name} is {value} at epoch {state.epoch}")
            return
        if state.epoch <= self.start_from_epoch:  # warm-up: not watched
            return
        self.wait += 1
        if self.monitor.update(value):
            self.best_epoch = state.epoch
            if self.restore_best:  # the weights that were validated (an average, with EMA / SWA)
                self.best_weights = copy.deepcopy(state.evaluated_model.state_dict())
            # Only a value that also beats the baseline restarts the count (Keras' rule).
            if self.baseline is None or self.monitor.is_improvement(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience:
            if self.baseline is not None and not self.monitor.is_improvement(self.monitor.best, self.baseline):
                self._stop(state, f"early stopping: {name} has not beaten the baseline {self.baseline:.6g} "
                                  f"in {self.patience} epochs (best {self.monitor.best:.6g} at epoch "
                                  f"{self.best_epoch})")
            else:
                self._stop(state, f"early stopping: {name} has not improved for {self.patience} epochs "
                                  f"(best {self.monitor.best:.6g} at epoch {self.best_epoch})")

    def on_fit_end(self, state, logs):
        if self.restore_best and self.best_weights is not None:
            state.load_at_end(self.best_weights)

    def state_dict(self):
        return {"monitor": self.monitor.state_dict(), "wait": self.wait, "best_epoch": self.best_epoch,
                "best_weights": self.best_weights, "stop_reason": self.stop_reason}

    def load_state_dict(self, state):
        self.monitor.load_state_dict(state["monitor"])
        self.wait, self.best_epoch = state["wait"], state["best_epoch"]
        self.best_weights = state.get("best_weights")
        self.stop_reason = state.get("stop_reason")


class LRMonitor(Callback):
    """Record every param group's LR at one moment: the LR each optimizer step trained with.

    Per epoch, ``lr_group<i>`` in the logs (and the History) is the group's LR at the epoch's
    first optimizer step, the same moment as the History's ``lr`` (group 0). With
    ``per_step=True``, ``self.steps`` holds, for every optimizer step, the LRs that step used
    (the step logs' ``lr``). Reading ``param_groups`` needs no device sync.
    """

    def __init__(self, per_step: bool = False):
        self.per_step = per_step
        self.reset()

    def reset(self) -> None:
        self.steps: list[list[float]] = []
        self.epoch_lrs: list[float] | None = None  # every group's LR at this epoch's first step

    def on_epoch_start(self, state, logs):
        if state.batch == 0:  # a new epoch (a mid-epoch resume keeps the restored ones)
            self.epoch_lrs = [g["lr"] for g in state.optimizer.param_groups]

    def on_step_end(self, state, logs):
        if self.per_step:
            self.steps.append(list(logs["lr"]))

    def on_epoch_end(self, state, logs):
        if self.epoch_lrs is not None and len(self.epoch_lrs) > 1:
            for i, lr in enumerate(self.epoch_lrs):
                logs[f"lr_group{i}"] = lr

    def state_dict(self):
        return {"epoch_lrs": self.epoch_lrs, "steps": self.steps}

    def load_state_dict(self, state):
        self.epoch_lrs = state.get("epoch_lrs")
        self.steps = [list(s) for s in state.get("steps", [])]


def format_logs(logs: dict[str, Any], lr_last: Any = None) -> str:
    """An epoch's (or a running) logs as one line. ``lr_last``: the LR of the epoch's last step,
    shown as the range ``lr first -> last`` when it differs from the first (a schedule stepped per
    optimizer step, or a warmup)."""
    parts = []
    for k, v in logs.items():
        if k in ("epoch",) or not isinstance(v, (int, float)):
            continue
        if k == "lr" and lr_last is not None and lr_last != v:
            parts.append(f"lr {v:.3g} -> {lr_last:.3g}")
        elif k == "lr" or k.startswith("lr_"):
            parts.append(f"{k} {v:.3g}")
        elif k == "seconds":
            parts.append(f"{v:.1f}s")
        else:
            parts.append(f"{k} {v:.4f}")
    return "  ".join(parts)


class ProgressBar(Callback):
    """A tqdm bar per epoch (stderr) and a one-line summary per epoch (stdout).

    The running loss on the bar is read at most every ``refresh`` seconds: that read is a host
    sync, so it is throttled by wall time, never done per step. The epoch line shows the LR's
    range over the epoch (its first step's -> its last step's) when it moved within the epoch;
    the step logs' LRs are Python floats from ``param_groups``, so keeping the last costs no sync.
    A resumed run says first where it continues.
    """

    main_process_only = True
    order = 50

    def __init__(self, refresh: float = 0.5, file=None):
        self.refresh, self.file = refresh, file
        self.bar = None
        self._last = 0.0
        self._lr_last: Any = None  # the LR the epoch's latest step used

    def on_fit_start(self, state, logs):
        if state.epoch == 0:  # a new run: nothing to say
            return
        from tqdm.auto import tqdm  # (as below)

        if state.batch:  # a mid-epoch checkpoint
            where = (f"resumed in epoch {state.epoch}/{state.epochs} at step {state.step} ({state.batch} of "
                     f"{state.batches_per_epoch} batches done): continuing it")
        else:
            where = f"resumed after epoch {state.epoch}/{state.epochs} (step {state.step})"
            if state.stop:
                where += f": nothing left to train ({state.stop_reason})"
            elif state.epoch >= state.epochs:
                where += ": every epoch is done"
            else:
                where += f": continuing with epoch {state.epoch + 1}"
        tqdm.write(where, file=self.file or sys.stdout)

    def on_epoch_start(self, state, logs):
        from tqdm.auto import tqdm  # the bar's library: only a run that shows one

        desc = f"epoch {state.epoch}/{state.epochs}"
        if self.bar is None:  # one bar for the whole fit, reset per epoch: cheaper than a new one
            self.bar = tqdm(total=state.steps_per_epoch, desc=desc, leave=False, unit="batch",
                            file=self.file or sys.stderr, dynamic_ncols=True,
                            disable=None)  # None: no bar when stderr is not a terminal
        else:
            self.bar.reset(total=state.steps_per_epoch)
            self.bar.set_description_str(desc, refresh=False)
        self._last = time.monotonic()
        if state.batch == 0:  # (a mid-epoch resume keeps none: its first steps ran before)
            self._lr_last = None

    def on_step_end(self, state, logs):
        if logs.get("lr"):
            self._lr_last = logs["lr"][0]
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= self.refresh:
            self._last = now
            running = state.running_logs()  # one sync, at most every `refresh` seconds
            self.bar.set_postfix_str(format_logs(running), refresh=False)

    def on_epoch_end(self, state, logs):
        from tqdm.auto import tqdm  # (as above)

        line = format_logs(logs, lr_last=self._lr_last)
        tqdm.write(f"epoch {state.epoch}/{state.epochs}  {line}", file=self.file or sys.stdout)

    def on_exception(self, state, error):
        self._close()

    def on_fit_end(self, state, logs):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
