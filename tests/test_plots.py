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


# --- what each picture draws: series counted on the figure the function returns ------------------
import numpy as np  # noqa: E402
import torch  # noqa: E402

import optiloop as ol  # noqa: E402
from optiloop.plots import plot_confusion, plot_lr_sensitivity, plot_overlay  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def assert_picture(path, min_width=500):
    """A real PNG a person can open, with something drawn on it."""
    assert path.read_bytes()[:8] == PNG
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_width and img.shape[0] >= 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def _fit(scheduler, epochs=4, **kw):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return ol.fit(net, (X, y), val_data=(X, y), optimizer="sgd", lr=0.1, scheduler=scheduler, epochs=epochs,
                  batch_size=10, metrics=["accuracy"], progress=False, seed=0, **kw)


def _panel(fig, title_start):
    return next(ax for ax in fig.axes if ax.get_title().startswith(title_start))


def test_curves_of_a_per_step_schedule_draw_per_step_lr_and_loss(tmp_path):
    h = _fit("onecycle", callbacks=[ol.StepHistory(grad_norm=True)])
    fig = plot_history(h, tmp_path / "c.png", best_epoch=2)
    assert_picture(tmp_path / "c.png", 1500)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate (per step)", "gradient norm"]
    loss = _panel(fig, "loss")
    assert [line.get_label() for line in loss.lines] == ["train (per step)", "train", "val", "best epoch (2)"]
    assert len(loss.lines[0].get_xdata()) == 24  # 6 steps x 4 epochs
    lr = _panel(fig, "learning rate")
    (curve, best) = lr.lines
    assert curve.get_drawstyle() == "default" and list(curve.get_ydata()) == h.steps["lr"]  # a line, not stairs
    assert lr.get_yscale() == "linear"
    assert list(curve.get_xdata()) == pytest.approx([s / 6 for s in range(1, 25)])
    assert len(_panel(fig, "gradient norm").lines) == 2  # the norms and the best-epoch marker
    assert _panel(plot_history(h, tmp_path / "log.png", lr_log=True), "learning rate").get_yscale() == "log"


def test_curves_of_an_epoch_schedule_draw_the_lr_as_the_steps_it_is(tmp_path):
    h = _fit({"name": "step", "step_size": 2, "gamma": 0.1}, callbacks=[ol.StepHistory()])
    fig = plot_history(h, tmp_path / "c.png")
    assert_picture(tmp_path / "c.png", 1000)
    lr = _panel(fig, "learning rate (per epoch)")
    (stairs,) = lr.lines
    assert stairs.get_drawstyle() == "steps-post"
    assert list(stairs.get_xdata()) == [0, 1, 2, 3, 4]  # epoch e's LR held from e - 1 to e
    assert list(stairs.get_ydata()) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01])
    assert len(_panel(fig, "loss").lines) == 2  # train and val per epoch: no per-step loss for an epoch schedule


def test_schedule_preview_draws_steps_as_stairs_and_per_step_curves_as_lines(tmp_path):
    spe = 10
    warm = ol.preview_schedule("cosine", lr=0.1, epochs=6, steps_per_epoch=spe, per_step=True, warmup_epochs=2)
    step = ol.preview_schedule("step", lr=0.1, epochs=6, steps_per_epoch=spe, per_step=True, step_size=2)
    one = ol.preview_schedule("onecycle", lr=0.1, epochs=6, steps_per_epoch=spe, per_step=True)
    fig = plot_schedules({"cosine + warmup": warm, "step": step, "onecycle": one}, tmp_path / "s.png",
                         steps_per_epoch=spe)
    assert_picture(tmp_path / "s.png")
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and ax.get_yscale() == "linear"
    warm_line, step_line, one_line = ax.lines
    assert step_line.get_drawstyle() == "steps-post" and len(step_line.get_xdata()) == 7  # one value per epoch
    assert one_line.get_drawstyle() == "default" and len(one_line.get_xdata()) == 60  # every step
    # The warmup on a linear axis is a straight line: equal rises per step (in the first epoch, before the
    # cosine underneath takes its first step and the slope follows it). Step 0 trains at lr / W like
    # step 1 (transformers' convention, without its zero-LR first step), so the line rises from step 1.
    ys = warm_line.get_ydata()
    rises = np.diff(ys[1:spe])
    assert warm_line.get_drawstyle() == "default" and ys[0] == pytest.approx(ys[1]) == pytest.approx(0.1 / 20)
    assert rises[0] > 0 and np.allclose(rises, rises[0])
    assert plot_schedules({"a": one}, tmp_path / "l.png", steps_per_epoch=spe, log=True).axes[0].get_yscale() == "log"


def test_confusion_matrix_picture(tmp_path):
    m = [[5, 1, 0], [0, 7, 2], [1, 0, 9]]
    fig = plot_confusion(m, ["cat", "dog", "fox"], tmp_path / "cm.png", title="t")
    assert_picture(tmp_path / "cm.png", 300)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and [t.get_text() for t in ax.texts] == [str(v) for row in m for v in row]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "fox"]
    # colour = share of the row (the diagonal is each class's recall)
    assert ax.images[0].get_array()[1, 1] == pytest.approx(7 / 9)
    with pytest.raises(OptiloopError, match="square"):
        plot_confusion([[1, 2]], ["a"], tmp_path / "bad.png")


def test_overlay_and_lr_sensitivity_pictures(tmp_path):
    fig = plot_overlay({"sgd": [[1.0, 0.5, 0.4]], "adam": [[1.0, 0.3, 0.2], [0.9, 0.4, 0.3]]}, tmp_path / "o.png",
                       ylabel="validation loss")
    assert_picture(tmp_path / "o.png")
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[0].collections) == 1  # adam's two seeds: a band
    fig = plot_lr_sensitivity({"sgd": [(0.01, 0.8, 0.01), (0.1, 0.9, 0.02), (1.0, 0.5, 0.1)],
                               "adam": [(1e-3, 0.85, 0.0)]}, tmp_path / "s.png", ylabel="val_acc",
                              chosen={"sgd": 0.1, "adam": 1e-3})
    assert_picture(tmp_path / "s.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_legend().get_texts()] == ["sgd", "adam"]
    filled = [line for line in ax.lines if line.get_markersize() == 10]
    assert [list(line.get_xdata()) for line in filled] == [[0.1], [1e-3]]  # the chosen LRs
