"""What a run shows afterwards, by the command line: steps.csv and per-step curves, TensorBoard
event files, the confusion matrix and per-class figures of ``train`` and ``eval``, and the
schedule preview's per-step default."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from matplotlib.image import imread

import optiloop as ol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PNG = b"\x89PNG\r\n\x1a\n"


def assert_picture(path, min_width=400):
    assert path.read_bytes()[:8] == PNG
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_width and img.shape[0] >= 300
    assert img[..., :3].std() > 0.05  # not blank


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_train_writes_steps_class_figures_and_tensorboard(run_main, tmp_path):
    tensorboard = pytest.importorskip("tensorboard")  # noqa: F841 - the package the flag needs
    code, out, err = run_main("train", "--data", "wine", "--scheduler", "onecycle", "--epochs", "3",
                              "--tensorboard", "--grad-norm", "--out", "r")
    assert code == 0, err
    run = tmp_path / "r"
    assert "TensorBoard: tensorboard --logdir r/tensorboard" in out
    history = ol.History.from_csv(run / "history.csv")
    steps = ol.History.from_csv(run / "steps.csv")
    # wine: 142 training rows in batches of 64, 64, 14 -> 3 optimizer steps per epoch
    assert steps["step"] == list(range(1, 10)) and steps.keys() == ["step", "epoch", "loss", "lr", "grad_norm"]
    assert steps["lr"] == pytest.approx(ol.preview_schedule("onecycle", lr=1e-3, epochs=3, steps_per_epoch=3,
                                                            per_step=True))
    sizes = [64, 64, 14]
    for e in range(3):  # each epoch's train_loss is its steps' losses weighted by batch size
        losses = steps["loss"][3 * e: 3 * e + 3]
        assert sum(w * v for w, v in zip(sizes, losses)) / 142 == pytest.approx(history["train_loss"][e], rel=1e-5)
    assert all(g > 0 for g in steps["grad_norm"])
    assert_picture(run / "curves.png", 1500)  # loss, accuracy, per-step LR, gradient norm

    # The confusion matrix of best.pt on the validation split agrees with the run's own val_acc.
    summary = json.loads((run / "summary.json").read_text())
    matrix = np.array([[int(v) for v in row[1:]] for row in read_csv(run / "confusion_matrix.csv")[1:]])
    assert read_csv(run / "confusion_matrix.csv")[0] == ["true \\ predicted", "0", "1", "2"]
    assert matrix.sum() == summary["data"]["val_samples"] == 36
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["best"]["val_acc"])
    classes = summary["validation_classes"]
    assert classes["epoch"] == summary["best"]["epoch"] and classes["confusion_matrix"] == matrix.tolist()
    per_class = read_csv(run / "per_class.csv")
    assert per_class[0] == ["class", "precision", "recall", "f1", "support"]
    for i, row in enumerate(per_class[1:]):
        assert float(row[2]) == pytest.approx(matrix[i, i] / matrix[i].sum())  # recall
        if matrix[:, i].sum():
            assert float(row[1]) == pytest.approx(matrix[i, i] / matrix[:, i].sum())  # precision
        assert int(row[4]) == matrix[i].sum()
    assert_picture(run / "confusion_matrix.png")

    # TensorBoard: every epoch figure and every step, in the run folder.
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("epoch/val_acc")] == pytest.approx(history["val_acc"], rel=1e-6)
    assert [e.step for e in acc.Scalars("step/grad_norm")] == steps["step"]
    # ... and its HParams tab: the run by its resolved config (config.toml), the text too.
    from test_loggers import hparams_of

    from optiloop.loggers import flatten, param_text

    values, metrics, status, text = hparams_of(run / "tensorboard")
    config = flatten(tomllib.loads((run / "config.toml").read_text()))
    assert values == {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else param_text(v)
                      for k, v in config.items()}  # numbers come back as doubles: 3.0 == 3
    assert "epoch/val_acc" in metrics and status == "STATUS_SUCCESS"
    assert tomllib.loads("\n".join(line[4:] for line in text.splitlines())) == \
        tomllib.loads((run / "config.toml").read_text())


def test_eval_prints_and_writes_the_class_figures(run_main, tmp_path, trained_runs):
    w = str(trained_runs["adamw"])  # wine, 2 epochs
    code, out, err = run_main("eval", w, "--json", "--out", "ev")
    assert code == 0, err
    got = json.loads(out)
    matrix = np.array(got["classes"]["confusion_matrix"])
    assert matrix.sum() == got["samples"] == 36
    assert np.trace(matrix) / matrix.sum() == pytest.approx(got["acc"])
    recalls = [c["recall"] for c in got["classes"]["per_class"]]
    assert recalls == pytest.approx(list(np.diag(matrix) / matrix.sum(axis=1)))
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == [
        "confusion_matrix.csv", "confusion_matrix.png", "eval.json", "per_class.csv"]
    assert json.loads((tmp_path / "ev" / "eval.json").read_text()) == got
    assert_picture(tmp_path / "ev" / "confusion_matrix.png")

    code, out, err = run_main("eval", w)  # the terminal: per-class table and the matrix
    assert code == 0 and "precision  recall" in out and "rows: true class, columns: predicted" in out
    code, _, err = run_main("eval", w, "--out", "ev")  # never overwritten
    assert code == 2 and "ev already exists" in err and len(err.strip().splitlines()) == 1


def test_regression_runs_have_no_confusion_matrix(run_main, tmp_path):
    code, _, err = run_main("train", "--data", "diabetes", "--epochs", "1", "--out", "reg")
    assert code == 0, err
    files = {p.name for p in (tmp_path / "reg").iterdir()}
    assert "steps.csv" in files and not files & {"confusion_matrix.csv", "confusion_matrix.png", "per_class.csv"}
    code, out, err = run_main("eval", "reg")
    assert code == 0 and "confusion" not in out


def test_train_tensorboard_without_the_package_is_one_line_and_writes_nothing(run_main, tmp_path, monkeypatch):
    import optiloop.loggers

    def missing():
        raise ol.OptiloopError("TensorBoard logging needs the tensorboard package: pip install tensorboard")

    monkeypatch.setattr(optiloop.loggers, "require_tensorboard", missing)
    code, _, err = run_main("train", "--data", "wine", "--epochs", "1", "--tensorboard")
    assert code == 2 and err.startswith("error: train.tensorboard: ") and "pip install tensorboard" in err
    assert list(tmp_path.iterdir()) == []


def test_schedule_previews_per_step_schedules_per_step_by_default(run_main, tmp_path):
    code, out, err = run_main("schedule", "onecycle", "step", "--epochs", "6", "--plot", "p.png")
    assert code == 0, err
    assert "onecycle: the LR moves every optimizer step" in out and "previewed with 100 steps per epoch" in out
    table = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    onecycle = ol.preview_schedule("onecycle", lr=0.1, epochs=6, steps_per_epoch=100)  # each epoch's first step
    assert [float(r[1]) for r in table] == pytest.approx(onecycle, rel=1e-3)
    assert_picture(tmp_path / "p.png")
    code, out, _ = run_main("schedule", "step", "cosine", "--epochs", "6")  # epoch schedules: one value per epoch
    assert code == 0 and "previewed with" not in out


def test_class_figures_equal_scikit_learns():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from optiloop.classification import class_report

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    pred = np.where((rng.random(300) < 0.6) & (truth < 4), truth, rng.integers(0, 4, 300))  # never class 4
    report = class_report(truth, pred, list("abcde"))
    np.testing.assert_array_equal(report.matrix, confusion_matrix(truth, pred, labels=range(5)))
    expected = precision_recall_fscore_support(truth, pred, labels=range(5), zero_division=0)
    for got, want in zip((report.precision, report.recall, report.f1, report.support), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert report.precision[4] == 0.0 and report.accuracy == pytest.approx(np.mean(truth == pred))
    with pytest.raises(ol.OptiloopError, match="class ids must lie in 0..4"):
        class_report([0, 5], [0, 1], list("abcde"))
