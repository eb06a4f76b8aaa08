"""Data: index batching, seeded per-epoch order, sharding, inputs and errors."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol
from optiloop.data import InMemoryBatches, make_batches

CPU = torch.device("cpu")


def batches(n=10, bs=4, **kw):
    X = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    return InMemoryBatches((X, torch.arange(n)), batch_size=bs, seed=kw.pop("seed", 0), device=CPU,
                         shuffle=kw.pop("shuffle", True), **kw)


def epoch_ids(b, epoch):
    b.set_epoch(epoch)
    return [y.tolist() for _, y in b]


def test_every_sample_once_with_a_short_last_batch():
    b = batches()
    ids = epoch_ids(b, 1)
    assert [len(i) for i in ids] == [4, 4, 2] == b.batch_sizes() and len(b) == 3
    assert sorted(sum(ids, [])) == list(range(10))


def test_order_is_a_function_of_seed_and_epoch():
    assert epoch_ids(batches(), 1) == epoch_ids(batches(), 1)
    assert epoch_ids(batches(), 1) != epoch_ids(batches(), 2)
    assert epoch_ids(batches(), 1) != epoch_ids(batches(seed=1), 1)


def test_unshuffled_is_in_order_and_x_matches_y():
    b = batches(shuffle=False)
    assert sum(epoch_ids(b, 1), []) == list(range(10))
    for x, y in b:
        assert torch.equal(x[:, 0].long(), y)


def test_shards_cover_the_epoch_with_equal_step_counts():
    shards = [batches(n=10, bs=2, rank=r, world_size=3) for r in range(3)]
    ids = [sum(epoch_ids(s, 1), []) for s in shards]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    assert set(sum(ids, [])) == set(range(10))


def test_numpy_inputs_are_converted():
    b = make_batches((np.zeros((6, 3)), np.arange(6, dtype=np.int32)), batch_size=4, shuffle=False,
                     seed=0, device=CPU)
    x, y = next(iter(b))
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_dataset_and_dataloader_inputs():
    ds = TensorDataset(torch.randn(9, 2), torch.arange(9))
    b = make_batches(ds, batch_size=4, shuffle=True, seed=0, device=CPU)
    b.set_epoch(1)
    first = [y.tolist() for _, y in b]
    b.set_epoch(1)
    assert [y.tolist() for _, y in b] == first  # reseeded per epoch: reproducible
    assert b.batch_sizes() == [4, 4, 1]
    assert len(make_batches(DataLoader(ds, batch_size=3), batch_size=1, shuffle=False, seed=0, device=CPU)) == 3


@pytest.mark.parametrize("data,match", [
    ((torch.zeros(3, 2), torch.zeros(2)), "X has 3 samples but y has 2"),
    ((torch.zeros(0, 2), torch.zeros(0)), "training data is empty"),
    ([1, 2, 3], r"training data must be a DataLoader, a Dataset, .*; got a list of int"),
    (("a", "b"), "X must be a torch.Tensor or numpy array, got str"),
])
def test_bad_data(data, match):
    with pytest.raises(ol.OptiloopError, match=match):
        make_batches(data, batch_size=2, shuffle=True, seed=0, device=CPU)


class FixedOrder:
    """A user's own ``ol.Batches``: fixed batches in a fixed order, recording the epochs it is set to."""

    replayable = True

    def __init__(self, X, y, size):
        self.pairs = [(X[i:i + size], y[i:i + size]) for i in range(0, len(X), size)]
        self.num_samples, self.epochs = len(X), []

    def __len__(self):
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def batch_sizes(self):
        return [len(x) for x, _ in self.pairs]

    def fingerprint(self):
        return f"fixed:{self.num_samples}"


def test_fit_takes_a_users_own_batches_as_they_are():
    torch.manual_seed(0)
    X, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    own = FixedOrder(X, y, 16)
    assert isinstance(own, ol.Batches)
    nets = [torch.nn.Linear(4, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    kw = dict(optimizer="sgd", lr=0.1, epochs=3, progress=False, seed=0)
    h = ol.fit(nets[0], own, val_data=own, **kw)
    # The same batches in the same order through an unshuffled DataLoader: the same training.
    ol.fit(nets[1], DataLoader(TensorDataset(X, y), batch_size=16, shuffle=False), **kw)
    assert own.epochs == [1, 2, 3] and len(h) == 3
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
