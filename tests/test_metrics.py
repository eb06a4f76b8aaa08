"""Metrics: sample-weighted means, classification and regression, callables, errors."""

import pytest
import torch
from conftest import HANG

import optiloop as ol
from optiloop.metrics import MetricSet, get_loss, resolve_metric

CPU = torch.device("cpu")


def test_weighted_by_sample_count_across_batches():
    ms = MetricSet(["accuracy"], CPU)
    ms.update(torch.tensor(1.0), 4, torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 0, 0]))
    ms.update(torch.tensor(6.0), 1, torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert ms.compute() == {"loss": pytest.approx(2.0), "acc": pytest.approx(0.8)}


def test_counts_may_be_device_tensors_and_weigh_the_loss():
    """A language model's count is its tokens, e.g. (labels != -100).sum(): a 0-d tensor."""
    ms = MetricSet([], CPU)
    ms.update(torch.tensor(2.0), torch.tensor(3))  # 3 tokens at mean loss 2
    ms.update(torch.tensor(6.0), 1)  # an int count mixes in
    assert ms.compute() == {"loss": pytest.approx((2.0 * 3 + 6.0) / 4)}
    restored = MetricSet([], CPU)
    restored.load_state_dict(ms.state_dict())  # a mid-epoch checkpoint keeps tensor counts
    assert restored.compute() == ms.compute()


def test_metrics_without_outputs_name_what_to_return():
    ms = MetricSet(["accuracy"], CPU)
    with pytest.raises(ol.OptiloopError, match=r"metrics acc need the step.s outputs and targets"):
        ms.update(torch.tensor(1.0), 4)


def test_binary_accuracy_from_one_logit_and_topk():
    key, fn = resolve_metric("accuracy")
    assert key == "acc"
    assert fn(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 1.0, 0.0])).item() == 1
    key, fn = resolve_metric("top2")
    out = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert key == "top2" and fn(out, torch.tensor([2, 2])).item() == 1


def test_regression_metrics_do_not_broadcast():
    out, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 1.0, 1.0])  # (N,1) vs (N,)
    assert resolve_metric("mae")[1](out, y).item() == pytest.approx(4.0)  # sum of |err| = 0+1+3
    assert resolve_metric("mse")[1](out, y).item() == pytest.approx(10.0)
    assert get_loss("mse")(out, y).item() == pytest.approx(10 / 3)


def test_callable_metric_is_a_batch_mean_weighted_by_size():
    def hit(out, y):
        return (out.argmax(1) == y).float().mean()

    ms = MetricSet([hit], CPU)
    ms.update(torch.tensor(0.0), 3, torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0]))
    ms.update(torch.tensor(0.0), 1, torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert ms.compute()["hit"] == pytest.approx(0.75)


def test_first_nonfinite_batch():
    ms = MetricSet([], CPU)
    for v in (1.0, 2.0, float("inf"), float("nan")):
        ms.update(torch.tensor(v), 2)
    assert ms.first_nonfinite() == 2


def test_unknown_metric_and_loss():
    with pytest.raises(ol.OptiloopError, match="unknown metric 'f1'; choose one of: accuracy, mae, mse, top<k>"):
        resolve_metric("f1")
    with pytest.raises(ol.OptiloopError, match="unknown loss 'hinge'; choose one of: bce, cross_entropy"):
        get_loss("hinge")


def test_callable_metric_may_return_a_python_float():
    ms = MetricSet([lambda out, y: 0.5], CPU)
    ms.update(torch.tensor(1.0), 4, torch.zeros(4, 2), torch.zeros(4))
    assert ms.compute()["<lambda>"] == pytest.approx(0.5)


# --- torchmetrics Metric objects: exact epoch values ---------------------------------------------
@pytest.fixture
def tm():
    return pytest.importorskip("torchmetrics")


def _fixed_model_data(n=90, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    torch.manual_seed(seed)
    return torch.nn.Linear(5, classes), X, y


def test_torchmetrics_are_named_by_class_or_by_the_users_key(tm):
    from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassF1Score
    from torchmetrics.regression import MeanSquaredError, R2Score

    assert [resolve_metric(m)[0] for m in (MulticlassF1Score(3), BinaryAUROC(), R2Score(), MulticlassAccuracy(3),
                                           MeanSquaredError())] == ["f1", "auroc", "r2", "acc", "mse"]
    assert ol.loop.logged_keys({"f1_macro": MulticlassF1Score(3), "acc": "accuracy"}, validation=False) == \
        ["epoch", "train_loss", "train_f1_macro", "train_acc", "lr", "seconds"]
    with pytest.raises(ol.OptiloopError, match="metric names must be unique.*name them with a dict"):
        MetricSet([MulticlassAccuracy(3), "accuracy"], CPU)  # both are "acc"
    with pytest.raises(ol.OptiloopError, match="a MetricCollection is not one metric; pass its metrics as a dict"):
        resolve_metric(tm.MetricCollection([MulticlassF1Score(3)]))


def test_f1_auroc_and_r2_are_exact_epoch_values_not_batch_means(tm):
    from sklearn.metrics import f1_score, r2_score, roc_auc_score
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score
    from torchmetrics.regression import R2Score

    net, X, y = _fixed_model_data()
    with torch.no_grad():
        logits = net(X)
    metrics = {"f1": MulticlassF1Score(3, average="macro"), "auroc": MulticlassAUROC(3)}
    h = ol.fit(net, (X, y), val_data=(X, y), optimizer="sgd", lr=0.0, epochs=2, batch_size=16, metrics=metrics,
               progress=False)
    f1 = f1_score(y.numpy(), logits.argmax(1).numpy(), average="macro")
    auroc = roc_auc_score(y.numpy(), logits.softmax(1).numpy(), multi_class="ovr", average="macro")
    for key in ("train_f1", "val_f1"):
        assert h[key] == pytest.approx([f1, f1], abs=1e-6)  # reset every epoch: epoch 2 is not 2 epochs' worth
    assert h["val_auroc"][-1] == pytest.approx(auroc, abs=1e-6)
    batch_mean = sum(f1_score(y[s:s + 16].numpy(), logits[s:s + 16].argmax(1).numpy(), average="macro")
                     * len(y[s:s + 16]) for s in range(0, 90, 16)) / 90
    assert abs(batch_mean - f1) > 1e-3  # what a batch-weighted mean would have said instead

    g = torch.Generator().manual_seed(1)
    Xr = torch.randn(70, 3, generator=g)
    yr = Xr @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(70, generator=g)
    reg = torch.nn.Linear(3, 1)
    hr = ol.fit(reg, (Xr, yr), val_data=(Xr, yr), loss="mse", optimizer="sgd", lr=0.0, epochs=1, batch_size=16,
                metrics=[R2Score()], progress=False)
    with torch.no_grad():
        assert hr["val_r2"][0] == pytest.approx(r2_score(yr.numpy(), reg(Xr).squeeze(1).numpy()), abs=1e-5)


def test_the_users_metric_object_is_left_untouched(tm):
    from torchmetrics.classification import MulticlassF1Score

    net, X, y = _fixed_model_data()
    mine = MulticlassF1Score(3)
    ol.fit(net, (X, y), val_data=(X, y), epochs=1, metrics=[mine], progress=False)
    assert mine.update_count == 0


def test_a_metric_that_is_not_one_number_is_one_line(tm):
    from torchmetrics.classification import MulticlassF1Score

    net, X, y = _fixed_model_data()
    with pytest.raises(ol.OptiloopError, match=r"metric 'f1' computed \(3,\), not one number"):
        ol.fit(net, (X, y), epochs=1, metrics=[MulticlassF1Score(3, average=None)], progress=False)


def test_exact_metric_state_survives_a_mid_epoch_state_dict_exactly(tm):
    import io

    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score

    net, X, y = _fixed_model_data()
    logits = net(X).detach()
    make = lambda: MetricSet({"f1": MulticlassF1Score(3), "auroc": MulticlassAUROC(3, thresholds=None)}, CPU)  # noqa: E731
    full, part = make(), make()
    for s in range(0, 90, 10):
        full.update(torch.tensor(1.0), 10, logits[s:s + 10], y[s:s + 10])
        if s < 50:
            part.update(torch.tensor(1.0), 10, logits[s:s + 10], y[s:s + 10])
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)  # as a checkpoint holds it, loaded weights-only
    buf.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for s in range(50, 90, 10):
        resumed.update(torch.tensor(1.0), 10, logits[s:s + 10], y[s:s + 10])
    assert resumed.compute() == full.compute()
    with pytest.raises(ol.OptiloopError, match="the checkpoint holds no state for metric 'f1'"):
        make().load_state_dict({**part.state_dict(), "exact": {}})


def test_a_mid_epoch_resume_gives_the_exact_metric_of_an_uninterrupted_run(tm, tmp_path):
    from torchmetrics.classification import MulticlassF1Score

    def run(folder, crash_at=None, resume=None):
        net, X, y = _fixed_model_data()

        class Crash(ol.Callback):
            def on_step_end(self, state, logs):
                if state.step == crash_at:
                    raise KeyboardInterrupt

        cbs = [ol.Checkpoint(folder, monitor=None, every_n_steps=2), Crash()]
        return ol.fit(net, (X, y), optimizer="sgd", lr=0.5, epochs=2, batch_size=8, seed=0, callbacks=cbs,
                      metrics=[MulticlassF1Score(3, average="macro")], progress=False, resume=resume)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=17)  # epoch 2 (12 steps each), after the save at step 16
    resumed = run(tmp_path / "b", resume=str(tmp_path / "b"))
    assert resumed["train_f1"] == straight["train_f1"]


def _sync_free_step_loop(monkeypatch, metric):
    import test_loop  # the step loop's device-read counter

    X, y = test_loop.data(n=64)
    return test_loop.count_syncs_in_step_loop(monkeypatch, train=(X, y), val=(X, y), metrics=[metric])


@pytest.mark.parametrize("validate", [True, False])
def test_torchmetrics_update_reads_nothing_back_per_step(tm, monkeypatch, validate):
    """No .item() / bool(tensor) / .tolist() per step, ours or torchmetrics'. (What this CPU test
    cannot see: a CUDA kernel whose output size depends on the data, torch.unique in torchmetrics'
    input validation or torch.bincount in its stat scores, waits for the device inside torch.)"""
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score

    assert _sync_free_step_loop(monkeypatch, MulticlassF1Score(3, validate_args=validate)) == []
    assert _sync_free_step_loop(monkeypatch, MulticlassAUROC(3, validate_args=validate)) == []


def test_handing_over_in_chunks_gives_the_same_values(tm, monkeypatch):
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score

    import optiloop.metrics as M

    net, X, y = _fixed_model_data()
    logits = net(X).detach()

    def epoch():
        ms = MetricSet({"f1": MulticlassF1Score(3), "auroc": MulticlassAUROC(3)}, CPU)
        for s in range(0, 90, 8):
            ms.update(torch.tensor(1.0), len(y[s:s + 8]), logits[s:s + 8], y[s:s + 8])
        return ms.compute()

    whole = epoch()
    monkeypatch.setattr(M, "HOLD_ELEMENTS", 40)  # a hand-over every batch or two
    assert epoch() == whole


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_exact_metrics_under_ddp_are_computed_over_every_ranks_samples(tm, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sklearn.metrics import f1_score, roc_auc_score

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{here.parent / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(here / "ddp_metrics_worker.py"), str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=HANG)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank logs the same exact values
    sys.path.insert(0, str(here))
    import ddp_worker

    X, y = ddp_worker.dataset()
    net = ddp_worker.model()
    net.load_state_dict(ranks[0]["model"])
    with torch.no_grad():
        logits = net(X[:45])
    last = ranks[0]["history"][-1]
    assert last["val_f1"] == pytest.approx(f1_score(y[:45].numpy(), logits.argmax(1).numpy(), average="macro"),
                                           abs=1e-6)
    assert last["val_auroc"] == pytest.approx(roc_auc_score(y[:45].numpy(), logits.softmax(1)[:, 1].numpy()),
                                              abs=1e-6)
