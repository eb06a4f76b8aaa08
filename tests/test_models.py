"""Built-in models and user model functions."""

from __future__ import annotations

import pytest
import torch

from optiloop.errors import OptiloopError
from optiloop.models import build_model


def test_mlp_hidden_sizes_and_dropout():
    m = build_model("mlp", 64, 10, hidden=[32, 16], dropout=0.1)
    linears = [x for x in m if isinstance(x, torch.nn.Linear)]
    sizes = [(lin.in_features, lin.out_features) for lin in linears]
    assert sizes == [(64, 32), (32, 16), (16, 10)]
    assert any(isinstance(x, torch.nn.Dropout) for x in m)
    assert m(torch.randn(5, 64)).shape == (5, 10)


def test_cnn_reshapes_flat_8x8_rows():
    m = build_model("cnn", 64, 10)
    assert m(torch.randn(4, 64)).shape == (4, 10)
    with pytest.raises(OptiloopError, match="square images"):
        build_model("cnn", 13, 3)


@pytest.mark.parametrize(("name", "opts", "match"), [
    ("mlp", {"width": 3}, "model.width: model 'mlp' does not take it; valid keys: name, hidden"),
    ("mlp", {"hidden": [0]}, "model.hidden: must be a list of positive integers"),
    ("mlp", {"dropout": 1.0}, "model.dropout: must be >= 0 and < 1"),
    ("resnet", {}, "unknown model 'resnet'; choose one of: cnn, mlp"),
])
def test_bad_model_options(name, opts, match):
    with pytest.raises(OptiloopError, match=match):
        build_model(name, 8, 2, **opts)


def test_user_function_gets_sizes_and_keys(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def tiny(in_features, out_features, width=4):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(in_features, width),\n"
        "                               torch.nn.Linear(width, out_features))\n"
        "def notamodel(in_features, out_features):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("mymodels:tiny", 6, 2, width=5)
    assert m[0].out_features == 5 and m(torch.randn(1, 6)).shape == (1, 2)
    with pytest.raises(OptiloopError, match="unexpected keyword"):
        build_model("mymodels:tiny", 6, 2, depth=3)
    with pytest.raises(OptiloopError, match="must return a torch.nn.Module"):
        build_model("mymodels:notamodel", 6, 2)
