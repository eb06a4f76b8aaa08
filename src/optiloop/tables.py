"""Tables as they come: which columns a run takes, what each one is, and how it becomes numbers.

A table (a CSV, a DataFrame from ``package.module:function``, an array with empty cells) goes
through three steps, each said in one line of the run's header:

- **Selection**: ``data.features`` (keep these, in this order) or ``data.drop`` (leave these out).
- **Typing**, on the whole table (the structure, no statistics): a column is *numeric* when every
  filled cell is a number, a *date* when every filled cell is an ISO date (``2024-03-01``,
  optionally with a time), *categorical* otherwise. ID-like columns (a value unique to every row:
  text, or integers that count rows or sit in a column named like an ID) say nothing about a new
  row and are left out; dates are expanded into year, month, day and weekday (``data.dates =
  "drop"`` leaves them out); a categorical column with more than ``data.max_categories`` levels is
  refused with one line; empty cells are counted (``data.impute = false`` refuses them).
- **Encoding**, fitted on the train split only: one scikit-learn ``Pipeline`` (a
  ``ColumnTransformer`` of numbers, date parts and one-hot categories, then a median
  ``SimpleImputer`` and a ``StandardScaler``). :class:`TableEncoder` holds it and its fitted
  parameters as plain data (categories, most frequent values, medians, means, scales), which is
  what travels in the checkpoint: ``torch.load(weights_only=True)`` still reads it, and loading
  rebuilds the very same pipeline. A category never seen in training is encoded as none of the
  known ones (all its indicator columns 0) and reported.

A table whose kept columns are all numbers without an empty cell skips the pipeline: its
standardization is numpy's (``optiloop.preprocessing``), and scikit-learn is never imported.

Example:
    >>> import numpy as np
    >>> X = np.array([["a", "1", "2024-01-05"], ["b", "", "2024-02-10"], ["a", "3", ""]], dtype=object)
    >>> cols = Columns.of(X, ["color", "size", "day"], TableOptions())
    >>> cols.numeric, cols.dates, cols.categorical, cols.missing
    (['size'], ['day'], {'color': 2}, {'size': 1, 'day': 1})
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import numpy as np

from .datasets import Dataset, is_missing, to_number
from .errors import OptiloopError

DATE_PARTS = ("year", "month", "day", "weekday")
_DATE = re.compile(r"^\d{4}[-/]\d{1,2}[-/]\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")
# id, user_id, ID, uuid, id_number, customerId, userID (not: paid, identity, keyboard)
_ID_NAME = re.compile(r"(?i:(?:^|[_\s.-])(?:id|uuid|guid|key)$|^(?:id|uuid|guid)(?:[_\s.-]|$))|[a-z](?:Id|ID)$")
MIN_ID_ROWS = 20  # below this, a column of distinct values may simply be a small table's categories


@dataclass(frozen=True)
class TableOptions:
    """The ``[data]`` keys that shape a table (see ``optiloop.config.DataConfig``)."""

    drop: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None
    impute: bool = True
    max_categories: int = 50
    dates: str = "expand"

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> TableOptions:
        features = data.get("features")
        return cls(tuple(data.get("drop") or ()), tuple(features) if features is not None else None,
                   bool(data.get("impute", True)), int(data.get("max_categories", 50)), data.get("dates", "expand"))


# --- cells ----------------------------------------------------------------------------------------
def missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "biu":
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((is_missing(v) for v in values), dtype=bool, count=len(values))


def numbers(X: np.ndarray) -> np.ndarray:
    """Columns of cells as float64, NaN where empty (a ``FunctionTransformer`` step)."""
    X = np.asarray(X)
    if X.dtype.kind in "biuf":
        return X.astype(np.float64)
    return np.vectorize(to_number, otypes=[np.float64])(X) if X.size else X.astype(np.float64)


def _as_day(v: Any) -> Any:
    """A cell as a numpy day, NaT when empty or not a date."""
    if is_missing(v):
        return np.datetime64("NaT", "D")
    if isinstance(v, (datetime, date, np.datetime64)) or type(v).__name__ == "Timestamp":
        return np.datetime64(v).astype("datetime64[D]")
    text = str(v).strip()
    if not _DATE.match(text):
        return np.datetime64("NaT", "D")
    y, m, d = (int(p) for p in re.split(r"[-/]", re.split(r"[ T]", text)[0]))
    try:
        return np.datetime64(date(y, m, d), "D")
    except ValueError:  # 2024-02-30
        return np.datetime64("NaT", "D")


def date_parts(X: np.ndarray) -> np.ndarray:
    """Each date column as year, month, day and weekday (Monday 0), NaN where empty (a
    ``FunctionTransformer`` step)."""
    X = np.asarray(X, dtype=object)
    out = np.full((len(X), 4 * X.shape[1]), np.nan)
    for j in range(X.shape[1]):
        days = np.array([_as_day(v) for v in X[:, j]], dtype="datetime64[D]")
        ok = ~np.isnat(days)
        d = days[ok]
        months = d.astype("datetime64[M]")
        out[ok, 4 * j] = d.astype("datetime64[Y]").astype(np.int64) + 1970
        out[ok, 4 * j + 1] = months.astype(np.int64) % 12 + 1
        out[ok, 4 * j + 2] = (d - months.astype("datetime64[D]")).astype(np.int64) + 1
        out[ok, 4 * j + 3] = (d.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return out


def category_text(X: np.ndarray) -> np.ndarray:
    """Categorical cells as text, NaN where empty (a ``FunctionTransformer`` step): "3" and 3 are
    the same level whether the rows come from a CSV or a DataFrame."""
    X = np.asarray(X, dtype=object)
    out = np.empty(X.shape, dtype=object)
    for idx, v in np.ndenumerate(X):
        out[idx] = np.nan if is_missing(v) else _text(v)
    return out


def _text(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


# --- typing ---------------------------------------------------------------------------------------
def _kind(values: np.ndarray, filled: np.ndarray) -> str:
    if values.dtype.kind in "biuf":
        return "numeric"
    cells = values[filled]
    try:
        for v in cells:
            to_number(v)
        return "numeric"
    except (ValueError, TypeError):
        pass
    if len(cells) and all(not np.isnat(_as_day(v)) for v in cells):
        return "date"
    return "categorical"


def _looks_like_id(name: str, values: np.ndarray, kind: str, filled: np.ndarray) -> bool:
    """A value unique to every row (text, or integers that count rows or sit in an ID-named column)."""
    n = len(values)
    if n < MIN_ID_ROWS or not filled.all() or kind == "date":
        return False
    if kind == "categorical":
        return len({_text(v) for v in values}) == n
    nums = numbers(values[:, None])[:, 0]
    if not np.all(np.mod(nums, 1) == 0) or len(np.unique(nums)) != n:
        return False
    return bool(_ID_NAME.search(name)) or nums.max() - nums.min() == n - 1


def _not_a_typo(name: str, cells: np.ndarray, where: str) -> None:
    """A column of numbers with a few text cells is a column of numbers with mistakes in it, not a
    category: one line naming them, rather than a silent one-hot encoding of every number."""
    text = []
    for v in cells:
        try:
            to_number(v)
        except (ValueError, TypeError):
            text.append(v)
    if len(text) <= len(cells) / 2:
        shown = ", ".join(repr(_text(v))[:40] for v in text[:3])
        raise OptiloopError(f"{where}: column {name!r} is not numeric: {len(text)} of its {len(cells)} filled "
                            f"cells are text among numbers ({shown}); correct or empty them, or leave the column "
                            f"out (data.drop = [\"{name}\"])")


@dataclass
class Columns:
    """What each kept column of a table is (decided on the whole table) and what was left out.

    Attributes:
        names: the kept columns, in the table's order: what the run takes.
        numeric, dates: those columns by kind; categorical: column -> number of levels.
        dropped: column -> why it was left out.
        missing: column -> empty cells (kept columns only).
    """

    names: list[str]
    numeric: list[str]
    dates: list[str]
    categorical: dict[str, int]
    dropped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, X: np.ndarray, names: Sequence[str], options: TableOptions, *, where: str = "data",
           explicit: Sequence[str] = ()) -> Columns:
        """Type the columns of ``X`` (rows x ``names``). ``explicit``: columns the user listed in
        data.features, never dropped as IDs."""
        kept: list[str] = []
        numeric, dates, categorical, dropped, missing = [], [], {}, {}, {}
        for j, name in enumerate(names):
            values = X[:, j]
            empty = missing_mask(values)
            filled = ~empty
            kind = _kind(values, filled)
            if name not in explicit and _looks_like_id(name, values, kind, filled):
                dropped[name] = "an ID: a different value in every row"
                continue
            if kind == "date" and options.dates == "drop":
                dropped[name] = "a date; data.dates = \"drop\""
                continue
            if kind == "categorical":
                _not_a_typo(name, values[filled], where)
                levels = len({_text(v) for v in values[filled]})
                if levels > options.max_categories:
                    raise OptiloopError(
                        f"{where}: column {name!r} has {levels} distinct text values, more than "
                        f"data.max_categories = {options.max_categories} for one-hot encoding; leave it out "
                        f"(data.drop = [\"{name}\"]) or raise data.max_categories")
                categorical[name] = levels
            elif kind == "date":
                dates.append(name)
            else:
                if values.dtype.kind == "f" and np.isinf(values).any() or values.dtype.kind not in "biuf" and any(
                        math.isinf(to_number(v)) for v in values[filled]):
                    raise OptiloopError(f"{where}: column {name!r} has an infinite value")
                numeric.append(name)
            kept.append(name)
            if empty.any():
                missing[name] = int(empty.sum())
        if not kept:
            why = "; ".join(f"{k}: {v}" for k, v in dropped.items())
            raise OptiloopError(f"{where}: no feature columns left ({why}); keep one with data.features")
        if missing and not options.impute:
            name, count = next(iter(missing.items()))
            rows = np.flatnonzero(missing_mask(X[:, list(names).index(name)]))[:3] + 1
            raise OptiloopError(f"{where}: column {name!r} has {count} empty cell{'s' if count > 1 else ''} (row "
                                f"{', '.join(map(str, rows))}{' ...' if count > 3 else ''}); data.impute = false "
                                "refuses them: fill them in, leave the column out (data.drop), or set "
                                "data.impute = true (median / most frequent value of the train split)")
        return cls(kept, numeric, dates, categorical, dropped, missing)

    @property
    def needs_encoder(self) -> bool:
        """Whether the table needs the scikit-learn pipeline (or plain numbers do)."""
        return bool(self.dates or self.categorical or self.missing)

    def notes(self) -> list[str]:
        """The lines the run header shows about the table."""
        lines = []
        if self.dropped:
            lines.append("left out: " + "; ".join(f"{k} ({v})" for k, v in self.dropped.items()))
        if self.dates or self.categorical:
            parts = [f"{c} -> {', '.join(DATE_PARTS)}" for c in self.dates]
            parts += [f"{c} one-hot ({n} level{'s' if n != 1 else ''})" for c, n in self.categorical.items()]
            lines.append("encoded: " + "; ".join(parts))
        if self.missing:
            lines.append("empty cells filled with the train split's median (numbers, dates) or most frequent "
                         "value (categories): " + ", ".join(f"{k} {v}" for k, v in self.missing.items()))
        return lines


def select(ds: Dataset, options: TableOptions) -> Dataset:
    """The data set with only the columns ``data.features`` / ``data.drop`` keep (one line for a
    column that is not there, or for the target among them)."""
    if not options.drop and options.features is None:
        return ds
    have = list(ds.features)
    listed = [("data.drop", c) for c in options.drop]
    if options.features is not None:
        listed += [("data.features", c) for c in options.features]
        if not options.features:
            raise OptiloopError("data.features: empty; list the columns to keep, or leave the key out")
    for key, c in listed:
        if c == ds.target:
            raise OptiloopError(f"{key}: {c!r} is the target (data.target); it is never a feature")
        if c not in have:
            shown = ", ".join(have[:12]) + (f" ... ({len(have)} in all)" if len(have) > 12 else "")
            raise OptiloopError(f"{key}: no column {c!r} in {ds.name}; its feature columns: {shown}")
    keep = list(options.features) if options.features is not None else have
    keep = [c for c in keep if c not in options.drop]
    if not keep:
        raise OptiloopError(f"data.drop: leaves no feature columns in {ds.name}")
    idx = [have.index(c) for c in keep]
    return replace(ds, X=ds.X[:, idx], features=keep)


def prepare(ds: Dataset, options: TableOptions) -> Dataset:
    """Select the columns, then type a table's: IDs and (with data.dates = "drop") dates left out,
    categorical columns capped, empty cells counted. A table of numbers without an empty cell
    becomes a plain float32 matrix (no pipeline); any other keeps its cells with ``ds.columns``."""
    ds = select(ds, options)
    if ds.X.dtype != object and (ds.X.dtype.kind != "f" or np.isfinite(ds.X).all()):  # numbers, complete
        filled = np.ones(len(ds.X), dtype=bool)
        ids = [c for j, c in enumerate(ds.features) if c not in (options.features or ())
               and _looks_like_id(c, ds.X[:, j], "numeric", filled)]
        if not ids:
            return ds  # the fast path: nothing to type, no pipeline
        if len(ids) == len(ds.features):
            raise OptiloopError(f"data {ds.name}: every feature column is an ID ({', '.join(ids)}); keep one with "
                                "data.features")
        keep = [j for j, c in enumerate(ds.features) if c not in ids]
        note = "left out: " + "; ".join(f"{c} (an ID: a different value in every row)" for c in ids)
        return replace(ds, X=ds.X[:, keep], features=[ds.features[j] for j in keep], notes=[*ds.notes, note])
    cols = Columns.of(ds.X, ds.features, options, where=f"data {ds.name}", explicit=options.features or ())
    idx = [ds.features.index(c) for c in cols.names]
    X = ds.X[:, idx]
    notes = [*ds.notes, *cols.notes()]
    if not cols.needs_encoder:
        return replace(ds, X=numbers(X).astype(np.float32), features=cols.names, notes=notes)
    return replace(ds, X=X, features=cols.names, notes=notes, columns=cols)


# --- the fitted pipeline ----------------------------------------------------------------------------
def _pipeline(features: Sequence[str], numeric: Sequence[str], dates: Sequence[str], categorical: Sequence[str],
              standardize: bool, categories: list[list[str]] | None = None) -> Any:
    """The scikit-learn Pipeline of a table (unfitted); ``categories``: fixed one-hot levels."""
    from sklearn.compose import ColumnTransformer  # scikit-learn: only for tables that need it
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    at = {c: i for i, c in enumerate(features)}
    parts: list[tuple[str, Any, list[int]]] = []
    if numeric:
        parts.append(("numbers", FunctionTransformer(numbers), [at[c] for c in numeric]))
    if dates:
        parts.append(("dates", FunctionTransformer(date_parts), [at[c] for c in dates]))
    if categorical:
        one_hot = OneHotEncoder(categories=categories if categories is not None else "auto",
                                handle_unknown="ignore", sparse_output=False)
        parts.append(("categories", Pipeline([
            ("text", FunctionTransformer(category_text)),
            ("impute", SimpleImputer(strategy="most_frequent", missing_values=np.nan)),
            ("one_hot", one_hot)]), [at[c] for c in categorical]))
    steps: list[tuple[str, Any]] = [("encode", ColumnTransformer(parts, sparse_threshold=0.0)),
                                    ("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if standardize:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps)


class TableEncoder:
    """A table's fitted scikit-learn ``Pipeline`` and its parameters as plain data.

    Attributes:
        pipeline: the fitted ``Pipeline`` (encode -> impute -> scale).
        features: the raw columns it takes, in order; ``encoded``: the columns it gives.
    """

    def __init__(self, pipeline: Any, state: dict[str, Any]):
        self.pipeline, self.state = pipeline, state

    @property
    def features(self) -> list[str]:
        return list(self.state["features"])

    @property
    def encoded(self) -> list[str]:
        return list(self.state["encoded"])

    @classmethod
    def fit(cls, columns: Columns, X: np.ndarray, *, standardize: bool = True) -> TableEncoder:
        """Fit on the train split's rows (cells in ``columns.names`` order)."""
        cat = list(columns.categorical)
        pipe = _pipeline(columns.names, columns.numeric, columns.dates, cat, standardize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # all-empty columns: filled with 0, said below
            pipe.fit(np.asarray(X, dtype=object))
        state: dict[str, Any] = {"features": list(columns.names), "numeric": list(columns.numeric),
                                 "dates": list(columns.dates), "categorical": cat, "categories": [],
                                 "most_frequent": [], "standardize": standardize}
        if cat:
            steps = pipe.named_steps["encode"].named_transformers_["categories"]
            state["categories"] = [[str(v) for v in c] for c in steps.named_steps["one_hot"].categories_]
            state["most_frequent"] = [str(v) for v in steps.named_steps["impute"].statistics_]
        state["encoded"] = [*columns.numeric, *(f"{c}_{p}" for c in columns.dates for p in DATE_PARTS),
                            *(f"{c}={v}" for c, levels in zip(cat, state["categories"], strict=True) for v in levels)]
        state["fill"] = [float(v) for v in pipe.named_steps["impute"].statistics_]
        if standardize:
            s = pipe.named_steps["scale"]
            state["scaler"] = {"mean": s.mean_.tolist(), "scale": s.scale_.tolist(), "var": s.var_.tolist(),
                               "n_samples_seen": float(s.n_samples_seen_)}
        return cls(pipe, state)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TableEncoder:
        """The same fitted pipeline, rebuilt: fitted on two placeholder rows with the one-hot levels
        fixed, then given the stored statistics (most frequent values, medians, mean and scale)."""
        state = dict(state)
        features, cat = state["features"], state["categorical"]
        pipe = _pipeline(features, state["numeric"], state["dates"], cat, state["standardize"],
                         categories=[list(c) for c in state["categories"]] if cat else None)
        placeholder = np.empty((2, len(features)), dtype=object)
        for j, c in enumerate(features):
            placeholder[:, j] = "0" if c in state["numeric"] else "2000-01-01" if c in state["dates"] else \
                state["categories"][cat.index(c)][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pipe.fit(placeholder)
        if cat:
            steps = pipe.named_steps["encode"].named_transformers_["categories"]
            steps.named_steps["impute"].statistics_ = np.array(state["most_frequent"], dtype=object)
        pipe.named_steps["impute"].statistics_ = np.asarray(state["fill"], dtype=np.float64)
        if state["standardize"]:
            s, saved = pipe.named_steps["scale"], state["scaler"]
            s.mean_, s.scale_ = np.asarray(saved["mean"]), np.asarray(saved["scale"])
            s.var_, s.n_samples_seen_ = np.asarray(saved["var"]), saved["n_samples_seen"]
        return cls(pipe, state)

    # -- applying it -------------------------------------------------------------------------------
    def report(self, X: np.ndarray) -> list[str]:
        """What applying the pipeline to ``X`` will do beyond plain encoding: empty cells filled,
        categories never seen in training."""
        notes, filled = [], {}
        for j, c in enumerate(self.features):
            n = int(missing_mask(X[:, j]).sum())
            if n:
                filled[c] = n
        if filled:
            notes.append("filled empty cells with the training median / most frequent value: "
                         + ", ".join(f"{c} {n}" for c, n in filled.items()))
        for c, levels in zip(self.state["categorical"], self.state["categories"], strict=True):
            known = set(levels)
            cells = category_text(X[:, [self.features.index(c)]])[:, 0]
            new = [v for v in cells if isinstance(v, str) and v not in known]
            if new:
                shown = ", ".join(repr(v) for v in sorted(set(new))[:3])
                notes.append(f"column {c!r}: {len(new)} row{'s' if len(new) > 1 else ''} with a category never "
                             f"seen in training ({shown}{' ...' if len(set(new)) > 3 else ''}): encoded as none "
                             "of the known ones")
        return notes

    def encode(self, X: np.ndarray) -> np.ndarray:
        """The encoded columns before imputation and scaling (NaN where a number or date is empty)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found unknown categories")  # reported by report()
            return self.pipeline.named_steps["encode"].transform(np.asarray(X, dtype=object)).astype(np.float64)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The model's inputs (float32)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Found unknown categories")
            return self.pipeline.transform(np.asarray(X, dtype=object)).astype(np.float32)

    def tail(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fill, mean, scale) per encoded column: what follows the encoding, as arrays (an export
        computes it in its graph)."""
        fill = np.asarray(self.state["fill"], dtype=np.float64)
        if not self.state["standardize"]:
            return fill, np.zeros_like(fill), np.ones_like(fill)
        return fill, np.asarray(self.state["scaler"]["mean"]), np.asarray(self.state["scaler"]["scale"])

    def description(self) -> dict[str, Any]:
        """How to make the encoded columns from a raw row, for a reader without optiloop (an
        export writes it beside the model file)."""
        encoded: list[dict[str, Any]] = [{"column": c, "kind": "number", "from": c} for c in self.state["numeric"]]
        encoded += [{"column": f"{c}_{p}", "kind": f"date {p}", "from": c} for c in self.state["dates"]
                    for p in DATE_PARTS]
        encoded += [{"column": f"{c}={v}", "kind": "category indicator", "from": c, "value": v}
                    for c, levels in zip(self.state["categorical"], self.state["categories"], strict=True)
                    for v in levels]
        return {
            "takes": self.features,
            "encoded": encoded,
            "rules": {
                "number": "the cell as a number; NaN when empty (the model fills the training median)",
                "date": "year, month, day and weekday (Monday 0) of an ISO date (YYYY-MM-DD); NaN when empty",
                "category indicator": "1.0 when the cell (as text) equals value, else 0.0; an empty cell counts as "
                                      "the most frequent value below; an unknown value makes every indicator 0.0",
            },
            "most_frequent": dict(zip(self.state["categorical"], self.state["most_frequent"], strict=True)),
        }
