"""``compare`` on Optuna's grid sampler: the study holds the grid, so a stopped comparison continues,
processes share it, and the report comes from it (``optiloop.tuning.sweep``)."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import optiloop as ol
from optiloop.tuning.study import Storage

optuna = pytest.importorskip("optuna", reason="compare's study runs on Optuna: pip install 'optiloop[tune]'")

SRC = Path(__file__).resolve().parents[1] / "src"
TIMING = ("seconds", "sec_per_epoch", "run")


def _data(n=160):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, 0] - X[:, 1] > 0).long()
    return (X[: n * 3 // 4], y[: n * 3 // 4]), (X[n * 3 // 4:], y[n * 3 // 4:])


def _factory():
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _figures(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _study(folder: Path):
    saved = (folder / "study.toml").read_text()
    name = re.search(r'study = "([^"]+)"', saved).group(1)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def test_the_study_holds_one_complete_trial_per_run_and_matches_results_csv(tmp_path):
    train, val = _data()
    rows = ol.compare(_factory, train, val, optimizers="sgd,adam", schedulers="constant,cosine", epochs=2,
                      out=tmp_path / "c", device="cpu")
    study = _study(tmp_path / "c")
    assert study.direction.name == "MAXIMIZE"  # the monitor, val_acc, by the one direction rule
    trials = {t.params["run"]: t for t in study.trials}
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    for row, saved in zip(rows, _csv(tmp_path / "c" / "results.csv"), strict=True):
        t = trials[f"{row['optimizer']}-{row['scheduler']}-lr{row['lr']:g}-seed{row['seed']}"]
        assert t.value == pytest.approx(row["best_val_acc"]) == pytest.approx(float(saved["best_val_acc"]))
        assert t.user_attrs["row"]["init_hash"] == row["init_hash"] == saved["init_hash"]
        assert len(t.user_attrs["history"]) == 2  # the report's curves come from the study


@pytest.mark.slow  # several trainings in a row: many seconds
def test_an_interrupted_comparison_continues_and_trains_only_what_is_missing(tmp_path):
    train, val = _data()
    kw = dict(optimizers="sgd,adam", schedulers="constant", lrs={"sgd": [0.05, 0.2]}, epochs=2, device="cpu")
    whole = ol.compare(_factory, train, val, out=tmp_path / "whole", **kw)

    def stop_at_the_second(line):  # Ctrl-C as the second run ends: its trial fails, the third never starts
        if line.startswith("[2/3]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ol.compare(_factory, train, val, out=tmp_path / "c", progress=stop_at_the_second, **kw)
    assert [t.state.name for t in _study(tmp_path / "c").trials] == ["COMPLETE", "FAIL"]
    lines: list[str] = []
    again = ol.compare(_factory, train, val, out=tmp_path / "c", progress=lines.append, **kw)
    assert any("1 of 3 runs already done" in line for line in lines), lines
    assert [line[:5] for line in lines if line.startswith("[")] == ["[2/3]", "[3/3]"]  # the two missing runs
    assert _figures(again) == _figures(whole)
    assert len(list((tmp_path / "c" / "runs").iterdir())) == 3
    lines.clear()
    ol.compare(_factory, train, val, out=tmp_path / "c", progress=lines.append, **kw)  # all done: the report again
    assert any("3 of 3 runs already done" in line for line in lines) and not any(x[0] == "[" for x in lines)


def test_a_changed_grid_is_refused_in_one_line_and_writes_nothing(run_main, tmp_path):
    args = ["compare", "--data", "wine", "--set", "model.hidden=[8]", "--epochs", "1", "--out", "c"]
    assert run_main(*args, "--optimizers", "sgd")[0] == 0
    before = sorted(p.name for p in (tmp_path / "c").iterdir())
    code, _, err = run_main(*args, "--optimizers", "adam")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "was made with another" in err and "--study or --out" in err
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == before


@pytest.mark.slow  # several trainings in a row: many seconds
def test_the_default_folder_is_named_by_the_comparison_so_the_command_continues_there(run_main, tmp_path):
    args = ["compare", "--data", "wine", "--set", "model.hidden=[8]", "--epochs", "1", "--optimizers", "sgd"]
    code, out, _ = run_main(*args)
    assert code == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"compare-wine-[0-9a-f]{8}", folder.name)
    code, out, _ = run_main(*args)
    assert code == 0 and "1 of 1 runs already done" in out and "[1/1]" not in out
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [folder.name]
    code, out, _ = run_main(*args[:-1], "adam")  # another grid: another folder
    assert code == 0 and len(list((tmp_path / "runs").iterdir())) == 2


def test_the_same_folder_with_another_model_or_data_given_in_python_is_refused(tmp_path):
    train, val = _data()
    kw = dict(optimizers="sgd", schedulers="constant", epochs=1, out=tmp_path / "c", device="cpu")
    ol.compare(_factory, train, val, **kw)

    def wider():
        return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 2))

    with pytest.raises(ol.OptiloopError, match="was made with another run"):
        ol.compare(wider, train, val, **kw)  # another model: its initial weights' hash differs
    other = (train[0] + 1, train[1])
    with pytest.raises(ol.OptiloopError, match="was made with another run"):
        ol.compare(_factory, other, val, **kw)  # other data of the same shape


def test_lrs_that_print_alike_are_refused_before_anything_is_written(tmp_path):
    train, val = _data()
    with pytest.raises(ol.OptiloopError, match="two of its LRs both read 0.1 to 6 significant digits"):
        ol.compare(_factory, train, val, lrs={"sgd": [0.1, 0.1000001]}, optimizers="sgd", epochs=1,
                   out=tmp_path / "c", device="cpu")
    assert not (tmp_path / "c").exists()


def test_an_unreachable_storage_leaves_the_folder_free_for_the_corrected_command(tmp_path):
    train, val = _data()
    kw = dict(optimizers="sgd", schedulers="constant", epochs=1, out=tmp_path / "c", device="cpu")
    with pytest.raises(ol.OptiloopError, match="no folder"):
        ol.compare(_factory, train, val, storage=f"sqlite:///{tmp_path}/no/such/x.db", **kw)
    assert not (tmp_path / "c").exists()  # checked before the folder is made: nothing written
    assert len(ol.compare(_factory, train, val, **kw)) == 1


def test_the_folder_continues_from_any_working_folder(tmp_path, monkeypatch):
    train, val = _data()
    kw = dict(optimizers="sgd", schedulers="constant", epochs=1, device="cpu")
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = ol.compare(_factory, train, val, out="c", **kw)
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    again = ol.compare(_factory, train, val, out="a/c", progress=lines.append, **kw)
    assert any("1 of 1 runs already done" in line for line in lines) and _figures(again) == _figures(first)


def test_a_diverged_run_is_a_row_and_the_comparison_goes_on(tmp_path):
    train, val = _data()
    rows = ol.compare(_factory, train, val, optimizers="sgd,adam", schedulers="constant", epochs=3,
                      lrs={"sgd": 1e6}, out=tmp_path / "c", device="cpu")
    sgd, adam = rows
    assert sgd["epochs_run"] < 3 and math.isnan(sgd["final_val_loss"])  # stopped where it diverged
    assert adam["epochs_run"] == 3 and math.isfinite(adam["best_val_loss"])
    assert (tmp_path / "c" / "report.md").is_file()
    (t,) = [t for t in _study(tmp_path / "c").trials if t.params["run"].startswith("sgd")]
    # A complete trial valued at the run's best finite epoch, or the worst value if it had none (a
    # trial that returned nan would be failed, and run again on every resume).
    best = sgd["best_val_acc"]
    assert t.state.name == "COMPLETE" and t.value == (best if math.isfinite(best) else -math.inf)


def test_without_optuna_a_comparison_runs_here_and_says_it_cannot_be_resumed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    train, val = _data()
    lines: list[str] = []
    rows = ol.compare(_factory, train, val, optimizers="sgd", schedulers="constant", epochs=1, out=tmp_path / "c",
                      device="cpu", progress=lines.append)
    assert len(rows) == 1 and "not resumable without Optuna (pip install 'optiloop[tune]')" in lines[0]
    assert not (tmp_path / "c" / "study.db").exists() and (tmp_path / "c" / "results.csv").is_file()
    with pytest.raises(ol.OptiloopError, match=r"not installed: pip install 'optiloop\[tune\]'"):
        ol.compare(_factory, train, val, optimizers="sgd", epochs=1, jobs=2, device="cpu")


def test_without_optuna_the_same_command_again_writes_a_new_folder(run_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    args = ["compare", "--data", "wine", "--set", "model.hidden=[8]", "--epochs", "1", "--optimizers", "sgd"]
    assert run_main(*args)[0] == 0 and run_main(*args)[0] == 0  # nothing to continue: a second folder
    first, second = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert second == f"{first}-2" and (tmp_path / "runs" / second / "results.csv").is_file()


# --- processes -----------------------------------------------------------------------------------------
def _cli(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "optiloop", "compare", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


GRID = ["--data", "digits", "--set", "model.hidden=[16]", "--optimizers", "sgd,adam,rmsprop", "--schedulers",
        "constant,cosine", "--epochs", "2"]


@pytest.mark.slow
def test_a_comparison_killed_mid_grid_continues_to_the_same_results(tmp_path, run_main):
    proc = _cli(tmp_path, *GRID, "--out", "c")
    deadline = time.monotonic() + 240
    # A run's folder is complete a moment before its trial: wait for three, so at least two trials are.
    while len(list((tmp_path / "c" / "runs").glob("*/summary.json"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = _done(_cli(tmp_path, *GRID, "--out", "c"))
    done_before = int(re.search(r"(\d) of 6 runs already done", out).group(1))
    assert done_before >= 2 and len(re.findall(r"^\[\d/6\]", out, re.M)) == 6 - done_before, out
    code, whole, _ = run_main("compare", *GRID, "--out", "whole")  # uninterrupted (in this process: no start-up)
    assert code == 0 and "already done" not in whole
    assert _figures(_csv(tmp_path / "c" / "results.csv")) == _figures(_csv(tmp_path / "whole" / "results.csv"))
    study = _study(tmp_path / "c")
    complete = [t.params["run"] for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 6  # each run once


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite:///{}/shared.db", "postgresql"], ids=["sqlite", "postgresql"])
def test_two_processes_on_one_storage_split_the_grid(tmp_path, storage, request):
    # (the journal file: tune's test_two_processes_share_one_study; the engine underneath is the same)
    # postgresql: the session's server (conftest's postgres_url; skips where none can start), shared
    # by other tests: a study name of this test's own
    url = request.getfixturevalue("postgres_url") if storage == "postgresql" else storage.format(tmp_path)
    study = f"grid-{os.getpid()}-{time.time_ns()}"
    procs = [_cli(tmp_path, *GRID, "--storage", url, "--study", study, "--out", name) for name in ("a", "b")]
    outs = [_done(p) for p in procs]
    trained = [len(re.findall(r"^\[\d/6\]", out, re.M)) for out in outs]
    assert sum(trained) == 6 and all(n > 0 for n in trained), outs  # both worked, no run twice
    folders = [p.name for name in ("a", "b") for p in (tmp_path / name / "runs").iterdir()]
    assert len(folders) == len(set(folders)) == 6
    # Each process writes the whole report, from the study: the same figures in both.
    a, b = (_csv(tmp_path / name / "results.csv") for name in ("a", "b"))
    assert _figures(a) == _figures(b) and len(a) == 6
    store = Storage.parse(url).open(create=False)
    complete = [t.params["run"] for t in optuna.load_study(study_name=study, storage=store).trials
                if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 6  # in that storage, each run once
    if storage == "postgresql":  # the server may outlive the session (OPTILOOP_TEST_POSTGRES)
        optuna.delete_study(study_name=study, storage=store)


@pytest.mark.slow
def test_jobs_2_runs_the_grid_in_two_processes_on_one_study(tmp_path):
    out = _done(_cli(tmp_path, *GRID, "--jobs", "2", "--out", "c"))
    assert "2 at a time" in out
    trials = _study(tmp_path / "c").trials
    # Both processes shuffle the grid alike, so each trial number is one run: no trial stepped back.
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6 and len({t.params["run"] for t in trials}) == 6
    assert len({t.user_attrs["optiloop_worker"]["pid"] for t in trials}) == 2  # both trained runs
