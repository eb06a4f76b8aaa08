"""History: indexing, best, CSV / JSON round trips."""

import pytest

import optiloop as ol

ROWS = [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "lr": 0.1, "seconds": 1.25},
        {"epoch": 2, "train_loss": 0.30000000000000004, "val_loss": 0.45, "lr": 0.01, "seconds": 1.5}]


def test_index_by_key_and_best():
    h = ol.History(ROWS)
    assert h["val_loss"] == [0.4, 0.45] and len(h) == 2
    assert h.best("val_loss")["epoch"] == 1 and h.best("train_loss")["epoch"] == 2
    assert h.best("val_loss", mode="max")["epoch"] == 2


def test_missing_key_names_the_available_ones():
    with pytest.raises(ol.OptiloopError, match="history has no 'val_acc'; it has: epoch, train_loss, val_loss"):
        ol.History(ROWS)["val_acc"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_file_round_trip_is_exact(tmp_path, fmt):
    path = tmp_path / f"h.{fmt}"
    getattr(ol.History(ROWS), f"to_{fmt}")(path)
    back = getattr(ol.History, f"from_{fmt}")(path)
    assert back == ol.History(ROWS)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_best_follows_the_direction_rule():
    # was: History.best("val_r2") picked the minimum
    h = ol.History([{"epoch": 1, "val_r2": 0.5, "val_loss": 0.2}, {"epoch": 2, "val_r2": 0.9, "val_loss": 0.3}])
    assert h.best("val_r2")["epoch"] == 2 and h.best("val_loss")["epoch"] == 1
    assert h.best("val_r2", mode="min")["epoch"] == 1
    h = ol.History([{"epoch": 1, "custom_metric": 1.0}])
    with pytest.raises(ol.OptiloopError, match="cannot tell whether 'custom_metric'"):
        h.best("custom_metric")
