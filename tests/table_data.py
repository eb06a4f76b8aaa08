"""A table as it comes, made by the tests: an ID column, a row counter, a date, two categorical
columns, numbers, about 5% empty cells and text labels (the tables tests and the export tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def realistic_table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "customer_id": [f"C-{rng.integers(10**6, 10**7)}-{i}" for i in range(n)],
        "row": np.arange(1, n + 1),
        "signup": pd.date_range("2023-01-01", periods=n, freq="36h").strftime("%Y-%m-%d"),
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(50, 15, n).round(2),
        "plan": rng.choice(["basic", "pro", "team"], n),
        "region": rng.choice(["north", "south", "east", "west"], n),
    })
    score = (df.age - 50) / 15 + (df.income - 50) / 15 + 1.5 * (df.plan == "pro") - (df.region == "west")
    df["outcome"] = np.where(score > 0.3, "churned", "stayed")
    for column in ("age", "income", "plan", "signup"):  # ~5% empty cells
        df.loc[rng.random(n) < 0.05, column] = np.nan
    return df


def write_table(path: Path, n: int = 240, seed: int = 0) -> pd.DataFrame:
    df = realistic_table(n, seed)
    df.to_csv(path, index=False)
    return df


def new_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Raw rows to predict on: empty cells, an unseen category, no label, columns in another order."""
    rows = df.drop(columns=["outcome"]).head(8).copy()
    rows.loc[rows.index[0], "age"] = np.nan
    rows.loc[rows.index[1], "plan"] = np.nan
    rows.loc[rows.index[2], "region"] = "central"  # never seen in training
    rows.loc[rows.index[3], "signup"] = np.nan
    return rows[list(reversed(rows.columns))]
