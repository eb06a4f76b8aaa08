"""The defaults of fit() and optiloop train side by side (optiloop.defaults): the table says what
each door really uses, and optiloop list prints it."""

from __future__ import annotations

import inspect

import optiloop as ol
from optiloop.config import DEFAULTS, resolve
from optiloop.defaults import FIT, table


def test_the_fit_column_is_fits_signature():
    from optiloop.fit_inputs import DEFAULT_BATCH_SIZE

    params = inspect.signature(ol.fit).parameters
    # batch_size=None in the signature: fit can tell it was not given (a DataLoader batches itself)
    effective = {"batch_size": DEFAULT_BATCH_SIZE}
    for key, value in FIT.items():
        default = params[key].default
        assert (effective[key] if default is None and key in effective else default) == value, key


def test_the_command_line_column_is_the_resolved_default_config():
    cfg = resolve()
    rows = {r[0]: r for r in table()}
    assert rows["epochs"][1:3] == (str(FIT["epochs"]), str(cfg["train"]["epochs"]))
    assert rows["batch size"][1:3] == (str(FIT["batch_size"]), str(cfg["train"]["batch_size"]))
    assert rows["early stopping"][2].startswith(f"patience {cfg['train']['early_stopping']}")
    assert rows["scheduler"][2] == cfg["scheduler"]["name"] == DEFAULTS["scheduler"]["name"]
    assert rows["seed"][2] == str(cfg["train"]["seed"])
    o = cfg["optimizer"]
    assert rows["optimizer"][2] == f"{o['name']} (lr={o['lr']:g}, weight_decay={o['weight_decay']:g})"
    # "same values": fit's adamw with torch's defaults is the command line's adamw
    torch_defaults = ol.optimizer_defaults(FIT["optimizer"])
    assert (torch_defaults["lr"], torch_defaults["weight_decay"]) == (o["lr"], o["weight_decay"])
    # every row that says "same" shows the same value on both sides
    for setting, fit_side, cli_side, why in table():
        if why == "same":
            assert fit_side == cli_side, setting


def test_list_prints_the_table(run_main):
    code, out, err = run_main("list")
    assert code == 0, err
    section = out.split("defaults of the two doors")[1]
    for setting, fit_side, cli_side, _ in table():
        line = next(x for x in section.splitlines() if x.strip().startswith(setting))
        assert fit_side in line and cli_side in line
