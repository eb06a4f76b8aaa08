"""Several optimizers (optiloop.several): each on its parameters with its own scheduler at its own
interval, automatic (one loss each) against a hand-written loop, manual against Lightning's
manual-optimization loop written out, checkpoints holding all of them, exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAt
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol
from optiloop import checkpoint as C

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gan  # noqa: E402


class Pair(nn.Module):
    """Two parts whose losses both depend on both parts: only each optimizer's own parameters may
    receive its loss's gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def data(n=64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g)
    return X, X[:, :1] * 2 - X[:, 1:2]


def pair_step(model, batch):
    x, y = batch
    z = model.encoder(x)
    out = model.head(z)
    return {"head": F.mse_loss(out, y), "encoder": F.mse_loss(out, y) + 0.1 * z.pow(2).mean()}


SPEC = {"encoder": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "scheduler": {"name": "step", "step_size": 1,
                                                                              "gamma": 0.5}},
        "head": {"name": "adam", "lr": 0.01, "scheduler": {"name": "exponential", "gamma": 0.9, "interval": "step"}}}


def assert_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("accum", [1, 2])
def test_automatic_several_optimizers_equal_a_hand_written_loop(accum):
    X, y = data()
    epochs, loader = 3, DataLoader(TensorDataset(X, y), batch_size=8)
    ref = Pair()
    opt_e = torch.optim.SGD(ref.encoder.parameters(), lr=0.05, momentum=0.9)
    opt_h = torch.optim.Adam(ref.head.parameters(), lr=0.01)
    sched_e = torch.optim.lr_scheduler.StepLR(opt_e, step_size=1, gamma=0.5)
    sched_h = torch.optim.lr_scheduler.ExponentialLR(opt_h, gamma=0.9)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt_e.param_groups[0]["lr"])
        for i, batch in enumerate(loader):
            losses = pair_step(ref, batch)
            # each loss's gradient, on its own optimizer's parameters, at the same weights
            (losses["encoder"] / accum).backward(inputs=list(ref.encoder.parameters()), retain_graph=True)
            (losses["head"] / accum).backward(inputs=list(ref.head.parameters()))
            if (i + 1) % accum == 0:
                for opt, sched in ((opt_e, None), (opt_h, sched_h)):
                    opt.step()
                    opt.zero_grad()
                    if sched is not None:
                        sched.step()
        sched_e.step()

    ours = Pair()
    h = ol.fit(ours, loader, optimizer=SPEC, step=pair_step, epochs=epochs, grad_accum=accum, progress=False,
               fast=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, atol=1e-6, rtol=0)
    assert h["lr"] == pytest.approx(lrs)  # the encoder's schedule, per epoch (group 0)
    assert set(h.rows[0]) >= {"train_loss", "train_loss_encoder", "train_loss_head"}
    assert h["train_loss"][0] == pytest.approx(h["train_loss_encoder"][0] + h["train_loss_head"][0])


def test_manual_step_equals_lightnings_manual_optimization_loop_written_out():
    X = gan.moons(256, seed=0)
    loader = DataLoader(TensorDataset(X), batch_size=32)
    epochs = 2
    # Lightning's manual optimization: training_step steps the optimizers itself; the schedulers
    # are stepped by their intervals (here written out).
    torch.manual_seed(0)
    ref = gan.GAN(hidden=16)
    spec = gan.optimizers()
    opts = {n: torch.optim.Adam(getattr(ref, n).parameters(), lr=s["lr"], betas=s["betas"]) for n, s in spec.items()}
    sched_g = torch.optim.lr_scheduler.StepLR(opts["generator"], step_size=10, gamma=0.5)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(opts["discriminator"], gamma=0.999)
    ol.seed_everything(0)
    for _ in range(epochs):
        for batch in loader:
            gan.gan_step(ref, batch, opts)
            sched_d.step()
        sched_g.step()

    torch.manual_seed(0)
    ours = gan.GAN(hidden=16)
    ol.fit(ours, loader, optimizer=spec, step=ol.manual(gan.gan_step), epochs=epochs, seed=0, progress=False,
           fast=False)
    assert_equal(ours.state_dict(), ref.state_dict())




@pytest.mark.parametrize("manual", [False, True])
def test_an_interrupted_run_with_several_optimizers_resumes_bit_exact(tmp_path, manual):
    X = gan.moons(192, seed=0)
    Xv = gan.moons(64, seed=1)

    def train(folder, resume=None, callbacks=()):
        torch.manual_seed(0)
        model = gan.GAN(hidden=16)
        if manual:
            step = {"step": ol.manual(gan.gan_step)}
        else:
            def step_fn(model, batch):  # simultaneous updates: one loss each, the loop steps
                out = gan.eval_step(model, batch)
                return ol.StepOutput(out.loss)
            step = {"step": step_fn}
        h = ol.fit(model, {"real": X}, val_data={"real": Xv}, optimizer=gan.optimizers(), eval_step=gan.eval_step,
                   epochs=3, batch_size=32, seed=0, progress=False, resume=resume,
                   callbacks=[ol.Checkpoint(folder, monitor="val_gap", mode="min", every_seconds=3600), *callbacks],
                   **step)
        return model, [{k: v for k, v in r.items() if k != "seconds"} for r in h]

    model_a, rows_a = train(tmp_path / "a")
    with pytest.raises(ol.TrainingInterrupted):
        train(tmp_path / "b", callbacks=[SignalAt(9)])  # epoch 2 of 3 (6 steps each)
    last = C.load_checkpoint(tmp_path / "b" / "last.pt")
    assert set(last["optimizer"]) == set(last["scheduler"]) == {"generator", "discriminator"}
    assert last["scheduler"]["discriminator"]["steps_done"] == 9  # its per-step schedule
    model_b, rows_b = train(tmp_path / "b", resume=tmp_path / "b")
    assert_equal(model_a.state_dict(), model_b.state_dict())
    assert rows_a == rows_b
    final = C.load_checkpoint(tmp_path / "a" / "last.pt")
    assert final["scheduler"]["generator"]["events"] == 3  # its per-epoch schedule, once per epoch


def test_params_by_function_and_one_schedulers_frequency():
    X, y = data(32)
    spec = {"encoder": {"name": "sgd", "lr": 0.1, "params": lambda m: m.encoder.parameters(),
                        "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5, "interval": "step",
                                      "frequency": 2}},
            "top": {"name": "sgd", "lr": 0.1, "params": "head"}}

    def step(model, batch):
        loss = pair_step(model, batch)
        return {"encoder": loss["encoder"], "top": loss["head"]}

    monitor = ol.LRMonitor(per_step=True)
    ol.fit(Pair(), (X, y), optimizer=spec, step=step, epochs=1, batch_size=8, progress=False, seed=0,
           callbacks=[monitor])
    # 4 steps: the encoder's LR halves every 2nd optimizer step; the head's stays
    assert [lrs[0] for lrs in monitor.steps] == [0.1, 0.1, 0.05, 0.05]
    assert [lrs[1] for lrs in monitor.steps] == [0.1] * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": {"encoder": {"name": "sgd"}, "head": {"name": "sgd", "params": lambda m: m.parameters()}}},
     "a parameter is in optimizers 'encoder' and 'head'"),
    ({"optimizer": {"decoder": {"name": "sgd"}}}, "optimizer 'decoder': the model has no submodule 'decoder' "
                                                   "(its submodules: encoder, head)"),
    ({"optimizer": {"encoder": {"lr": 0.1}, "head": {"name": "sgd"}}}, "optimizer 'encoder' needs a 'name'"),
    ({"optimizer": SPEC, "scheduler": "cosine"}, "with several optimizers each one takes its own scheduler"),
    ({"optimizer": SPEC, "step": lambda m, b: {"encoder": pair_step(m, b)["encoder"]}},
     "the step returned losses for encoder; the optimizers are encoder, head: one loss each"),
    ({"optimizer": SPEC, "step": ol.manual(lambda m, b, o: None), "grad_accum": 2},
     "a manual step does its own optimization: grad_accum=2 does not apply"),
    ({"optimizer": SPEC, "step": ol.manual(lambda m, b, o: None), "val_data": data(8)},
     "validation needs eval_step="),
    ({"optimizer": "sgd", "step": ol.manual(lambda m, b, o: None)}, "ol.manual(step) drives named optimizers"),
    ({"optimizer": SPEC, "step": pair_step, "amp": "fp16"}, "amp='fp16' with several optimizers is not supported"),
    ({"optimizer": SPEC, "callbacks": [ol.SWA(1)]}, "SWA's SWALR takes over one optimizer's LR; with several"),
    ({"optimizer": SPEC, "callbacks": [ol.EMA(0.5)], "epochs": 2}, None),  # EMA averages the whole model
])
def test_bad_several_optimizer_settings_are_one_line(kwargs, message):
    kwargs = {"step": pair_step, "epochs": 1, **kwargs}
    if message is None:
        model = Pair()
        ol.fit(model, data(16), progress=False, **kwargs)
        ema = kwargs["callbacks"][0]
        assert int(ema.averaged.n_averaged) == 2 and torch.equal(model.head.weight, ema.averaged.module.head.weight)
        return
    with pytest.raises(ol.OptiloopError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ol.fit(Pair(), data(16), progress=False, **kwargs)


def test_the_gan_example_learns_the_moons(tmp_path, capsys):
    result = gan.main(["--no-progress", "--epochs", "5", "--out", str(tmp_path / "run")])
    h = result["history"]
    # generated points came near the moons (a GAN's curve is not monotone: best.pt keeps the best epoch)
    assert min(h["val_gap"]) < 0.75 * result["untrained_gap"]
    assert {"train_loss_generator", "train_loss_discriminator", "val_loss_generator"} <= set(h.rows[0])
    assert "generated points lie" in capsys.readouterr().out
    best = C.load_checkpoint(tmp_path / "run" / "best.pt")
    assert set(best["optimizer"]) == {"generator", "discriminator"}
    assert best["epoch"] == 1 + h["val_gap"].index(min(h["val_gap"]))
