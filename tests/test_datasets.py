"""Data sets: built-ins, CSV, npz, user functions; split and standardization."""

from __future__ import annotations

import numpy as np
import pytest

from optiloop.datasets import BUILTIN, apply_split_stats, load_dataset, split
from optiloop.errors import OptiloopError


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtins_load_with_their_task(name):
    ds = load_dataset(name)
    assert ds.X.dtype == np.float32 and ds.X.ndim == 2 and len(ds.X) == len(ds.y)
    assert ds.task == ("regression" if name == "diabetes" else "classification")
    assert ds.out_features == (1 if name == "diabetes" else ds.num_classes)


def test_split_is_seeded_and_standardized_on_train_only():
    ds = load_dataset("wine")
    a, b = split(ds, seed=3), split(ds, seed=3)
    assert np.array_equal(a.X_val, b.X_val) and len(a.X_val) == round(0.2 * len(ds.X))
    assert np.allclose(a.X_train.mean(axis=0), 0, atol=1e-5)
    assert not np.allclose(a.X_val.mean(axis=0), 0, atol=1e-3)  # val keeps its own offset
    assert not np.array_equal(split(ds, seed=4).X_val, a.X_val)


def test_regression_target_standardized_and_other_data_rescaled():
    ds = load_dataset("diabetes")
    s = split(ds)
    assert abs(s.y_train.mean()) < 1e-5 and s.y_std > 1
    X, y = apply_split_stats(s, ds)
    assert X.shape == ds.X.shape and y.dtype == np.float32


def test_csv_with_named_target_and_text_labels(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("label,a,b\ncat,1,2\ndog,3,4\ncat,5,6\ndog,7,8\n")
    ds = load_dataset(str(p), target="label")
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 1, 0, 1]
    assert ds.X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    with pytest.raises(OptiloopError, match="no column 'y'; columns: label, a, b"):
        load_dataset(str(p), target="y")


def test_npz_and_user_function(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", X=np.random.rand(10, 3), y=np.random.rand(10))
    assert load_dataset(str(tmp_path / "d.npz")).task == "regression"
    np.savez(tmp_path / "bad.npz", X=np.zeros((2, 2)))
    with pytest.raises(OptiloopError, match="needs arrays X and y"):
        load_dataset(str(tmp_path / "bad.npz"))
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\ndef load():\n    return np.eye(4), np.array([0, 1, 0, 1])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_dataset("mydata:load").num_classes == 2
    with pytest.raises(OptiloopError, match="has no function 'nope'"):
        load_dataset("mydata:nope")


def test_unknown_name_lists_choices():
    with pytest.raises(OptiloopError, match="choose one of: breast_cancer, diabetes, digits, wine"):
        load_dataset("mnist")
