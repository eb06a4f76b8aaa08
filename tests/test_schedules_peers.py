"""The scheduler semantics the peers leave open: frequency with interval="step" (counted over the
run; Lightning counts the batch within each epoch), plateau strict=False (Lightning's: warn and
skip when the monitor is missing), and plateau with interval="step" (on each step's loss)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol


def data(n=40):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    return X, (X[:, 0] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def lightning_step_frequency_steps(steps_per_epoch: int, epochs: int, frequency: int) -> int:
    """How often Lightning steps an interval="step" scheduler: on batch_idx + 1 divisible by
    frequency, batch_idx counting from 0 in each epoch (its _update_learning_rates)."""
    return sum((b + 1) % frequency == 0 for _ in range(epochs) for b in range(steps_per_epoch))


def test_frequency_with_interval_step_counts_optimizer_steps_over_the_run_not_within_epochs():
    X, y = data(40)  # batch size 8: 5 steps per epoch, 30 steps in 6 epochs
    monitor = ol.LRMonitor(per_step=True)
    ol.fit(net(), (X, y), optimizer="sgd", lr=1.0, epochs=6, batch_size=8, progress=False, seed=0,
           scheduler={"name": "step", "step_size": 1, "gamma": 0.5, "interval": "step", "frequency": 3},
           callbacks=[monitor])
    lrs = [s[0] for s in monitor.steps]
    drops = sum(a != b for a, b in zip(lrs, lrs[1:]))
    assert lrs[:4] == [1.0, 1.0, 1.0, 0.5] and drops == 9  # every 3rd step: 10 steps, the last after step 30
    assert lrs[-1] == 0.5 ** 9
    assert lightning_step_frequency_steps(5, 6, 3) == 6  # Lightning: once per epoch (docs/training.md)


def test_plateau_strict_false_warns_and_skips_when_its_monitor_is_missing():
    X, y = data()

    def step(model, batch):  # its own logs appear only in training: no val_kl
        x, t = batch
        loss = F.cross_entropy(model(x), t)
        return ol.StepOutput(loss, logs={"kl": loss.detach()} if model.training else None)

    plateau = {"name": "plateau", "monitor": "val_kl", "mode": "min", "patience": 0, "factor": 0.5}
    with pytest.raises(ol.OptiloopError, match="scheduler 'plateau' monitors 'val_kl', which is not in the epoch's "
                                               "logs .*pass strict=False"):
        ol.fit(net(), (X, y), val_data=(X, y), step=step, scheduler=plateau, lr=0.1, epochs=2, progress=False)
    with pytest.warns(UserWarning, match="not stepped this epoch \\(strict=False\\)"):
        h = ol.fit(net(), (X, y), val_data=(X, y), step=step, scheduler={**plateau, "strict": False}, lr=0.1,
                   epochs=3, progress=False)
    assert h["lr"] == [0.1, 0.1, 0.1]  # never stepped, and training went on
    # strict (the default) and a monitor no run can log: refused before training, as before
    with pytest.raises(ol.OptiloopError, match="monitor 'val_f1' is never logged"):
        ol.fit(net(), (X, y), val_data=(X, y), scheduler={"name": "plateau", "monitor": "val_f1", "mode": "max"},
               epochs=1, progress=False)
    with pytest.warns(UserWarning, match="monitors 'val_f1'"):  # strict=False: not even then
        h = ol.fit(net(), (X, y), val_data=(X, y), epochs=2, progress=False,
                   scheduler={"name": "plateau", "monitor": "val_f1", "mode": "max", "strict": False})
    assert len(h) == 2


def test_plateau_per_step_equals_torchs_plateau_fed_every_steps_loss():
    X, y = data(64)
    loader = DataLoader(TensorDataset(X, y), batch_size=16)
    ref = net()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    lrs = []
    for _ in range(3):
        for xb, yb in loader:
            lrs.append(opt.param_groups[0]["lr"])
            loss = F.cross_entropy(ref(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step(loss.item())

    ours = net()
    monitor = ol.LRMonitor(per_step=True)
    ol.fit(ours, loader, optimizer=torch.optim.SGD(ours.parameters(), lr=0.5), epochs=3, progress=False,
           scheduler={"name": "plateau", "interval": "step", "factor": 0.5, "patience": 1}, callbacks=[monitor])
    assert [s[0] for s in monitor.steps] == lrs
    assert min(lrs) < 0.5  # it did reduce within epochs
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


def test_plateau_per_step_reads_the_training_loss_only():
    opt = torch.optim.SGD(net().parameters(), lr=0.1)
    s = ol.build_scheduler({"name": "plateau", "interval": "step"}, opt)
    assert (s.interval, s.monitor, s.needs_loss, s.scheduler.mode) == ("step", "train_loss", True, "min")
    with pytest.raises(ol.OptiloopError, match="with interval='step' reads each optimizer step's training loss"):
        ol.build_scheduler({"name": "plateau", "interval": "step", "monitor": "val_acc"}, opt)
    with pytest.raises(ol.OptiloopError, match="strict must be true or false"):
        ol.build_scheduler({"name": "plateau", "strict": "no"}, opt)
