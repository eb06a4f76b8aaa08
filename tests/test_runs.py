"""A run from a config, its folder, and the run loaded back: predictions on a copy of the folder
after the training data is gone, compared with the in-process model's."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes, load_wine
from sklearn.preprocessing import StandardScaler

import optiloop as ol
from optiloop.config import resolve
from optiloop.datasets import split
from optiloop.preprocessing import Preprocessing
from optiloop.runs import RunFolder, TrainingRun, build_task, ensure_empty, free_name
from optiloop.sources import load_dataset

CULTIVARS = np.array(["barolo", "grignolino", "barbera"])


def wine_csv(path: Path) -> pd.DataFrame:
    """Wine with text labels in a column named 'cultivar' (not last): original values to get back."""
    b = load_wine(as_frame=True)
    df = b.data.copy()
    df.insert(3, "cultivar", CULTIVARS[b.target.to_numpy()])
    df.to_csv(path, index=False)
    return df


def diabetes_csv(path: Path) -> pd.DataFrame:
    b = load_diabetes(as_frame=True, scaled=False)
    df = b.data.copy()
    df["progression"] = b.target
    df.to_csv(path, index=False)
    return df


def train(tmp_path: Path, data: Path, *sets: str, out: str = "run") -> TrainingRun:
    cfg = resolve(sets=[f"data.name={data}", "train.epochs=4", "train.checkpoint_seconds=0", *sets])
    run = TrainingRun(cfg, out=tmp_path / out)
    run.train(progress=False)
    return run


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    """One run on the wine CSV with text labels, trained once for the tests that only read it:
    (the TrainingRun, its folder, the data as a DataFrame)."""
    base = tmp_path_factory.mktemp("wine-run")
    df = wine_csv(base / "wine.csv")
    run = train(base, base / "wine.csv", "data.target=cultivar")
    return run, base / "run", df


def moved(folder: Path, tmp_path: Path, *gone: Path) -> Path:
    """A copy of the run folder elsewhere, with the training data deleted."""
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / folder.name)
    for f in gone:
        f.unlink()
    return copy


def test_build_task_fits_the_preprocessing_on_the_train_split_only():
    task = build_task(resolve(sets=["data.name=wine"]))
    raw, prep = task.raw, task.preprocessing
    reference = StandardScaler().fit(raw.X_train)  # scikit-learn's own, on the train rows only
    np.testing.assert_array_equal(prep.x_scaler.mean_, reference.mean_)
    np.testing.assert_array_equal(task.train_data[0], reference.transform(raw.X_train))
    assert np.allclose(task.train_data[0].mean(axis=0), 0, atol=1e-5)
    assert not np.allclose(task.val_data[0].mean(axis=0), 0, atol=1e-3)  # val keeps its own offset
    assert task.config["data"]["task"] == "classification"
    assert (task.loss, task.metrics) == ("cross_entropy", ["accuracy"])


def test_regression_target_is_standardized_for_training():
    task = build_task(resolve(sets=["data.name=diabetes"]))
    y = task.raw.y_train
    assert abs(task.train_data[1].mean()) < 1e-5 and task.preprocessing.y_scaler.scale_[0] > 1
    np.testing.assert_allclose(task.train_data[1], (y - y.mean()) / y.std(), rtol=1e-5, atol=1e-5)


def test_standardize_off_keeps_raw_values():
    task = build_task(resolve(sets=["data.name=diabetes", "data.standardize=false"]))
    assert task.preprocessing.x_scaler is None and task.preprocessing.y_scaler is None
    np.testing.assert_array_equal(task.train_data[0], task.raw.X_train)


def test_preprocessing_round_trips_as_plain_data():
    ds = load_dataset("diabetes")
    raw = split(ds)
    prep = Preprocessing.fit(ds, raw.X_train, raw.y_train)
    state = prep.state_dict()
    # plain data only: lists, numbers, strings (what torch.load(weights_only=True) accepts)
    assert isinstance(state["x_scaler"]["mean"], list) and isinstance(state["x_scaler"]["mean"][0], float)
    again = Preprocessing.from_state_dict(state)
    np.testing.assert_array_equal(again.inputs(raw.X_val), prep.inputs(raw.X_val))
    np.testing.assert_array_equal(again.targets(raw.y_val), prep.targets(raw.y_val))


def test_checkpoint_carries_what_applying_the_model_needs_and_loads_weights_only(wine_run):
    run, folder, df = wine_run
    ckpt = torch.load(folder / "best.pt", weights_only=True)  # no code, no sklearn pickles
    info = ckpt["config"]["inference"]
    assert info["preprocessing"]["classes"] == ["barbera", "barolo", "grignolino"]
    assert info["preprocessing"]["features"] == [c for c in df.columns if c != "cultivar"]
    assert info["preprocessing"]["target"] == "cultivar" and info["preprocessing"]["task"] == "classification"
    assert info["model"] == {"name": "mlp", "in_features": 13, "out_features": 3,
                             "options": {"hidden": [128], "dropout": 0.0}}
    with zipfile.ZipFile(folder / "best.pt") as z:
        assert not any(b"sklearn" in z.read(n) for n in z.namelist() if n.endswith(".pkl"))
    assert ckpt["config"]["optimizer"] == run.cfg["optimizer"]


def test_load_predicts_on_a_moved_run_after_the_data_is_gone(tmp_path):
    data = tmp_path / "wine.csv"
    df = wine_csv(data)
    run = train(tmp_path, data, "data.target=cultivar")
    # what the in-process model says, on inputs standardized independently with scikit-learn
    raw = split(load_dataset(str(data), target="cultivar"), val_fraction=0.2, seed=0)
    features = [c for c in df.columns if c != "cultivar"]
    X = StandardScaler().fit(raw.X_train).transform(df[features].to_numpy(np.float32))
    with torch.no_grad():
        expected = torch.softmax(run.model.cpu().eval()(torch.from_numpy(X.astype(np.float32))), 1).numpy()

    copy = moved(tmp_path / "run", tmp_path, data)
    model = ol.load(copy, checkpoint="last")  # last.pt holds the in-process model's final weights
    shuffled = df[list(reversed(df.columns))].assign(extra=1.0, note="not a feature")
    proba = model.predict_proba(shuffled)
    np.testing.assert_allclose(proba, expected, rtol=1e-5, atol=1e-6)
    assert model.classes == ["barbera", "barolo", "grignolino"]
    labels = model.predict(shuffled)
    assert list(labels) == [model.classes[i] for i in expected.argmax(1)]  # the user's own values
    assert set(labels) <= set(CULTIVARS)
    # an array is taken by position, in training order; a dict of columns by name
    np.testing.assert_allclose(model.predict_proba(df[features].to_numpy()), proba, rtol=1e-6)
    np.testing.assert_allclose(model.predict_proba({f: df[f].tolist() for f in features}), proba, rtol=1e-6)
    assert model.evaluate(shuffled, df["cultivar"])["acc"] == pytest.approx(
        float(np.mean(labels == df["cultivar"].to_numpy())))


def test_regression_predictions_and_eval_are_in_the_targets_units(tmp_path):
    data = tmp_path / "diabetes.csv"
    df = diabetes_csv(data)
    run = train(tmp_path, data)
    features = list(df.columns[:-1])
    raw = split(load_dataset(str(data)), val_fraction=0.2, seed=0)
    x_scaler = StandardScaler().fit(raw.X_train)
    y_mean, y_std = raw.y_train.astype(np.float64).mean(), raw.y_train.astype(np.float64).std()
    with torch.no_grad():
        out = run.model.cpu().eval()(torch.from_numpy(x_scaler.transform(df[features].to_numpy(np.float32))))
    expected = out.numpy()[:, 0].astype(np.float64) * y_std + y_mean

    model = ol.load(moved(tmp_path / "run", tmp_path, data), checkpoint="last")
    got = model.predict(df.sample(frac=1.0, axis=1, random_state=0))  # columns in another order
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert 25 < got.mean() < 350  # the target's own range (progression 25..346), not standardized
    results = model.evaluate(df[features], df["progression"])
    assert results["mae"] == pytest.approx(np.abs(got - df["progression"].to_numpy()).mean(), rel=1e-4)
    with pytest.raises(ol.OptiloopError, match="predict_proba is for classification"):
        model.predict_proba(df)


@pytest.mark.parametrize(("rows", "needle"), [
    (lambda df: df.drop(columns=["alcohol", "ash"]), "missing feature columns alcohol, ash"),
    (lambda df: df.assign(hue="dark"), "column 'hue' is not numeric"),
    (lambda df: df.assign(hue=np.inf), "column 'hue' has missing, NaN or infinite"),  # (an empty cell is filled)
    (lambda df: df.drop(columns=["cultivar"]).to_numpy()[:, :5], "5 columns, but the run takes 13"),
])
def test_bad_rows_are_one_line_naming_the_problem(wine_run, rows, needle):
    _, folder, df = wine_run
    with pytest.raises(ol.OptiloopError) as e:
        ol.load(folder).predict(rows(df))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_eval_labels_outside_the_runs_classes_are_refused(wine_run):
    _, folder, df = wine_run
    with pytest.raises(ol.OptiloopError, match="label 'nebbiolo' is not among the run's classes"):
        ol.load(folder).evaluate(df, df["cultivar"].replace("barolo", "nebbiolo"))


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ol.OptiloopError, match="no run folder or checkpoint"):
        ol.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ol.OptiloopError, match="holds no best.pt or last.pt"):
        ol.load(tmp_path / "empty")


def test_run_folders_are_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(ol.OptiloopError, match="out .*taken already exists"):
        ensure_empty(tmp_path / "taken")
    ensure_empty(tmp_path / "new")  # absent: fine
    assert free_name(tmp_path / "taken") == tmp_path / "taken-2"
    a = RunFolder.create(tmp_path / "taken", unique=True)
    b = RunFolder.create(tmp_path / "taken", unique=True)
    assert (a.path.name, b.path.name) == ("taken-2", "taken-3")
    assert (tmp_path / "taken" / "x").read_text() == "keep"


def test_training_run_checks_everything_before_writing(tmp_path):
    bad = resolve(sets=["data.name=wine", "optimizer.momentum=0.9"])  # adamw takes no momentum
    with pytest.raises(ol.OptiloopError, match="momentum"):
        TrainingRun(bad, out=tmp_path / "r")
    with pytest.raises(ol.OptiloopError, match="train.monitor"):
        TrainingRun(resolve(sets=["data.name=wine", "train.monitor=val_f1"]), out=tmp_path / "r")
    assert list(tmp_path.iterdir()) == []
