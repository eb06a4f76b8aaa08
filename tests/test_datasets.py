"""Data sets: built-ins, CSV, npz, user functions; feature names, labels and the split.
(Standardization is the run's preprocessing: tests/test_runs.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from optiloop.datasets import BUILTIN, split
from optiloop.errors import OptiloopError
from optiloop.sources import load_dataset
from optiloop.tables import TableOptions, prepare


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtins_load_with_their_task(name):
    ds = load_dataset(name)
    assert ds.X.dtype == np.float32 and ds.X.ndim == 2 and len(ds.X) == len(ds.y)
    assert ds.task == ("regression" if name == "diabetes" else "classification")
    assert ds.out_features == (1 if name == "diabetes" else ds.num_classes)
    assert len(ds.features) == ds.X.shape[1] and len(set(ds.features)) == len(ds.features)
    assert ds.target == "target"


def test_split_is_seeded_and_keeps_the_raw_values():
    ds = load_dataset("wine")
    a, b = split(ds, seed=3), split(ds, seed=3)
    assert np.array_equal(a.X_val, b.X_val) and len(a.X_val) == round(0.2 * len(ds.X))
    assert not np.array_equal(split(ds, seed=4).X_val, a.X_val)
    # every row lands in exactly one side, unscaled
    rows = {tuple(r) for r in np.concatenate([a.X_train, a.X_val])}
    assert rows == {tuple(r) for r in ds.X} and len(a.X_train) + len(a.X_val) == len(ds.X)


def test_csv_with_named_target_and_text_labels(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("label,a,b\ncat,1,2\ndog,3,4\ncat,5,6\ndog,7,8\n")
    ds = load_dataset(str(p), target="label")
    assert ds.classes == ["cat", "dog"] and ds.y.tolist() == [0, 1, 0, 1]
    assert ds.X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert ds.features == ["a", "b"] and ds.target == "label"
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


def test_csv_integer_labels_stay_integers_and_bad_columns_are_named(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,y\n1,2,3\n3,4,5\n5,6,3\n7,8,5\n")
    ds = load_dataset(str(p))
    assert ds.classes == [3, 5] and all(type(c) is int for c in ds.classes)
    p.write_text("a,b,y\n1,x,3\n3,4,5\n")  # a number column with a text cell: typed as a mistake, not a category
    with pytest.raises(OptiloopError, match="column 'b' is not numeric: 1 of its 2 filled cells are text"):
        prepare(load_dataset(str(p)), TableOptions())
    p.write_text("a,a,y\n1,2,3\n3,4,5\n")
    with pytest.raises(OptiloopError, match="column 'a' appears more than once"):
        load_dataset(str(p))


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtins_are_read_without_importing_scikit_learn_and_equal_its_loaders(name):
    import sklearn.datasets

    X, y, features = BUILTIN[name][0]()
    reference = getattr(sklearn.datasets, f"load_{name}")()
    np.testing.assert_array_equal(X, reference.data)  # diabetes too: scaled as load_diabetes() scales it
    np.testing.assert_array_equal(y, reference.target)
    assert features == [str(f) for f in reference.feature_names]
