"""optiloop.compare and ``optiloop compare``: every combination, same start, honest report files."""

from __future__ import annotations

import base64
import csv
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

import optiloop as ol
from optiloop.comparison import parse_lrs, parse_names, parse_target, summarize
from optiloop.report import format_table

SRC = Path(__file__).resolve().parents[1] / "src"
PNG = b"\x89PNG\r\n\x1a\n"


def _data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 8, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return (X[: n * 3 // 4], y[: n * 3 // 4]), (X[n * 3 // 4:], y[n * 3 // 4:])


def _factory():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def assert_png(data: bytes, path: Path) -> None:
    assert data[:8] == PNG
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600
    assert img[..., :3].std() > 0.05  # something is drawn


def test_report_holds_every_combination(tmp_path):
    train, val = _data()
    out = tmp_path / "report"
    lines: list[str] = []
    rows = ol.compare(_factory, train, val, optimizers=["sgd", "adam"],
                      schedulers=["constant", "cosine"], seeds=[0, 5], epochs=1, out=out,
                      progress=lines.append, device="cpu")
    combos = {(o, s, seed) for o in ("sgd", "adam") for s in ("constant", "cosine") for seed in (0, 5)}
    assert {(r["optimizer"], r["scheduler"], r["seed"]) for r in rows} == combos

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 2 * 2 * 2
    assert {(r["optimizer"], r["scheduler"], int(r["seed"])) for r in csv_rows} == combos
    assert {"best_val_loss", "final_val_acc", "best_epoch", "sec_per_epoch"} <= set(csv_rows[0])

    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for o in ("sgd", "adam"):
        for s in ("constant", "cosine"):
            assert re.search(rf"\|\s*{o}\s*\|\s*{s}\s*\|", md), (o, s)
            assert f"<td>{o}</td><td>{s}</td>" in page, (o, s)
    assert "±" in md  # two seeds: mean ± std

    # Every run folder, shaped like `optiloop train`'s (checkpoints off by default).
    for o, s, seed in combos:
        run = out / "runs" / f"{o}-{s}-seed{seed}"
        for name in ("history.csv", "config.toml", "curves.png", "summary.json"):
            assert (run / name).is_file(), (run, name)
        assert not (run / "best.pt").exists()
        assert len(ol.History.from_csv(run / "history.csv")) == 1

    # The overlay PNGs are real pictures, and report.html embeds exactly those bytes.
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["lr.png", "val_acc.png", "val_loss.png"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pngs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert_png(data, out / name)
        assert base64.b64encode(data).decode() in embedded
        assert f"]({name})" in md

    # A header once the input is checked, then one progress line per run, counting up, with an ETA.
    assert lines[0].startswith("8 runs (sgd, adam x constant, cosine x 2 seeds) of 1 epoch: ")
    runs = lines[1:]
    assert len(runs) == 8 and runs[0].startswith("[1/8] ") and runs[-1].startswith("[8/8] ")
    assert all("ETA" in line and "val_acc" in line for line in runs)


def test_same_initial_weights_for_every_combination_of_a_seed(tmp_path):
    train, val = _data()
    calls = []

    def factory():
        calls.append(1)
        return _factory()

    # An LR so small that no optimizer moves the weights measurably: after epoch 1 every
    # combination of a seed must show the val_loss of the very same initial weights.
    rows = ol.compare(factory, train, val, optimizers="sgd,adam,rmsprop", schedulers="constant",
                      seeds=[3, 4], epochs=1, lrs=1e-12, device="cpu")
    assert len(calls) == 1 + 2  # one dry-run probe, then once per seed (not per combination)
    for seed in (3, 4):
        same = [r for r in rows if r["seed"] == seed]
        assert len({r["init_hash"] for r in same}) == 1
        losses = [r["final_val_loss"] for r in same]
        assert max(losses) - min(losses) < 1e-6, losses
    by_seed = {r["seed"]: r for r in rows}
    assert by_seed[3]["init_hash"] != by_seed[4]["init_hash"]
    assert abs(by_seed[3]["final_val_loss"] - by_seed[4]["final_val_loss"]) > 1e-4


def test_seeds_fold_into_mean_and_std_and_target_counts_epochs():
    train, val = _data()
    rows = ol.compare(_factory, train, val, optimizers=["sgd"], schedulers=["constant"], seeds=2,
                      epochs=2, target="val_loss=1000", device="cpu")
    assert [r["epochs_to_val_loss"] for r in rows] == [1, 1]  # any loss is below 1000 at epoch 1
    (agg,) = summarize(rows)
    losses = [r["best_val_loss"] for r in rows]
    assert agg["seeds"] == 2
    assert math.isclose(agg["best_val_loss_mean"], statistics.fmean(losses))
    assert math.isclose(agg["best_val_loss_std"], statistics.stdev(losses))
    assert "sgd" in format_table([agg]) and "epochs to val_loss" in format_table([agg])

    never = ol.compare(_factory, train, val, optimizers=["adam"], schedulers=["constant"],
                       epochs=2, target="val_acc=1.01", device="cpu")
    assert never[0]["epochs_to_val_acc"] is None


def test_per_optimizer_lrs_and_documented_defaults():
    assert parse_lrs(None, ["sgd", "adam", "adamw", "rmsprop", "adagrad"]) == {
        "sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3, "adagrad": 1e-2}
    assert parse_lrs("sgd=0.05, adam=3e-4", ["sgd", "adam", "nadam"]) == {
        "sgd": 0.05, "adam": 3e-4, "nadam": ol.optimizer_defaults("nadam")["lr"]}
    assert parse_lrs("0.01", ["sgd", "adam"]) == {"sgd": 0.01, "adam": 0.01}
    assert parse_target("val_acc=0.95") == ("val_acc", 0.95)


@pytest.mark.parametrize("call, needle", [
    (lambda: parse_names("sgd,adamm", "optimizer", ol.OPTIMIZERS), "unknown optimizer 'adamm'"),
    (lambda: parse_names("sgd,sgd", "optimizer", ol.OPTIMIZERS), "each optimizer once"),
    (lambda: parse_lrs("sgd=fast", ["sgd"]), "'fast' is not a number"),
    (lambda: parse_lrs("adam=0.1", ["sgd"]), "not among the optimizers"),
    (lambda: parse_lrs("sgd=-1", ["sgd"]), "must be a number > 0"),
    (lambda: parse_target("val_acc>0.9"), "use KEY=VALUE"),
])
def test_bad_input_is_one_clear_line(call, needle):
    with pytest.raises(ol.OptiloopError) as e:
        call()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_nothing_is_written_when_the_input_is_bad(tmp_path):
    train, val = _data()
    out = tmp_path / "report"
    for kwargs in ({"optimizers": ["sgd", "nope"]}, {"schedulers": ["cosine", "never"]},
                   {"target": "val_f1=0.9"}, {"lrs": {"sgd": 0.0}}, {"epochs": 0}):
        with pytest.raises(ol.OptiloopError):
            ol.compare(_factory, train, val, out=out, device="cpu", **{"optimizers": ["sgd"], **kwargs})
        assert not out.exists(), kwargs
    with pytest.raises(ol.OptiloopError, match="callable returning a fresh"):
        ol.compare(_factory(), train, val)  # a built model, not a factory


def test_as_frame_needs_pandas_or_says_so():
    train, val = _data(64)
    kwargs = dict(optimizers=["sgd"], schedulers=["constant"], epochs=1, device="cpu", as_frame=True)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ol.OptiloopError, match="pip install pandas"):
            ol.compare(_factory, train, val, **kwargs)
    else:
        frame = ol.compare(_factory, train, val, **kwargs)
        assert list(frame["optimizer"]) == ["sgd"]


# --- the command line, by subprocess ------------------------------------------------------------
def _cli(tmp_path, *args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_compare_writes_the_report(tmp_path):
    proc = _cli(tmp_path, "compare", "--optimizers", "sgd,adagrad", "--epochs", "2", "--lr",
                "sgd=0.05", "--target", "val_acc=0.5", "--out", "rep")
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] sgd+cosine seed 0: val_acc" in proc.stdout and "ETA" in proc.stdout
    assert "[2/2] adagrad+cosine seed 0" in proc.stdout
    assert re.search(r"^sgd\s+cosine\s+0\.05\s", proc.stdout, re.M)  # the table, with the LR given
    assert re.search(r"^adagrad\s+cosine\s+0\.01\s", proc.stdout, re.M)  # the documented default
    out = tmp_path / "rep"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == ["sgd", "adagrad"]
    assert all(r["epochs_to_val_acc"] == "1" for r in rows)  # digits passes 50% in one epoch
    for name in ("report.md", "report.html", "val_loss.png", "val_acc.png", "lr.png"):
        assert (out / name).is_file(), name
    # The run folder's config re-runs the combination with optiloop train.
    config = (out / "runs" / "sgd-cosine-seed0" / "config.toml").read_text()
    assert 'name = "sgd"' in config and "lr = 0.05" in config and "momentum = 0.9" in config


@pytest.mark.parametrize("args, needle", [
    (["--optimizers", "sgd,adamm"], "unknown optimizer 'adamm'; choose from:"),
    (["--lr", "sgd:0.1"], "is not a number"),
    (["--schedulers", "cosine,sometimes"], "unknown scheduler 'sometimes'"),
])
def test_cli_compare_bad_input_exits_2_with_one_line_and_no_folder(tmp_path, args, needle):
    proc = _cli(tmp_path, "compare", "--out", "rep", *args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists() and not (tmp_path / "runs").exists()


def test_a_diverged_run_shows_as_diverged_not_as_a_number():
    rows = [{"optimizer": "sgd", "scheduler": "constant", "seed": s, "lr": 50.0,
             "best_val_loss": v, "best_epoch": 1} for s, v in ((0, float("nan")), (1, 0.5))]
    (agg,) = summarize(rows)
    assert math.isnan(agg["best_val_loss_mean"])
    assert "nan (diverged)" in format_table([agg])
