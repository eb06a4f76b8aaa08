"""The run config: layers, pass-through keys, strict one-line validation."""

from __future__ import annotations

import pytest

from optiloop.config import DEFAULTS, parse_set, parse_value, resolve
from optiloop.errors import OptiloopError
from optiloop.optim import OPTIMIZERS


def test_defaults_resolve_to_the_documented_run():
    cfg = resolve()
    assert cfg["optimizer"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01}
    assert cfg["train"]["epochs"] == DEFAULTS["train"]["epochs"] == 30
    assert cfg["data"]["name"] == "digits" and cfg["model"]["hidden"] == [128]


def test_layers_file_then_set_then_flags(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[optimizer]\nname = "sgd"\nlr = 0.5\nnesterov = true\nmomentum = 0.8\n')
    cfg = resolve(f, sets=["optimizer.lr=0.2"], flags={"optimizer": {"momentum": 0.9, "lr": None}})
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.2, "nesterov": True, "momentum": 0.9}


def test_renaming_drops_only_the_defaults_of_that_section():
    cfg = resolve(sets=["scheduler.T_0=3"], flags={"scheduler": {"name": "cosine_restarts"},
                                                     "optimizer": {"name": "sgd"}})
    assert cfg["scheduler"] == {"name": "cosine_restarts", "T_0": 3}
    # nothing set for AdamW leaks into SGD, which starts from its own defaults in the one table
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_starts_from_its_one_record(name):
    cfg = resolve(flags={"optimizer": {"name": name}})
    assert cfg["optimizer"] == {"name": name, **OPTIMIZERS[name].defaults}
    assert cfg["optimizer"]["lr"] > 0
    # a value the user gives wins over the table
    assert resolve(flags={"optimizer": {"name": name, "lr": 0.5}})["optimizer"]["lr"] == 0.5


def test_chosen_epochs_run_in_full_unless_early_stopping_is_asked_for(tmp_path):
    assert resolve()["train"]["early_stopping"] == 5  # the default run: 30 epochs, patience 5
    assert resolve(flags={"train": {"epochs": 40}})["train"]["early_stopping"] == 0
    assert resolve(sets=["train.epochs=40"])["train"]["early_stopping"] == 0
    assert resolve(flags={"train": {"epochs": 40, "early_stopping": 3}})["train"]["early_stopping"] == 3
    f = tmp_path / "run.toml"
    f.write_text("[train]\nepochs = 12\n")
    assert resolve(f)["train"]["early_stopping"] == 0
    f.write_text("[train]\nepochs = 12\nearly_stopping = 4\n")
    assert resolve(f, flags={"train": {"epochs": 20}})["train"] == {**resolve(f)["train"], "epochs": 20}
    assert resolve(f)["train"]["early_stopping"] == 4


@pytest.mark.parametrize(("item", "message"), [
    ("optimizer.lr=-1", "optimizer.lr: must be > 0 (got -1)"),
    ("train.epochs=0", "train.epochs: must be >= 1 (got 0)"),
    ("train.epochs=3.5", "train.epochs: must be an integer (got 3.5)"),
    ("train.epochs=true", "train.epochs: must be an integer (got True)"),
    ("data.val_fraction=1", "data.val_fraction: must be < 1 (got 1)"),
    ("data.task=images", "data.task: must be one of: 'auto', 'classification' or 'regression'"),
    ("optimizer.name=adamx",
     "optimizer.name: unknown optimizer 'adamx' (did you mean 'adamax'?); choose one of: adafactor"),
    ("scheduler.name=cos", "scheduler.name: unknown scheduler 'cos' (did you mean 'cosine'?); choose one of: constant"),
    ("train.foo=1", "train.foo: unknown key; valid keys: epochs, batch_size"),
    ("nope.x=1", "unknown section [nope]; valid sections: data, model, optimizer"),
])
def test_errors_are_one_line_with_the_key_path(item, message):
    with pytest.raises(OptiloopError) as e:
        resolve(sets=[item])
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_bad_toml_and_bad_set_syntax(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[optimizer\nlr = ")
    with pytest.raises(OptiloopError, match="not valid TOML"):
        resolve(f)
    with pytest.raises(OptiloopError, match="section.key=value"):
        resolve(sets=["lr=0.1"])
    f.write_text("optimizer = 3\n")
    with pytest.raises(OptiloopError, match="optimizer: must be a table"):
        resolve(f)


def test_values_parse_as_toml_else_bare_words():
    assert parse_value("[128, 64]") == [128, 64]
    assert parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("wine") == "wine"
    assert parse_set("model.hidden = [8]") == ("model", "hidden", [8])
