"""The data sets that ship inside scikit-learn (``datasets.BUILTIN``): no download."""

from __future__ import annotations

from ..datasets import BUILTIN, Dataset, finish
from . import DataSource, register


@register
class Builtin(DataSource):
    order = 0

    def claims(self, spec: str) -> bool:
        return spec in BUILTIN

    def load(self, spec: str, *, target: str | None, task: str) -> Dataset:
        loader, builtin_task, _ = BUILTIN[spec]
        X, y, features = loader()
        return finish(spec, X, y, builtin_task if task == "auto" else task, features)
