"""The task of a run: a resolved config (``config.resolve``) made into what training needs.

:func:`build_task` loads the data set, makes the train / validation split, fits the
preprocessing on the train split (``optiloop.preprocessing``), and names the model, the default
loss and metrics. ``optiloop train``, ``eval``, ``predict``, ``compare`` and ``lr-find`` all
start there.

Example:
    >>> from optiloop.config import resolve
    >>> task = build_task(resolve(sets=["data.name=wine"]))
    >>> task.description, task.loss, task.metrics
    ('wine (142 train / 36 val, classification), mlp', 'cross_entropy', ['accuracy'])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..config import extras
from ..datasets import Dataset, Split, is_user_function, split
from ..errors import OptiloopError
from ..metrics import get_loss, resolve_metric
from ..models import build_model
from ..preprocessing import Preprocessing
from ..sources import load_dataset
from ..tables import TableOptions, prepare

INFERENCE = "inference"  # the key of the checkpoint config that holds what applying the model needs


def with_key(key: str, fn: Callable[[Any], Any], value: Any) -> Any:
    """Call a library check and put the config key in front of its message."""
    try:
        return fn(value)
    except OptiloopError as e:
        raise OptiloopError(f"{key}: {e}") from None


@dataclass
class Task:
    """What a run trains on, built from a resolved config by :func:`build_task`.

    Attributes:
        config: the config it was built from, completed: ``data.name`` absolute for files,
            ``data.task``, ``train.loss`` and ``train.metrics`` filled in.
        dataset, raw: the data set and its raw train / validation split.
        preprocessing: fitted on the train split.
        train_data, val_data: ``(inputs, targets)`` ready for ``fit``.
        loss, metrics, batch_size: the training settings.
    """

    config: dict[str, Any]
    dataset: Dataset
    raw: Split
    preprocessing: Preprocessing
    train_data: tuple[np.ndarray, np.ndarray]
    val_data: tuple[np.ndarray, np.ndarray]
    loss: str
    metrics: list[str]
    batch_size: int

    def new_model(self) -> nn.Module:
        """A freshly initialised model (seed the RNG first for reproducible weights)."""
        m = self.config["model"]
        return build_model(m["name"], len(self.preprocessing.encoded), self.preprocessing.out_features,
                           **extras(m))

    @property
    def notes(self) -> list[str]:
        """What reading the data did (columns left out or encoded, empty cells filled, rows without
        a label): the run header's lines."""
        return list(self.dataset.notes)

    @property
    def description(self) -> str:
        """e.g. ``digits (1438 train / 359 val, classification), mlp``."""
        return (f"{self.dataset.name} ({len(self.train_data[0])} train / {len(self.val_data[0])} val, "
                f"{self.dataset.task}), {self.config['model']['name']}")

    def inference(self) -> dict[str, Any]:
        """What applying the model needs, as plain data: it goes into every checkpoint."""
        m = self.config["model"]
        return {"preprocessing": self.preprocessing.state_dict(),
                "model": {"name": m["name"], "in_features": len(self.preprocessing.encoded),
                          "out_features": self.preprocessing.out_features, "options": extras(m)}}


def build_task(cfg: Mapping[str, Any]) -> Task:
    """Load the data and make the split, preprocessing, model, loss and metrics a resolved config
    (``config.resolve``) describes. Every problem is one line that names its config key.

    Example:
        >>> from optiloop.config import resolve
        >>> t = build_task(resolve(sets=["data.name=diabetes"]))
        >>> t.loss, t.metrics, t.preprocessing.task, len(t.train_data[0]) + len(t.val_data[0])
        ('mse', ['mae'], 'regression', 442)
    """
    cfg = copy.deepcopy(dict(cfg))
    d, t = cfg["data"], cfg["train"]
    if not is_user_function(d["name"]) and Path(d["name"]).suffix.lower() in (".csv", ".npz"):
        d["name"] = str(Path(d["name"]).resolve())  # re-runnable from any folder
    ds = run_dataset(d)
    d["task"] = ds.task
    raw = split(ds, val_fraction=d["val_fraction"], seed=d["seed"])
    prep = Preprocessing.fit(ds, raw.X_train, raw.y_train, standardize=d.get("standardize", True),
                             impute=d.get("impute", True))
    regression = ds.task == "regression"
    t.setdefault("loss", "mse" if regression else "cross_entropy")
    t.setdefault("metrics", ["mae"] if regression else ["accuracy"])
    with_key("train.loss", get_loss, t["loss"])
    for m in t["metrics"]:
        with_key("train.metrics", resolve_metric, m)
    unseen: list[str] = []  # a category only the validation rows have: expected, and said once
    task = Task(config=cfg, dataset=ds, raw=raw, preprocessing=prep,
                train_data=(prep.inputs(raw.X_train, ds.name, notes=[]), _targets(prep, raw.y_train)),
                val_data=(prep.inputs(raw.X_val, ds.name, notes=unseen), _targets(prep, raw.y_val)),
                loss=t["loss"], metrics=list(t["metrics"]), batch_size=t["batch_size"])
    ds.notes += [f"validation split: {n}" for n in unseen if "never seen" in n]
    task.new_model()  # a bad model key fails now, before any folder exists
    return task


def run_dataset(d: Mapping[str, Any]) -> Dataset:
    """The data set a run's ``[data]`` section names, its columns selected and typed
    (``optiloop.tables``): what the split is made of, at training and when the split is rebuilt."""
    ds = load_dataset(d["name"], target=d.get("target"), task=d.get("task", "auto"))
    return prepare(ds, TableOptions.of(d))


def _targets(prep: Preprocessing, y: np.ndarray) -> np.ndarray:
    """A split's targets for training: class ids as they are, regression values standardized."""
    return y if prep.task == "classification" else prep.targets(y)
