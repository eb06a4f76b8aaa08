"""ol.predict: any module's outputs on tensors, arrays, DataFrames, (X, y) pairs and DataLoaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import optiloop as ol


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def test_every_input_form_gives_the_models_own_outputs_in_order():
    m = model()
    X = torch.randn(37, 4)
    with torch.no_grad():
        expected = m.eval()(X)
    m.train()
    frame = pd.DataFrame(X.numpy(), columns=list("abcd"))
    loader = DataLoader(TensorDataset(X, torch.zeros(37)), batch_size=5, shuffle=False)
    for data in (X, X.numpy(), X.numpy().astype(np.float64), frame, (X, torch.zeros(37)), loader,
                 X.tolist()):
        out = ol.predict(m, data, batch_size=8)  # 37 rows in batches of 8: a short last batch
        assert out.shape == (37, 3) and not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert m.training  # its mode given back (dropout was off while predicting)


def test_bad_inputs_are_one_line():
    with pytest.raises(ol.OptiloopError, match="must be a torch.nn.Module"):
        ol.predict("not a model", torch.randn(2, 4))
    with pytest.raises(ol.OptiloopError, match="batch_size"):
        ol.predict(model(), torch.randn(2, 4), batch_size=0)
    with pytest.raises(ol.OptiloopError, match="numeric"):
        ol.predict(model(), np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ol.OptiloopError, match="no inputs"):
        ol.predict(model(), torch.randn(0, 4))
