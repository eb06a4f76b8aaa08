"""Plots: real PNGs from a History and from LR curves."""

from __future__ import annotations

import pytest
from matplotlib.image import imread

from optiloop.errors import OptiloopError
from optiloop.history import History
from optiloop.plots import plot_history, plot_schedules


def _rows(n=5):
    return [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 20, "val_loss": 1.2 / e,
             "val_acc": 0.45 + e / 20, "lr": 0.1 * 0.5 ** e, "seconds": 0.1}
            for e in range(1, n + 1)]


def test_history_plot_has_loss_metric_and_lr_panels(tmp_path):
    p = tmp_path / "c.png"
    History(_rows()).plot(p)  # History.plot goes through optiloop.plots
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(p)
    assert img.shape[1] > 3 * img.shape[0] // 2  # three panels side by side: wide
    plot_history(History([{"epoch": 1, "train_loss": 1.0}]), tmp_path / "one.png", best_epoch=1)
    assert imread(tmp_path / "one.png").shape[1] < img.shape[1]  # one panel only


def test_schedule_plot_and_empty_inputs(tmp_path):
    plot_schedules({"a": [0.1, 0.01], "b": [0.1, 0.1]}, tmp_path / "s.png", note="a note")
    assert imread(tmp_path / "s.png").ndim == 3
    with pytest.raises(OptiloopError):
        plot_schedules({}, tmp_path / "x.png")
    with pytest.raises(OptiloopError):
        plot_history(History(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
