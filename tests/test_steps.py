"""The step contract: any batch structure, ``step=``, ``loss="model"``, StepOutput counts, the
optimizer-step hook and step logs, and every loop guarantee on the custom paths."""

import dataclasses
import warnings
from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from test_loop import count_syncs_in_step_loop  # the suite's own sync counter
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import optiloop as ol
from optiloop.data import make_batches, to_device

CPU = torch.device("cpu")


def data(n=48, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def linear(seed=1):
    torch.manual_seed(seed)
    return nn.Linear(5, 3)


def quiet(**kw):
    return {"progress": False, "seed": 0, **kw}


def same_params(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


class OwnLoss(nn.Module):
    """A transformers-style model: keyword inputs, returns an object with .loss and .logits."""

    def __init__(self, seed=1):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(5, 3)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


class TupleLoss(OwnLoss):
    """A nanoGPT-style model: returns (logits, loss)."""

    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        return out.logits, out.loss


def tuple_step(model, batch):
    logits, loss = model(*batch)
    return ol.StepOutput(loss, outputs=logits, targets=batch[1])


# --- batches of any structure ---------------------------------------------------------------------
def test_dict_batches_with_the_models_own_loss_train_exactly_as_the_default_path():
    X, y = data()
    own, plain = OwnLoss(), linear()
    h_own = ol.fit(own, {"x": X, "labels": y}, val_data={"x": X, "labels": y}, loss="model", epochs=3,
                   batch_size=16, **quiet())
    h_plain = ol.fit(plain, (X, y), val_data=(X, y), epochs=3, batch_size=16, **quiet())
    assert torch.equal(own.linear.weight, plain.weight) and torch.equal(own.linear.bias, plain.bias)
    assert h_own["train_loss"] == h_plain["train_loss"] and h_own["val_loss"] == h_plain["val_loss"]
    assert h_own["train_loss"][-1] < h_own["train_loss"][0]


def test_a_step_returning_outputs_gets_metrics_equal_to_the_default_path():
    X, y = data()
    a, b = TupleLoss(), linear()
    ha = ol.fit(a, (X, y), val_data=(X, y), step=tuple_step, metrics=["accuracy", "top2"], epochs=2,
                batch_size=16, **quiet())
    hb = ol.fit(b, (X, y), val_data=(X, y), metrics=["accuracy", "top2"], epochs=2, batch_size=16, **quiet())
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in ha] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in hb]


def test_a_step_returning_a_bare_tensor_trains():
    X, y = data()
    net = TupleLoss()
    before = net.linear.weight.detach().clone()
    h = ol.fit(net, (X, y), step=lambda model, batch: model(*batch)[1], epochs=2, batch_size=16, **quiet())
    assert not torch.equal(before, net.linear.weight) and h["train_loss"][1] < h["train_loss"][0]


def test_tuple_of_three_arrays_and_a_tuple_batch_for_loss_model():
    X, y = data()
    w = torch.ones(len(X))  # per-sample weights of 1: the plain mean, so the default path is the reference

    class Weighted(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear()

        def forward(self, x, labels, weight):  # model(*batch): called with the tuple's three parts
            per = nn.functional.cross_entropy(self.linear(x), labels, reduction="none")
            return {"loss": (per * weight).sum() / weight.sum()}  # a dict with "loss"

    weighted, plain = Weighted(), linear()
    h = ol.fit(weighted, (X, y, w), loss="model", optimizer="sgd", lr=0.5, epochs=2, batch_size=16, **quiet())
    ol.fit(plain, (X, y), optimizer="sgd", lr=0.5, epochs=2, batch_size=16, **quiet())
    for p, q in zip(weighted.linear.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert h["train_loss"][1] < h["train_loss"][0]


Pair = namedtuple("Pair", "x y")


@dataclasses.dataclass
class Sample:
    inputs: dict
    target: torch.Tensor
    note: str = "kept"


class Structured(Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"pair": Pair(self.X[i], self.y[i]), "id": i}


def test_nested_batches_from_a_dataloader_reach_the_step_whole():
    X, y = data()
    seen = []

    def step(model, batch):
        seen.append(batch)
        x, t = batch["pair"]
        return ol.StepOutput(nn.functional.cross_entropy(model(x), t), outputs=model(x), targets=t)

    h = ol.fit(linear(), Structured(X, y), step=step, metrics=["accuracy"], epochs=1, batch_size=16, **quiet())
    assert isinstance(seen[0]["pair"], Pair) and seen[0]["pair"].x.shape == (16, 5)
    assert seen[0]["id"].shape == (16,) and len(h) == 1


def test_the_device_mover_walks_every_structure_and_keeps_its_types():
    batch = {"a": Pair(torch.zeros(2), [torch.ones(3), "text"]),
             "b": Sample({"ids": torch.zeros(2, dtype=torch.long)}, torch.ones(2)), "n": 3, "none": None}
    moved = to_device(batch, torch.device("meta"))  # a real device move, no GPU needed
    assert isinstance(moved["a"], Pair) and isinstance(moved["b"], Sample)
    assert moved["a"].x.device.type == "meta" and moved["a"].y[0].device.type == "meta"
    assert moved["b"].inputs["ids"].device.type == "meta" and moved["b"].target.device.type == "meta"
    assert moved["a"].y[1] == "text" and moved["b"].note == "kept" and moved["n"] == 3 and moved["none"] is None
    assert batch["a"].x.device.type == "cpu"  # the original is untouched


def test_in_memory_dicts_are_index_batched_with_one_permutation():
    X, y = data(n=10)
    b = make_batches({"x": X, "labels": y}, batch_size=4, shuffle=True, seed=3, device=CPU)
    pair = make_batches((X, y), batch_size=4, shuffle=True, seed=3, device=CPU)
    b.set_epoch(1)
    pair.set_epoch(1)
    got = list(b)
    assert [len(x["labels"]) for x in got] == [4, 4, 2] == b.batch_sizes()
    for d, (xp, yp) in zip(got, pair):  # the same samples, in the same order, as the (X, y) path
        assert torch.equal(d["x"], xp) and torch.equal(d["labels"], yp)


# --- counts: averages and gradient accumulation -----------------------------------------------
def token_data(n=32, length=7, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g)
    mask = torch.rand(n, length, generator=g) > 0.4  # a different number of real tokens per row
    mask[:, 0] = True
    return ids, mask


def token_model(seed=3, vocab=11):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))


def token_step(model, batch):
    ids, mask = batch
    logits = model(ids)[mask]
    return ol.StepOutput(nn.functional.cross_entropy(logits, ids[mask]), outputs=logits, targets=ids[mask],
                         count=mask.sum())  # tokens, counted on the device


def test_averages_weigh_each_batch_by_the_count_the_step_returns():
    ids, mask = token_data()
    net = token_model()
    h = ol.fit(net, (ids, mask), step=token_step, val_data=(ids, mask), metrics=["accuracy"], optimizer="sgd",
               lr=0.0, epochs=1, batch_size=5, **quiet())  # lr 0: the model stays as it is
    logits = net(ids)[mask]
    per_token = nn.functional.cross_entropy(logits, ids[mask], reduction="none")
    assert h["val_loss"][0] == pytest.approx(per_token.mean().item(), rel=1e-6)
    assert h["train_loss"][0] == pytest.approx(per_token.mean().item(), rel=1e-6)
    assert h["val_acc"][0] == pytest.approx((logits.argmax(1) == ids[mask]).float().mean().item())


@pytest.mark.parametrize("accum, small", [(4, 4), (2, 8)])
def test_accumulation_with_token_counts_equals_the_large_batch(accum, small):
    ids, mask = token_data()
    a, b = token_model(), token_model()
    ha = ol.fit(a, (ids, mask), step=token_step, optimizer="sgd", lr=0.5, epochs=2, batch_size=small,
                grad_accum=accum, **quiet())
    hb = ol.fit(b, (ids, mask), step=token_step, optimizer="sgd", lr=0.5, epochs=2, batch_size=16, **quiet())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-6)
    # and it is not trivially so: weighting micro-batches equally gives other weights
    c = token_model()
    ol.fit(c, (ids, mask), step=lambda m, batch: token_step(m, batch).loss, optimizer="sgd", lr=0.5, epochs=2,
           batch_size=small, grad_accum=accum, **quiet())  # counts from the batch's rows, not tokens
    assert not all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(c.parameters(), b.parameters()))


class Stream(IterableDataset):
    """No __len__ per batch known in advance: sizes come from the batches themselves."""

    def __init__(self, X, y, sizes):
        self.X, self.y, self.sizes = X, y, sizes

    def __iter__(self):
        start = 0
        for s in self.sizes:
            yield self.X[start:start + s], self.y[start:start + s]
            start += s

    def __len__(self):
        return len(self.sizes)


def test_accumulation_over_batches_of_unknown_size_weighs_each_by_its_samples():
    X, y = data(n=20)
    a, b = linear(), linear()
    stream = DataLoader(Stream(X, y, [3, 7, 6, 4]), batch_size=None)  # groups: 3+7, 6+4
    ol.fit(a, stream, optimizer="sgd", lr=0.5, epochs=1, grad_accum=2, **quiet())
    big = DataLoader(Stream(X, y, [10, 10]), batch_size=None)
    ol.fit(b, big, optimizer="sgd", lr=0.5, epochs=1, **quiet())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --- no host sync per step, on every path --------------------------------------------------------
@pytest.mark.parametrize("path", ["loss=model on dicts", "step with token counts", "tuple step with metrics"])
def test_no_host_sync_inside_the_step_loop_on_custom_paths(monkeypatch, path):
    X, y = data(n=64)
    if path == "loss=model on dicts":
        kw = {"net": OwnLoss(), "train": {"x": X, "labels": y}, "val": {"x": X, "labels": y}, "loss": "model"}
    elif path == "step with token counts":
        ids, mask = token_data(n=64)
        kw = {"net": token_model(), "train": (ids, mask), "val": (ids, mask), "step": token_step,
              "metrics": ["accuracy"]}
    else:
        kw = {"net": TupleLoss(), "train": (X, y), "val": (X, y), "step": tuple_step, "metrics": ["accuracy", "top2"]}
    seen = []

    class Hooks(ol.Callback):  # the new events with listeners: still no sync
        def on_before_optimizer_step(self, state, logs):
            seen.append(type(logs["loss"]))

        def on_step_end(self, state, logs):
            seen.append(type(logs["loss"]))

    calls = count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", grad_accum=2, clip_grad_norm=1.0,
                                     callbacks=[Hooks()], **kw)
    assert calls == []
    assert seen and set(seen) == {torch.Tensor}


# --- hooks: gradients before the optimizer step, step logs --------------------------------------
def test_before_optimizer_step_sees_unscaled_gradients_before_clipping():
    X, y = data(n=32)
    norms = {}

    class GradNorm(ol.Callback):
        def __init__(self, key):
            self.key = key

        def on_before_optimizer_step(self, state, logs):
            grads = [p.grad for p in state.unwrapped_model.parameters()]
            norms.setdefault(self.key, []).append(torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g) for g in grads])).item())

        def on_step_end(self, state, logs):
            norms.setdefault(self.key + " logged", []).append(logs["grad_norm"].item())

    for amp in (None, "fp16"):
        ol.fit(linear(), (X, y), amp=amp, device="cpu", clip_grad_norm=1e-3,
               optimizer="sgd", lr=0.1, epochs=1, batch_size=8, callbacks=[GradNorm(str(amp))], **quiet())
    # far above the clipping threshold: seen before clipping
    assert min(norms["None"]) > 1e-2
    # fp16 loss scaling multiplies gradients by 65536: the hook sees them unscaled
    assert norms["fp16"] == pytest.approx(norms["None"], rel=1e-2)
    assert norms["None logged"] == pytest.approx(norms["None"], rel=1e-5)  # clip_grad_norm_'s pre-clip norm


def test_step_logs_hold_the_steps_loss_and_every_groups_lr_as_device_values():
    ids, mask = token_data()
    steps, counts = [], []

    def counting_step(model, batch):
        out = token_step(model, batch)
        counts.append(int(out.count))
        return out

    class Record(ol.Callback):
        def on_step_end(self, state, logs):
            steps.append((logs["loss"], list(logs["lr"]), [g["lr"] for g in state.optimizer.param_groups]))

    h = ol.fit(token_model(), (ids, mask), step=counting_step, optimizer="adamw", lr=0.01, weight_decay=0.1,
               scheduler="onecycle", epochs=2, batch_size=4, grad_accum=2, callbacks=[Record()], **quiet())
    assert len(steps) == 8 and all(isinstance(s[0], torch.Tensor) and s[0].ndim == 0 for s in steps)
    assert all(len(s[1]) == 2 for s in steps)  # adamw: a decay and a no-decay group
    expected = ol.preview_schedule("onecycle", lr=0.01, epochs=2, steps_per_epoch=4, per_step=True)
    assert [s[1][0] for s in steps] == pytest.approx(expected)  # the LR each step was taken at
    assert steps[0][1] != steps[0][2]  # ... not the scheduler's next one
    # a step's loss is its group's token-weighted mean: weighted by the groups' tokens, the steps'
    # losses give the epoch's train_loss
    for epoch in range(2):
        tokens = [counts[8 * epoch + 2 * k] + counts[8 * epoch + 2 * k + 1] for k in range(4)]
        losses = [s[0].item() for s in steps[4 * epoch:4 * epoch + 4]]
        assert sum(t * v for t, v in zip(tokens, losses)) / sum(tokens) == pytest.approx(h["train_loss"][epoch])


def test_validation_runs_the_same_step_under_no_grad_or_the_eval_step():
    X, y = data(n=16)
    seen = []

    def step(model, batch):
        seen.append(("train" if model.training else "eval", torch.is_grad_enabled()))
        return tuple_step(model, batch)

    ol.fit(TupleLoss(), (X, y), val_data=(X, y), step=step, epochs=1, batch_size=16, **quiet())
    assert seen == [("train", True), ("eval", False)]
    evals = []

    def eval_step(model, batch):
        evals.append(torch.is_grad_enabled())
        return ol.StepOutput(torch.tensor(0.25), count=len(batch[0]))

    h = ol.fit(TupleLoss(), (X, y), val_data=(X, y), step=step, eval_step=eval_step, epochs=1, batch_size=16,
               **quiet())
    assert evals == [False] and h["val_loss"] == [0.25]


# --- everything else still holds on the custom paths -----------------------------------------------
def test_gradient_clipping_and_nonfinite_skip_on_a_custom_step():
    X, y = data(n=16)
    calls = [0]

    def step(model, batch):
        calls[0] += 1
        out = tuple_step(model, batch)
        if calls[0] == 2:  # the 2nd micro-batch is bad
            out.loss = out.loss * float("nan")
        return out

    skipped, reference = TupleLoss(), TupleLoss()
    before = skipped.linear.weight.detach().clone()
    ol.fit(skipped, (X, y), step=step, optimizer="sgd", lr=1.0, epochs=1, batch_size=4, grad_accum=2,
           clip_grad_value=1e-4, **quiet(nonfinite="skip"))
    moved = (skipped.linear.weight - before).abs().max().item()
    assert 0 < moved <= 2e-4 * 1.01  # two steps of at most lr * clip_value each
    zero = [0]

    def zero_step(model, batch):  # the same run with the bad batch contributing nothing
        zero[0] += 1
        out = tuple_step(model, batch)
        if zero[0] == 2:
            out.loss = out.loss * 0.0
        return out

    ol.fit(reference, (X, y), step=zero_step, optimizer="sgd", lr=1.0, epochs=1, batch_size=4, grad_accum=2,
           clip_grad_value=1e-4, **quiet())
    assert same_params(skipped, reference)


def test_fp16_scaler_and_scheduler_coupling_on_a_custom_step():
    X, y = data(n=64)
    calls = [0]

    def step(model, batch):  # step 3: a finite loss whose gradients are NaN
        calls[0] += 1
        out = tuple_step(model, batch)
        if calls[0] == 3:
            out.loss = out.loss + torch.sqrt((out.outputs * 0).abs()).sum()
        return out

    seen = {}

    class Watch(ol.Callback):
        def on_fit_end(self, state, logs):
            seen.update(taken=state.step, scheduled=state.schedule.steps_done)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ol.fit(TupleLoss(), (X, y), step=step, amp="fp16", device="cpu", epochs=2, batch_size=16,
               scheduler="onecycle", callbacks=[Watch()], **quiet())
    assert seen["taken"] == seen["scheduled"] == 7  # 8 batches, one step skipped by the scaler


def test_nonfinite_stop_names_the_step_on_a_custom_path(tmp_path):
    X, y = data(n=32)
    calls = [0]

    def step(model, batch):
        calls[0] += 1
        out = tuple_step(model, batch)
        return out.loss * float("nan") if calls[0] == 7 else out.loss

    with pytest.raises(ol.NonFiniteLossError, match="epoch 2, step 3"):
        ol.fit(TupleLoss(), (X, y), step=step, epochs=3, batch_size=8,
               callbacks=[ol.Checkpoint(tmp_path, monitor="train_loss", every_seconds=0)], **quiet())
    assert ol.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_early_stopping_checkpoint_and_plateau_on_a_custom_steps_metric(tmp_path):
    X, y = data(n=64)
    h = ol.fit(TupleLoss(), (X, y), val_data=(X, y), step=tuple_step, metrics=["accuracy"], optimizer="sgd",
               lr=0.5, scheduler={"name": "plateau", "monitor": "val_acc", "mode": "max", "patience": 0},
               epochs=30, batch_size=16,
               callbacks=[ol.EarlyStopping(monitor="val_acc", patience=3, restore_best=True),
                          ol.Checkpoint(tmp_path, monitor="val_acc")], **quiet())
    best = h.best("val_acc", mode="max")
    assert len(h) < 30  # early stopping ended it
    assert ol.load_checkpoint(tmp_path / "best.pt")["epoch"] == best["epoch"]
    assert min(h["lr"]) < h["lr"][0]  # the plateau schedule reacted to val_acc


def test_resume_on_a_custom_path_continues_bit_exactly(tmp_path):
    ids, mask = token_data()

    def run(model, epochs, resume=None):
        return ol.fit(model, {"ids": ids, "mask": mask}, step=lambda m, b: token_step(m, (b["ids"], b["mask"])),
                      optimizer="adamw", lr=0.01, scheduler="cosine", epochs=epochs, batch_size=4, grad_accum=2,
                      callbacks=[ol.Checkpoint(tmp_path / ("b" if resume else "a"), monitor=None, every_n_steps=3,
                                               every_seconds=1e9)], resume=resume, **quiet())

    straight = token_model()
    h1 = run(straight, 3)
    # a second run stopped after 5 steps (mid-epoch), then resumed from its last.pt
    class Halt(ol.Callback):
        def on_step_end(self, state, logs):
            if state.step == 5:
                raise KeyboardInterrupt

    broken = token_model()
    with pytest.raises(KeyboardInterrupt):
        ol.fit(broken, {"ids": ids, "mask": mask}, step=lambda m, b: token_step(m, (b["ids"], b["mask"])),
               optimizer="adamw", lr=0.01, scheduler="cosine", epochs=3, batch_size=4, grad_accum=2,
               callbacks=[ol.Checkpoint(tmp_path / "b", monitor=None, every_n_steps=3, every_seconds=1e9), Halt()],
               **quiet())
    assert ol.load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    resumed = token_model()
    h2 = run(resumed, 3, resume=tmp_path / "b")
    assert same_params(straight, resumed)
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]


# --- bad input: one line, nothing written ---------------------------------------------------------
class NoLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = linear()

    def forward(self, x, labels=None):
        return SimpleNamespace(logits=self.linear(x), loss=None)


@pytest.mark.parametrize("kwargs, match", [
    ({"step": lambda m, b: "0.5"}, "step must return the loss tensor or ol.StepOutput"),
    ({"step": lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")},
     r"the step's loss must be a scalar, got shape \(8,\); reduce it"),
    ({"step": lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]).detach()}, "does not require grad"),
    ({"step": lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), "metrics": ["accuracy"]},
     r"metrics acc need the step's outputs and targets; return ol.StepOutput"),
    ({"model": NoLoss(), "loss": "model", "train": {"x": data(8)[0]}}, r"the model returned a SimpleNamespace with no"),
    ({"model": TupleLoss(), "loss": "model"},
     r"returned a tuple of 2, not an object with .loss; for a \(logits, loss\)"),
    ({"train": {"x": data(8)[0], "labels": data(8)[1]}}, "the batch is a dict with keys x, labels, but a loss"),
    ({"step": 3}, "step must be a function"),
    ({"step": tuple_step, "loss": "mse"}, "give step= or loss=, not both"),
    ({"train": {"x": data(8)[0], "labels": data(4)[1]}},
     r"same number of samples .*data\['x'\]: 8, data\['labels'\]: 4"),
])
def test_bad_steps_are_one_clear_line_and_nothing_is_written(tmp_path, kwargs, match):
    model = kwargs.pop("model", linear())
    train = kwargs.pop("train", data(8))
    with pytest.raises(ol.OptiloopError, match=match) as e:
        ol.fit(model, train, epochs=1, batch_size=8, callbacks=[ol.Checkpoint(tmp_path / "run", monitor=None)],
               **quiet(**kwargs))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_batch_the_device_mover_cannot_handle_is_one_clear_line():
    X, y = data(n=8)
    loader = DataLoader(list(range(8)), batch_size=4, collate_fn=lambda idx: {"x": X[idx], "ids": set(idx)})
    with pytest.raises(ol.OptiloopError, match=r"batch\['ids'\] is a set, which optiloop cannot move to a device"):
        ol.fit(linear(), loader, loss="model", epochs=1, **quiet())
