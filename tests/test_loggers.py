"""Loggers: per-step values collected on the device without a host sync per step, written once
per epoch; StepHistory's rows checked against the loop's own figures; TensorBoard's event files
read back with tensorboard's own reader and checked against the History."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import data, model, quiet
from test_loop import count_syncs_in_step_loop  # the suite's own sync counter

import optiloop as ol
from optiloop.loggers import Logger


def test_step_history_costs_no_host_sync_in_the_step_loop(monkeypatch):
    every_step = ol.StepHistory(grad_norm=True)
    assert count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", callbacks=[every_step]) == []
    assert len(every_step._history.steps) == 16  # and it did record: 2 epochs of 8 steps
    assert count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", grad_accum=2, clip_grad_norm=1.0,
                                    callbacks=[ol.StepHistory(every=3, grad_norm=True)]) == []


def test_the_sync_counter_sees_a_logger_that_reads_every_step(monkeypatch):
    class Eager(Logger):  # flush_every=1 hands the steps over at every step: one read each
        pass

    calls = count_syncs_in_step_loop(monkeypatch, callbacks=[Eager(flush_every=1)])
    assert len(calls) >= 16


def test_step_rows_are_the_loops_own_figures():
    X, y = data(n=48)  # 6 equal batches of 8: an epoch's train_loss is the mean of its step losses
    run = dict(optimizer="sgd", lr=0.5, scheduler="onecycle", epochs=3, batch_size=8, metrics=["accuracy"])
    # Reference: clipping at a norm no gradient reaches makes the loop compute the norm itself.
    ref = ol.fit(model(), (X, y), clip_grad_norm=1e9, callbacks=[ol.StepHistory()], **quiet(**run))
    h = ol.fit(model(), (X, y), callbacks=[ol.StepHistory(grad_norm=True)], **quiet(**run))
    steps = h.steps
    assert steps["step"] == list(range(1, 19)) and steps["epoch"] == pytest.approx([s / 6 for s in range(1, 19)])
    assert steps["lr"] == pytest.approx(ol.preview_schedule("onecycle", lr=0.5, epochs=3, steps_per_epoch=6,
                                                            per_step=True))
    assert steps["loss"] == ref.steps["loss"]  # the norm is only read: training is unchanged
    assert steps["grad_norm"] == pytest.approx(ref.steps["grad_norm"], rel=1e-5)  # ours == clip_grad_norm_'s
    assert all(g > 0 for g in steps["grad_norm"])
    for e in range(3):
        assert sum(steps["loss"][6 * e: 6 * e + 6]) / 6 == pytest.approx(h["train_loss"][e], rel=1e-5)
    assert steps.steps_per_epoch() == 6


def test_memory_is_bounded_by_every_and_max_points():
    X, y = data(n=64)  # 8 steps per epoch, 5 epochs: 40 steps
    kw = quiet(optimizer="sgd", lr=0.1, epochs=5, batch_size=8)
    thinned = ol.fit(model(), (X, y), callbacks=[ol.StepHistory(every=3)], **kw).steps
    assert thinned["step"] == list(range(1, 41, 3))
    capped = ol.fit(model(), (X, y), callbacks=[ol.StepHistory(max_points=10)], **kw).steps
    assert capped["step"] == list(range(1, 41, 4)) and len(capped) == 10
    with pytest.raises(ol.OptiloopError, match="every must be an integer >= 1"):
        ol.StepHistory(every=0)


def test_param_groups_at_different_lrs_get_a_column_each():
    X, y = data()
    net = model()
    opt = torch.optim.SGD([{"params": net[0].parameters(), "lr": 0.1},
                           {"params": net[2].parameters(), "lr": 0.01}])
    h = ol.fit(net, (X, y), optimizer=opt, epochs=1, batch_size=16, callbacks=[ol.StepHistory()], **quiet())
    assert h.steps["lr_group0"] == [0.1] * 3 and h.steps["lr_group1"] == [0.01] * 3
    assert h.steps["lr"] == h.steps["lr_group0"]


def test_resume_mid_epoch_keeps_every_step(tmp_path):
    X, y = data(n=48)
    kw = quiet(optimizer="sgd", lr=0.2, scheduler="cosine", epochs=3, batch_size=8)
    straight = ol.fit(model(), (X, y), callbacks=[ol.StepHistory()], **kw)

    class Crash(ol.Callback):
        def on_step_end(self, state, logs):
            if state.step == 10:  # mid-epoch 2, just after a checkpoint at step 10
                raise RuntimeError("boom")

    ckpt = ol.Checkpoint(tmp_path, monitor=None, every_n_steps=5)
    with pytest.raises(RuntimeError, match="boom"):
        ol.fit(model(), (X, y), callbacks=[ol.StepHistory(), ckpt, Crash()], **kw)
    resumed = ol.fit(model(), (X, y), callbacks=[ol.StepHistory()], resume=str(tmp_path), **kw)
    assert resumed.steps.rows == straight.steps.rows  # bit-exact on the CPU, none lost or doubled


def test_logger_protocol_hands_over_once_per_epoch_and_on_failure():
    calls = []

    class Recorder(Logger):
        def log_steps(self, state, rows, walltimes):
            calls.append(("steps", [r["step"] for r in rows], len(walltimes)))

        def log_epoch(self, state, logs):
            calls.append(("epoch", logs["epoch"], state.step))

        def close(self):
            calls.append(("close",))

    X, y = data(n=32)
    ol.fit(model(), (X, y), epochs=2, batch_size=16, callbacks=[Recorder()], **quiet())
    assert calls == [("steps", [1, 2], 2), ("epoch", 1, 2), ("steps", [3, 4], 2), ("epoch", 2, 4), ("close",)]

    class Fail(ol.Callback):
        order = 95  # after the loggers: step 3 was recorded when this fails

        def on_step_end(self, state, logs):
            if state.step == 3:
                raise ValueError("stop here")

    calls.clear()
    with pytest.raises(ValueError):
        ol.fit(model(), (X, y), epochs=2, batch_size=16, callbacks=[Recorder(), Fail()], **quiet())
    assert calls[-2:] == [("steps", [3], 1), ("close",)]  # the failed epoch's steps still come out


# --- TensorBoard ----------------------------------------------------------------------------------
def _events(log_dir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back_equal_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    X, y = data(n=48)
    h = ol.fit(model(), (X, y), val_data=(X, y), optimizer="sgd", lr=0.3, scheduler="onecycle", epochs=3,
               batch_size=8, metrics=["accuracy"], callbacks=[ol.TensorBoard(tmp_path / "tb", grad_norm=True),
                                                              ol.StepHistory()], **quiet())
    events = _events(tmp_path / "tb")
    epoch_keys = [k for k in h.keys()]
    assert set(events) == {f"epoch/{k}" for k in epoch_keys} | {"step/loss", "step/lr", "step/grad_norm"}
    for key in epoch_keys:  # every logged key, at the step that ended its epoch
        got = events[f"epoch/{key}"]
        assert [e.step for e in got] == [6, 12, 18]
        assert [e.value for e in got] == pytest.approx(h[key], rel=1e-6)  # TensorBoard keeps float32
    for key in ("loss", "lr", "grad_norm"):
        got = events[f"step/{key}"]
        assert [e.step for e in got] == list(range(1, 19))
        assert [e.value for e in got] == pytest.approx(h.steps[key], rel=1e-6)
    # The two loggers computed one norm per step between them; it is the optimizer's gradients'.
    assert all(math.isfinite(v) and v > 0 for v in h.steps["grad_norm"])


def hparams_of(log_dir):
    """What TensorBoard's HParams tab reads from a run's event files, with tensorboard's own reader:
    (the settings, the metric tags, the end status) and the Text tab's ``config``."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    content = {tag: HParamsPluginData.FromString(data) for tag, data in acc.PluginTagToContent("hparams").items()}
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.items()}
    metrics = [m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos]
    status = api_pb2.Status.Name(content["_hparams_/session_end_info"].session_end_info.status)
    text = acc.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()
    return values, metrics, status, text


def test_tensorboard_hparams_hold_the_run_settings_and_its_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from optiloop.loggers import param_text, run_params

    seen = {}

    class Settings(ol.Callback):
        def on_fit_start(self, state, logs):
            seen.update(run_params(state))

    X, y = data(n=48)
    h = ol.fit(model(), (X, y), val_data=(X, y), optimizer={"name": "sgd", "momentum": 0.9}, lr=0.3,
               scheduler="onecycle", epochs=2, batch_size=8, metrics=["accuracy"],
               callbacks=[ol.TensorBoard(tmp_path / "tb"), Settings()], **quiet())
    values, metrics, status, text = hparams_of(tmp_path / "tb")
    # numbers as numbers (the tab sorts and filters them), the rest as config.toml spells it
    assert values == {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else param_text(v)
                      for k, v in seen.items()}
    assert (values["optimizer.name"], values["optimizer.lr"], values["optimizer.momentum"]) == ("sgd", 0.3, 0.9)
    assert (values["scheduler.name"], values["train.epochs"], values["train.metrics"]) == \
        ("onecycle", 2, '["accuracy"]')
    # the tab's metric columns are the epoch figures (it shows each one's last value)
    assert sorted(metrics) == sorted(f"epoch/{k}" for k in h.keys() if k != "epoch")
    assert status == "STATUS_SUCCESS"
    assert "[optimizer]" in text and 'name = "sgd"' in text and "lr = 0.3" in text


def test_tensorboard_costs_no_host_sync_in_the_step_loop(monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    tb = ol.TensorBoard(tmp_path / "tb", grad_norm=True)
    assert count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", callbacks=[tb]) == []
    assert [e.step for e in _events(tmp_path / "tb")["step/loss"]] == list(range(1, 17))


def test_tensorboard_missing_package_is_one_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ol.OptiloopError, match="pip install tensorboard"):
        ol.TensorBoard("unused")
