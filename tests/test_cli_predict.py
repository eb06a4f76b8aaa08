"""``optiloop predict`` and ``optiloop eval`` by subprocess, as a user runs them (and, where a
test calls the command again, in this process: each start-up imports torch and its compiler stack
anew): on a copy of a run folder after the training data is deleted, with columns reordered and
extra columns present, against the in-process model's predictions."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HANG
from sklearn.datasets import load_diabetes, load_wine
from sklearn.preprocessing import StandardScaler

from optiloop.cli import main
from optiloop.datasets import split
from optiloop.models import build_model
from optiloop.sources import load_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
CULTIVARS = np.array(["barolo", "grignolino", "barbera"])


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def in_process_outputs(run: Path, data: Path, target: str, rows: pd.DataFrame) -> np.ndarray:
    """The model as this process rebuilds it, independently of optiloop.runs: weights from best.pt
    (weights_only), inputs standardized by a StandardScaler fitted here on the same train split."""
    ckpt = torch.load(run / "best.pt", weights_only=True)
    cfg = ckpt["config"]
    ds = load_dataset(str(data), target=target)
    raw = split(ds, val_fraction=cfg["data"]["val_fraction"], seed=cfg["data"]["seed"])
    model = build_model("mlp", len(ds.features), ds.out_features, hidden=cfg["model"]["hidden"])
    model.load_state_dict(ckpt["model"])
    X = StandardScaler().fit(raw.X_train).transform(rows[ds.features].to_numpy(np.float32))
    with torch.no_grad():
        return model.eval()(torch.from_numpy(X.astype(np.float32))).numpy()


@contextlib.contextmanager
def _chdir(path: Path):  # contextlib.chdir, which Python 3.10 lacks
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def trained_wine(tmp_path_factory):
    """A run trained in-process on a CSV with text labels; then the CSV is gone and the run moved.
    Trained once for the module; the tests only read it."""
    base = tmp_path_factory.mktemp("wine")
    b = load_wine(as_frame=True)
    df = b.data.copy()
    df.insert(0, "cultivar", CULTIVARS[b.target.to_numpy()])
    data = base / "wine.csv"
    df.to_csv(data, index=False)
    with _chdir(base), contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--data", "wine.csv", "--target", "cultivar", "--epochs", "3", "--out", "run"]) == 0
    expected = in_process_outputs(base / "run", data, "cultivar", df)
    copy = shutil.copytree(base / "run", base / "elsewhere" / "run")
    shutil.rmtree(base / "run")
    data.unlink()
    return copy, df, expected


@pytest.fixture
def wine_run(trained_wine, tmp_path):
    """The trained run, and new.csv in tmp_path: its rows reordered, with extra columns."""
    copy, df, expected = trained_wine
    new = df[list(reversed(df.columns))].assign(batch="2024-A", extra=7.5)  # reordered, extra columns
    new.to_csv(tmp_path / "new.csv", index=False)
    return copy, df.copy(), expected


def in_process(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``optiloop ARGS`` run by this process (the CLI's own error handling, no start-up to pay)."""
    out, err = io.StringIO(), io.StringIO()
    with _chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_predict_writes_original_labels_and_probabilities_of_the_in_process_model(tmp_path, wine_run):
    run, df, logits = wine_run
    proc = cli(tmp_path, "predict", str(run), "--data", "new.csv", "--out", "predictions.csv")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(df)} predictions" in proc.stdout
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = sorted(CULTIVARS)  # the run's class order: the sorted original values
    assert list(rows[0]) == ["cultivar", *(f"proba_{c}" for c in classes)]
    assert len(rows) == len(df)  # one row per input, in input order
    proba = np.array([[float(r[f"proba_{c}"]) for c in classes] for r in rows])
    expected = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-7)
    assert [r["cultivar"] for r in rows] == [classes[i] for i in logits.argmax(1)]

    # without --out: the same table on stdout; the label column in the input is optional
    df.drop(columns=["cultivar"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    printed = in_process(tmp_path, "predict", str(run), "--data", "unlabelled.csv")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.replace("\r\n", "\n") == (tmp_path / "predictions.csv").read_text().replace("\r\n", "\n")


@pytest.mark.slow
def test_eval_on_new_rows_after_the_data_is_gone(tmp_path, wine_run):
    run, df, logits = wine_run
    proc = cli(tmp_path, "eval", str(run), "--data", "new.csv", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    classes = sorted(CULTIVARS)
    truth = np.array([classes.index(c) for c in df["cultivar"]])
    assert got["samples"] == len(df)
    assert got["acc"] == pytest.approx(float(np.mean(logits.argmax(1) == truth)), abs=1e-6)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(truth)).item()
    assert got["loss"] == pytest.approx(loss, rel=1e-4)
    # the run's own validation split needs its data: one line saying so, and what to do instead
    one_line_error(in_process(tmp_path, "eval", str(run)), "wine.csv", "--data")


@pytest.mark.parametrize(("edit", "needles"), [
    (lambda df: df.drop(columns=["alcohol", "hue"]), ["--data new.csv", "missing feature columns", "alcohol, hue"]),
    (lambda df: df.assign(magnesium="lots"), ["--data new.csv", "column 'magnesium' is not numeric"]),
])
def test_predict_bad_rows_are_one_line_and_write_nothing(tmp_path, wine_run, edit, needles):
    run, df, _ = wine_run
    edit(df).to_csv(tmp_path / "new.csv", index=False)
    one_line_error(in_process(tmp_path, "predict", str(run), "--data", "new.csv", "--out", "p.csv"), *needles)
    assert not (tmp_path / "p.csv").exists()


def test_predict_refuses_to_overwrite_and_names_bad_runs(tmp_path, wine_run):
    run, _, _ = wine_run
    (tmp_path / "p.csv").write_text("keep")
    one_line_error(in_process(tmp_path, "predict", str(run), "--data", "new.csv", "--out", "p.csv"), "p.csv",
                   "exists")
    assert (tmp_path / "p.csv").read_text() == "keep"
    one_line_error(in_process(tmp_path, "predict", "nowhere", "--data", "new.csv"), "nowhere")


@pytest.mark.slow
def test_regression_predict_and_eval_in_the_targets_units(tmp_path, monkeypatch):
    b = load_diabetes(as_frame=True, scaled=False)
    df = b.data.assign(progression=b.target)
    df.to_csv(tmp_path / "diabetes.csv", index=False)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "diabetes.csv", "--epochs", "3", "--out", "run"]) == 0
    out = in_process_outputs(tmp_path / "run", tmp_path / "diabetes.csv", "progression", df)[:, 0]
    y = split(load_dataset("diabetes.csv"), val_fraction=0.2, seed=0).y_train.astype(np.float64)
    expected = out.astype(np.float64) * y.std() + y.mean()
    (tmp_path / "diabetes.csv").unlink()
    df[list(reversed(df.columns))].to_csv(tmp_path / "new.csv", index=False)

    proc = cli(tmp_path, "predict", "run", "--data", "new.csv")
    assert proc.returncode == 0, proc.stderr
    got = np.array([float(r["progression"]) for r in csv.DictReader(proc.stdout.splitlines())])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    ev = in_process(tmp_path, "eval", "run", "--data", "new.csv", "--json")
    assert ev.returncode == 0, ev.stderr
    results = json.loads(ev.stdout)
    assert results["units"] == "the target's original units"
    assert results["mae"] == pytest.approx(np.abs(got - df["progression"].to_numpy()).mean(), rel=1e-4)
    one_line_error(in_process(tmp_path, "eval", "run", "--data", "new.csv", "--target", "nope"),
                   "no label column 'nope'")
