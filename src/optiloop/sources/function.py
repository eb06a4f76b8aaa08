"""A user's ``package.module:function`` returning ``(X, y)`` arrays (a DataFrame keeps its column names)."""

from __future__ import annotations

from ..datasets import Dataset, call_user_function, finish, import_function, is_user_function
from ..errors import OptiloopError
from . import DataSource, register


@register
class UserFunction(DataSource):
    order = 10
    form = "package.module:function"

    def claims(self, spec: str) -> bool:
        return is_user_function(spec)

    def load(self, spec: str, *, target: str | None, task: str) -> Dataset:
        out = call_user_function(import_function(spec, "data"), f"data {spec!r}")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise OptiloopError(f"data {spec!r} must return (X, y) arrays, got {type(out).__name__}")
        X, y = out
        features = [str(c) for c in X.columns] if hasattr(X, "columns") else None  # a DataFrame's names
        return finish(spec, X, y, task, features)
