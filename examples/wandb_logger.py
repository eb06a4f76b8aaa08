"""Weights & Biases as an optiloop logger, in offline mode: a complete second tracker through the
same protocol as ``ol.TensorBoard`` and ``ol.MLflow`` (docs/trackers.md explains each part).

    pip install wandb
    python examples/wandb_logger.py            # trains on digits, then: wandb sync wandb/offline-run-*

W&B is not a dependency of optiloop: nothing imports this file but you. Copy the class.
"""

from __future__ import annotations

import warnings
from typing import Any

import optiloop as ol
from optiloop.loggers import Logger, run_params


class WandB(Logger):
    """Log a run to Weights & Biases: its settings as the run's config, per-step loss / LR /
    gradient norm and every epoch's figures (sent once per epoch, never a host sync per step),
    the run's status at its end; a resumed fit continues the same W&B run.

    Args:
        project: the W&B project.
        name: the run's name (None: W&B picks one).
        mode: "offline" (files under ./wandb, uploaded later by ``wandb sync``), "online", "disabled".
        **options: ``every``, ``max_points``, ``grad_norm`` of ``optiloop.loggers.Logger``.
    """

    def __init__(self, project: str, name: str | None = None, *, mode: str = "offline", **options: Any):
        super().__init__(**options)
        self.project, self.name, self.mode = project, name, mode
        self.reset()

    def reset(self) -> None:  # each fit starts afresh; a resume then restores run_id
        self.run: Any = None
        self.run_id: str | None = None
        self.failed = False

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A tracker that fails never costs the run: one warning, then nothing more."""
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the tracker raises, training goes on
            self.failed = True
            warnings.warn(f"W&B: {what} failed; training goes on without it ({e})", stacklevel=2)
            return None

    # -- the Logger protocol ------------------------------------------------------------------------
    def on_fit_start(self, state, logs):
        super().on_fit_start(state, logs)  # the logger's stride: every / max_points
        import wandb

        self.run = self._safe("starting the run", wandb.init, project=self.project, name=self.name, mode=self.mode,
                              config=run_params(state), id=self.run_id, resume="allow")
        if self.run is not None:
            self.run_id = self.run.id

    def log_steps(self, state, rows, walltimes):
        """Once per epoch: the recorded optimizer steps (step, epoch, loss, lr, grad_norm ...)."""
        for row in rows:
            if self.run is not None:
                self._safe("logging the steps", self.run.log,
                           {f"step/{k}": v for k, v in row.items() if k not in ("step", "epoch")}, step=row["step"])

    def log_epoch(self, state, logs):
        """The epoch's History row, at the optimizer step that ended the epoch (W&B's x axis)."""
        figures = {f"epoch/{k}": v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.run is not None:
            self._safe("logging the epoch", self.run.log, figures, step=state.step)

    def close(self):
        """The run ended; ``self.outcome`` says how: "finished", "interrupted" or "failed"."""
        if self.run is not None:
            self._safe("finishing the run", self.run.finish, exit_code=0 if self.outcome == "finished" else 1)
            self.run = None

    # -- resume: the run id travels in checkpoints ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.run_id = state.get("run_id")


def main() -> ol.History:
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return ol.fit(model, (X[:1400], y[:1400]), val_data=(X[1400:], y[1400:]), optimizer="adamw", lr=1e-3,
                  scheduler="cosine", epochs=5, metrics=["accuracy"], seed=0,
                  callbacks=[WandB("optiloop-demo", grad_norm=True), ol.Checkpoint("runs/wandb-demo")])


if __name__ == "__main__":
    main()
