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
from conftest import HANG
from matplotlib.image import imread

import optiloop as ol
from optiloop.grid import describe_target, lr_grid, parse_lrs, parse_names, parse_target
from optiloop.report import format_table
from optiloop.results import pick_best, summarize

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


def _fields(row, skip=("seconds", "sec_per_epoch", "run")):
    return {k: v for k, v in row.items() if k not in skip}


@pytest.mark.slow  # eight runs and their pictures: the quick loop leaves it to CI
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
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert style.lstrip().startswith("body {")  # the first rule is the page's, not text before it

    # Every run folder, shaped like `optiloop train`'s (checkpoints off by default).
    for o, s, seed in combos:
        run = out / "runs" / f"{o}-{s}-seed{seed}"
        for name in ("history.csv", "config.toml", "curves.png", "summary.json"):
            assert (run / name).is_file(), (run, name)
        assert not (run / "best.pt").exists()
        assert len(ol.History.from_csv(run / "history.csv")) == 1

    # The PNGs are real pictures, and report.html embeds exactly those bytes.
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["lr.png", "train_loss.png", "val_acc.png", "val_loss.png"]
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


def test_best_figures_of_a_run_come_from_its_one_best_epoch():
    h = ol.History([{"epoch": 1, "val_loss": 0.50, "val_acc": 0.90, "train_loss": 0.6, "seconds": 0.1},
                    {"epoch": 2, "val_loss": 0.40, "val_acc": 0.88, "train_loss": 0.4, "seconds": 0.1},
                    {"epoch": 3, "val_loss": 0.45, "val_acc": 0.93, "train_loss": 0.3, "seconds": 0.1},
                    {"epoch": 4, "val_loss": 0.60, "val_acc": 0.93, "train_loss": 0.2, "seconds": 0.1}])
    from optiloop.results import run_row as _row

    row = _row(h, "sgd", "constant", 0, 0.1, "val_acc", ("val_acc", 0.92), 1.0, "x")
    # best epoch by the monitor (the first of equal values); every "best" figure is from that epoch
    assert (row["best_epoch"], row["best_val_acc"], row["best_val_loss"]) == (3, 0.93, 0.45)
    assert (row["final_val_acc"], row["final_train_loss"], row["epochs_to_val_acc"]) == (0.93, 0.2, 3)
    by_loss = _row(h, "sgd", "constant", 0, 0.1, "val_loss", None, 1.0, "x")
    assert (by_loss["best_epoch"], by_loss["best_val_loss"], by_loss["best_val_acc"]) == (2, 0.40, 0.88)
    assert describe_target(("val_acc", 0.95)) == "val_acc ≥ 0.95" and describe_target(("val_loss", 0.1)) == \
        "val_loss ≤ 0.1"


@pytest.mark.slow  # ten runs and their pictures: the quick loop leaves it to CI
def test_lr_grid_picks_each_optimizers_best_lr_with_mean_and_std_over_seeds(tmp_path):
    train, val = _data()
    out = tmp_path / "grid"
    rows = ol.compare(_factory, train, val, optimizers=["sgd", "adam"], schedulers=["constant"], seeds=2,
                      epochs=2, lrs={"sgd": [1e-4, 0.1, 0.5]}, lr_grid=2, target="val_acc=0.5", out=out,
                      device="cpu")
    lrs = {(r["optimizer"], r["lr"]) for r in rows}
    assert lrs == {("sgd", 1e-4), ("sgd", 0.1), ("sgd", 0.5), ("adam", lr_grid(1e-3, 2)[0]),
                   ("adam", lr_grid(1e-3, 2)[1])}  # an explicit list kept; adam's default gridded
    assert len(rows) == 5 * 2
    summary = summarize(rows)
    assert len(summary) == 5 and all(r["seeds"] == 2 for r in summary)
    best = pick_best(summary)
    assert [r["optimizer"] for r in best] == ["sgd", "adam"]
    for b in best:  # the chosen LR has the highest mean val_acc @best of its optimizer's grid
        mine = [r for r in summary if r["optimizer"] == b["optimizer"]]
        assert b["best_val_acc_mean"] == max(r["best_val_acc_mean"] for r in mine)
        seeds = [r["best_val_acc"] for r in rows if (r["optimizer"], r["lr"]) == (b["optimizer"], b["lr"])]
        assert b["best_val_acc_mean"] == pytest.approx(statistics.fmean(seeds))
        assert b["best_val_acc_std"] == pytest.approx(statistics.stdev(seeds))
        assert b["lrs_tried"] == sorted(r["lr"] for r in mine)
    sgd = next(b for b in best if b["optimizer"] == "sgd")
    assert sgd["lr"] != 1e-4  # an LR that barely moves the weights is not sgd's best here

    md = (out / "report.md").read_text()
    assert "## Each optimizer at its best LR" in md and "## Every LR tried (* = chosen)" in md
    assert "Target: val_acc ≥ 0.5" in md and "epochs to val_acc ≥ 0.5" in md
    assert f"| sgd | constant | {sgd['lr']:g}* |" in md  # the chosen LR marked in the full grid
    assert "± " in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["lr.png", "lr_sensitivity.png", "train_loss.png", "val_acc.png", "val_loss.png"]
    for name in pngs:
        assert_png((out / name).read_bytes(), out / name)
    assert (out / "runs" / f"sgd-constant-lr{sgd['lr']:g}-seed1" / "steps.csv").is_file()


def test_the_report_pictures_draw_one_series_per_optimizer(tmp_path, monkeypatch):
    from optiloop.report import _plots

    train, val = _data()
    rows, histories = [], {}
    for o, lr in (("sgd", 0.05), ("sgd", 0.2), ("adam", 1e-3)):
        h = ol.fit(_factory(), train, val_data=val, optimizer=o, lr=lr, scheduler="onecycle", epochs=2,
                   metrics=["accuracy"], callbacks=[ol.StepHistory()], progress=False, seed=0)
        histories[(o, "onecycle", lr, 0)] = h
        rows.append({"optimizer": o, "scheduler": "onecycle", "lr": lr, "seed": 0, "monitor": "val_acc",
                     "best_val_acc": max(h["val_acc"]), "best_val_loss": min(h["val_loss"])})
    summary = summarize(rows)
    best = pick_best(summary)
    import matplotlib.figure

    figures = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **k):  # every figure the report draws, to count what is in it
        figures.append(fig)
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    pictures = _plots(tmp_path, summary, best, histories, {"monitor": "val_acc"})
    assert [p for p, _ in pictures] == ["val_loss.png", "val_acc.png", "train_loss.png", "lr.png",
                                        "lr_sensitivity.png"]
    for fig in figures[:3]:  # one line per optimizer at its chosen LR
        assert len(fig.axes[0].get_legend().get_texts()) == 2
    lr_fig, sens = figures[3], figures[4]
    lines = lr_fig.axes[0].lines
    assert len(lines) == 2 and all(line.get_drawstyle() == "default" for line in lines)  # onecycle: per step
    assert max(lines[0].get_ydata()) == pytest.approx(1.0, abs=0.05)  # drawn as a multiple of the LR
    assert len(lines[0].get_xdata()) == len(histories[("sgd", "onecycle", 0.05, 0)].steps)
    assert sens.axes[0].get_xscale() == "log"
    assert len(sens.axes[0].get_legend().get_texts()) == 2  # sgd (two LRs) and adam (one)


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


def test_per_optimizer_lrs_grids_and_documented_defaults():
    assert parse_lrs(None, ["sgd", "adam", "adamw", "rmsprop", "adagrad"]) == {
        "sgd": [0.1], "adam": [1e-3], "adamw": [1e-3], "rmsprop": [1e-3], "adagrad": [1e-2]}
    assert parse_lrs("sgd=0.05, adam=3e-4", ["sgd", "adam", "nadam"]) == {
        "sgd": [0.05], "adam": [3e-4], "nadam": [ol.optimizer_defaults("nadam")["lr"]]}
    assert parse_lrs("0.01", ["sgd", "adam"]) == {"sgd": [0.01], "adam": [0.01]}
    assert parse_lrs("sgd=0.03,0.1,0.3,adam=1e-3", ["sgd", "adam"]) == {"sgd": [0.03, 0.1, 0.3], "adam": [1e-3]}
    assert parse_lrs(["sgd=0.03,0.1", "adam=1e-3"], ["sgd", "adam"]) == {"sgd": [0.03, 0.1], "adam": [1e-3]}
    # a grid of N around each optimizer's one LR, half a decade apart; explicit lists are kept
    assert parse_lrs("adam=0.01", ["sgd", "adam"], grid=3) == {"sgd": [0.0316, 0.1, 0.316],
                                                               "adam": [0.00316, 0.01, 0.0316]}
    assert parse_lrs("sgd=0.1,0.2", ["sgd"], grid=3) == {"sgd": [0.1, 0.2]}
    ratios = [b / a for a, b in zip(lr_grid(1e-3, 5), lr_grid(1e-3, 5)[1:])]
    assert all(r == pytest.approx(10 ** 0.5, rel=0.01) for r in ratios)
    assert parse_target("val_acc=0.95") == ("val_acc", 0.95)


@pytest.mark.parametrize("call, needle", [
    (lambda: parse_names("sgd,adamm", "optimizer", ol.OPTIMIZERS), "unknown optimizer 'adamm'"),
    (lambda: parse_names("sgd,sgd", "optimizer", ol.OPTIMIZERS), "each optimizer once"),
    (lambda: parse_lrs("sgd=fast", ["sgd"]), "'fast' is not a number"),
    (lambda: parse_lrs("adam=0.1", ["sgd"]), "not among the optimizers"),
    (lambda: parse_lrs("sgd=-1", ["sgd"]), "must be a number > 0"),
    (lambda: parse_lrs("sgd=0.1,0.1", ["sgd"]), "each LR once"),
    (lambda: parse_lrs("sgd=0.1,sgd=0.2", ["sgd"]), "names 'sgd' twice"),
    (lambda: parse_lrs(None, ["sgd"], grid=0), "lr_grid must be an integer >= 1"),
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
                   {"target": "val_f1=0.9"}, {"lrs": {"sgd": 0.0}}, {"epochs": 0}, {"monitor": "train_loss"},
                   {"jobs": 0}):
        with pytest.raises(ol.OptiloopError):
            ol.compare(_factory, train, val, out=out, device="cpu", **{"optimizers": ["sgd"], **kwargs})
        assert not out.exists(), kwargs
    with pytest.raises(ol.OptiloopError, match="callable returning a fresh"):
        ol.compare(_factory(), train, val)  # a built model, not a factory
    with pytest.raises(ol.OptiloopError, match="must be picklable"):  # a lambda cannot reach a worker
        ol.compare(lambda: _factory(), train, val, out=out, jobs=2, device="cpu")
    assert not out.exists()


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
def _cli(tmp_path, *args, timeout=HANG):
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_compare_writes_the_report(tmp_path):
    proc = _cli(tmp_path, "compare", "--optimizers", "sgd,adagrad", "--epochs", "2", "--lr",
                "sgd=0.05", "--target", "val_acc=0.5", "--out", "rep")
    assert proc.returncode == 0, proc.stderr
    # The runs are the grid sampler's trials, in its order: each prints one line as it finishes.
    done = re.findall(r"^\[(\d)/2\] (\w+)\+cosine lr ([\d.]+) seed 0: val_acc [\d.]+ .*ETA", proc.stdout, re.M)
    assert sorted(done) == [("1", "sgd", "0.05"), ("2", "adagrad", "0.01")] or \
        sorted(done) == [("1", "adagrad", "0.01"), ("2", "sgd", "0.05")], proc.stdout
    assert "epochs to val_acc ≥ 0.5" in proc.stdout
    assert re.search(r"^sgd\s+cosine\s+0\.05\s", proc.stdout, re.M)  # the table, with the LR given
    assert re.search(r"^adagrad\s+cosine\s+0\.01\s", proc.stdout, re.M)  # the documented default
    out = tmp_path / "rep"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == ["sgd", "adagrad"]
    assert all(r["epochs_to_val_acc"] == "1" for r in rows)  # digits passes 50% in one epoch
    for name in ("report.md", "report.html", "val_loss.png", "val_acc.png", "train_loss.png", "lr.png"):
        assert (out / name).is_file(), name
    # The run folder's config re-runs the combination with optiloop train.
    config = (out / "runs" / "sgd-cosine-seed0" / "config.toml").read_text()
    assert 'name = "sgd"' in config and "lr = 0.05" in config and "momentum = 0.9" in config


@pytest.mark.slow
def test_cli_jobs_2_gives_the_same_tables_as_jobs_1(tmp_path, monkeypatch, capsys):
    from optiloop.cli import main

    args = ["compare", "--data", "wine", "--optimizers", "sgd,adam", "--lr", "sgd=0.05,0.2", "--epochs", "2",
            "--schedulers", "onecycle"]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", "two", "--jobs", "2"]) == 0  # real worker processes, started from this one
    two = subprocess.CompletedProcess(args, 0, capsys.readouterr().out, "")
    assert main([*args, "--out", "one", "--jobs", "1"]) == 0  # in this process: no start-up to pay
    one = capsys.readouterr().out
    assert "3 runs (sgd, adam x onecycle x 1 seed) of 2 epochs" in two.stdout and "2 at a time" in two.stdout

    def tables(stdout):  # the printed tables without their timing column
        lines = stdout[stdout.index("every LR tried"):stdout.index("files in")].strip().splitlines()
        return [line.rsplit(None, 1)[0] if re.match(r"^(sgd|adam)\s", line) else line for line in lines]

    assert tables(two.stdout) == tables(one) and len(tables(one)) == 10

    def rows(folder):
        with open(tmp_path / folder / "results.csv", newline="") as f:
            return [_fields(r) for r in csv.DictReader(f)]

    assert rows("two") == rows("one")  # every figure of every run, digit for digit, in the same order
    assert len(rows("one")) == 3


@pytest.mark.parametrize("args, needle", [
    (["--optimizers", "sgd,adamm"], "unknown optimizer 'adamm' (did you mean 'adam'?); choose from:"),
    (["--lr", "sgd:0.1"], "is not a number"),
    (["--schedulers", "cosine,sometimes"], "unknown scheduler 'sometimes'"),
    (["--lr-grid", "0"], "--lr-grid: must be >= 1"),
    (["--monitor", "val_f1"], "--monitor 'val_f1' is not a validation figure"),
    (["--jobs", "0"], "--jobs: must be >= 1"),
])
def test_cli_compare_bad_input_exits_2_with_one_line_and_no_folder(run_main, tmp_path, args, needle):
    code, _, err = run_main("compare", "--out", "rep", *args)  # in-process: the CLI's own error handling
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "runs").exists()


def test_a_diverged_run_shows_as_diverged_not_as_a_number():
    rows = [{"optimizer": "sgd", "scheduler": "constant", "seed": s, "lr": 50.0,
             "best_val_loss": v, "best_epoch": 1} for s, v in ((0, float("nan")), (1, 0.5))]
    (agg,) = summarize(rows)
    assert math.isnan(agg["best_val_loss_mean"])
    assert "nan (diverged)" in format_table([agg])
