"""What fit does with its inputs before the loop (optiloop.fit_inputs): pandas (X, y),
validation_split, one callback, a DataLoader's own batch size, and one line for float class targets,
a class id beyond the model's output width and an X of the wrong width."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import optiloop as ol
from optiloop.fit_inputs import split_off


def net(n_in: int = 4, n_out: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 8), nn.ReLU(), nn.Linear(8, n_out))


def frame(n: int = 100, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    return X, pd.Series(np.repeat([0, 1, 2, 2], n // 4), name="label")


class Seen(ol.Callback):
    def __init__(self):
        self.batches: list[int] = []
        self.val_rows = 0

    def on_fit_start(self, state, logs):
        self.batches.append(state.batches_per_epoch)


def test_a_dataframe_and_series_train_with_a_seeded_stratified_validation_split():
    X, y = frame()
    seen = Seen()
    h = ol.fit(net(), (X, y), validation_split=0.2, epochs=2, progress=False, seed=0, callbacks=seen,
               metrics=["accuracy"], batch_size=16)
    assert "val_acc" in h.keys() and len(h) == 2
    assert seen.batches == [5]  # 80 training rows in batches of 16: the split happened before the loop
    # stratified: each class keeps its share on both sides; seeded: the same rows every time
    Xa, ya = X.to_numpy(np.float32), y.to_numpy()
    (tr, va), (_, va2) = split_off((Xa, ya), 0.2, seed=0, classes=ya), split_off((Xa, ya), 0.2, seed=0, classes=ya)
    assert np.array_equal(va[0], va2[0]) and np.bincount(va[1]).tolist() == [5, 5, 10]
    assert len(tr[0]) == 80 and not np.array_equal(split_off((Xa, ya), 0.2, seed=1, classes=ya)[1][0], va[0])
    # tensors keep their type; a regression split is a plain share
    t_tr, t_va = split_off((torch.tensor(Xa), torch.randn(100)), 0.25, seed=0)
    assert isinstance(t_va[0], torch.Tensor) and len(t_va[0]) == 25 and len(t_tr[1]) == 75


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"validation_split": 1.0}, "validation_split must be a fraction between 0 and 1 (e.g. 0.2), got 1.0"),
    ({"validation_split": 0.2, "val_data": "given"}, "give val_data or validation_split, not both"),
    ({"data": "loader", "validation_split": 0.2}, "validation_split holds out rows of in-memory data"),
    ({"data": "text"}, "train_data X: column 'kind' is not numeric (object: 'a', 'b'); encode it first"),
    ({"data": "nan"}, "train_data X: column 'a' has 1 empty cells (NaN); fill them first"),
    ({"data": "text_labels"}, "train_data y: column 'label' is not numeric"),
    ({"data": "float_labels"}, "train_data: loss='cross_entropy' takes class ids (integers), but y holds floats"),
    ({"model": net(4, 2)}, "train_data: class id 2 is beyond the model's output width 2 (its 2 outputs take class "
                           "ids 0..1); give the last layer (Linear '2') one output per class"),
    ({"model": net(5, 3)}, "train_data: X has 4 columns (features), but the model's first layer (Linear '0') takes 5"),
])
def test_fit_inputs_that_cannot_work_are_one_line_naming_which(kwargs, needle):
    X, y = frame()
    with_nan = X.copy()
    with_nan.iloc[3, 0] = np.nan
    data = {"loader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4))),
            "text": (X.assign(kind=["a", "b"] * 50), y), "nan": (with_nan, y),
            "text_labels": (X, y.map({0: "x", 1: "y", 2: "z"})), "float_labels": (X, y.astype(float))}
    train = data.get(kwargs.pop("data", None), (X, y))
    if kwargs.get("val_data") == "given":
        kwargs["val_data"] = (X, y)
    with pytest.raises(ol.OptiloopError) as e:
        ol.fit(kwargs.pop("model", net()), train, epochs=1, progress=False, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_model_registered_in_another_order_than_it_runs_is_not_refused():
    class HeadFirst(nn.Module):  # the head is registered before the body: a static guess would be wrong
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Linear(4, 8)

        def forward(self, x):
            return self.head(torch.relu(self.body(x)))

    X, y = frame()
    h = ol.fit(HeadFirst(), (X, y), epochs=1, progress=False, seed=0)
    assert len(h) == 1


def test_batch_size_with_a_dataloader_warns_that_the_loaders_own_is_used():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 4), torch.randint(0, 3, (20,))),
                                         batch_size=5)
    with pytest.warns(UserWarning, match=r"batch_size=64 is not used: a DataLoader batches by itself \(its batch_size "
                                         r"is 5\)"):
        ol.fit(net(), loader, batch_size=64, epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loader's own size, or none given: nothing to say
        ol.fit(net(), loader, batch_size=5, epochs=1, progress=False)
        ol.fit(net(), loader, epochs=1, progress=False)


def test_dir_lists_the_api_only():
    assert dir(ol) == sorted([*ol.__all__, "__version__"])
    assert "importlib" not in dir(ol) and "annotations" not in dir(ol)
