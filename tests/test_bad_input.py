"""Bad input, end to end: one line naming the problem, exit code 2, nothing written, no work done.

The named cases are the ones users hit (issue 13's catalogue); the property test throws random
configs at ``optiloop train`` and checks the same contract for every one of them.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st


def assert_refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


def written(folder: Path) -> list[str]:
    """Everything under ``folder`` but the inputs a test put there itself."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.startswith("input"))


def _inputs(folder: Path) -> None:
    (folder / "input-latin1.csv").write_bytes("a,b,label\n1,2,caf\xe9\n3,4,th\xe9\n".encode("latin-1"))
    (folder / "input-binary.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "input-empty.npz").write_bytes(b"")
    (folder / "input-garbage.npz").write_bytes(b"PK\x03\x04 this is no zip at all")
    (folder / "input-mod.py").write_text("def data():\n    raise ValueError('no rows today')\n\n"
                                         "def model(in_features, out_features):\n    return 1 / 0\n\n"
                                         "def ragged():\n    return [[1.0, 2.0], [3.0]] * 5, [0, 1] * 5\n")
    (folder / "input-broken.py").write_text("def data(:\n    return 1\n")  # a syntax error
    (folder / "input-raises.py").write_text("import os\nraise RuntimeError('no GPU here')\n")  # on import


CASES = [
    (["--seed", str(10**30)], "train.seed: must be <="),
    (["--set", "data.seed=-1"], "data.seed: must be >= 0"),
    (["--lr", "inf"], "optimizer.lr: must be a finite number"),
    (["--momentum", "nan", "--optimizer", "sgd"], "optimizer.momentum: must be a finite number"),
    (["--set", "optimizer.betas=[0.9, nan]"], "optimizer.betas: must be a finite number"),
    (["--epochs", str(10**30)], "train.epochs: must be <="),
    (["--device", "mps"], "MPS is not available"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--config", "."], "is a folder; give the TOML file"),
    (["--data", "input-latin1.csv"], "not UTF-8 text"),
    (["--data", "input-binary.csv"], "not UTF-8 text"),
    (["--data", "input-empty.npz"], "not a readable .npz"),
    (["--data", "input-garbage.npz"], "not a readable .npz"),
    (["--data", "input-mod:data"], "raised ValueError: no rows today"),
    (["--model", "input-mod:model"], "raised ZeroDivisionError: division by zero"),
    (["--data", "input-mod:ragged"], "data 'input_mod:ragged': X is not a table of numbers"),
    (["--data", "input-broken:data"], "data 'input_broken:data': importing 'input_broken' raised SyntaxError"),
    (["--model", "input-broken:model"], "model 'input_broken:model': importing 'input_broken' raised SyntaxError"),
    (["--data", "input-raises:data"], "data 'input_raises:data': importing 'input_raises' raised RuntimeError: "
                                      "no GPU here"),
    (["--model", "input-raises:model"], "importing 'input_raises' raised RuntimeError: no GPU here"),
    (["--out", "/proc/optiloop-run"], "--out /proc/optiloop-run: cannot create anything in /proc"),
    (["--out", "x" * 300], "is longer than the 255 bytes"),
    (["--out", "input-mod.py/run"], "input-mod.py is a file, not a folder"),
]


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_train_refuses_bad_input_in_one_line_and_writes_nothing(run_main, tmp_path, monkeypatch, args, needle):
    _inputs(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # input-mod is importable as a user's module
    for name in ("mod", "broken", "raises"):  # importable as a user's module
        args = [a.replace(f"input-{name}:", f"input_{name}:") for a in args]
        (tmp_path / f"input_{name}.py").write_text((tmp_path / f"input-{name}.py").read_text())
    code, _, err = run_main("train", "--set", "train.epochs=1", *args)
    assert_refused(code, err, needle)
    assert [w for w in written(tmp_path) if not w.startswith(("input_", "__pycache__"))] == []


@pytest.mark.parametrize("args, needle", [
    (["schedule", "cosine", "--epochs", str(10**30)], "at most 1,000,000 steps"),
    (["schedule", "cosine", "--plot", "/proc/lr.png"], "--plot /proc/lr.png: cannot create anything"),
    (["lr-find", "--plot", "/proc/lr.png"], "--plot /proc/lr.png: cannot create anything"),
])
def test_other_commands_check_their_outputs_before_working(run_main, tmp_path, args, needle):
    code, _, err = run_main(*args)
    assert_refused(code, err, needle)
    assert written(tmp_path) == []


@pytest.mark.parametrize("command", [["schedule", "cosine"], ["lr-find"]], ids=["schedule", "lr-find"])
def test_a_plot_onto_a_folder_is_bad_input(run_main, tmp_path, command):
    (tmp_path / "lr.png").mkdir()
    code, out, err = run_main(*command, "--plot", "lr.png")
    assert_refused(code, err, "--plot lr.png: is a folder; give a file name")
    assert out == "" and written(tmp_path) == ["lr.png"]


# --- the property: any config is run in full or refused in one line with nothing written ----------
_SMALL_INT = st.sampled_from([-1, 0, 1, 2, 3, 2**40, 10**30])
_FLOAT = st.one_of(st.sampled_from([0.0, -0.5, 1e-3, 0.1, 0.9, 1.0, 2.0, 1e39, math.nan, math.inf, -math.inf]),
                   st.floats(-10, 10))
_TEXT = st.sampled_from(["", "x", "adam", "sgd", "adamw", "cosine", "step", "onecycle", "plateau", "mlp",
                         "cnn", "cpu", "auto", "val_loss", "val_acc", "train_loss", "wine", "digits",
                         "accuracy", "mse", "épsilon", "nan"])
_SCALAR = st.one_of(_SMALL_INT, _FLOAT, _TEXT, st.booleans())
_VALUE = st.one_of(_SCALAR, st.lists(st.one_of(_SMALL_INT, _FLOAT, _TEXT), max_size=3))
_INT = st.one_of(st.integers(-2, 6), _SMALL_INT)
_LIST = st.lists(st.one_of(st.integers(-2, 40), _FLOAT), max_size=3)
_NAMES = {"optimizer": ["sgd", "adam", "adamw", "rmsprop", "adagrad", "nadam", "radam", "adamax", "adafactor",
                        "muon", "lion"],
          "scheduler": ["constant", "step", "multistep", "exponential", "cosine", "cosine_restarts", "plateau",
                        "onecycle", "linear", "polynomial", "warmup"],
          "model": ["mlp", "cnn", "resnet"]}
# Each key mostly gets values of its own type at their edges (0, negative, huge, NaN, empty), and
# sometimes anything at all; names mostly real ones.
KEYS = {
    "data": {"target": _TEXT, "task": _TEXT, "val_fraction": _FLOAT, "seed": _INT, "standardize": st.booleans()},
    "model": {"dropout": _FLOAT, "channels": _LIST},
    "optimizer": {"lr": _FLOAT, "weight_decay": _FLOAT, "momentum": _FLOAT, "betas": _LIST, "eps": _FLOAT,
                  "nesterov": st.booleans(), "foreach": st.booleans()},
    "scheduler": {"step_size": _INT, "T_max": st.one_of(_INT, _TEXT), "eta_min": _FLOAT, "gamma": _FLOAT,
                  "milestones": st.one_of(_LIST, _TEXT), "warmup_epochs": _INT, "interval": _TEXT,
                  "factor": _FLOAT, "patience": _INT, "power": _FLOAT, "max_lr": _FLOAT, "T_0": _INT},
    "train": {"batch_size": st.sampled_from([-1, 0, 1, 16, 64, 10**30]), "early_stopping": _INT, "monitor": _TEXT,
              "seed": _INT, "device": _TEXT, "loss": _TEXT, "metrics": st.lists(_TEXT, max_size=2),
              "grad_accum": st.sampled_from([-1, 0, 1, 2, 10**30]), "clip_grad_norm": _FLOAT, "amp": _TEXT,
              "checkpoint_seconds": _FLOAT, "nonfinite": _TEXT},
}
# Keys whose valid values can still take long: their values come from short ranges only.
BOUNDED = {("train", "epochs"): st.sampled_from([1, 1, 1, 1, 1, 2, 0, 10**30, "x"]),
           ("model", "hidden"): st.one_of(st.lists(st.integers(-2, 64), max_size=2), _TEXT, _SMALL_INT),
           ("train", "checkpoint_every"): st.sampled_from([-1, 0, 1, 3, "x"])}


@st.composite
def configs(draw):
    cfg: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=2, unique=True)):
        keys = KEYS[section]
        values = {}
        if section in _NAMES and draw(st.booleans()):
            values["name"] = draw(st.one_of(*[st.sampled_from(_NAMES[section])] * 4, _VALUE))
        for k in draw(st.lists(st.sampled_from(sorted(keys)), max_size=2, unique=True)):
            values[k] = draw(st.one_of(keys[k], keys[k], keys[k], _VALUE))  # 3 in 4: the key's own type
        if draw(st.integers(0, 19)) == 0:
            values["bogus"] = draw(_VALUE)
        if values:
            cfg[section] = values
    for (section, key), values in BOUNDED.items():
        if key == "epochs" or draw(st.booleans()):  # always a run length: never the default 30
            cfg.setdefault(section, {})[key] = draw(values)
    return cfg


CASE = itertools.count()


@pytest.mark.slow  # sixty configs, most of them trained: a CI check, not the quick loop
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs())
def test_any_config_trains_or_is_refused_in_one_line_with_nothing_written(run_main, tmp_path, cfg):
    case = tmp_path / f"case{next(CASE)}"  # hypothesis reuses tmp_path across examples
    case.mkdir()
    config = case / "input.toml"
    config.write_text(tomli_w.dumps(cfg))
    # wine is small, and the run length comes from a short list
    code, _, err = run_main("train", "--config", str(config), "--set", "data.name=wine", "--out", str(case / "run"))
    assert code in (0, 2), err
    event(f"exit {code}")  # --hypothesis-show-statistics: how many trained, how many were refused
    event(err.split(":")[1].strip() if code == 2 else "trained")
    if code == 2:
        assert_refused(code, err)
        assert not (case / "run").exists()
    else:
        assert {"config.toml", "history.csv", "last.pt", "summary.json"} <= {p.name for p in (case / "run").iterdir()}


# --- rows for a trained run: predict and eval ------------------------------------------------------
def _wine_csv(path: Path, *, bom: bool = False, edit=None) -> Path:
    """The wine data set as a CSV with its label column, optionally as Excel's "CSV UTF-8" (a BOM)."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    if edit is not None:
        edit(frame)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + frame.to_csv(index=False).encode())
    return path


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_number_beyond_float32_in_the_rows_is_one_line(run_main, copy_run, tmp_path, command):
    run = copy_run()

    def huge(frame):
        frame.loc[3, "proline"] = 1e300

    _wine_csv(tmp_path / "input.csv", edit=huge)
    code, out, err = run_main(command, str(run), "--data", "input.csv")
    assert_refused(code, err, "column 'proline'", "1e+300", "float32")
    assert out == ""


def test_a_csv_with_a_byte_order_mark_reads_like_any_csv(run_main, copy_run, tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: its first column is still the first column."""
    run = copy_run()
    _wine_csv(tmp_path / "input-bom.csv", bom=True)
    _wine_csv(tmp_path / "input-plain.csv")
    got = {}
    for name in ("bom", "plain"):
        code, out, err = run_main("predict", str(run), "--data", f"input-{name}.csv")
        assert code == 0, err
        got[name] = out
        code, out, err = run_main("eval", str(run), "--data", f"input-{name}.csv", "--json")
        assert code == 0, err
    assert got["bom"] == got["plain"] and len(got["bom"].splitlines()) == 179
    # and a run trained on it names its first feature as written
    code, _, err = run_main("train", "--data", "input-bom.csv", "--epochs", "1", "--out", "bom-run")
    assert code == 0, err
    assert ol_load(tmp_path / "bom-run").features[0] == "alcohol"


def ol_load(path):
    import optiloop as ol

    return ol.load(path)


def test_eval_out_into_a_folder_it_cannot_write_is_one_line_before_any_work(run_main, copy_run, tmp_path):
    run = copy_run()
    code, out, err = run_main("eval", str(run), "--out", "/proc/optiloop-eval")
    assert_refused(code, err, "--out /proc/optiloop-eval: cannot create anything in /proc")
    assert out == ""  # refused before evaluating
