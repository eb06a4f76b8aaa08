"""The one direction rule: known names decide, the rest ask for mode= (issue 12, bugs 2 and 3)."""

import pytest

import optiloop as ol
from optiloop.directions import mode_for


@pytest.mark.parametrize("name,mode", [
    ("val_loss", "min"), ("train_loss", "min"), ("val_mae", "min"), ("val_mse", "min"), ("val_rmse", "min"),
    ("val_top1_error", "min"), ("val_error_rate", "min"), ("val_dice_loss", "min"), ("val_perplexity", "min"),
    ("calibration_error", "min"), ("val_wer", "min"),
    ("val_acc", "max"), ("val_accuracy", "max"), ("val_top5", "max"), ("val_auc", "max"), ("val_auroc", "max"),
    ("val_f1", "max"), ("val_f1_macro", "max"), ("val_iou", "max"), ("val_miou", "max"), ("val_dice", "max"),
    ("val_r2", "max"), ("val_precision", "max"), ("val_recall", "max"), ("val_average_precision", "max"),
    ("val_mcc", "max"), ("val_explained_variance", "max"), ("test_bleu", "max"),
])
def test_known_names(name, mode):
    assert mode_for(name) == mode


@pytest.mark.parametrize("name", ["val_custom", "lr", "val_foo_bar", "epoch"])
def test_an_unknown_name_is_an_error_asking_for_mode(name):
    with pytest.raises(ol.OptiloopError, match=f"cannot tell whether '{name}' improves up or down; pass "
                                               "mode='min' or mode='max'"):
        mode_for(name)
    assert mode_for(name, "max") == "max"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ol.OptiloopError, match="unknown mode 'up'; choose one of: auto, max, min"):
        mode_for("val_loss", "up")


def test_every_user_of_the_rule_agrees():
    """EarlyStopping, Checkpoint, the plateau scheduler and History.best read names the same way."""
    import torch

    history = ol.History([{"epoch": 1, "val_iou": 0.2, "val_top1_error": 0.5},
                          {"epoch": 2, "val_iou": 0.6, "val_top1_error": 0.3}])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for name, mode in [("val_iou", "max"), ("val_top1_error", "min")]:
        assert ol.EarlyStopping(monitor=name).monitor.mode == mode
        assert ol.Checkpoint("unused", monitor=name).monitor.mode == mode
        assert ol.build_scheduler("plateau", opt, monitor=name).scheduler.mode == mode
        assert history.best(name)["epoch"] == 2
    for make in (lambda: ol.EarlyStopping(monitor="val_custom"), lambda: ol.Checkpoint("x", monitor="val_custom"),
                 lambda: history.best("val_custom")):
        with pytest.raises(ol.OptiloopError, match="pass mode='min' or mode='max'"):
            make()
