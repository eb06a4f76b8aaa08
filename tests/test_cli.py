"""End-to-end tests of the ``optiloop`` command line, by subprocess (as a user runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG
from matplotlib.image import imread

from optiloop.cli import COMMANDS
from optiloop.config import tomllib  # the stdlib one, or tomli on Python 3.10

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def cli(tmp_path):
    """``cli("train", "--epochs", "2")``: ``python -m optiloop`` in tmp_path, as a user runs it."""

    def run(*args: str, timeout: float = HANG) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
        return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


def assert_png(path: Path, min_width: int = 400) -> None:
    """A real, non-empty picture: PNG signature, some size, and matplotlib can read it back."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    img = imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_width and img.shape[0] >= 200
    assert img[..., :3].std() > 0.05  # not a blank canvas


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_registry_holds_every_subcommand():
    assert {"train", "schedule", "list", "eval"} <= set(COMMANDS)


@pytest.mark.slow  # 30 epochs on digits: the quick loop leaves it to CI
def test_default_train_reaches_95_percent_and_writes_the_run_folder(run_main, tmp_path):
    code, out, err = run_main("train")  # the true default: digits, mlp, adamw + cosine, 30 epochs
    proc = subprocess.CompletedProcess(["train"], code, out, err)  # (in this process: other tests start one)
    assert proc.returncode == 0, proc.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert run.name.startswith("digits-mlp-adamw-")
    for name in ("config.toml", "history.csv", "best.pt", "last.pt", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["val_acc"] > 0.95
    assert summary["device"] == "cpu" and summary["world_size"] == 1
    assert set(summary["versions"]) == {"python", "torch", "optiloop"}
    assert 1 <= summary["epochs_run"] <= 30
    assert "best epoch" in proc.stdout and str(run.name) in proc.stdout
    assert_png(run / "curves.png", min_width=1000)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["config"]["optimizer"]["name"] == "adamw"

    # eval on the run's own validation split reproduces the best epoch's figures (in this
    # process: eval's own start-up is another test's)
    code, out, err = run_main("eval", str(run / "best.pt"), "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["acc"] == pytest.approx(summary["best"]["val_acc"], abs=1e-6)
    assert got["loss"] == pytest.approx(summary["best"]["val_loss"], rel=1e-4)


def test_train_flags_config_and_rerun(run_main, tmp_path):
    (tmp_path / "run.toml").write_text(
        '[optimizer]\nname = "sgd"\nlr = 0.05\n\n[model]\nhidden = [32, 16]\n')
    code, _, err = run_main("train", "--config", "run.toml", "--momentum", "0.9", "--scheduler",
                            "step", "--step-size", "1", "--epochs", "2", "--early-stopping", "0",
                            "--out", "r1", "--set", "data.name=wine")
    assert code == 0, err
    cfg = tomllib.loads((tmp_path / "r1" / "config.toml").read_text())
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    assert cfg["scheduler"] == {"name": "step", "step_size": 1}
    assert cfg["model"]["hidden"] == [32, 16] and cfg["data"]["name"] == "wine"
    history = (tmp_path / "r1" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    lrs = [float(r.split(",")[-2]) for r in history[1:]]
    assert lrs == pytest.approx([0.05, 0.005])  # step_size=1, gamma=0.1 reached the scheduler

    # the written config re-runs as is
    code, _, err = run_main("train", "--config", "r1/config.toml", "--out", "r2")
    assert code == 0, err
    assert tomllib.loads((tmp_path / "r2" / "config.toml").read_text()) == cfg


@pytest.mark.slow  # a CNN on digits: the quick loop leaves it to CI
def test_regression_and_cnn(run_main, tmp_path):
    code, out, err = run_main("train", "--data", "diabetes", "--epochs", "2", "--out", "reg")
    assert code == 0, err
    assert "target's own units" in out
    summary = json.loads((tmp_path / "reg" / "summary.json").read_text())
    assert "val_mae" in summary["best"] and "val_acc" not in summary["best"]
    assert summary["data"]["task"] == "regression"
    code, _, err = run_main("train", "--model", "cnn", "--epochs", "1", "--out", "cnn")
    assert code == 0, err
    assert json.loads((tmp_path / "cnn" / "summary.json").read_text())["model"]["name"] == "cnn"


@pytest.mark.parametrize(("args", "needles"), [
    (["--optimizer", "adamx"], ["optimizer.name", "adamw", "sgd"]),
    (["--lr", "-1"], ["optimizer.lr: must be > 0", "-1"]),
    (["--set", "train.batch_size=2.5"], ["train.batch_size", "integer"]),
    (["--set", "train.nope=1"], ["train.nope", "valid keys", "epochs"]),
    (["--set", "bogus.x=1"], ["bogus", "valid sections"]),
    (["--optimizer", "adam", "--momentum", "0.9"], ["momentum", "adam"]),
    (["--scheduler", "step", "--set", "scheduler.foo=1"], ["step", "foo"]),
    (["--data", "nosuch"], ["nosuch", "digits", "wine"]),
    (["--model", "mlp", "--set", "model.hidden=[0]"], ["model.hidden"]),
    (["--data", "wine", "--model", "cnn"], ["cnn", "13"]),
    (["--set", "train.monitor=val_f1"], ["train.monitor", "val_acc"]),
    (["--device", "tpu"], ["train.device", "cpu"]),
    (["--config", "missing.toml"], ["missing.toml"]),
])
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(run_main, tmp_path, args, needles):
    code, _, err = run_main("train", *args, "--epochs", "1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for n in needles:
        assert n in err, err
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing half-written


@pytest.mark.slow
def test_train_bad_input_by_subprocess_has_no_traceback(cli, tmp_path):
    assert_one_line_error(cli("train", "--lr", "-1"), "optimizer.lr: must be > 0 (got -1.0)")
    assert_one_line_error(cli("train", "--no-such-flag"), "--no-such-flag")
    assert list(tmp_path.iterdir()) == []


def test_out_folder_is_never_overwritten(run_main, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    code, _, err = run_main("train", "--out", "taken", "--epochs", "1")
    assert code == 2 and "taken" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["x"]


@pytest.mark.slow
def test_schedule_every_name_prints_a_table_and_plots(cli, tmp_path):
    from optiloop import SCHEDULERS

    proc = cli("schedule", *SCHEDULERS, "--lr", "0.1", "--epochs", "12", "--plot", "lr.png")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "step (step_size=4, gamma=0.1)" in out
    assert "multistep (milestones=[6, 9], gamma=0.1)" in out
    assert "exponential (gamma=0.9)" in out
    assert "plateau: shown against a simulated val_loss" in out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 12 and all(len(r) == 1 + len(SCHEDULERS) for r in rows)
    header = next(line.split() for line in out.splitlines() if line.startswith("epoch"))
    step_col = header.index("step")
    assert [float(r[step_col]) for r in rows] == pytest.approx([0.1] * 4 + [0.01] * 4 + [1e-3] * 4)
    assert_png(tmp_path / "lr.png")


def test_schedule_per_step_with_warmup_and_scoped_set(run_main, tmp_path):
    code, out, err = run_main("schedule", "cosine", "onecycle", "--epochs", "4",
                              "--steps-per-epoch", "5", "--set", "warmup_epochs=1",
                              "--set", "cosine.eta_min=0.01", "--plot", "w.png")
    assert code == 0, err
    assert "cosine (T_max=3, eta_min=0.01, warmup_epochs=1)" in out  # the epochs after the warmup
    first = next(line.split() for line in out.splitlines() if line.startswith("    1"))
    assert float(first[1]) == pytest.approx(0.1 / 5)  # warmup: first step at lr / warmup steps
    assert_png(tmp_path / "w.png")


def test_schedule_stepped_per_step_takes_its_lengths_in_steps(run_main):
    # cosine stepped per optimizer step: T_max is the run's 20 steps, so the curve only falls
    code, out, err = run_main("schedule", "cosine", "--epochs", "4", "--steps-per-epoch", "5",
                              "--set", "interval=step")
    assert code == 0, err
    assert "cosine (T_max=20, eta_min=0, interval=step)" in out
    table = [float(line.split()[1]) for line in out.splitlines() if line[:5].strip().isdigit()]
    assert len(table) == 4 and all(a > b for a, b in zip(table, table[1:]))


@pytest.mark.parametrize(("args", "needles"), [
    (["cosinus"], ["cosinus", "cosine", "onecycle"]),
    (["step", "--set", "foo=1"], ["step", "foo"]),
    (["cosine", "--set", "step.gamma=0.5"], ["step", "cosine"]),
    (["cosine", "--lr", "0"], ["--lr"]),
])
def test_schedule_bad_input(run_main, tmp_path, args, needles):
    code, _, err = run_main("schedule", *args, "--plot", "x.png")
    assert code == 2 and len(err.strip().splitlines()) == 1
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_list_shows_every_name_with_defaults(cli):
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in ("sgd", "adamw", "muon", "cosine", "onecycle", "plateau", "wsd", "cyclic", "digits", "diabetes",
                 "mlp", "cnn"):
        assert f"  {name} " in proc.stdout
    sgd = next(line for line in proc.stdout.splitlines() if line.startswith("  sgd "))
    assert "lr=0.1, momentum=0.9" in sgd and "torch.optim.SGD" in sgd  # the CLI's one table
    assert "metric" in proc.stdout  # plateau's interval
    proc = cli("list", "--torch-defaults")
    assert proc.returncode == 0, proc.stderr
    assert "nesterov=False" in proc.stdout  # torch's default for sgd


@pytest.mark.slow
def test_eval_bad_input(cli, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(cli("eval", "bad.pt"), "bad.pt", "corrupt")


def test_eval_on_other_data(run_main, tmp_path, trained_runs):
    import numpy as np
    from sklearn.datasets import load_wine

    w = str(trained_runs["adamw"])  # wine, 2 epochs
    X, y = load_wine(return_X_y=True)
    np.savez(tmp_path / "wine.npz", X=X[:50], y=y[:50])
    code, out, err = run_main("eval", w, "--data", "wine.npz", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["samples"] == 50 and 0 <= got["acc"] <= 1
    code, _, err = run_main("eval", w, "--data", "digits")
    assert code == 2 and "64 features" in err and "13" in err
    code, _, err = run_main("eval", "nothere.pt")
    assert code == 2 and "nothere.pt" in err


def test_the_header_says_lr_schedule_and_when_early_stopping_can_end_the_run(run_main, tmp_path):
    # the default length comes with early stopping, and the header says so up front
    code, out, err = run_main("train", "--data", "wine", "--set", "train.monitor=val_acc",
                              "--early-stopping", "1", "--out", "es")
    assert code == 0, err
    assert "optimizer adamw: lr=0.001, weight_decay=0.01; scheduler cosine, stepped per epoch: T_max=30" in out
    assert "up to 30 epochs: early stopping ends the run once val_acc has not improved for 1 epoch" in out
    stopped = json.loads((tmp_path / "es" / "summary.json").read_text())
    assert stopped["epochs_run"] < 30 and "early stopping" in stopped["stop_reason"]

    # --epochs without --early-stopping: every epoch asked for runs
    code, out, err = run_main("train", "--data", "wine", "--set", "train.monitor=val_acc",
                              "--epochs", str(stopped["epochs_run"] + 3), "--out", "all")
    assert code == 0, err
    assert f"{stopped['epochs_run'] + 3} epochs, no early stopping" in out
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert summary["epochs_run"] == stopped["epochs_run"] + 3 and summary["stop_reason"] is None
    config = tomllib.loads((tmp_path / "all" / "config.toml").read_text())
    assert config["train"]["early_stopping"] == 0  # recorded: the re-run does the same


@pytest.mark.slow  # several trainings in a row: many seconds
def test_train_compare_and_lr_find_share_one_table_of_optimizer_defaults(run_main, tmp_path):
    code, out, err = run_main("train", "--data", "wine", "--optimizer", "sgd", "--epochs", "1", "--out", "t")
    assert code == 0, err
    assert "optimizer sgd: lr=0.1, momentum=0.9" in out
    code, out, err = run_main("compare", "--data", "wine", "--optimizers", "sgd", "--epochs", "1",
                              "--out", "c")
    assert code == 0, err
    compared = tomllib.loads((tmp_path / "c" / "runs" / "sgd-cosine-seed0" / "config.toml").read_text())
    trained = tomllib.loads((tmp_path / "t" / "config.toml").read_text())
    assert compared["optimizer"] == trained["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    code, out, err = run_main("lr-find", "--data", "wine", "--optimizer", "sgd", "--steps", "10",
                              "--out", "f")
    assert code == 0, err
    assert "sgd (momentum=0.9)" in out


def test_train_takes_layer_decay_and_decay_on_biases_from_the_config(run_main, tmp_path):
    code, out, err = run_main("train", "--epochs", "1", "--out", "ld", "--set", "optimizer.layer_decay=0.8",
                              "--set", "optimizer.decay_bias_and_norm=true")
    assert code == 0, err
    assert "layer_decay=0.8, decay_bias_and_norm=True" in out  # the header says what runs
    saved = tomllib.loads((tmp_path / "ld" / "config.toml").read_text())["optimizer"]
    assert saved["layer_decay"] == 0.8 and saved["decay_bias_and_norm"] is True
    code, _, err = run_main("train", "--epochs", "1", "--out", "bad", "--set", "optimizer.layer_decay=2")
    assert code == 2 and err.strip() == "error: optimizer 'adamw': layer_decay must be a finite number in (0, 1] " \
                                        "(got 2)"
    assert not (tmp_path / "bad").exists()
