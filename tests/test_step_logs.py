"""The step's own values (StepOutput(logs=...)) averaged per epoch like the loss, and loss="model"
with metrics on the output's logits and the batch's labels."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import SignalAt
from test_loop import count_syncs_in_step_loop  # the suite's own sync counter
from torch import nn
from torch.nn import functional as F

import optiloop as ol
from optiloop import checkpoint as C


def data(n=70):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g)
    return X, (X[:, 0] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))


def logging_step(model, batch):
    x, y = batch
    logits = model(x)
    rec = F.cross_entropy(logits, y)
    # values the test can compute without the model: the epoch's sample-weighted mean of x[:, 1]
    return ol.StepOutput(rec, outputs=logits, targets=y,
                         logs={"x1": x[:, 1].mean(), "rec": rec, "half": 0.5})


def test_step_logs_are_sample_weighted_epoch_means_in_the_history(tmp_path):
    X, y = data(70)  # batches of 16: a short last batch of 6
    Xv, yv = data(23)
    h = ol.fit(net(), (X, y), val_data=(Xv, yv), step=logging_step, epochs=2, batch_size=16, progress=False,
               seed=0, metrics=["accuracy"])
    assert h["train_x1"] == pytest.approx([X[:, 1].mean().item()] * 2, abs=1e-6)  # every sample once per epoch
    assert h["val_x1"] == pytest.approx([Xv[:, 1].mean().item()] * 2, abs=1e-6)
    assert h["train_half"] == [0.5, 0.5]
    assert h["train_rec"] == pytest.approx(h["train_loss"], abs=1e-9) and h["val_rec"] == h["val_loss"]
    assert list(h.rows[0]) == ["epoch", "train_loss", "train_acc", "train_x1", "train_rec", "train_half",
                               "val_loss", "val_acc", "val_x1", "val_rec", "val_half", "lr", "seconds"]
    h.to_csv(tmp_path / "h.csv")
    assert ol.History.from_csv(tmp_path / "h.csv")["val_x1"] == pytest.approx(h["val_x1"])


def test_step_logs_add_no_host_sync_per_step(monkeypatch):
    X, y = data(64)
    assert count_syncs_in_step_loop(monkeypatch, train=(X, y), val=(X, y), step=logging_step, grad_accum=2,
                                    metrics=["accuracy"]) == []


def test_step_logs_under_accumulation_and_a_partial_epoch_resume_exactly(tmp_path):
    def train(folder, resume=None, callbacks=()):
        X, y = data(70)
        h = ol.fit(net(), (X, y), val_data=(X, y), step=logging_step, epochs=2, batch_size=8, grad_accum=2,
                   progress=False, seed=0, resume=resume, callbacks=[ol.Checkpoint(folder, every_seconds=3600),
                                                                     *callbacks])
        return [{k: v for k, v in r.items() if k != "seconds"} for r in h]

    straight = train(tmp_path / "a")
    with pytest.raises(ol.TrainingInterrupted):
        train(tmp_path / "b", callbacks=[SignalAt(7)])  # epoch 2 (5 steps each), after its 4th batch
    assert C.load_checkpoint(tmp_path / "b" / "last.pt")["partial_train"]["logged"]["x1"]["at"] == [0, 1, 2, 3]
    assert train(tmp_path / "b", resume=tmp_path / "b") == straight


def test_step_logs_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    X, y = data(32)
    ol.fit(net(), (X, y), val_data=(X, y), step=logging_step, epochs=2, batch_size=16, progress=False, seed=0,
           callbacks=[ol.TensorBoard(tmp_path)])
    ea = EventAccumulator(str(tmp_path))
    ea.Reload()
    assert {"epoch/train_x1", "epoch/val_rec"} <= set(ea.Tags()["scalars"])
    assert ea.Scalars("epoch/val_x1")[0].value == pytest.approx(X[:, 1].mean().item(), abs=1e-6)


@pytest.mark.parametrize("logs, message", [
    ({"loss": 1.0}, "step log 'loss': a log needs a name of its own"),
    ({"acc": 1.0}, "step log 'acc': a log needs a name of its own"),
    ({"kl": torch.ones(3)}, "step log 'kl' must be one number (a scalar tensor or a float), got (3,)"),
    ({"kl": "high"}, "step log 'kl' must be one number (a scalar tensor or a float), got str"),
])
def test_bad_step_logs_are_one_line(logs, message):
    def step(model, batch):
        x, y = batch
        out = model(x)
        return ol.StepOutput(F.cross_entropy(out, y), outputs=out, targets=y, logs=logs)

    X, y = data(16)
    with pytest.raises(ol.OptiloopError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ol.fit(net(), (X, y), step=step, epochs=1, progress=False, metrics=["accuracy"])


class HFLike(nn.Module):
    """transformers' shape: forward(input_ids=..., labels=...) -> an object with .loss and .logits."""

    def __init__(self):
        super().__init__()
        self.net = net()

    def forward(self, features, labels=None):
        logits = self.net(features)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def test_loss_model_computes_metrics_from_logits_and_labels():
    X, y = data(48)
    model = HFLike()
    h = ol.fit(model, {"features": X, "labels": y}, val_data={"features": X, "labels": y}, loss="model",
               metrics=["accuracy"], epochs=2, batch_size=16, progress=False, seed=0)
    model.eval()
    with torch.no_grad():
        acc = (model(X).logits.argmax(1) == y).float().mean().item()
    assert h["val_acc"][-1] == pytest.approx(acc)
    assert "train_acc" in h.rows[0]


def test_loss_model_without_labels_in_the_batch_says_metrics_need_outputs():
    class OwnLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net()

        def forward(self, x, y):
            logits = self.net(x)
            return SimpleNamespace(loss=F.cross_entropy(logits, y), logits=logits)

    X, y = data(16)
    with pytest.raises(ol.OptiloopError, match="metrics acc need the step's outputs and targets"):
        ol.fit(OwnLoss(), (X, y), loss="model", metrics=["accuracy"], epochs=1, progress=False)
