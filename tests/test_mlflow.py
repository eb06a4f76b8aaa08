"""MLflow: runs logged to a real SQLite tracking store and read back with MlflowClient. Params
equal the resolved config, each metric's history equals the History, per-step figures, tags,
artifacts; a resume continues the same run; a dead server or a tracker error costs one warning
and nothing of the run; compare logs a parent with its children; without mlflow, one line."""

from __future__ import annotations

import os
import re
import socket
import sys
import warnings

import pytest
import torch
from conftest import SignalAt, data, model, quiet
from test_loop import count_syncs_in_step_loop  # the suite's own sync counter

import optiloop as ol
from optiloop.loggers import flatten, param_text
from optiloop.trackers import TrackerWarning

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")  # what MLflow's SQLite store runs on (optiloop[mlflow] brings it)
# MLflow's own SQLAlchemy models, on SQLAlchemy 2.1: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store for the module (creating its tables takes seconds): (uri, client).
    Its artifacts go under the same folder (MLflow puts them beside the working directory of the
    process that first opens the store)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        client = MlflowClient(uri)
        client.search_experiments()
    return uri, client




def history_of(client, run_id, key):
    """A metric's (step, value) points in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def epoch_keys(history):
    return [k for k in history.keys() if k != "epoch"]


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracker_warnings(record):
    return [w for w in record if issubclass(w.category, TrackerWarning)]


# --- ol.MLflow in fit -------------------------------------------------------------------------------
def test_fit_logs_settings_every_epoch_every_step_and_tags(store):
    uri, client = store
    X, y = data()
    tracker = ol.MLflow(uri, experiment="fit", run_name="sgd-onecycle", grad_norm=True)
    h = ol.fit(model(), (X, y), val_data=(X, y), optimizer={"name": "sgd", "momentum": 0.9}, lr=0.3,
               scheduler="onecycle", epochs=3, batch_size=8, metrics=["accuracy"],
               callbacks=[tracker, ol.StepHistory()], **quiet())
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "sgd-onecycle"
    assert client.get_experiment(run.info.experiment_id).name == "fit"
    # fit's own settings: the optimizer's hyperparameters as torch holds them, the schedule, the loop's
    p = run.data.params
    assert (p["optimizer.name"], float(p["optimizer.lr"]), float(p["optimizer.momentum"])) == ("sgd", 0.3, 0.9)
    assert (p["scheduler.name"], p["scheduler.interval"]) == ("onecycle", "step")
    assert (p["train.epochs"], p["train.batch_size"], p["train.loss"], p["train.metrics"]) == \
        ("3", "8", "cross_entropy", '["accuracy"]')
    assert p["model.parameters"] == str(sum(q.numel() for q in model().parameters()))
    # every figure of every epoch, at step = epoch: MLflow's history is the History
    for key in epoch_keys(h):
        assert history_of(client, tracker.run_id, key) == list(zip(range(1, 4), h[key])), key
    # per optimizer step: loss, LR, gradient norm, each the loop's own value
    for key in ("loss", "lr", "grad_norm"):
        assert history_of(client, tracker.run_id, f"step/{key}") == list(zip(h.steps["step"], h.steps[key]))
    assert h.steps["step"] == list(range(1, 19))
    t = run.data.tags
    assert (t["optiloop.version"], t["torch.version"]) == (ol.__version__, torch.__version__)
    assert (t["optiloop.device"], t["optiloop.processes"], t["optiloop.strategy"]) == ("cpu", "1", "none")


def test_mlflow_costs_no_host_sync_in_the_step_loop(monkeypatch, store):
    uri, client = store
    tracker = ol.MLflow(uri, experiment="syncs", grad_norm=True)
    assert count_syncs_in_step_loop(monkeypatch, scheduler="onecycle", callbacks=[tracker]) == []
    assert [s for s, _ in history_of(client, tracker.run_id, "step/loss")] == list(range(1, 17))  # and it logged




def test_a_resumed_fit_continues_the_same_run(store, tmp_path):
    uri, client = store
    X, y = data()

    def train(tracker, resume=None, stop=()):
        return ol.fit(model(), (X, y), val_data=(X, y), optimizer="adamw", lr=1e-2, scheduler="cosine", epochs=3,
                      batch_size=8, metrics=["accuracy"], resume=resume, **quiet(),
                      callbacks=[tracker, ol.StepHistory(), ol.Checkpoint(tmp_path, every_seconds=3600), *stop])

    first = ol.MLflow(uri, experiment="resume")
    with pytest.raises(ol.TrainingInterrupted):
        train(first, stop=[SignalAt(9)])  # mid-epoch 2 (6 steps per epoch)
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert [s for s, _ in history_of(client, first.run_id, "val_loss")] == [1]

    second = ol.MLflow(uri, experiment="resume")  # a new process would build a new one: the id is in last.pt
    h = train(second, resume=str(tmp_path))
    assert second.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optiloop.resumed"].startswith("at epoch 2, step 9")
    for key in epoch_keys(h):  # every epoch once, equal to the resumed History
        assert history_of(client, first.run_id, key) == list(zip(range(1, 4), h[key])), key
    steps = history_of(client, first.run_id, "step/loss")  # every step once: none lost or doubled
    assert steps == list(zip(range(1, 19), h.steps["loss"]))
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_tracker_error_warns_once_and_training_goes_on(store, monkeypatch):
    uri, client = store
    from mlflow.tracking import MlflowClient

    real, calls = MlflowClient.log_batch, []

    def failing(self, run_id, *a, **k):
        calls.append(k)
        if k.get("metrics") and any(m.key == "val_loss" and m.step == 2 for m in k["metrics"]):
            raise RuntimeError("the tracking store refused the write")
        return real(self, run_id, *a, **k)

    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    X, y = data()
    tracker = ol.MLflow(uri, experiment="errors")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        h = ol.fit(model(), (X, y), val_data=(X, y), epochs=4, batch_size=8, callbacks=[tracker], **quiet())
    found = tracker_warnings(record)
    assert len(found) == 1 and "logging epoch 2 failed; training goes on" in str(found[0].message)
    assert "refused the write" in str(found[0].message)
    assert len(h) == 4 and tracker.failed
    n = len(calls)
    assert tracker.log_artifacts(".") == [] and len(calls) == n  # nothing more is sent
    assert history_of(client, tracker.run_id, "val_loss") == [(1, h["val_loss"][0])]
    assert client.get_run(tracker.run_id).info.status == "RUNNING"  # not even the end: it stopped trying


def test_without_mlflow_the_logger_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ol.OptiloopError, match=re.escape("pip install 'optiloop[mlflow]'")):
        ol.MLflow()
    with pytest.raises(ol.OptiloopError, match=re.escape("pip install 'optiloop[mlflow]'")):
        ol.MLflowSweep()


# --- optiloop train --mlflow ---------------------------------------------------------------------------
def run_id_in(out: str) -> str:
    found = re.search(r"^MLflow run ([0-9a-f]+) in ", out, re.MULTILINE)
    assert found, out
    return found.group(1)


def test_train_logs_config_history_steps_and_files_and_resume_continues_it(store, run_main, tmp_path):
    uri, client = store
    code, out, err = run_main("train", "--data", "wine", "--epochs", "2", "--mlflow", uri, "--out", "r")
    assert code == 0, err
    assert f"  MLflow: experiment 'optiloop' in {uri}" in out  # the header says where
    run_id = run_id_in(out)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.tags["optiloop.run_folder"] == str((tmp_path / "r").resolve())
    # params: the resolved config, every key of config.toml
    config = tomllib.loads((tmp_path / "r" / "config.toml").read_text())
    assert run.data.params == {k: param_text(v) for k, v in flatten(config).items()}
    assert (run.data.params["optimizer.lr"], run.data.params["data.name"], run.data.params["train.mlflow"]) == \
        ("0.001", "wine", uri)
    # metrics: each one's history is history.csv's column; the steps are steps.csv's
    history = ol.History.from_csv(tmp_path / "r" / "history.csv")
    for key in epoch_keys(history):
        assert history_of(client, run_id, key) == list(zip(range(1, 3), history[key])), key
    steps = ol.History.from_csv(tmp_path / "r" / "steps.csv")
    assert history_of(client, run_id, "step/loss") == list(zip(steps["step"], steps["loss"]))
    assert history_of(client, run_id, "step/lr") == list(zip(steps["step"], steps["lr"]))
    # the run folder's files, not its checkpoints
    assert sorted(a.path for a in client.list_artifacts(run_id)) == [
        "config.toml", "confusion_matrix.csv", "confusion_matrix.png", "curves.png", "history.csv", "per_class.csv",
        "steps.csv", "summary.json"]

    # A resume (here: one more epoch) continues the same MLflow run; the id came from last.pt.
    code, out, err = run_main("train", "--resume", "r", "--epochs", "3", "--force-resume")
    assert code == 0, err
    assert run_id_in(out) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "train.epochs 2 -> 3" in run.data.tags["optiloop.resumed"]
    history = ol.History.from_csv(tmp_path / "r" / "history.csv")
    assert len(history) == 3
    for key in epoch_keys(history):
        assert history_of(client, run_id, key) == list(zip(range(1, 4), history[key])), key


def test_train_with_a_dead_server_warns_once_and_the_run_folder_is_complete(run_main, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        code, out, err = run_main("train", "--data", "wine", "--epochs", "2", "--out", "r",
                                  "--mlflow", f"http://127.0.0.1:{closed_port()}")
    assert code == 0, err
    found = tracker_warnings(record)
    assert len(found) == 1 and "starting the run failed; training goes on without MLflow" in str(found[0].message)
    assert "MLflow run" not in out and "MLflow: logging stopped at an error (the warning above)" in out
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "best.pt", "config.toml", "confusion_matrix.csv", "confusion_matrix.png", "curves.png", "history.csv",
        "last.pt", "per_class.csv", "steps.csv", "summary.json"]
    assert len(ol.History.from_csv(tmp_path / "r" / "history.csv")) == 2


def test_without_mlflow_the_flag_is_one_line_and_writes_nothing(run_main, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    for command in (["train", "--data", "wine", "--epochs", "1", "--mlflow"],
                    ["compare", "--data", "wine", "--optimizers", "sgd", "--epochs", "1", "--mlflow", "sqlite:///x.db"]):
        code, out, err = run_main(*command)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.rstrip().endswith("MLflow logging needs the mlflow package: "
                                                              "pip install 'optiloop[mlflow]'"), err
        assert list(tmp_path.iterdir()) == []  # no run folder, no store


# --- optiloop compare --mlflow ----------------------------------------------------------------------
def test_compare_logs_one_parent_with_a_child_per_run(store, run_main, tmp_path):
    import csv

    uri, client = store
    code, out, err = run_main("compare", "--data", "wine", "--optimizers", "sgd,adam", "--epochs", "2",
                              "--mlflow", uri, "--out", "c")
    assert code == 0, err
    found = re.search(r"^MLflow: parent run ([0-9a-f]+) with 2 child runs in ", out, re.MULTILINE)
    assert found, out
    parent = client.get_run(found.group(1))
    assert parent.info.status == "FINISHED" and parent.info.run_name == "c"
    assert (parent.data.params["epochs"], parent.data.params["lrs.sgd"]) == ("2", "[0.1]")
    assert {"report.md", "results.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    with open(tmp_path / "c" / "results.csv", newline="") as f:
        results = {r["optimizer"]: r for r in csv.DictReader(f)}
    assert sorted(c.info.run_name for c in children) == ["adam-cosine-lr0.001-seed0", "sgd-cosine-lr0.1-seed0"]
    for child in children:
        name = child.data.params["optimizer.name"]
        row = results[name]
        assert child.info.status == "FINISHED"
        assert float(child.data.params["optimizer.lr"]) == float(row["lr"])
        assert (child.data.params["scheduler.name"], child.data.params["data.name"]) == ("cosine", "wine")
        assert child.data.metrics["best_val_acc"] == float(row["best_val_acc"])  # final figures
        history = ol.History.from_csv(tmp_path / "c" / row["run"] / "history.csv")
        assert history_of(client, child.info.run_id, "val_loss") == list(zip(range(1, 3), history["val_loss"]))
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.toml", "history.csv", "curves.png"} <= files


def test_a_sweep_with_a_dead_server_warns_once_and_does_nothing_more(tmp_path):
    (tmp_path / "config.toml").write_text("x = 1\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with ol.MLflowSweep(f"http://127.0.0.1:{closed_port()}", run_name="sweep") as sweep:
            assert sweep.start(params={"epochs": 2}) is None
            assert sweep.log_child("a", params={"optimizer": {"lr": 0.1}}, metrics={"best_val_acc": 0.9},
                                   artifacts=tmp_path) is None
            sweep.end(artifacts=tmp_path)
    found = tracker_warnings(record)
    assert len(found) == 1 and "starting the parent run failed" in str(found[0].message)
    assert sweep.failed and sweep.child_run_ids == []


# --- several processes ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_logs_one_run_from_rank_zero(store, tmp_path):
    import subprocess
    from pathlib import Path

    uri, client = store
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "optiloop",
           "train", "--data", "wine", "--epochs", "2", "--mlflow", uri, "--out", "r"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    folder = str((tmp_path / "r").resolve())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`optiloop.run_folder` = '{folder}'")
    assert len(runs) == 1 and run_id_in(p.stdout) == runs[0].info.run_id  # rank 0's, and only one
    run = runs[0]
    assert run.data.tags["optiloop.processes"] == "2" and run.data.tags["optiloop.strategy"] == "ddp"
    history = ol.History.from_csv(tmp_path / "r" / "history.csv")
    for key in epoch_keys(history):  # the all-reduced figures the History holds
        assert history_of(client, run.info.run_id, key) == list(zip(range(1, 3), history[key])), key


def test_tune_logs_one_parent_with_a_child_per_trial(store, run_main, tmp_path):
    pytest.importorskip("optuna")
    import optuna

    uri, client = store
    code, out, err = run_main("tune", "--data", "wine", "--trials", "2", "--epochs", "2", "--pruner", "none",
                              "--mlflow", uri, "--out", "t")
    assert code == 0, err
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string="attributes.run_name = 't'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["trials"] == "2" and parent.data.params["data"].startswith("wine")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = {t.number: t for t in study.trials}
    assert sorted(c.info.run_name for c in children) == ["trial-0000", "trial-0001"]
    for child in children:
        t = trials[int(child.data.tags["optuna.trial"])]
        assert child.data.params["optimizer.name"] == t.user_attrs["config"]["optimizer"]["name"]
        assert child.data.metrics["value"] == pytest.approx(t.value)
        history = ol.History.from_csv(tmp_path / "t" / t.user_attrs["run"] / "history.csv")
        assert history_of(client, child.info.run_id, "val_loss") == list(zip(range(1, 3), history["val_loss"]))
        assert {"config.toml", "history.csv"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
