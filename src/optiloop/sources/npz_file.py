"""A NumPy ``.npz`` archive with arrays ``X`` and ``y`` (loaded without pickles: no code runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Dataset, finish, read_npz
from ..errors import OptiloopError
from . import DataSource, register


@register
class NpzFile(DataSource):
    order = 20
    form = "a .npz file"

    def claims(self, spec: str) -> bool:
        return spec.lower().endswith(".npz")

    def load(self, spec: str, *, target: str | None, task: str) -> Dataset:
        X, y = read_npz(Path(spec))
        return finish(spec, X, y, task)

    def rows(self, spec: str, features: list[str], task: str, *, target: str, need_labels: bool, what: str,
             target_arg: str) -> tuple[Any, np.ndarray | None]:
        path = Path(spec)
        if not path.is_file():
            raise OptiloopError(f"{what}: no .npz file at {path}")
        with np.load(path, allow_pickle=False) as z:  # no pickles: loading data runs no code
            if "X" not in z.files or (need_labels and "y" not in z.files):
                raise OptiloopError(f"{what} {spec}: needs array X{' and y' if need_labels else ''}; it has: "
                                    f"{', '.join(z.files) or 'none'}")
            X = z["X"].reshape(len(z["X"]), -1) if z["X"].ndim > 2 else z["X"]
            return X, (z["y"].reshape(-1) if "y" in z.files else None)
