"""A run: built from a config, trained into a folder of files, loaded back to make predictions.

One module per subject:

- ``runs.task``: :func:`build_task`, the one way from a resolved config to the data set, its
  split and preprocessing, the model, the default loss and metrics.
- ``runs.folder``: :class:`RunFolder`, the one writer of a run's files, its lock, and
  :func:`ensure_empty`, the one "results are never overwritten" check.
- ``runs.training``: :class:`TrainingRun`, ``optiloop train`` as a library.
- ``runs.loaded``: :func:`load` brings a run back as a :class:`Run` that predicts on new rows.
- ``runs.record``: what a run folder records as training goes and at its end, shared by
  ``TrainingRun`` and ``fit(out=...)``.
- ``runs.fitted``: ``fit(out=...)`` / ``fit(resume=...)`` on a run folder.
"""

from .folder import RunFolder, ensure_empty, free_name, short, stamp, versions
from .loaded import Run, load, prediction_table, read_rows, write_csv_rows
from .record import RunCallbacks, RunFiles, RunInfo, files_so_far, finish_run, run_callbacks
from .task import INFERENCE, Task, build_task, with_key
from .training import TrainingResult, TrainingRun, resume_changes, torchrun_rank

__all__ = ["INFERENCE", "Run", "RunCallbacks", "RunFiles", "RunFolder", "RunInfo", "Task", "TrainingResult",
           "TrainingRun", "build_task", "ensure_empty", "files_so_far", "finish_run", "free_name", "load",
           "prediction_table", "read_rows", "resume_changes", "run_callbacks", "short", "stamp", "torchrun_rank",
           "versions", "with_key", "write_csv_rows"]
