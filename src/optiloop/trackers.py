"""Runs where teams keep them: MLflow, through its own client (``pip install 'optiloop[mlflow]'``).

- :class:`MLflow` is a logger (``optiloop.loggers.Logger``) for one run: the run's settings as
  flat params, every epoch's figures at step = epoch, the per-step loss / LR / gradient norm in
  one batch per epoch, tags (optiloop and torch versions, device, processes), and afterwards the
  run folder's files (:meth:`MLflow.log_artifacts`). ``optiloop train --mlflow [URI]`` adds one.
- :class:`MLflowSweep` is a sweep: one parent run, and one child run per run or trial (tag
  ``mlflow.parentRunId``) with its params, final figures and per-epoch history, so MLflow's own
  comparison views work. ``optiloop compare --mlflow`` uses it; anything that runs many
  trainings can (``start``, ``log_child`` per run, ``end``).

A tracker never costs the run: the first call that fails (an unreachable server, a refused
write, any error of MLflow's) gives one :class:`TrackerWarning` and the tracker does nothing
more; training and the run folder go on unchanged. Nothing talks to the network per step: a
logger's figures are sent once per epoch. MLflow's own HTTP client retries 7 times with
exponential backoff and waits up to 120 s per request; for our calls it retries once and waits
10 s (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_TIMEOUT`` set in the
environment win).

Example:
    >>> import optiloop as ol                                                  # doctest: +SKIP
    >>> tracker = ol.MLflow("sqlite:///mlflow.db", experiment="digits", run_name="sgd")  # doctest: +SKIP
    >>> ol.fit(model, data, val_data=val, callbacks=[tracker])                 # doctest: +SKIP
    >>> tracker.run_id                                                         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OptiloopError
from .loggers import DEFAULT_MAX_POINTS, Logger, flatten, param_text, run_params

if TYPE_CHECKING:
    from .callbacks import TrainState

INSTALL_HINT = "pip install 'optiloop[mlflow]'"
DEFAULT_EXPERIMENT = "optiloop"  # when neither experiment= nor MLFLOW_EXPERIMENT_NAME names one
# How our calls reach a tracking server: fail fast instead of MLflow's minutes of retries.
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits per log_batch call and per param value (mlflow.utils.validation).
_METRICS_PER_BATCH, _PARAMS_PER_BATCH, _PARAM_LENGTH = 1000, 100, 6000
# outcome of a run (Logger.outcome) -> MLflow's run status
_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class TrackerWarning(UserWarning):
    """A tracker failed; the run went on without it (one warning per tracker)."""


def require_mlflow() -> Any:
    """MLflow's client class; a missing package is one line with the install command."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise OptiloopError(f"MLflow logging needs the mlflow package: {INSTALL_HINT}") from None
    return MlflowClient


def resolve_uri(tracking_uri: str | None) -> str:
    """The tracking URI a client will use: ``tracking_uri``, else MLflow's own default
    (``MLFLOW_TRACKING_URI``, or its local store)."""
    if tracking_uri:
        return str(tracking_uri)
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_name(experiment: str | None) -> str:
    """``experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else ``"optiloop"``."""
    return experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow reads its HTTP settings from the environment at each request: set ours for the
    duration of our own calls only (a value the user set is left alone)."""
    added = {k: v for k, v in _QUICK_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:240]


class _Store:
    """One tracking store as a tracker uses it: every call fails soft. The first failure warns
    once and turns every later call into nothing."""

    def __init__(self, tracking_uri: str | None, owner: str):
        self.tracking_uri, self.owner = tracking_uri, owner
        self.uri = str(tracking_uri) if tracking_uri else None
        self.failed = False
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:  # a SQLite store creates its tables here: inside a call's guard
            self.uri = resolve_uri(self.tracking_uri)
            self._client = require_mlflow()(self.uri)
        return self._client

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None once anything failed (one TrackerWarning)."""
        if self.failed:
            return None
        try:
            with _quick_http():
                return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the tracker raises, training goes on
            self.failed = True
            where = f" at {self.uri}" if self.uri else ""
            warnings.warn(f"{self.owner}{where}: {what} failed; training goes on without MLflow "
                          f"({_first_line(e)})", TrackerWarning, stacklevel=3)
            return None

    # -- what the trackers send (run inside call) -----------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise OptiloopError(f"MLflow experiment {name!r} is deleted; restore it or name another")
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another process created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def find_run(self, run_id: str) -> Any:
        """The run, or None where this store does not hold it."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def log(self, run_id: str, *, metrics: list[Any] = (), params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None) -> None:
        """One log_batch per MLflow's limits (1000 metrics, 100 params, 100 tags)."""
        from mlflow.entities import Param, RunTag

        params = [Param(k, param_text(v)[:_PARAM_LENGTH]) for k, v in (params or {}).items()]
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i:i + _PARAMS_PER_BATCH])
        for i in range(0, len(tags), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=tags[i:i + _PARAMS_PER_BATCH])
        for i in range(0, len(metrics), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _METRICS_PER_BATCH])

    def upload(self, run_id: str, folder: str | os.PathLike) -> list[str]:
        names = []
        for path in run_files(folder):
            self.client.log_artifact(run_id, str(path))
            names.append(path.name)
        return names


def run_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a run folder a tracker keeps: config.toml, history.csv, steps.csv, curves.png,
    summary.json, the confusion matrix ... Not the checkpoints (the folder keeps them; they can be
    large), nor optiloop's own lock and temporaries, nor sub-folders (tensorboard/, runs/)."""
    from .files import LOCK_NAME, TEMP_SUFFIX

    path = Path(folder)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name != LOCK_NAME and not p.name.endswith((TEMP_SUFFIX, ".pt")))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_metrics(row: Mapping[str, Any], step: int, timestamp_ms: int) -> list[Any]:
    """MLflow metrics of one History row (every number but ``epoch``), at ``step``."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), timestamp_ms, step) for k, v in row.items() if k != "epoch" and _number(v)]


def step_metrics(rows: list[Mapping[str, Any]], walltimes: list[float] | None = None) -> list[Any]:
    """MLflow metrics ``step/loss``, ``step/lr`` (``step/lr_group<i>``), ``step/grad_norm`` of
    per-step rows (``History.steps``), at their optimizer step."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for i, row in enumerate(rows):
        t = int(walltimes[i] * 1000) if walltimes else now
        out += [Metric(f"step/{k}", float(v), t, int(row["step"])) for k, v in row.items()
                if k not in ("step", "epoch") and _number(v)]
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Tracked:
    """What a tracker says of its MLflow store (``self._store``)."""

    _store: _Store

    @property
    def failed(self) -> bool:
        """Whether a call to MLflow failed (it warned once; nothing more was sent)."""
        return self._store.failed

    @property
    def uri(self) -> str | None:
        """The tracking URI in use (MLflow's default resolved) once the run started."""
        return self._store.uri


class MLflow(_Tracked, Logger):
    """Log the run to MLflow as it trains (rank 0 only under DDP / FSDP).

    What the run gets:
        params: the run's settings (``optiloop.loggers.run_params``): the resolved config of
            ``optiloop train`` as ``optimizer.lr``, ``scheduler.name`` ..., or fit's own.
        metrics: every number of each epoch's logs (train_loss, val_acc, lr, seconds ...) at
            step = epoch; per recorded optimizer step ``step/loss``, ``step/lr`` (and
            ``step/lr_group<i>``), ``step/grad_norm`` at step = optimizer step, sent once per epoch.
        tags: ``optiloop.version``, ``torch.version``, ``optiloop.device``,
            ``optiloop.processes``, ``optiloop.strategy``, and ``tags``.
        status: FINISHED, KILLED (interrupted by a signal: a resume continues it) or FAILED.

    A resumed fit continues the same MLflow run: the run id travels in the checkpoint (this
    callback's state). Resumed into another tracking store, it starts a new run there and sends
    the epochs before the checkpoint first. After a hard kill (no checkpoint of the last epochs)
    the epochs trained again appear twice at their step: MLflow cannot delete metric points.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``,
            ``databricks``); None: MLflow's own default (``MLFLOW_TRACKING_URI`` or its local store).
        experiment: the experiment's name (created when new); None: ``MLFLOW_EXPERIMENT_NAME``,
            else ``"optiloop"``.
        run_name: the run's name; None lets MLflow choose one.
        tags: more tags for the run (``{"mlflow.parentRunId": id}`` makes it a child run).
        every, max_points, grad_norm: see :class:`optiloop.loggers.Logger`.

    Example:
        >>> tracker = ol.MLflow("sqlite:///mlflow.db", experiment="digits")    # doctest: +SKIP
        >>> ol.fit(model, data, callbacks=[tracker, ol.Checkpoint("runs/a")])  # doctest: +SKIP
        >>> tracker.log_artifacts("runs/a")   # the folder's files, beside the run  # doctest: +SKIP
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 *, tags: Mapping[str, Any] | None = None, every: int = 1,
                 max_points: int | None = DEFAULT_MAX_POINTS, grad_norm: bool = False):
        super().__init__(every=every, max_points=max_points, grad_norm=grad_norm)
        require_mlflow()  # a missing package fails now, before training
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = dict(tags or {})
        self.reset()

    def reset(self) -> None:
        self.run_id: str | None = None
        self._store = _Store(self.tracking_uri, "MLflow")
        self._saved: tuple[str | None, str | None] = (None, None)  # (run id, store) from a checkpoint

    # -- the run -------------------------------------------------------------------------------
    def on_fit_start(self, state, logs):
        super().on_fit_start(state, logs)
        self._store.call("starting the run", self._start, state)

    def _start(self, state: TrainState) -> None:
        store = self._store
        client = store.client  # resolves the URI (MLflow's default included)
        params = run_params(state)
        run_id, uri = self._saved
        run = store.find_run(run_id) if run_id and uri == store.uri else None
        if run is not None:  # a resume: the same run goes on
            self.run_id = run_id
            client.update_run(run_id, status="RUNNING")
            logged = run.data.params
            changed = [f"{k} {logged[k]} -> {param_text(v)}" for k, v in params.items()
                       if k in logged and logged[k] != param_text(v)[:_PARAM_LENGTH]]
            note = f"at epoch {state.epoch}, step {state.step}" + (f"; changed {'; '.join(changed)}" if changed else "")
            store.log(run_id, params={k: v for k, v in params.items() if k not in logged},
                      tags={"optiloop.resumed": note})
            return
        run = client.create_run(store.experiment_id(experiment_name(self.experiment)), run_name=self.run_name,
                                tags={**self._tags(state), **self.tags})
        self.run_id = run.info.run_id
        # A resumed fit new to this store: the epochs (and steps) before the checkpoint come first.
        earlier = [m for row in state.history.rows for m in epoch_metrics(row, int(row["epoch"]), _now_ms())]
        store.log(self.run_id, params=params, metrics=earlier + step_metrics(state.history.steps.rows))

    @staticmethod
    def _tags(state: TrainState) -> dict[str, str]:
        import torch

        from . import __version__

        return {"optiloop.version": __version__, "torch.version": torch.__version__,
                "optiloop.device": str(state.device), "optiloop.processes": str(state.world.world_size),
                "optiloop.strategy": state.strategy}

    def log_steps(self, state, rows, walltimes):
        if self.run_id is not None:
            self._store.call("logging the steps", self._store.log, self.run_id, metrics=step_metrics(rows, walltimes))

    def log_epoch(self, state, logs):
        if self.run_id is not None:
            self._store.call(f"logging epoch {state.epoch}", self._store.log, self.run_id,
                             metrics=epoch_metrics(logs, state.epoch, _now_ms()))

    def close(self) -> None:
        if self.run_id is not None:
            self._store.call("ending the run", self._store.client.set_terminated, self.run_id,
                             _STATUS.get(self.outcome or "", "FAILED"))

    def log_artifacts(self, folder: str | os.PathLike) -> list[str]:
        """Upload a run folder's files to this run (see :func:`run_files`: not the checkpoints);
        also after fit ended. Returns the names uploaded (none once the tracker has failed)."""
        if self.run_id is None:
            return []
        return self._store.call("uploading the run's files", self._store.upload, self.run_id, folder) or []

    # -- resume: the run id travels in the checkpoint ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "run_id": self.run_id, "tracking_uri": self._store.uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._saved = (state.get("run_id"), state.get("tracking_uri"))


class MLflowSweep(_Tracked):
    """A sweep in MLflow: one parent run, one child run per run or trial.

    Each child (tag ``mlflow.parentRunId``) gets its params, its final figures as metrics, and
    when given its per-epoch History (metrics at step = epoch; ``History.steps`` as ``step/*``)
    and its folder's files; the parent gets the sweep's settings and, at its end, its files (a
    report). MLflow's run table and its compare view then line the children up by their
    settings. Calls fail soft as :class:`MLflow`'s do (one warning, then nothing).

    Used as a context manager, a sweep that raises ends its parent run as FAILED (KILLED on
    Ctrl-C or a signal); ``end`` first ends it as you say.

    Args:
        tracking_uri, experiment: as :class:`MLflow`.
        run_name: the parent run's name.
        tags: more tags for the parent run.

    Example:
        >>> with ol.trackers.MLflowSweep("sqlite:///mlflow.db", run_name="lr-sweep") as sweep:  # doctest: +SKIP
        ...     sweep.start(params={"epochs": 10})
        ...     for lr in (0.01, 0.1):
        ...         h = ol.fit(model(), data, val_data=val, lr=lr, epochs=10)
        ...         sweep.log_child(f"lr{lr}", params={"optimizer": {"lr": lr}},
        ...                         metrics={"best_val_loss": min(h["val_loss"])}, history=h)
        ...     sweep.end()
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 *, tags: Mapping[str, Any] | None = None):
        require_mlflow()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.tags = dict(tags or {})
        self.parent_run_id: str | None = None
        self.child_run_ids: list[str] = []
        self._experiment_id: str | None = None
        self._ended = False
        self._store = _Store(tracking_uri, "MLflow sweep")

    def child_tags(self) -> dict[str, str]:
        """Tags that make a run a child of this sweep's parent: ``ol.MLflow(tags=sweep.child_tags())``
        logs a trial live, as it trains."""
        return {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}

    def start(self, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> str | None:
        """Create the parent run with the sweep's settings (nested sections are flattened).
        Returns its id (None once the tracker has failed)."""
        def begin() -> str:
            store = self._store
            self._experiment_id = store.experiment_id(experiment_name(self.experiment))
            run = store.client.create_run(self._experiment_id, run_name=self.run_name,
                                          tags={**self._tags(), **self.tags, **(tags or {})})
            store.log(run.info.run_id, params=flatten(params or {}))
            return run.info.run_id

        self.parent_run_id = self._store.call("starting the parent run", begin)
        return self.parent_run_id

    def log_child(self, name: str, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                  *, history: Any = None, artifacts: str | os.PathLike | None = None,
                  tags: Mapping[str, Any] | None = None, outcome: str = "finished") -> str | None:
        """Log one finished run or trial as a child of the parent run.

        Args:
            name: the child's run name.
            params: its settings (nested sections are flattened: ``{"optimizer": {"lr": 0.1}}``
                becomes ``optimizer.lr``).
            metrics: its final figures (at step 0); what is not a number (None, text) is left out.
            history: its ``History``: every epoch's figures at step = epoch, and its steps.
            artifacts: a run folder whose files go with it (see :func:`run_files`).
            tags: more tags.
            outcome: "finished", "interrupted" or "failed": the child's status.

        Returns:
            The child's run id (None once the tracker has failed).
        """
        if self.parent_run_id is None:
            return None

        def child() -> str:
            store = self._store
            run = store.client.create_run(self._experiment_id, run_name=name,
                                          tags={**self._tags(), **self.child_tags(), **(tags or {})})
            run_id = run.info.run_id
            now = _now_ms()
            figures = epoch_metrics(metrics or {}, 0, now)
            if history is not None:
                figures += [m for row in history.rows for m in epoch_metrics(row, int(row["epoch"]), now)]
                figures += step_metrics(history.steps.rows) if len(history.steps) else []
            store.log(run_id, params=flatten(params or {}), metrics=figures)
            if artifacts is not None:
                store.upload(run_id, artifacts)
            store.client.set_terminated(run_id, _STATUS.get(outcome, "FAILED"))
            return run_id

        run_id = self._store.call(f"logging run {name}", child)
        if run_id is not None:
            self.child_run_ids.append(run_id)
        return run_id

    def end(self, metrics: Mapping[str, Any] | None = None, *, artifacts: str | os.PathLike | None = None,
            outcome: str = "finished") -> None:
        """End the parent run: its final figures, its files, its status (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        if self.parent_run_id is None:
            return

        def finish() -> None:
            store = self._store
            store.log(self.parent_run_id, metrics=epoch_metrics(metrics or {}, 0, _now_ms()))
            if artifacts is not None:
                store.upload(self.parent_run_id, artifacts)
            store.client.set_terminated(self.parent_run_id, _STATUS.get(outcome, "FAILED"))

        self._store.call("ending the parent run", finish)

    def __enter__(self) -> MLflowSweep:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        if kind is not None:
            self.end(outcome="interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")

    @staticmethod
    def _tags() -> dict[str, str]:
        import torch

        from . import __version__

        return {"optiloop.version": __version__, "torch.version": torch.__version__}
