"""Every fast path computes what the plain path computes.

optiloop is fast because it picks torch's fused / foreach optimizers and batches in-memory data by
index instead of through a DataLoader. These tests pin that those shortcuts change nothing but
speed: same parameters after several steps, same batches in the same order, same trained weights.
No timings here (benchmarks/bench_fit.py measures speed); every test is small and quick.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import optiloop as ol
from optiloop.data import InMemoryBatches, make_batches

CPU = torch.device("cpu")


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(n: int = 100, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 6) -> None:
    """A few real steps on fixed batches: both models see identical gradients at step 1."""
    X, y = _data(48)
    for i in range(steps):
        xb, yb = X[i * 8 % 48 :][:8], y[i * 8 % 48 :][:8]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def _impl(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"


def _assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# --- optimizers: fused and foreach against torch's for-loop --------------------------------------
FUSED_ON_CPU = [
    ("adam", {"lr": 1e-2}),
    ("adamw", {"lr": 1e-2, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.1}),
]
FOREACH_ONLY = [
    ("rmsprop", {"lr": 1e-2, "momentum": 0.5}),
    ("nadam", {"lr": 1e-2}),
    ("radam", {"lr": 1e-2}),
    ("adamax", {"lr": 1e-2}),
]


def _reference(name: str, model: nn.Module, kwargs: dict) -> torch.optim.Optimizer:
    """torch's single-tensor for-loop, the implementation every other one must agree with.

    An explicit ``foreach=False`` always wins over optiloop's choice, on every optiloop version.
    """
    opt = ol.build_optimizer(name, model, fast=False, foreach=False, **kwargs)
    assert _impl(opt) == "for-loop"
    return opt


@pytest.mark.parametrize(("name", "kwargs"), FUSED_ON_CPU, ids=lambda v: str(v))
def test_fused_matches_for_loop(name: str, kwargs: dict) -> None:
    fast_model, ref_model = _model(), _model()
    fast = ol.build_optimizer(name, fast_model, fast=True, **kwargs)
    assert fast.defaults["fused"] is True  # fast=True really picked the fused kernel on CPU
    ref = _reference(name, ref_model, kwargs)
    before = [p.detach().clone() for p in ref_model.parameters()]
    _train_steps(fast_model, fast)
    _train_steps(ref_model, ref)
    assert any(not torch.equal(b, p) for b, p in zip(before, ref_model.parameters(), strict=True))
    _assert_same_params(fast_model, ref_model)
    # The optimizer state (moments, momentum buffers, step counts) agrees too: resuming a fused
    # run with the for-loop (or back) continues the same trajectory.
    for sf, sr in zip(fast.state.values(), ref.state.values(), strict=True):
        assert sf.keys() == sr.keys()
        for k in sf:
            fused_value, loop_value = torch.as_tensor(sf[k]), torch.as_tensor(sr[k])
            torch.testing.assert_close(fused_value.float(), loop_value.float(),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "kwargs"), FOREACH_ONLY, ids=lambda v: str(v))
def test_foreach_matches_for_loop(name: str, kwargs: dict) -> None:
    fast_model, ref_model = _model(), _model()
    fast = ol.build_optimizer(name, fast_model, fast=True, **kwargs)
    assert _impl(fast) == "foreach"  # no fused kernel for these: foreach is the fast path
    ref = _reference(name, ref_model, kwargs)
    _train_steps(fast_model, fast)
    _train_steps(ref_model, ref)
    _assert_same_params(fast_model, ref_model)


def test_fused_differs_from_a_perturbed_run() -> None:
    """The tolerance above is tight enough to see a real difference (here a 1% larger LR)."""
    a, b = _model(), _model()
    _train_steps(a, ol.build_optimizer("adamw", a, lr=1e-2))
    _train_steps(b, ol.build_optimizer("adamw", b, lr=1.01e-2, fast=False, foreach=False))
    with pytest.raises(AssertionError):
        _assert_same_params(a, b)


def test_user_choice_of_implementation_wins() -> None:
    opt = ol.build_optimizer("adamw", _model(), foreach=True)
    assert _impl(opt) == "foreach"


def test_fast_false_keeps_torch_default() -> None:
    opt = ol.build_optimizer("adamw", _model(), fast=False)
    assert not opt.defaults.get("fused") and not opt.defaults.get("foreach")


def test_fit_uses_fused_by_default() -> None:
    seen: dict[str, str] = {}

    class Spy(ol.Callback):
        def on_fit_start(self, state, logs):
            seen["impl"] = _impl(state.optimizer)

    ol.fit(_model(), _data(32), epochs=1, batch_size=16, callbacks=[Spy()], progress=False,
           seed=0, device="cpu")
    assert seen["impl"] == "fused"


# --- index batching against a DataLoader ----------------------------------------------------------
def _batches(it) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in it]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("epoch", [1, 2])
def test_tensor_batches_equal_dataloader_with_same_permutation(epoch: int) -> None:
    X, y = _data(100)
    tb = InMemoryBatches((X, y), batch_size=16, shuffle=True, seed=7, device=CPU)
    tb.set_epoch(epoch)
    order = tb.indices()
    assert sorted(order.tolist()) == list(range(100))  # a permutation: every sample once
    loader = DataLoader(TensorDataset(X, y), batch_size=16, sampler=order.tolist())
    ours = _batches(tb)
    assert [len(b[0]) for b in ours] == [16] * 6 + [4] == tb.batch_sizes()  # short last batch
    _assert_same_batches(ours, _batches(loader))


def test_tensor_batches_order_depends_on_epoch_and_is_reproducible() -> None:
    X, y = _data(100)
    tb = InMemoryBatches((X, y), batch_size=16, shuffle=True, seed=7, device=CPU)
    tb.set_epoch(1)
    first = tb.indices()
    tb.set_epoch(2)
    assert not torch.equal(first, tb.indices())  # a fresh shuffle every epoch
    tb.set_epoch(1)
    assert torch.equal(first, tb.indices())  # a pure function of (seed, epoch): resumable


def test_unshuffled_tensor_batches_equal_plain_dataloader() -> None:
    X, y = _data(50)
    tb = InMemoryBatches((X, y), batch_size=16, shuffle=False, seed=0, device=CPU)
    plain = DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False)
    _assert_same_batches(_batches(tb), _batches(plain))


def test_dataset_path_shuffles_like_the_tensor_path() -> None:
    """A Dataset goes through a DataLoader whose sampler draws the same permutation (seed+epoch)."""
    X, y = _data(100)
    fast = make_batches((X, y), batch_size=16, shuffle=True, seed=3, device=CPU)
    slow = make_batches(TensorDataset(X, y), batch_size=16, shuffle=True, seed=3, device=CPU)
    for epoch in (1, 2):
        fast.set_epoch(epoch)
        slow.set_epoch(epoch)
        _assert_same_batches(_batches(fast), _batches(slow))


# --- fit on tensors against fit on a DataLoader -------------------------------------------------
class EpochPermutation(Sampler[int]):
    """The order fit's tensor path uses: randperm from a generator seeded ``seed + epoch``, with
    epochs counted from 1 (one ``__iter__`` per epoch)."""

    def __init__(self, n: int, seed: int, shift: int = 0):
        self.n, self.seed, self.shift, self.epoch = n, seed, shift, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        self.epoch += 1
        g = torch.Generator().manual_seed(self.seed + self.epoch + self.shift)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _fit(data, epochs: int = 3) -> tuple[nn.Module, ol.History]:
    model = _model()
    X, y = _data(100)
    h = ol.fit(model, data, val_data=(X[:40], y[:40]), optimizer="sgd", lr=0.2, epochs=epochs,
               batch_size=16, metrics=["accuracy"], progress=False, seed=5, device="cpu")
    return model, h


def test_fit_on_tensors_equals_fit_on_dataloader_in_the_same_order() -> None:
    X, y = _data(100)
    fast_model, fast_h = _fit((X, y))
    loader = DataLoader(TensorDataset(X, y), batch_size=16, sampler=EpochPermutation(100, seed=5))
    loader_model, loader_h = _fit(loader)
    _assert_same_params(fast_model, loader_model)
    assert fast_h["train_loss"] == pytest.approx(loader_h["train_loss"], rel=1e-6)
    assert fast_h["val_acc"] == pytest.approx(loader_h["val_acc"])
    # Sensitivity: the same data in another order trains to other weights.
    other = DataLoader(TensorDataset(X, y), batch_size=16,
                       sampler=EpochPermutation(100, seed=5, shift=1000))
    other_model, _ = _fit(other)
    with pytest.raises(AssertionError):
        _assert_same_params(fast_model, other_model)


def test_fit_on_tensors_equals_fit_on_dataset() -> None:
    X, y = _data(100)
    fast_model, fast_h = _fit((X, y))
    ds_model, ds_h = _fit(TensorDataset(X, y))
    _assert_same_params(fast_model, ds_model)
    assert fast_h["train_loss"] == pytest.approx(ds_h["train_loss"], rel=1e-6)


def test_evaluate_on_tensors_equals_evaluate_on_dataloader() -> None:
    X, y = _data(90)
    model = _model()
    a = ol.evaluate(model, (X, y), metrics=["accuracy"], batch_size=32, device="cpu")
    b = ol.evaluate(model, DataLoader(TensorDataset(X, y), batch_size=32), metrics=["accuracy"],
                    device="cpu")
    assert a["acc"] == b["acc"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    # sample-weighted: the short last batch (26 of 90) weighs its share, as in one big batch
    full = nn.functional.cross_entropy(model(X), y).item()
    assert a["loss"] == pytest.approx(full, rel=1e-5)
