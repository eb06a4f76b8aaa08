"""Tables as they come (optiloop.tables): columns typed, selected and encoded by one fitted
scikit-learn pipeline kept in the run as plain data; a realistic CSV trained on, then predicted on
raw rows in a new process after the CSV is gone; bad input as one line with nothing written."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from table_data import new_rows, write_table

import optiloop as ol
from optiloop.config import resolve
from optiloop.datasets import split
from optiloop.errors import DataWarning, OptiloopError
from optiloop.preprocessing import Preprocessing
from optiloop.runs import TrainingRun, build_task
from optiloop.sources import load_dataset
from optiloop.tables import Columns, TableEncoder, TableOptions, date_parts, prepare

SRC = Path(__file__).resolve().parents[1] / "src"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def cells(rows: list[list[object]]) -> np.ndarray:
    return np.array(rows, dtype=object)


def test_columns_are_typed_on_the_whole_table_ids_and_dates_found_and_empty_cells_counted():
    rng = np.random.default_rng(0)
    n = 30
    X = np.empty((n, 6), dtype=object)
    X[:, 0] = [f"user-{i}" for i in range(n)]  # text unique per row: an ID
    X[:, 1] = [str(i + 100) for i in range(n)]  # consecutive integers: a row counter
    X[:, 2] = [str(v) for v in rng.integers(0, 5, n)]  # repeated small integers: a number
    X[:, 3] = [f"2024-0{1 + i % 9}-1{i % 9}" for i in range(n)]
    X[:, 4] = rng.choice(["a", "b", ""], n)  # text with empty cells
    X[:, 5] = [f"{v:.2f}" for v in rng.normal(size=n)]  # floats unique per row: a number, never an ID
    cols = Columns.of(X, ["user", "n", "count", "day", "kind", "x"], TableOptions())
    an_id = "an ID: a different value in every row"
    assert cols.dropped == {"user": an_id, "n": an_id}
    assert (cols.names, cols.numeric, cols.dates) == (["count", "day", "kind", "x"], ["count", "x"], ["day"])
    assert cols.categorical == {"kind": 2} and cols.missing == {"kind": int((X[:, 4] == "").sum())}
    assert Columns.of(X, ["user", "n", "count", "day", "kind", "x"], TableOptions(), explicit=["n"]).numeric[0] == "n"
    dropped = Columns.of(X, ["user", "n", "count", "day", "kind", "x"], TableOptions(dates="drop"))
    assert "day" in dropped.dropped and not dropped.dates
    # the header's lines say all of it
    notes = " | ".join(cols.notes())
    assert "left out: user (an ID" in notes and "day -> year, month, day, weekday" in notes
    assert "kind one-hot (2 levels)" in notes


def test_date_parts_are_year_month_day_and_weekday_with_nan_where_empty():
    got = date_parts(cells([["2024-03-01"], ["2023/12/31 08:30"], [""], [None]]))
    assert got[0].tolist() == [2024, 3, 1, 4]  # a Friday
    assert got[1].tolist() == [2023, 12, 31, 6]  # a Sunday
    assert np.isnan(got[2:]).all()


@pytest.mark.parametrize(("options", "needle"), [
    (TableOptions(drop=("nope",)), "data.drop: no column 'nope' in"),
    (TableOptions(drop=("outcome",)), "data.drop: 'outcome' is the target (data.target); it is never a feature"),
    (TableOptions(features=("age", "nope")), "data.features: no column 'nope' in"),
    (TableOptions(impute=False), "column 'signup' has"),
    (TableOptions(max_categories=3), "column 'region' has 4 distinct text values, more than data.max_categories = 3"),
])
def test_bad_table_options_are_one_line(tmp_path, options, needle):
    write_table(tmp_path / "t.csv")
    with pytest.raises(OptiloopError) as e:
        prepare(load_dataset(str(tmp_path / "t.csv"), target="outcome"), options)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if not options.impute:
        assert "data.impute = false refuses them" in str(e.value)


def test_selection_keeps_what_data_features_lists_in_its_order(tmp_path):
    write_table(tmp_path / "t.csv")
    ds = prepare(load_dataset(str(tmp_path / "t.csv"), target="outcome"),
                 TableOptions(features=("income", "age")))
    assert ds.features == ["income", "age"] and ds.columns is not None and ds.columns.categorical == {}
    with pytest.raises(OptiloopError, match="no feature columns left"):  # (the IDs alone: left out too)
        prepare(load_dataset(str(tmp_path / "t.csv"), target="outcome"),
                TableOptions(drop=("signup", "plan", "region", "age", "income")))


def test_a_table_of_complete_numbers_needs_no_pipeline(tmp_path):
    df = pd.DataFrame({"id": [f"r{i}" for i in range(40)], "a": np.arange(40) * 0.5, "b": np.ones(40),
                       "y": [0, 1] * 20})
    df.to_csv(tmp_path / "n.csv", index=False)
    ds = prepare(load_dataset(str(tmp_path / "n.csv")), TableOptions())
    assert ds.columns is None and ds.X.dtype == np.float32 and ds.features == ["a", "b"]
    assert ds.notes == ["left out: id (an ID: a different value in every row)"]
    # numbers only: an integer ID (named like one, or counting rows) is left out too, still no pipeline
    rng = np.random.default_rng(0)
    df.assign(id=rng.permutation(40) * 7 + 1000, n=np.arange(40), a=rng.normal(size=40)).rename(
        columns={"id": "orderId"}).to_csv(tmp_path / "n.csv", index=False)
    ds = prepare(load_dataset(str(tmp_path / "n.csv"), target="y"), TableOptions())
    assert ds.columns is None and ds.features == ["a", "b"] and "left out: orderId (an ID" in ds.notes[0]
    assert "n (an ID" in ds.notes[0]
    kept = prepare(load_dataset(str(tmp_path / "n.csv"), target="y"), TableOptions(features=("orderId", "a")))
    assert kept.features == ["orderId", "a"]  # listed in data.features: kept as the user said


def test_the_pipeline_travels_as_plain_data_and_is_rebuilt_to_give_the_same_numbers(tmp_path):
    df = write_table(tmp_path / "t.csv")
    ds = prepare(load_dataset(str(tmp_path / "t.csv"), target="outcome"), TableOptions())
    raw = split(ds)
    prep = Preprocessing.fit(ds, raw.X_train, raw.y_train)
    pipe = prep.table.pipeline
    assert [name for name, _ in pipe.steps] == ["encode", "impute", "scale"]  # one scikit-learn Pipeline
    assert prep.encoded[:2] == ["age", "income"] and "region=west" in prep.encoded
    # through a checkpoint: no pickled object, torch.load(weights_only=True) reads it back
    torch.save({"prep": prep.state_dict()}, tmp_path / "p.pt")
    with zipfile.ZipFile(tmp_path / "p.pt") as z:
        assert not any(b"sklearn" in z.read(n) for n in z.namelist() if n.endswith(".pkl"))
    again = Preprocessing.from_state_dict(torch.load(tmp_path / "p.pt", weights_only=True)["prep"])
    rows = new_rows(df)
    notes_a: list[str] = []
    a = prep.inputs(rows, "rows", notes=notes_a)
    with pytest.warns(DataWarning) as caught:
        b = again.inputs(rows, "rows")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.inputs(raw.X_val, notes=[]), prep.inputs(raw.X_val, notes=[]))
    said = " | ".join(str(w.message) for w in caught)
    assert "column 'region': 1 row with a category never seen in training ('central')" in said
    assert "filled empty cells" in said and "age 1" in said and said.count("rows: ") == 2
    # the unseen category is none of the known ones: every region indicator 0 in that row
    region = [i for i, c in enumerate(prep.encoded) if c.startswith("region=")]
    encoded = prep.encode(rows)
    assert encoded[2, region].tolist() == [0.0] * len(region)
    assert np.isnan(encoded[0, prep.encoded.index("age")])  # empty stays NaN until the export's own fill


def test_the_encoder_refuses_cells_that_are_not_what_training_saw(tmp_path):
    df = write_table(tmp_path / "t.csv")
    ds = prepare(load_dataset(str(tmp_path / "t.csv"), target="outcome"), TableOptions())
    raw = split(ds)
    prep = Preprocessing.fit(ds, raw.X_train, raw.y_train)
    with pytest.raises(OptiloopError, match="column 'age' is not numeric"):
        prep.inputs(df.assign(age="old").head(3))
    with pytest.raises(OptiloopError, match="column 'signup' holds dates, but a cell holds 'soon'"):
        prep.inputs(df.assign(signup="soon").head(3))
    assert isinstance(prep.table, TableEncoder)


@pytest.mark.filterwarnings("ignore::optiloop.errors.DataWarning")  # (empty cells in these rows: filled)
def test_a_run_on_a_table_predicts_one_row_a_series_or_a_list_of_dicts(tmp_path):
    df = write_table(tmp_path / "t.csv")
    run = TrainingRun(resolve(sets=[f"data.name={tmp_path / 't.csv'}", "data.target=outcome", "train.epochs=2"]),
                      out=tmp_path / "run")
    run.train(progress=False)
    model = ol.load(tmp_path / "run")
    rows = df.drop(columns=["outcome"]).head(3)
    expected = model.predict_proba(rows)
    np.testing.assert_allclose(model.predict_proba(rows.iloc[0]), expected[:1], rtol=1e-6)  # a one-row Series
    records = rows.to_dict("records")
    np.testing.assert_allclose(model.predict_proba(records), expected, rtol=1e-6)  # a list of dicts
    np.testing.assert_allclose(model.predict_proba(records[1]), expected[1:2], rtol=1e-6)  # one dict
    assert set(model.predict(records)) <= {"churned", "stayed"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optiloop.errors.DataWarning")  # (what the CLI prints as notes, checked)
def test_a_realistic_csv_trains_then_predicts_raw_rows_in_a_new_process_after_the_csv_is_gone(tmp_path):
    df = write_table(tmp_path / "customers.csv")
    p = cli(tmp_path, "train", "--data", "customers.csv", "--target", "outcome", "--epochs", "3", "--out", "run")
    assert p.returncode == 0, p.stderr[-3000:]
    header = p.stdout
    assert "data: left out: customer_id (an ID: a different value in every row); row (an ID" in header
    assert "signup -> year, month, day, weekday; plan one-hot (3 levels); region one-hot (4 levels)" in header
    missing = {c: int(df[c].isna().sum()) for c in ("signup", "age", "income", "plan")}
    assert "empty cells filled" in header and all(f"{c} {n}" in header for c, n in missing.items())
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # plain data: no pickled pipeline
    table = ckpt["config"]["inference"]["preprocessing"]["table"]
    assert table["categorical"] == ["plan", "region"] and table["dates"] == ["signup"]
    assert ckpt["config"]["inference"]["model"]["in_features"] == 2 + 4 + 3 + 4

    (tmp_path / "customers.csv").unlink()  # the training file is gone
    rows = new_rows(df)
    rows.to_csv(tmp_path / "new.csv", index=False)
    p = cli(tmp_path, "predict", "run", "--data", "new.csv")
    assert p.returncode == 0, p.stderr
    got = list(csv.DictReader(io.StringIO(p.stdout)))
    assert len(got) == len(rows) and {r["outcome"] for r in got} <= {"churned", "stayed"}
    notes = p.stderr.strip().splitlines()
    assert any("column 'region': 1 row with a category never seen in training ('central')" in n for n in notes)
    assert any(n.startswith("note: --data new.csv: filled empty cells") for n in notes), notes
    expected = ol.load(tmp_path / "run").predict_proba(rows)  # this process, the same files
    proba = np.array([[float(r["proba_churned"]), float(r["proba_stayed"])] for r in got])
    np.testing.assert_allclose(proba, expected, rtol=1e-6, atol=1e-7)
    # eval on labelled raw rows, in yet another process
    df.head(40).to_csv(tmp_path / "labelled.csv", index=False)
    p = cli(tmp_path, "eval", "run", "--data", "labelled.csv", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["samples"] == 40


@pytest.mark.parametrize(("make", "sets", "needle"), [
    (None, ["data.drop=[\"nope\"]"], "data.drop: no column 'nope' in"),
    (None, ["data.drop=[\"outcome\"]"], "data.drop: 'outcome' is the target"),
    ("levels", [], "column 'city' has 10000 distinct text values, more than data.max_categories = 50"),
])
def test_bad_table_input_is_one_line_exit_2_and_nothing_written(tmp_path, run_main, make, sets, needle):
    df = write_table(tmp_path / "t.csv", n=12000 if make else 240)
    if make == "levels":
        df.assign(city=[f"city{i % 10000}" for i in range(len(df))]).to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run_main("train", "--data", "t.csv", "--target", "outcome", "--epochs", "1",
                              *(a for s in sets for a in ("--set", s)))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]  # no run folder, nothing else


def test_build_task_splits_the_typed_table_and_says_what_the_validation_rows_need(tmp_path):
    write_table(tmp_path / "t.csv")
    task = build_task(resolve(sets=[f"data.name={tmp_path / 't.csv'}", "data.target=outcome"]))
    X, y = task.train_data
    assert X.dtype == np.float32 and X.shape[1] == len(task.preprocessing.encoded) == 13
    assert np.isfinite(X).all() and np.allclose(X[:, :2].mean(axis=0), 0, atol=1e-5)
    assert task.dataset.classes == ["churned", "stayed"] and set(y.tolist()) == {0, 1}
    assert task.notes == task.dataset.notes and any(n.startswith("left out: customer_id") for n in task.notes)
