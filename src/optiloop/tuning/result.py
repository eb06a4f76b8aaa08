"""What a search returns (``ol.tune``), read by the report and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .study import WorkerResult


@dataclass
class TuneResult:
    """What ``tune`` did.

    Attributes:
        out: the tune folder (trials/, trials.csv, best.toml, report.md / .html).
        study: the ``optuna.Study`` (all its trials, this session's and earlier ones).
        storage, study_name: where it lives (the URL with any password hidden).
        monitor, direction: the figure searched on, "maximize" or "minimize".
        best: the best complete trial: number, value, config, run folder, epochs; None if none completed.
        new_trials: the numbers of the trials this call ran; ``workers``: per process.
        files: the result files written into ``out``.
        dashboard: the command that opens the study in optuna-dashboard.
    """

    out: Path
    study: Any
    storage: str
    study_name: str
    monitor: str
    direction: str
    best: dict[str, Any] | None
    new_trials: list[int]
    workers: list[WorkerResult]
    files: list[str] = field(default_factory=list)
    dashboard: str = ""
