"""fit(): exact averages, no per-step sync, scheduler timing, accumulation, clipping, errors."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol
import optiloop.loop as loop_mod


def data(n=10, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def model(d=5, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes))


def quiet(**kw):
    return {"progress": False, "seed": 0, **kw}


@pytest.mark.slow  # up to 30 epochs on digits: the quick loop leaves it to CI
def test_digits_above_95_percent_with_early_stopping_and_checkpoints(tmp_path):
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    tr, va = order[:1437], order[1437:]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    stopper = ol.EarlyStopping(monitor="val_loss", patience=3, restore_best=True)
    h = ol.fit(net, (X[tr], y[tr]), val_data=(X[va], y[va]), optimizer="adamw", lr=3e-3,
               scheduler="cosine", epochs=40, batch_size=64, metrics=["accuracy"],
               callbacks=[stopper, ol.Checkpoint(tmp_path, monitor="val_loss")], **quiet())
    best = h.best("val_loss")
    assert best["val_acc"] > 0.95
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    ck = ol.load_checkpoint(tmp_path / "best.pt")
    assert ck["epoch"] == best["epoch"]
    # restore_best: the model now holds the best epoch's weights, as saved in best.pt
    assert all(torch.equal(v, ck["model"][k]) for k, v in net.state_dict().items())
    assert ol.evaluate(net, (X[va], y[va]), metrics=["accuracy"])["acc"] == pytest.approx(best["val_acc"])


def test_averages_are_weighted_by_sample_count_with_a_short_last_batch():
    X, y = data(n=10)  # batches of 4, 4, 2
    net = model()
    ref_out = net(X)
    full_loss = nn.functional.cross_entropy(ref_out, y).item()
    full_acc = (ref_out.argmax(1) == y).float().mean().item()
    h = ol.fit(net, (X, y), val_data=(X, y), optimizer="sgd", lr=0.0, epochs=1, batch_size=4,
               metrics=["accuracy"], **quiet())
    assert h["train_loss"][0] == pytest.approx(full_loss, abs=1e-6)
    assert h["val_loss"][0] == pytest.approx(full_loss, abs=1e-6)
    assert h["train_acc"][0] == pytest.approx(full_acc) and h["val_acc"][0] == pytest.approx(full_acc)
    # the naive way (mean of per-batch means) is measurably different here
    naive = np.mean([nn.functional.cross_entropy(net(X[s:s + 4]), y[s:s + 4]).item() for s in (0, 4, 8)])
    assert abs(naive - full_loss) > 1e-3


SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu")


def count_syncs_in_step_loop(monkeypatch, net=None, train=None, val=None, **fit_kwargs):
    """Every device read (``.item()``, ``bool(t)`` ...) made inside the training step loop."""
    calls = []
    counting = [False]
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, __original=original, __name=name, **k):
            if counting[0]:
                calls.append(__name)
            return __original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    real = loop_mod._Loop._train_epoch

    def counted(self):
        counting[0] = True
        try:
            real(self)
        finally:
            counting[0] = False

    monkeypatch.setattr(loop_mod._Loop, "_train_epoch", counted)
    if train is None:
        X, y = data(n=64)
        train = val = (X, y)
        fit_kwargs.setdefault("metrics", ["accuracy", "top2"])
    ol.fit(net or model(), train, val_data=val, epochs=2, batch_size=8, **quiet(**fit_kwargs))
    return calls


def test_no_host_sync_inside_the_step_loop(monkeypatch):
    assert count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", grad_accum=2, clip_grad_norm=1.0) == []


def test_sync_counter_does_detect_a_per_step_sync(monkeypatch):
    calls = count_syncs_in_step_loop(monkeypatch, nonfinite="skip")  # documented: one sync per step
    assert len(calls) >= 16


def test_epoch_scheduler_steps_after_each_epoch():
    X, y = data(n=32)
    h = ol.fit(model(), (X, y), optimizer="sgd", lr=1.0, epochs=6, batch_size=8,
               scheduler={"name": "step", "step_size": 2, "gamma": 0.5}, **quiet())
    assert h["lr"] == ol.preview_schedule("step", lr=1.0, epochs=6, step_size=2, gamma=0.5)


def test_step_scheduler_steps_once_per_optimizer_step_with_accumulation():
    X, y = data(n=40)
    lrs = ol.LRMonitor(per_step=True)
    # 5 batches per epoch, accumulate 2 -> 3 optimizer steps per epoch, 9 in all; OneCycleLR raises
    # if stepped past total_steps, so finishing proves no extra steps either.
    ol.fit(model(), (X, y), optimizer="sgd", lr=0.1, epochs=3, batch_size=8, grad_accum=2,
           scheduler="onecycle", callbacks=[lrs], **quiet())
    expected = ol.preview_schedule("onecycle", lr=0.1, epochs=3, steps_per_epoch=3, per_step=True)
    assert [s[0] for s in lrs.steps] == expected  # each step's LR: the one it trained with
    assert len(lrs.steps) == 9


def test_plateau_steps_on_the_monitored_metric():
    X, y = data(n=16)

    def flat(out, target):  # the same loss whatever the weights: the metric plateaus at once
        return out.sum() * 0 + 1.0

    h = ol.fit(model(), (X, y), val_data=(X, y), loss=flat, optimizer="sgd", lr=0.1, epochs=6, batch_size=8,
               scheduler={"name": "plateau", "patience": 1, "factor": 0.5}, **quiet())
    expected = ol.preview_schedule("plateau", lr=0.1, epochs=6, metrics=[1.0] * 6, patience=1, factor=0.5)
    assert h["lr"] == expected and expected[-1] < 0.1


def test_gradient_accumulation_equals_the_large_batch():
    X, y = data(n=10)
    a, b = model(), model()
    ol.fit(a, (X, y), optimizer="sgd", lr=0.5, epochs=2, batch_size=4, grad_accum=2, **quiet())
    ol.fit(b, (X, y), optimizer="sgd", lr=0.5, epochs=2, batch_size=8, **quiet())
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_by_value_and_norm():
    X, y = data(n=8)
    for kw, bound in (({"clip_grad_value": 1e-4}, lambda d: d.abs().max().item() <= 1e-4 * 1.01),
                      ({"clip_grad_norm": 1e-3}, lambda d: d.norm().item() <= 1e-3 * 1.01)):
        net = model()
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        ol.fit(net, (X, y), optimizer="sgd", lr=1.0, epochs=1, batch_size=8, **quiet(**kw))
        after = torch.cat([p.detach().flatten() for p in net.parameters()])
        assert bound(after - before) and not torch.equal(after, before), kw


def test_seed_makes_runs_identical():
    X, y = data(n=50)

    def run(seed):
        net = model()
        ol.fit(net, (X, y), epochs=2, batch_size=8, progress=False, seed=seed)
        return torch.cat([p.flatten() for p in net.parameters()])

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_train_and_eval_modes_and_no_grad_in_evaluation():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.lin(x)

    X, y = data(n=8)
    ol.fit(Probe(), (X, y), val_data=(X, y), epochs=1, batch_size=8, **quiet())
    assert seen == [(True, True), (False, False)]


def test_inputs_dataloader_dataset_numpy():
    X, y = data(n=20)
    for train in (DataLoader(TensorDataset(X, y), batch_size=4), TensorDataset(X, y),
                  (X.double().numpy(), y.numpy().astype(np.int32))):
        h = ol.fit(model(), train, val_data=(X, y), epochs=2, batch_size=4, **quiet())
        assert len(h) == 2 and h["val_loss"][1] > 0


def test_history_rows_have_the_documented_keys():
    X, y = data(n=20)
    h = ol.fit(model(), (X, y), val_data=(X, y), epochs=2, metrics=["accuracy", "top2"], **quiet())
    assert h.keys() == ["epoch", "train_loss", "train_acc", "train_top2", "val_loss", "val_acc", "val_top2",
                        "lr", "seconds"]
    assert h["epoch"] == [1, 2]


def test_regression_with_mse_and_mae():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])  # shape (N,), model outputs (N, 1): must not broadcast
    net = nn.Linear(3, 1)
    h = ol.fit(net, (X, y), val_data=(X, y), loss="mse", metrics=["mae", "mse"], optimizer="adam", lr=0.05,
               epochs=30, batch_size=16, **quiet())
    assert h["val_mse"][-1] == pytest.approx(h["val_loss"][-1], rel=1e-5)
    assert h["val_mse"][-1] < 0.01


def test_device_auto(monkeypatch):
    assert ol.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ol.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("kwargs,match", [
    ({"train": (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))}, "training data is empty"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"callbacks": [ol.EarlyStopping(monitor="val_loss")]}, "monitor 'val_loss' needs val_data"),
    ({"callbacks": [ol.EarlyStopping(monitor="train_acc")]}, "monitor 'train_acc' is never logged; logged keys"),
    ({"scheduler": "plateau"}, "monitor 'val_loss' needs val_data"),
    ({"optimizer": "adamx"}, "unknown optimizer 'adamx'"),
    ({"loss": "crossentropy"}, "unknown loss 'crossentropy'"),
    ({"metrics": ["acc"]}, "unknown metric 'acc'"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_bad_input_is_one_clear_line(kwargs, match):
    train = kwargs.pop("train", data(n=8))
    with pytest.raises(ol.OptiloopError, match=match) as e:
        ol.fit(model(), train, **quiet(**kwargs))
    assert "\n" not in str(e.value)


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path):
    X, y = data(n=32)

    def loss(out, target):  # goes NaN on the 3rd batch of epoch 2
        loss.calls += 1
        value = nn.functional.cross_entropy(out, target)
        return value * float("nan") if loss.calls == 7 else value

    loss.calls = 0
    ck = ol.Checkpoint(tmp_path, monitor="train_loss", every_seconds=0)
    with pytest.raises(ol.NonFiniteLossError, match="epoch 2, step 3"):
        ol.fit(model(), (X, y), loss=loss, epochs=3, batch_size=8, callbacks=[ck], **quiet())
    assert ol.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # nothing saved after the fault
    assert ol.load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_nonfinite_skip_leaves_parameters_unchanged_by_the_bad_batch():
    X, y = data(n=8)

    def make_loss(bad):
        def loss(out, target):  # the 2nd batch is bad
            loss.calls += 1
            value = nn.functional.cross_entropy(out, target)
            return value * bad if loss.calls == 2 else value
        loss.calls = 0
        return loss

    skipped, reference = model(), model()
    ol.fit(skipped, (X, y), loss=make_loss(float("nan")), optimizer="sgd", lr=0.5, epochs=1, batch_size=4,
           **quiet(nonfinite="skip"))
    # plain SGD with a zero loss on that batch does not move: the same as never seeing it
    ol.fit(reference, (X, y), loss=make_loss(0.0), optimizer="sgd", lr=0.5, epochs=1, batch_size=4, **quiet())
    assert all(torch.equal(a, b) for a, b in zip(skipped.parameters(), reference.parameters()))
    assert not torch.equal(next(skipped.parameters()), next(model().parameters()))


def test_nonfinite_skip_with_every_batch_bad_is_an_error():
    X, y = data(n=8)
    with pytest.raises(ol.NonFiniteLossError, match="every batch of epoch 1"):
        ol.fit(model(), (X, y), loss=lambda o, t: o.sum() * float("nan"), epochs=1, batch_size=4,
               **quiet(nonfinite="skip"))


@pytest.mark.parametrize("bad_position", [0, 3])
def test_skipped_micro_batch_anywhere_in_a_group_keeps_the_others(bad_position):
    X, y = data(n=16)  # 4 micro-batches of 4 = one accumulation group

    def make_loss(bad):
        def loss(out, target):
            loss.calls += 1
            value = nn.functional.cross_entropy(out, target)
            return value * bad if loss.calls == bad_position + 1 else value
        loss.calls = 0
        return loss

    skipped, reference = model(), model()
    ol.fit(skipped, (X, y), loss=make_loss(float("nan")), optimizer="sgd", lr=0.5, epochs=1, batch_size=4,
           grad_accum=4, **quiet(nonfinite="skip"))
    ol.fit(reference, (X, y), loss=make_loss(0.0), optimizer="sgd", lr=0.5, epochs=1, batch_size=4,
           grad_accum=4, **quiet())
    for a, b in zip(skipped.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(next(skipped.parameters()), next(model().parameters()))


def test_fp16_scheduler_not_stepped_when_the_scaler_skips_a_step():
    """GradScaler skips a step whose gradients are not finite; the schedule must skip with it
    (else torch warns 'lr_scheduler.step() before optimizer.step()' and the LR runs ahead)."""
    X, y = data(n=64)

    def loss(out, target):  # step 3: a finite loss whose gradients are NaN (d sqrt(0) = inf, x 0)
        loss.calls += 1
        value = nn.functional.cross_entropy(out, target)
        return value + torch.sqrt((out * 0).abs()).sum() if loss.calls == 3 else value

    loss.calls = 0
    seen, params = {}, {}

    class Watch(ol.Callback):
        def on_step_end(self, state, logs):
            params[state.step] = [p.detach().clone() for p in state.unwrapped_model.parameters()]
            seen.setdefault("lrs", []).append(state.optimizer.param_groups[0]["lr"])

        def on_fit_end(self, state, logs):
            seen.update(taken=state.step, scheduled=state.schedule.steps_done)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ol.fit(model(), (X, y), loss=loss, amp="fp16", device="cpu", epochs=2, batch_size=16,
               scheduler="onecycle", callbacks=[Watch()], **quiet())
    assert seen["taken"] == seen["scheduled"] == 7  # 8 batches, one step skipped
    assert len(seen["lrs"]) == 7  # step callbacks fire for steps taken only
    assert all(torch.isfinite(p).all() for p in params[7])  # the NaN gradients never reached them
    lrs = ol.preview_schedule("onecycle", lr=1e-3, epochs=2, steps_per_epoch=4, per_step=True)
    assert seen["lrs"] == pytest.approx(lrs[1:8])  # the schedule advanced once per step taken
