"""The search: which optimizer, which schedule, which LR, on Optuna (``ol.tune``, ``optiloop tune``).

- :mod:`.space`: what a search tries (a ``[tune.space]`` table, the default space, or a function of
  the trial) and a trial's config.
- :mod:`.study`: Optuna underneath: storages by URL, opening a study, N trials in one or more
  processes, trials of killed processes marked failed. Knows nothing of training: a grid
  comparison can run on it too.
- :mod:`.pruning`: :class:`OptunaPruning`, the callback that reports each epoch to a trial and
  stops a run its pruner gives up on (any ``fit`` can use it).
- :mod:`.search`: :func:`tune`: every trial a real run folder (``optiloop.runs.TrainingRun``).
- :mod:`.report`: trials.csv, best.toml, Optuna's plots, report.md and report.html.

Optuna is an optional extra (``pip install 'optiloop[tune]'``), imported only when a search runs:
this package imports without it. (Named ``tuning``, not ``tune``: a submodule ``optiloop.tune``
would replace the function ``ol.tune`` on the package once imported.)
"""

from __future__ import annotations

from .pruning import OptunaPruning
from .result import TuneResult
from .search import tune
from .space import Dimension, Space, default_space, parse_space

__all__ = ["Dimension", "OptunaPruning", "Space", "TuneResult", "default_space", "parse_space", "tune"]
