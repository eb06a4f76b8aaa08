"""Schedule-free optimizers (optiloop.schedule_free) against the schedulefree package's documented
usage: optimizer.train() where model.train() goes, optimizer.eval() where model.eval() goes and
before saving, BatchNorm statistics recomputed at the evaluation point; and across resumes."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from conftest import SignalAt
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol
from optiloop import checkpoint as C

schedulefree = pytest.importorskip("schedulefree")


def data(n=96):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] + X[:, 1] > 0).long()


def net(bn=False):
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(16)] if bn else []
    return nn.Sequential(nn.Linear(6, 16), *norm, nn.ReLU(), nn.Linear(16, 2))


def in_order(X, y, bs=16):
    return DataLoader(TensorDataset(X, y), batch_size=bs, shuffle=False)


def assert_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("cls, bn", [("AdamWScheduleFree", False), ("SGDScheduleFree", True),
                                     ("RAdamScheduleFree", True)])
def test_the_loop_switches_modes_as_the_package_documents(cls, bn):
    X, y = data()
    Xv, yv = X[:40], y[:40]
    epochs = 3
    # The documented usage, by hand: train() with model.train(), eval() with model.eval();
    # BatchNorm statistics recomputed at x on up to 50 training batches (PreciseBN: update_bn).
    model = net(bn)
    opt = getattr(schedulefree, cls)(model.parameters(), lr=0.01)
    val_losses = []
    for _ in range(epochs):
        model.train()
        opt.train()
        for xb, yb in in_order(X, y):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        opt.eval()
        if bn:
            update_bn(itertools.islice(in_order(X, y), 50), model)
            model.eval()
        with torch.no_grad():
            val_losses.append(F.cross_entropy(model(Xv), yv).item())

    ours = net(bn)
    built = getattr(schedulefree, cls)(ours.parameters(), lr=0.01)
    h = ol.fit(ours, in_order(X, y), val_data=(Xv, yv), optimizer=built, epochs=epochs, batch_size=64,
               progress=False)
    assert h["val_loss"] == pytest.approx(val_losses, abs=1e-6)
    assert_equal(ours.state_dict(), model.state_dict())  # the run ends at the evaluation point x
    assert not built.param_groups[0]["train_mode"]


@pytest.mark.parametrize("name, cls", [("adamw_schedulefree", "AdamWScheduleFree"),
                                       ("sgd_schedulefree", "SGDScheduleFree"),
                                       ("radam_schedulefree", "RAdamScheduleFree")])
def test_schedule_free_optimizers_by_name(name, cls):
    opt = ol.build_optimizer(name, net(), lr=0.01, weight_decay=0.1)
    assert type(opt).__name__ == cls and opt.param_groups[0]["lr"] == 0.01
    X, y = data(32)
    h = ol.fit(net(), (X, y), val_data=(X, y), optimizer=name, lr=0.01, epochs=2, progress=False, seed=0)
    assert len(h) == 2


def test_a_scheduler_other_than_warmup_is_refused_with_why():
    X, y = data(32)
    with pytest.raises(ol.OptiloopError, match="scheduler 'cosine' with a schedule-free optimizer: it needs no LR "
                                               "schedule"):
        ol.fit(net(), (X, y), optimizer="adamw_schedulefree", scheduler="cosine", epochs=2, progress=False)
    h = ol.fit(net(), (X, y), optimizer="adamw_schedulefree", lr=0.01, epochs=2, progress=False, seed=0, batch_size=8,
               scheduler={"name": "constant", "warmup_steps": 4})
    assert h["lr"] == [0.01 / 4, 0.01]  # warmup: the LR of each epoch's first step




def train(folder, *, resume=None, callbacks=(), bn=True, epochs=3):
    X, y = data(64)
    model = net(bn)
    h = ol.fit(model, (X, y), val_data=(X, y), optimizer="adamw_schedulefree", lr=1e-2, epochs=epochs, batch_size=8,
               seed=0, progress=False, resume=resume,
               callbacks=[ol.Checkpoint(folder, every_seconds=0), *callbacks])
    return model, [{k: v for k, v in r.items() if k != "seconds"} for r in h]


def test_an_interrupted_run_resumes_bit_exact_and_its_checkpoints_hold_both_points(tmp_path):
    model_a, rows_a = train(tmp_path / "a")
    epoch_end = C.load_checkpoint(tmp_path / "a" / "last.pt")
    # saved at an epoch's end: in eval mode, the weights are x, the ones predict uses
    assert not epoch_end["optimizer"]["param_groups"][0]["train_mode"] and epoch_end["eval_model"] is None
    assert_equal(epoch_end["model"], model_a.state_dict())

    stopped = None
    with pytest.raises(ol.TrainingInterrupted):
        stopped, _ = train(tmp_path / "b", callbacks=[SignalAt(11)])
    mid = C.load_checkpoint(tmp_path / "b" / "last.pt")
    # mid-epoch: the training point y resumes exactly; eval_model is x (made on a copy)
    assert mid["optimizer"]["param_groups"][0]["train_mode"] and mid["eval_model"] is not None
    assert not torch.equal(mid["eval_model"]["0.weight"], mid["model"]["0.weight"])
    model_b, rows_b = train(tmp_path / "b", resume=tmp_path / "b")
    assert_equal(model_a.state_dict(), model_b.state_dict())
    assert rows_a == rows_b


def test_the_mid_epoch_evaluation_point_is_what_eval_gives(tmp_path):
    X, y = data(64)
    model = net()
    with pytest.raises(ol.TrainingInterrupted):
        ol.fit(model, (X, y), optimizer="adamw_schedulefree", lr=1e-2, epochs=2, batch_size=8, seed=0, progress=False,
               callbacks=[ol.Checkpoint(tmp_path, monitor=None, every_seconds=3600), SignalAt(3)])
    # the loop leaves the model at x after the interruption, with the package's own eval()
    assert_equal(C.load_checkpoint(tmp_path / "last.pt")["eval_model"], model.state_dict())


def test_cli_schedule_free_run_defaults_to_no_schedule_and_refuses_one(run_main):
    code, out, err = run_main("train", "--data", "wine", "--optimizer", "adamw_schedulefree", "--epochs", "2",
                              "--out", "run")
    assert code == 0, err
    assert "scheduler constant" in out
    code, _, err = run_main("train", "--data", "wine", "--optimizer", "sgd_schedulefree", "--scheduler", "step",
                            "--epochs", "2", "--out", "other")
    assert code == 2 and "scheduler.name: scheduler 'step' with a schedule-free optimizer" in err
    assert not os.path.exists("other")


def test_schedule_free_adds_no_host_sync_per_step(monkeypatch):
    from test_loop import count_syncs_in_step_loop  # the suite's own sync counter

    assert count_syncs_in_step_loop(monkeypatch, net=net(bn=True), train=data(64), val=data(64),
                                    optimizer="adamw_schedulefree") == []
