"""Metrics: sample-weighted means, classification and regression, callables, errors."""

import pytest
import torch

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
