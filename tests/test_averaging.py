"""EMA and SWA (optiloop.averaging) against torch's own recipes, in checkpoints, and across resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAt
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol
from optiloop import checkpoint as C

WORKER = Path(__file__).with_name("resume_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def data(n=96):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] + X[:, 1] > 0).long()


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


def dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


def in_order(X, y, bs=16):
    return DataLoader(TensorDataset(X, y), batch_size=bs, shuffle=False)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def assert_close(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=k)


def assert_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("accum, use_buffers", [(1, True), (2, True), (1, False)])
def test_ema_equals_a_hand_written_loop_updating_torchs_averaged_model_after_every_step(accum, use_buffers):
    X, y = data()
    decay, epochs = 0.9, 3
    # The reference: torch's AveragedModel updated after every optimizer step of a plain loop;
    # equal micro-batches, so each one's loss weighs 1 / accum of the step's gradient.
    model = bn_net()
    opt = sgd(model)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=use_buffers)
    for _ in range(epochs):
        for i, (xb, yb) in enumerate(in_order(X, y)):
            (F.cross_entropy(model(xb), yb) / accum).backward()
            if (i + 1) % accum == 0:
                opt.step()
                opt.zero_grad()
                ref.update_parameters(model)

    ours = bn_net()
    ema = ol.EMA(decay, use_buffers=use_buffers, load_at_end=False)
    h = ol.fit(ours, in_order(X, y), val_data=(X, y), optimizer=sgd(ours), epochs=epochs, grad_accum=accum,
               callbacks=[ema], progress=False)
    assert int(ema.averaged.n_averaged) == int(ref.n_averaged) == epochs * 6 // accum
    assert_close(ema.averaged.state_dict(), ref.state_dict())
    assert_close(ours.state_dict(), model.state_dict())  # load_at_end=False: the raw weights
    # validation ran the average; val_loss_raw is the raw weights' figure
    assert h["val_loss"][-1] == pytest.approx(ol.evaluate(ref.module, (X, y), device="cpu")["loss"], abs=1e-6)
    assert h["val_loss_raw"][-1] == pytest.approx(ol.evaluate(model, (X, y), device="cpu")["loss"], abs=1e-6)


def test_ema_every_n_steps_and_the_model_ends_with_the_average():
    X, y = data()
    model = bn_net()
    opt = sgd(model)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    step = 0
    for _ in range(2):
        for xb, yb in in_order(X, y):
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            step += 1
            if step % 4 == 0:
                ref.update_parameters(model)
    ours = bn_net()
    ema = ol.EMA(0.5, every=4)
    ol.fit(ours, in_order(X, y), optimizer=sgd(ours), epochs=2, callbacks=[ema], progress=False)
    assert int(ema.averaged.n_averaged) == 3
    assert_close(ours.state_dict(), ref.module.state_dict())  # load_at_end: the model holds the average


@pytest.mark.parametrize("start, anneal, swa_lr", [(3, 2, 0.05), (2, 1, 0.01)])
def test_swa_equals_the_torch_documentation_recipe(start, anneal, swa_lr):
    X, y = data()
    epochs = 5
    ld = in_order(X, y)
    # torch.optim.swa_utils' documented recipe, verbatim but for the sizes.
    model = bn_net()
    optimizer = sgd(model)
    swa_model = AveragedModel(model)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    swa_start = start - 2  # SWA(start_epoch=S): the recipe's `epoch > swa_start`, epochs from 0
    swa_scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=anneal)
    lrs = []
    for i in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        for xb, yb in ld:
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        if i > swa_start:
            swa_model.update_parameters(model)
            swa_scheduler.step()
        else:
            scheduler.step()
    update_bn(ld, swa_model)

    ours = bn_net()
    opt = sgd(ours)
    swa = ol.SWA(start_epoch=start, swa_lr=swa_lr, anneal_epochs=anneal)
    h = ol.fit(ours, ld, val_data=(X, y), optimizer=opt,
               scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), epochs=epochs,
               callbacks=[swa], progress=False)
    assert int(swa.averaged.n_averaged) == int(swa_model.n_averaged) == epochs - start + 1
    assert_close(swa.averaged.state_dict(), swa_model.state_dict())  # BatchNorm statistics included
    assert h["lr"] == pytest.approx(lrs, abs=1e-12)
    assert_close(ours.state_dict(), swa_model.module.state_dict())  # the model ends with the average
    # before the start validation runs the raw weights; from it on, the average
    assert h["val_loss"][: start - 1] == h["val_loss_raw"][: start - 1]
    assert h["val_loss"][-1] != h["val_loss_raw"][-1]


def test_swa_without_swa_lr_holds_the_lr_it_reached():
    X, y = data()
    ours = bn_net()
    h = ol.fit(ours, (X, y), optimizer="sgd", lr=0.1, scheduler="cosine", epochs=5,
               callbacks=[ol.SWA(start_epoch=2, anneal_epochs=0)], progress=False, seed=0)
    assert h["lr"][2:] == [h["lr"][1]] * 3  # SWALR holds the LR cosine had reached when SWA started


def train(folder, averager, *, epochs=3, accum=1, resume=None, callbacks=(), scheduler="cosine"):
    X, y = data(64)
    model = dropout_net()
    h = ol.fit(model, (X, y), val_data=(X, y), optimizer="adamw", lr=1e-2, scheduler=scheduler, epochs=epochs,
               batch_size=8, grad_accum=accum, seed=0, progress=False, resume=resume,
               callbacks=[averager, ol.Checkpoint(folder, every_seconds=3600), *callbacks])
    return model, [{k: v for k, v in r.items() if k != "seconds"} for r in h]




@pytest.mark.parametrize("make, accum, stop_at", [
    (lambda: ol.EMA(0.8), 1, 11),          # epoch 2 of 3, mid-epoch
    (lambda: ol.EMA(0.8, every=3), 2, 6),  # under accumulation: step 6 of 12, mid-epoch
    (lambda: ol.SWA(start_epoch=2, swa_lr=0.005, anneal_epochs=2), 1, 19),  # after SWA started
])
def test_an_interrupted_averaged_run_resumes_bit_exact(tmp_path, make, accum, stop_at):
    straight = make()
    model_a, rows_a = train(tmp_path / "a", straight, accum=accum)
    with pytest.raises(ol.TrainingInterrupted):
        train(tmp_path / "b", make(), accum=accum, callbacks=[SignalAt(stop_at)])
    last = C.load_checkpoint(tmp_path / "b" / "last.pt")
    assert (last["step"], last["epoch_done"]) == (stop_at, False)
    resumed = make()
    model_b, rows_b = train(tmp_path / "b", resumed, accum=accum, resume=tmp_path / "b")
    assert_equal(model_a.state_dict(), model_b.state_dict())
    assert_equal(straight.averaged.state_dict(), resumed.averaged.state_dict())
    assert rows_a == rows_b


def test_an_averaged_run_resumed_at_an_epoch_end_with_more_epochs_continues_its_average(tmp_path):
    straight = ol.SWA(start_epoch=2, swa_lr=0.005)
    model_a, rows_a = train(tmp_path / "a", straight, epochs=4, scheduler=None)
    train(tmp_path / "b", ol.SWA(start_epoch=2, swa_lr=0.005), epochs=3, scheduler=None)
    resumed = ol.SWA(start_epoch=2, swa_lr=0.005)
    model_b, rows_b = train(tmp_path / "b", resumed, epochs=4, resume=tmp_path / "b", scheduler=None)
    assert int(resumed.averaged.n_averaged) == 3
    assert_equal(straight.averaged.state_dict(), resumed.averaged.state_dict())
    assert rows_a == rows_b


def test_checkpoints_hold_the_average_as_eval_model_and_the_raw_weights_as_model(tmp_path):
    ema = ol.EMA(0.8)
    train(tmp_path / "run", ema)
    best = C.load_checkpoint(tmp_path / "run" / "best.pt")
    last = C.load_checkpoint(tmp_path / "run" / "last.pt")
    assert_equal(last["eval_model"], ema.averaged.module.state_dict())
    assert not torch.equal(last["eval_model"]["0.weight"], last["model"]["0.weight"])
    assert best["eval_model"] is not None and best["callbacks"]["EMA"]["averaged"]["n_averaged"] > 0


def test_without_averaging_nothing_changes_in_the_logs_or_checkpoints(tmp_path):
    X, y = data(64)
    h = ol.fit(dropout_net(), (X, y), val_data=(X, y), epochs=1, progress=False,
               callbacks=[ol.Checkpoint(tmp_path, every_seconds=0)])
    assert not any(k.endswith("_raw") for k in h.rows[0])
    assert C.load_checkpoint(tmp_path / "last.pt")["eval_model"] is None


def test_bad_settings_are_one_line():
    for make, text in [(lambda: ol.EMA(1.0), "decay must be a number in [0, 1)"),
                       (lambda: ol.EMA(0.9, every=0), "every must be an integer >= 1"),
                       (lambda: ol.SWA(0), "start_epoch must be an integer >= 1"),
                       (lambda: ol.SWA(2, swa_lr=float("nan")), "swa_lr must be a finite number"),
                       (lambda: ol.SWA(2, anneal_strategy="exp"), "anneal_strategy must be 'cos' or 'linear'")]:
        with pytest.raises(ol.OptiloopError, match=text.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            make()
    X, y = data(32)
    with pytest.raises(ol.OptiloopError, match="never starts in a run of 2 epochs"):
        ol.fit(bn_net(), (X, y), epochs=2, callbacks=[ol.SWA(3)], progress=False)
    with pytest.raises(ol.OptiloopError, match="one weight-averaging callback per run; got EMA, SWA"):
        ol.fit(bn_net(), (X, y), epochs=2, callbacks=[ol.EMA(), ol.SWA(1)], progress=False)


def test_early_stopping_restores_the_best_validated_average():
    X, y = data(64)
    ema = ol.EMA(0.5, load_at_end=False)
    es = ol.EarlyStopping(patience=10, restore_best=True)
    model = dropout_net()
    ol.fit(model, (X, y), val_data=(X, y), lr=1e-2, epochs=1, callbacks=[ema, es], progress=False, seed=0)
    assert_equal(model.state_dict(), ema.averaged.module.state_dict())  # the weights that were validated


def test_cli_ema_run_predicts_and_exports_the_average(run_main):
    code, out, err = run_main("train", "--data", "wine", "--epochs", "3", "--ema", "0.9", "--out", "run")
    assert code == 0, err
    assert "weights averaged (EMA, decay 0.9)" in out
    best = C.load_checkpoint("run/best.pt")
    with open("run/history.csv") as f:
        header = next(csv.reader(f))
    assert {"val_loss_raw", "val_acc_raw"} <= set(header)
    run = ol.load("run")
    assert_equal(run.model.state_dict(), best["eval_model"])
    assert not torch.equal(best["eval_model"]["net.0.weight"] if "net.0.weight" in best["eval_model"]
                           else next(iter(best["eval_model"].values())), next(iter(best["model"].values())))
    code, _, err = run_main("export", "run", "--out", "m.pt")
    assert code == 0, err
    exported = torch.load("m.pt", weights_only=True)  # the model inside its preprocessing: model.* are its weights
    assert_equal({k.removeprefix("model."): v for k, v in exported.items() if k.startswith("model.")},
                 best["eval_model"])


def test_cli_refuses_ema_with_swa_and_a_late_swa(run_main):
    code, _, err = run_main("train", "--data", "wine", "--epochs", "3", "--ema", "0.9", "--swa", "2", "--out", "r")
    assert code == 2 and "ema and swa both average the weights" in err
    code, _, err = run_main("train", "--data", "wine", "--epochs", "3", "--swa", "4", "--out", "r")
    assert code == 2 and "swa = 4 never starts in a run of 3 epochs" in err
    assert not Path("r").exists()


def _worker(run_dir, out, *extra):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("average, kill_at", [("ema", "STEP 23"), ("swa", "STEP 43")])
def test_sigkill_then_resume_of_an_averaged_run_is_bit_exact(tmp_path, average, kill_at):
    p = _worker(tmp_path / "a", tmp_path / "a.pt", "--average", average)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    p = _worker(tmp_path / "b", tmp_path / "b.pt", "--average", average)
    for line in p.stdout:
        if line.strip() == kill_at:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=30)
    assert not (tmp_path / "b.pt").exists()
    p = _worker(tmp_path / "b", tmp_path / "b.pt", "--average", average, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    a, b = torch.load(tmp_path / "a.pt", weights_only=True), torch.load(tmp_path / "b.pt", weights_only=True)
    assert_equal(a["model"], b["model"])
    assert_equal(a["averaged"], b["averaged"])
    assert a["history"] == b["history"]


def test_ema_adds_no_host_sync_per_step(monkeypatch):
    from test_loop import count_syncs_in_step_loop  # the suite's own sync counter

    assert count_syncs_in_step_loop(monkeypatch, net=bn_net(), train=data(64), val=data(64),
                                    callbacks=[ol.EMA(0.9)], grad_accum=2) == []
