"""OptunaPruning: a callback that reports a run's monitored value to an Optuna trial after every epoch
and stops the run at once when the trial's pruner says so (as optuna-integration's Lightning callback).

Stopping is the loop's own: ``state.request_stop`` ends ``fit`` after the epoch, so the run's files
(history, checkpoints, curves) are written as for any other stop. ``fit`` returns; then
``check_pruned()`` raises ``optuna.TrialPruned``, which ends the trial as PRUNED.
"""

from __future__ import annotations

import math
from typing import Any

from ..callbacks import Callback, Monitor, check_logged
from ..errors import OptiloopError


class OptunaPruning(Callback):
    """Report ``monitor`` to an Optuna ``trial`` after every epoch; stop the run once it should be pruned.

    Args:
        trial: the ``optuna.Trial`` the run is evaluated for.
        monitor: the logged value to report (``val_loss``, ``val_acc`` ...). Its direction (the one
            rule of ``optiloop.directions``) must match the study's, else the pruner would stop the
            best runs; a name the rule cannot place is reported as it is.

    Attributes:
        pruned_epoch: the epoch after which the run was stopped, or None.
        epoch: the last epoch that started (the epochs the run spent).

    Example:
        >>> import optuna, torch, optiloop as ol                        # doctest: +SKIP
        >>> def objective(trial):
        ...     lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        ...     pruning = ol.OptunaPruning(trial, monitor="val_acc")
        ...     history = ol.fit(model_fn(), train, val_data=val, lr=lr, epochs=10, metrics=["accuracy"],
        ...                      callbacks=[pruning])
        ...     pruning.check_pruned()                 # raises optuna.TrialPruned after a pruned run
        ...     return max(history["val_acc"])
    """

    order = 100  # after EarlyStopping: a run early stopping ended is reported, not pruned
    main_process_only = True  # rank 0 reports; the loop broadcasts its stop to the other ranks

    def __init__(self, trial: Any, monitor: str = "val_loss"):
        self.trial, self.monitor = trial, monitor
        self.reset()

    def reset(self) -> None:
        self.pruned_epoch: int | None = None
        self.value: float | None = None
        self.epoch = 0

    @property
    def pruned(self) -> bool:
        return self.pruned_epoch is not None

    def on_fit_start(self, state, logs):
        check_logged(self.monitor, state.log_keys)
        direction = getattr(getattr(self.trial, "study", None), "direction", None)
        try:
            mode = Monitor(self.monitor).mode
        except OptiloopError:
            return  # a name the rule cannot place: the study's direction is the user's word
        if direction is not None and direction.name.lower() != ("maximize" if mode == "max" else "minimize"):
            raise OptiloopError(f"OptunaPruning: {self.monitor} improves toward its {mode}imum but the study is set "
                                f"to {direction.name.lower()}; the pruner would stop the best runs")

    def on_epoch_start(self, state, logs):
        self.epoch = state.epoch

    def on_epoch_end(self, state, logs):
        value = float(logs[self.monitor])
        self.value = value
        self.trial.report(value, state.epoch)  # a NaN is reported too: pruners treat it as the worst
        if self.trial.should_prune():
            self.pruned_epoch = state.epoch
            shown = f"{value:.4g}" if math.isfinite(value) else str(value)
            state.request_stop(f"pruned by Optuna at epoch {state.epoch} ({self.monitor} {shown})")

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` if the run was pruned (call it after ``fit`` returns)."""
        if self.pruned:
            import optuna

            raise optuna.TrialPruned(f"pruned at epoch {self.pruned_epoch} ({self.monitor} {self.value:.4g})")
