"""Callbacks with scripted values and no model; ProgressBar and LRMonitor inside fit."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import optiloop as ol


class FakeState(SimpleNamespace):
    def request_stop(self, reason):
        self.stop, self.stop_reason = True, reason


def feed(cb, values, key="val_loss"):
    """Drive a callback with a scripted metric; return the epoch at which it stopped (or None)."""
    state = FakeState(stop=False, stop_reason=None, epoch=0, log_keys=["epoch", key],
                      unwrapped_model=nn.Linear(1, 1))
    cb.on_fit_start(state, {})
    for epoch, v in enumerate(values, start=1):
        state.epoch = epoch
        cb.on_epoch_end(state, {key: v})
        if state.stop:
            return epoch, state.stop_reason
    return None, None


def test_early_stopping_patience():
    epoch, reason = feed(ol.EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.91, 0.5])
    assert epoch == 4 and "not improved for 2 epochs (best 0.9 at epoch 2)" in reason


def test_early_stopping_min_delta_and_max_mode():
    assert feed(ol.EarlyStopping(patience=2, min_delta=0.1), [1.0, 0.95, 0.92])[0] == 3
    assert feed(ol.EarlyStopping(monitor="val_acc", patience=1), [0.5, 0.6, 0.7, 0.65], "val_acc")[0] == 4


def test_early_stopping_never_stops_while_improving():
    assert feed(ol.EarlyStopping(patience=1), [5, 4, 3, 2, 1]) == (None, None)


def test_early_stopping_stops_on_a_nonfinite_monitored_value():
    epoch, reason = feed(ol.EarlyStopping(patience=10), [1.0, float("nan")])
    assert epoch == 2 and "val_loss is nan at epoch 2" in reason


def test_early_stopping_state_round_trip():
    a = ol.EarlyStopping(patience=3)
    feed(a, [1.0, 1.1])
    b = ol.EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    assert (b.wait, b.best_epoch, b.monitor.best) == (1, 1, 1.0)


def test_monitor_auto_mode_and_missing_key():
    assert ol.Monitor("val_loss").mode == "min" and ol.Monitor("val_acc").mode == "max"
    # was a substring guess: val_top1_error -> max, val_iou -> min, val_dice -> min
    assert ol.Monitor("val_top1_error").mode == "min"
    assert ol.Monitor("val_iou").mode == ol.Monitor("val_dice").mode == "max"
    with pytest.raises(ol.OptiloopError, match="cannot tell whether 'val_thing' improves up or down; pass mode="):
        ol.Monitor("val_thing")
    assert ol.Monitor("val_thing", mode="max").mode == "max"
    with pytest.raises(ol.OptiloopError, match="monitor 'val_f1' is never logged; logged keys: epoch, val_loss"):
        ol.Monitor("val_f1").check_available(["epoch", "val_loss"])
    with pytest.raises(ol.OptiloopError, match="unknown mode 'up'"):
        ol.Monitor("val_loss", mode="up")


def test_progress_bar_prints_one_summary_line_per_epoch(capsys):
    X, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    ol.fit(nn.Linear(4, 2), (X, y), val_data=(X, y), epochs=3, batch_size=8, metrics=["accuracy"], seed=0)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3  train_loss ")
    assert "val_acc" in lines[-1]


def test_progress_bar_running_loss_is_time_throttled(monkeypatch):
    reads = []
    real = ol.TrainState.running_logs
    monkeypatch.setattr(ol.TrainState, "running_logs", lambda self: reads.append(1) or real(self))
    X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    ol.fit(nn.Linear(4, 2), (X, y), epochs=1, batch_size=2, seed=0, callbacks=[ol.ProgressBar(refresh=3600)])
    assert reads == []  # 32 steps, none read the device: the timer never fired
    ol.fit(nn.Linear(4, 2), (X, y), epochs=1, batch_size=2, seed=0, callbacks=[ol.ProgressBar(refresh=0)])
    assert len(reads) == 32


def test_lr_monitor_logs_every_group():
    X, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    h = ol.fit(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (X, y), optimizer="adamw", lr=0.01,
               weight_decay=0.1, epochs=2, progress=False, callbacks=[ol.LRMonitor()])
    assert h["lr_group0"] == h["lr_group1"] == [0.01, 0.01]


def test_every_lr_in_the_logs_is_taken_at_one_moment():
    """lr, lr_group<i> and the per-step LRs are the LR the step trained with (was: lr_group<i> held
    the next epoch's LR, [0.05, 0.025, 0.0125] beside lr [0.1, 0.05, 0.025])."""
    X, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    lrm = ol.LRMonitor(per_step=True)
    seen = []

    class StepLRs(ol.Callback):
        def on_step_end(self, state, logs):
            seen.append(list(logs["lr"]))

    h = ol.fit(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (X, y), optimizer="adamw", lr=0.1,
               weight_decay=0.1, epochs=3, batch_size=8, progress=False, callbacks=[lrm, StepLRs()],
               scheduler={"name": "step", "step_size": 1, "gamma": 0.5})
    assert h["lr"] == h["lr_group0"] == h["lr_group1"] == [0.1, 0.05, 0.025]
    assert lrm.steps == seen == [[0.1, 0.1]] * 2 + [[0.05, 0.05]] * 2 + [[0.025, 0.025]] * 2


def test_lr_monitor_state_round_trip_keeps_the_epochs_lrs():
    a = ol.LRMonitor(per_step=True)
    a.epoch_lrs, a.steps = [0.1, 0.2], [[0.1, 0.2]]
    b = ol.LRMonitor(per_step=True)
    b.load_state_dict(a.state_dict())
    assert (b.epoch_lrs, b.steps) == ([0.1, 0.2], [[0.1, 0.2]])
    b.reset()
    assert (b.epoch_lrs, b.steps) == (None, [])


def test_custom_callback_sees_events_in_order():
    events = []

    class Spy(ol.Callback):
        def on_fit_start(self, state, logs): events.append("fit_start")
        def on_epoch_start(self, state, logs): events.append("epoch_start")
        def on_step_end(self, state, logs): events.append("step")
        def on_eval_end(self, state, logs): events.append("eval_end")
        def on_epoch_end(self, state, logs): events.append("epoch_end")
        def on_fit_end(self, state, logs): events.append("fit_end")

    X, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    ol.fit(nn.Linear(4, 2), (X, y), val_data=(X, y), epochs=1, batch_size=4, progress=False, callbacks=[Spy()])
    assert events == ["fit_start", "epoch_start", "step", "step", "eval_end", "epoch_end", "fit_end"]


def test_stop_flag_ends_training_after_the_epoch():
    class StopAt2(ol.Callback):
        def on_epoch_end(self, state, logs):
            if state.epoch == 2:
                state.request_stop("enough")

    X, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    h = ol.fit(nn.Linear(4, 2), (X, y), epochs=5, progress=False, callbacks=[StopAt2()])
    assert h["epoch"] == [1, 2]


def test_an_early_stopping_object_reused_for_a_new_fit_does_not_stop_it_at_once():
    X = torch.randn(32, 4)
    y = (X[:, 0] > 0).long()
    es = ol.EarlyStopping(monitor="train_loss", mode="max", patience=1)  # stops after epoch 2
    first = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=5, callbacks=[es], progress=False, seed=0)
    second = ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=5, callbacks=[es], progress=False, seed=0)
    assert len(first) < 5 and len(second) >= 1


def test_callback_list_fans_an_error_out_to_every_callback_and_the_users_error_surfaces():
    heard = []

    class Broken(ol.Callback):
        def on_exception(self, state, error):
            heard.append("broken")
            raise RuntimeError("cleanup failed")

    class Listener(ol.Callback):
        order = 10

        def on_exception(self, state, error):
            heard.append(type(error).__name__)

    class Fail(ol.Callback):
        def on_epoch_end(self, state, logs):
            raise ValueError("the user's own error")

    X, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with pytest.warns(UserWarning, match="Broken.on_exception failed: cleanup failed"):
        with pytest.raises(ValueError, match="the user's own error"):
            ol.fit(nn.Linear(4, 2), (X, y), epochs=2, progress=False, callbacks=[Listener(), Broken(), Fail()])
    assert heard == ["broken", "ValueError"]  # order: Broken (0) before Listener (10), both heard it


def test_callback_list_orders_sends_events_only_to_listeners_and_refuses_non_callbacks():
    class Late(ol.Callback):
        order = 5

        def on_step_end(self, state, logs): ...

    es, late = ol.EarlyStopping(), Late()
    cl = ol.CallbackList([late, es], progress=True)
    assert [type(c).__name__ for c in cl.callbacks] == ["EarlyStopping", "Late", "ProgressBar"]
    assert cl.listeners("on_step_end") == [late, cl.callbacks[2]]  # EarlyStopping does not listen
    assert cl.listeners("on_before_optimizer_step") == []
    assert [type(c).__name__ for c in ol.CallbackList([es], progress=True, is_main=False).active] == \
        ["EarlyStopping"]  # the progress bar runs on rank 0 only
    with pytest.raises(ol.OptiloopError, match="callbacks must be ol.Callback instances, got str"):
        ol.CallbackList(["early"])


def test_restore_best_loads_the_best_weights_after_every_callback_saw_the_run_as_it_ended():
    X = torch.randn(32, 4)
    y = (X[:, 0] > 0).long()
    seen = {}

    class AtEnd(ol.Callback):
        order = 200  # after EarlyStopping: its on_fit_end has run when this one's does

        def on_fit_end(self, state, logs):
            seen["at_end"] = state.unwrapped_model.weight.detach().clone()

    es = ol.EarlyStopping(monitor="train_loss", mode="max", patience=1, restore_best=True)
    net = nn.Linear(4, 2)
    ol.fit(net, (X, y), optimizer="sgd", lr=0.5, epochs=5, callbacks=[es, AtEnd()], progress=False, seed=0)
    assert torch.equal(net.weight, es.best_weights["weight"])  # fit returned the best epoch's weights
    assert not torch.equal(seen["at_end"], net.weight)  # the last epoch's, as it ended, at fit end


def test_an_early_stopping_reused_for_a_second_fit_starts_afresh():
    """Keras fixed the same (keras#20256): the second fit stopped after one epoch, blaming the first
    fit's best epoch."""
    X = torch.randn(64, 4)
    y = (X[:, 0] > 0).long()
    es = ol.EarlyStopping(monitor="train_loss", patience=1)
    torch.manual_seed(0)
    ol.fit(nn.Linear(4, 2), (X, y), optimizer="sgd", lr=0.5, epochs=15, callbacks=[es], progress=False, seed=0)
    first_best = es.monitor.best
    torch.manual_seed(1)
    second = ol.fit(nn.Linear(4, 2), (X, y), optimizer="sgd", lr=0.05, epochs=3, callbacks=[es], progress=False)
    assert second["train_loss"][0] > first_best  # the new model starts worse than the old one ended
    assert len(second) == 3 and es.stop_reason is None
    assert es.best_epoch == 3 and es.monitor.best == second["train_loss"][-1]


def test_a_checkpoint_reused_for_another_fit_forgets_its_best():
    ck = ol.Checkpoint("unused", monitor="val_loss")
    ck.monitor.best, ck.best_epoch = 0.1, 7
    ol.CallbackList([ck]).reset()
    assert (ck.monitor.best, ck.best_epoch) == (None, None)


# --- EarlyStopping's baseline and start_from_epoch, with Keras' semantics --------------------------
def test_baseline_never_reached_stops_after_patience_epochs_without_improvement():
    # every epoch improves on the best but never on the baseline: the count still runs (Keras)
    epoch, reason = feed(ol.EarlyStopping(patience=2, baseline=0.5), [0.9, 0.8, 0.85])
    assert epoch == 3 and "has not beaten the baseline 0.5" in reason
    assert feed(ol.EarlyStopping(patience=2), [0.9, 0.8, 0.85]) == (None, None)  # without: no stop


def test_baseline_reached_restarts_the_count():
    es = ol.EarlyStopping(patience=2, baseline=0.5)
    epoch, reason = feed(es, [0.9, 0.4, 0.45, 0.46])
    assert epoch == 4 and "has not improved for 2 epochs (best 0.4 at epoch 2)" in reason


def test_baseline_for_a_maximised_metric():
    assert feed(ol.EarlyStopping(monitor="val_acc", patience=1, baseline=0.9), [0.5, 0.6, 0.55], "val_acc")[0] == 3
    assert feed(ol.EarlyStopping(monitor="val_acc", patience=1, baseline=0.9), [0.5, 0.95, 0.97], "val_acc") == \
        (None, None)


def test_start_from_epoch_ignores_the_first_epochs():
    es = ol.EarlyStopping(patience=1, start_from_epoch=2)
    assert feed(es, [1.0, 2.0, 3.0, 2.5]) == (None, None)
    assert es.best_epoch == 4 and es.monitor.best == 2.5  # epochs 1-2 never set the best
    assert feed(ol.EarlyStopping(patience=1), [1.0, 2.0, 3.0, 2.5])[0] == 2  # without: stops at once


@pytest.mark.parametrize("kwargs,match", [
    ({"patience": 0}, "patience must be an integer >= 1"),
    ({"start_from_epoch": -1}, "start_from_epoch must be an integer >= 0"),
    ({"baseline": float("nan")}, "baseline must be a finite number or None"),
    ({"baseline": "0.5"}, "baseline must be a finite number or None"),
])
def test_early_stopping_bad_arguments(kwargs, match):
    with pytest.raises(ol.OptiloopError, match=match):
        ol.EarlyStopping(**kwargs)


def test_a_rank_zero_callback_runs_on_every_rank_under_fsdp_only_if_it_saves_sharded_state(tmp_path):
    ck, bar = ol.Checkpoint(tmp_path), ol.ProgressBar()
    assert ol.CallbackList([ck, bar], is_main=False).active == []  # DDP rank 1: rank 0 writes, shows
    assert ol.CallbackList([ck, bar], is_main=False, sharded=True).active == [ck]  # FSDP: its shards too
    assert ol.CallbackList([ck, bar], is_main=True, sharded=True).active == [bar, ck]
