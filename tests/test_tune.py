"""optiloop.tuning (``ol.tune``, ``optiloop tune``, ``ol.OptunaPruning``): searches on real Optuna
studies, every trial a real run folder. Small data (wine, digits), 1-3 epochs, a few trials."""

from __future__ import annotations

import base64
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

optuna = pytest.importorskip("optuna", reason="optuna is the tune extra: pip install 'optiloop[tune]'")

import optiloop as ol  # noqa: E402
from optiloop.config import resolve  # noqa: E402
from optiloop.errors import OptiloopError  # noqa: E402
from optiloop.tuning.space import Dimension, Space, default_space, parse_space, trial_config  # noqa: E402
from optiloop.tuning.study import Storage, alive, this_worker  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
WINE = {"data": {"name": "wine"}, "model": {"name": "mlp", "hidden": [16]}}
PNG = "data:image/png;base64,"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, float | None]:
    """Every path under ``root``, with its files' modification times (a folder's own time moves when
    check_writable probes it, which writes nothing)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns if p.is_file() else None for p in root.rglob("*")}


class PruneLaterTrials(optuna.pruners.BasePruner):
    """Prunes every trial after the first once it has reported one epoch: a scripted pruner."""

    def prune(self, study, trial):
        return trial.number >= 1 and bool(trial.intermediate_values)


# --- the space --------------------------------------------------------------------------------------------
def test_default_space_samples_only_what_each_optimizer_takes():
    base = resolve()
    space = default_space(10)
    assert space.keys() == ["optimizer.name", "optimizer.lr_scale", "optimizer.weight_decay", "optimizer.momentum",
                            "optimizer.betas", "scheduler.name", "scheduler.warmup_epochs", "train.batch_size"]
    for name in ("sgd", "adam", "adagrad"):
        trial = optuna.trial.FixedTrial({"optimizer.name": name, "optimizer.lr_scale": 2.0,
                                         "optimizer.weight_decay": 1e-4, "optimizer.momentum": 0.5,
                                         "optimizer.betas": "[0.9, 0.99]", "scheduler.name": "wsd",
                                         "scheduler.warmup_epochs": 1, "train.batch_size": 32})
        over = space(trial, base)
        cfg = trial_config(base, over)
        assert cfg["optimizer"]["name"] == name
        assert cfg["optimizer"]["lr"] == pytest.approx(2.0 * ol.OPTIMIZERS[name].defaults["lr"])
        assert ("momentum" in over["optimizer"]) == (name == "sgd")  # adam: betas, adagrad: neither
        assert cfg["optimizer"].get("betas") == ([0.9, 0.99] if name == "adam" else None)
        assert cfg["scheduler"] == {"name": "wsd", "warmup_epochs": 1} and cfg["train"]["batch_size"] == 32
    assert "scheduler.warmup_epochs" not in default_space(3).keys()  # no room for warmup in 3 epochs
    fixed = default_space(10, fixed=["optimizer.name", "train.batch_size"]).keys()
    assert "optimizer.name" not in fixed and "optimizer.momentum" not in fixed and "train.batch_size" not in fixed


def test_a_toml_space_parses_into_ranges_and_choices():
    base = resolve()
    space = parse_space({"optimizer.name": ["SGD", "adamw"], "optimizer.lr": {"low": 1e-4, "high": 0.3, "log": True},
                         "optimizer.momentum": {"low": 0.5, "high": 0.99}, "model.hidden": [[16], [32, 16]],
                         "train.batch_size": {"low": 32, "high": 128, "step": 32}}, base)
    assert space.describe() == ["optimizer.name [sgd, adamw]", "optimizer.lr 0.0001..0.3 (log)",
                                "optimizer.momentum 0.5..0.99", "model.hidden [[16], [32, 16]]",
                                "train.batch_size 32..128 (step 32)"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        over = space(trial, base)
        cfg = trial_config(base, over)
        assert 1e-4 <= cfg["optimizer"]["lr"] <= 0.3 and cfg["train"]["batch_size"] in (32, 64, 96, 128)
        assert cfg["model"]["hidden"] in ([16], [32, 16])
        assert ("momentum" in over["optimizer"]) == (cfg["optimizer"]["name"] == "sgd")
        seen.add(cfg["optimizer"]["name"])
        study.tell(trial, 0.0)
    assert seen == {"sgd", "adamw"}
    assert Space((Dimension("optimizer.name", ("sgd", "adam")),)).grid() == {"optimizer.name": ["sgd", "adam"]}


@pytest.mark.parametrize(("space", "message"), [
    ({"optimizer.lrr": {"low": 0.1, "high": 1.0}}, "'optimizer.lrr': no optimizer searched takes 'lrr'"),
    ({"data.val_fraction": [0.1, 0.2]}, "data settings are not searched"),
    ({"trainer.epochs": [1, 2]}, "unknown section 'trainer'"),
    ({"train.epochs": [1, 2]}, "not a searchable train setting"),
    ({"lr": [0.1]}, "name a setting as \"section.key\""),
    ({"optimizer.lr": []}, "empty list of choices"),
    ({"optimizer.lr": {"low": 0.1, "high": 0.1}}, "empty range"),
    ({"optimizer.lr": {"low": 0.3, "high": 0.1}}, "inverted range (low 0.3 > high 0.1)"),
    ({"optimizer.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log = true needs low > 0"),
    ({"optimizer.lr": {"low": 0.1, "high": 1, "steps": 2}}, "unknown field 'steps'"),
    ({"optimizer.lr": {"high": 1}}, "needs low and high (missing low)"),
    ({"optimizer.lr": 0.1}, "a fixed value goes in the config's own [optimizer] section"),
    ({"optimizer.name": ["sgd", "adamz"]}, "unknown optimizer 'adamz'"),
    ({"optimizer.name": ["sgd", "sgd"]}, "each choice once"),
    ({"optimizer.momentum": [0.9]}, "no optimizer searched takes 'momentum' (adamw)"),
])
def test_bad_spaces_are_one_line(space, message):
    with pytest.raises(OptiloopError) as e:
        parse_space(space, resolve())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_database_driver_is_one_line_naming_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` raises ImportError
    with pytest.raises(OptiloopError, match=r"needs the database driver psycopg2, which is not installed: "
                                            r"pip install psycopg2-binary$"):
        Storage.parse("postgresql://me:secret@127.0.0.1:1/x").open()


def test_a_password_is_not_written_into_the_folder_and_continuing_asks_for_it(tmp_path):
    from optiloop.tuning.study import continued_storage, folder_study, write_folder_study

    folder = tmp_path / "t"
    folder.mkdir()
    write_folder_study(folder, Storage.parse("postgresql://me:secret@db.example/optuna"), "s", "tune")
    assert "secret" not in (folder / "study.toml").read_text()
    saved = folder_study(folder, "tune")
    with pytest.raises(OptiloopError, match="study.toml keeps no password: give it again with --storage"):
        continued_storage(folder, saved, None, None)
    again = continued_storage(folder, saved, Storage.parse("postgresql://me:secret@db.example/optuna"), None)
    assert again.url == "postgresql+psycopg2://me:secret@db.example/optuna"
    with pytest.raises(OptiloopError, match="holds study 's' on postgresql"):
        continued_storage(folder, saved, Storage.parse("postgresql://me:secret@other.example/optuna"), None)


def test_storage_urls():
    assert Storage.parse("sqlite:///a/b.db").kind == "sqlite"
    assert Storage.parse("journal:/shared/tune.log").path == Path("/shared/tune.log")
    pg = Storage.parse("postgresql://me:secret@db.example/optuna")
    assert pg.kind == "rdb" and "secret" not in pg.shown and "me:***@db.example" in pg.shown
    # the driver the install hint names (SQLAlchemy 2.1 would read a bare postgresql:// as psycopg 3)
    assert pg.url == "postgresql+psycopg2://me:secret@db.example/optuna"
    # a driver named, and a server reached through a unix socket (the tests' own server): kept whole
    socket = "postgresql+psycopg2://postgres@/postgres?host=/tmp/optiloop-pg-x&port=5432"
    assert Storage.parse(socket).kind == "rdb" and Storage.parse(socket).shown == socket
    assert Storage.parse(socket.replace("postgres@", "me:pw@")).shown == socket.replace("postgres@", "me:***@")
    for bad in ("redis://x", "tune.db", "sqlite:///", "journal:"):
        with pytest.raises(OptiloopError):
            Storage.parse(bad)


def test_a_live_process_is_alive_and_a_dead_one_is_not():
    me = this_worker()
    assert alive(me)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not alive({**me, "pid": proc.pid})
    assert alive({**me, "host": "another-machine", "pid": proc.pid})  # the heartbeat decides there


# --- OptunaPruning in a plain fit --------------------------------------------------------------------------
class _ScriptedTrial:
    """The trial API the callback uses, pruning from a given epoch on."""

    def __init__(self, prune_at, direction="MAXIMIZE"):
        self.prune_at, self.reported = prune_at, {}
        self.study = type("S", (), {"direction": getattr(optuna.study.StudyDirection, direction)})()

    def report(self, value, step):
        self.reported[step] = value

    def should_prune(self):
        return max(self.reported) >= self.prune_at


def _tiny():
    import torch

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long()
    return torch.nn.Linear(4, 2), (X, y)


def test_pruning_callback_reports_every_epoch_and_stops_at_once():
    model, data = _tiny()
    trial = _ScriptedTrial(prune_at=2)
    pruning = ol.OptunaPruning(trial, monitor="val_acc")
    history = ol.fit(model, data, val_data=data, epochs=6, metrics=["accuracy"], callbacks=[pruning],
                     progress=False, seed=0)
    assert len(history) == 2 and sorted(trial.reported) == [1, 2]
    assert trial.reported[2] == history["val_acc"][1]
    assert pruning.pruned_epoch == 2
    with pytest.raises(optuna.TrialPruned):
        pruning.check_pruned()

    not_pruned = ol.OptunaPruning(_ScriptedTrial(prune_at=99), monitor="val_acc")
    assert len(ol.fit(*_tiny(), val_data=_tiny()[1], epochs=3, metrics=["accuracy"], callbacks=[not_pruned],
                      progress=False)) == 3
    not_pruned.check_pruned()  # nothing to raise


def test_pruning_callback_refuses_a_study_that_runs_the_wrong_way():
    model, data = _tiny()
    with pytest.raises(OptiloopError, match="val_loss improves toward its minimum but the study is set to maximize"):
        ol.fit(model, data, val_data=data, epochs=1, callbacks=[ol.OptunaPruning(_ScriptedTrial(9), "val_loss")],
               progress=False)


# --- searches ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # several trainings in a row: many seconds
def test_cli_search_files_match_the_study(run_main, tmp_path):
    import matplotlib

    style = dict(matplotlib.rcParams)
    code, out, err = run_main("tune", "--data", "wine", "--set", "model.hidden=[16]", "--epochs", "2",
                              "--trials", "3", "--out", "t", "--pruner", "none")
    assert code == 0, err
    # Optuna's plots (the report's) set their ggplot style for the whole process; it is put back
    assert {k: v for k, v in matplotlib.rcParams.items() if style.get(k) != v} == {}
    folder = tmp_path / "t"
    study = optuna.load_study(study_name=re.search(r"study '([^']+)'", out).group(1),
                              storage=f"sqlite:///{folder / 'study.db'}")
    rows = _csv(folder / "trials.csv")
    trials = study.get_trials()
    assert len(trials) == len(rows) == 3
    for t, row in zip(trials, rows):
        assert int(row["number"]) == t.number and row["state"] == t.state.name == "COMPLETE"
        assert float(row["val_acc"]) == t.value
        for name, value in t.params.items():
            assert row[name] == str(value)
        assert float(row["optimizer.lr"]) == t.user_attrs["config"]["optimizer"]["lr"]
        run = folder / row["run"]
        hist = _csv(run / "history.csv")
        assert len(hist) == 2 and max(float(h["val_acc"]) for h in hist) == t.value
        assert (run / "config.toml").is_file() and (run / "best.pt").is_file()
        assert t.intermediate_values == {i + 1: float(h["val_acc"]) for i, h in enumerate(hist)}
    best = study.best_trial
    # best.toml re-runs the best trial: the same config as its run folder's
    assert resolve(folder / "best.toml") == resolve(folder / rows[best.number]["run"] / "config.toml")
    assert f"best: trial {best.number}, val_acc {best.value:.4f}" in out
    assert f"optuna-dashboard sqlite:///{(tmp_path / 't' / 'study.db').resolve()}" in out  # absolute
    html = (folder / "report.html").read_text()
    assert html.count(PNG) == 4 and "src=\"http" not in html and "<link" not in html  # self-contained
    for chunk in re.findall(r'data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(chunk)[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "report.md").read_text()
    assert "## Intermediate values" in md and f"Best: trial {best.number}" in md

    # the same command again: nothing to add, the files stay right
    code, out, err = run_main("tune", "--data", "wine", "--set", "model.hidden=[16]", "--epochs", "2",
                              "--trials", "3", "--out", "t", "--pruner", "none")
    assert code == 0 and "nothing to run" in out and len(_csv(folder / "trials.csv")) == 3


@pytest.mark.slow  # several trainings in a row: many seconds
def test_pruned_trials_keep_their_run_folder_and_history(tmp_path):
    lines = []
    result = ol.tune(WINE, space={"optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}, trials=3, epochs=3,
                     pruner=PruneLaterTrials(), out=tmp_path / "t", progress=lines.append)
    states = [t.state.name for t in result.study.trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]
    for t in result.study.trials[1:]:
        run = tmp_path / "t" / t.user_attrs["run"]
        assert len(_csv(run / "history.csv")) == 1  # stopped right after the epoch it was pruned at
        assert list(t.intermediate_values) == [1]
        assert "pruned by Optuna at epoch 1" in (run / "summary.json").read_text()
        assert (run / "config.toml").is_file() and (run / "curves.png").is_file()
        assert t.user_attrs["note"] == "pruned after epoch 1" and t.user_attrs["epochs"] == 1
    assert sum("pruned after epoch 1" in line for line in lines) == 2
    rows = _csv(tmp_path / "t" / "trials.csv")
    assert [r["state"] for r in rows] == states and rows[1]["note"] == "pruned after epoch 1"
    assert result.best["number"] == 0


@pytest.mark.slow  # several trainings in a row: many seconds
def test_a_search_continues_to_its_total(tmp_path):
    args = dict(space={"optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}, epochs=1, out=tmp_path / "t",
                pruner="none")
    first = ol.tune(WINE, trials=2, **args)
    assert first.new_trials == [0, 1]
    again = ol.tune(WINE, trials=3, **args)
    assert again.new_trials == [2] and len(again.study.trials) == 3
    assert sorted(p.name for p in (tmp_path / "t" / "trials").iterdir()) == [f"trial-000{i}" for i in range(3)]
    assert len(_csv(tmp_path / "t" / "trials.csv")) == 3


@pytest.mark.slow  # several trainings in a row: many seconds
def test_define_by_run_space_and_grid_sampler(tmp_path):
    def space(trial):
        name = trial.suggest_categorical("opt", ["sgd", "adam"])
        return {"optimizer": {"name": name, "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True)}}

    result = ol.tune(WINE, space=space, trials=2, epochs=1, out=tmp_path / "f", pruner="none")
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 2
    for t in result.study.trials:
        assert t.user_attrs["config"]["optimizer"]["name"] == t.params["opt"]
        assert t.user_attrs["config"]["optimizer"]["lr"] == t.params["lr"]

    grid = {"optimizer.name": ["sgd", "adam"], "scheduler.name": ["constant", "cosine"]}
    result = ol.tune({**WINE, "tune": {"space": grid, "sampler": "grid", "pruner": "none"}}, epochs=1,
                     out=tmp_path / "g")
    combos = {(t.params["optimizer.name"], t.params["scheduler.name"]) for t in result.study.trials}
    assert len(result.study.trials) == 4 and combos == {(o, s) for o in grid["optimizer.name"]
                                                          for s in grid["scheduler.name"]}


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    def cfg(name: str, text: str) -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return str(path)

    space = "[data]\nname = \"wine\"\n[tune.space]\n"
    return [
        (["--config", cfg("key", space + '"optimizer.lrr" = {low = 0.1, high = 1.0}\n')], "no optimizer searched"),
        (["--config", cfg("empty", space + '"optimizer.lr" = {low = 0.1, high = 0.1}\n')], "empty range"),
        (["--config", cfg("inv", space + '"optimizer.lr" = {low = 0.3, high = 0.1}\n')], "inverted range"),
        (["--config", cfg("log", space + '"optimizer.lr" = {low = -1.0, high = 0.1, log = true}\n')],
         "log = true needs low > 0"),
        (["--config", cfg("tkey", "[tune]\ntrails = 3\n")], "tune.trails: unknown key"),
        (["--data", "wine", "--storage", "sqlite:///no/such/folder/x.db"], "no folder no/such/folder"),
        (["--data", "wine", "--storage", "postgresql://me:secret@127.0.0.1:1/x"],
         "storage postgresql+psycopg2://me:***@127.0.0.1:1/x: cannot open it"),  # no server there
        (["--data", "wine", "--storage", "redis://localhost"], "use sqlite:///PATH.db"),
        (["--data", "wine", "--sampler", "grid"], "sampler 'grid' needs a space of lists"),
        (["--data", "wine", "--trials", "0"], "trials: must be an integer >= 1"),
        (["--data", "wine", "--monitor", "val_f1"], "monitor: monitor 'val_f1' is never logged"),
        (["--data", "wine", "--epochs", "0"], "train.epochs: must be >= 1"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_main, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for args, message in _bad_cases(tmp_path):
        before = _files(tmp_path)
        code, out, err = run_main("tune", *args, "--out", str(work / "t"))
        assert code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "secret" not in err, (args, err)
        assert _files(tmp_path) == before, args


def test_an_existing_study_with_another_space_is_refused(run_main, tmp_path):
    code, _, err = run_main("tune", "--data", "wine", "--epochs", "1", "--trials", "1", "--out", "t",
                            "--set", "model.hidden=[8]")
    assert code == 0, err
    before = _files(tmp_path / "t")
    for extra, message in ((["--set", "optimizer.name=sgd"], "was made with another space (optimizer.betas"),
                           (["--epochs", "2"], "was made with another run (train.epochs: 1 there, 2 here)"),
                           (["--monitor", "val_loss"], "was made to maximize, not minimize")):
        args = ["--data", "wine", "--epochs", "1", "--trials", "2", "--out", "t", "--set", "model.hidden=[8]", *extra]
        code, _, err = run_main("tune", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert _files(tmp_path / "t") == before


def test_without_optuna_the_command_says_how_to_install_it(run_main, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    code, out, err = run_main("tune", "--data", "wine")
    assert code == 2 and err.strip() == ("error: the search runs on Optuna, which is not installed: "
                                         "pip install 'optiloop[tune]'")
    assert not list(tmp_path.iterdir())


def test_train_refuses_a_tune_table_and_says_whose_it_is(run_main, tmp_path):
    (tmp_path / "c.toml").write_text("[data]\nname = \"wine\"\n[tune]\ntrials = 3\n")
    code, _, err = run_main("train", "--config", str(tmp_path / "c.toml"))
    assert code == 2 and "unknown section [tune] (the search settings of optiloop tune" in err


def test_help_texts_say_the_librarys_own_defaults():
    from optiloop.commands import tune as command
    from optiloop.tuning import search, study

    assert command.DEFAULT_TRIALS == search.DEFAULT_TRIALS and command.DEFAULT_EPOCHS == search.DEFAULT_EPOCHS
    assert command.PRUNERS == study.PRUNERS and command.SAMPLERS == study.SAMPLERS


# --- processes ---------------------------------------------------------------------------------------------
def _cli(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, "-m", "optiloop", "tune", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _done(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_a_study_another_process_has_just_created_is_waited_for_not_refused(tmp_path, monkeypatch):
    """Two processes on one new study: one creates it and then records what it is for; the other,
    finding it in between, waits for the record instead of calling it foreign."""
    import threading

    from optiloop.tuning import study as study_module
    from optiloop.tuning.study import StudySpec

    spec = StudySpec(Storage.sqlite(tmp_path / "s.db"), "shared", "minimize")
    bare = optuna.create_study(storage=spec.storage.open(), study_name="shared", direction="minimize")
    later = threading.Timer(0.5, lambda: bare.set_user_attr("optiloop", {"space": "a"}))
    later.start()
    spec.check(spec.find(), {"space": "a"})  # (raised "was not made by optiloop" before the wait)
    later.join()
    monkeypatch.setattr(study_module, "RECORD_SECONDS", 0.2)
    optuna.create_study(storage=spec.storage.open(), study_name="foreign", direction="minimize")
    foreign = StudySpec(spec.storage, "foreign", "minimize")
    with pytest.raises(OptiloopError, match="was not made by optiloop"):
        foreign.check(foreign.find(), {"space": "a"})


@pytest.mark.slow
def test_a_sigkill_mid_trial_leaves_the_study_usable(tmp_path):
    args = ["--data", "digits", "--epochs", "3", "--trials", "3", "--out", "t", "--pruner", "none"]
    proc = _cli(tmp_path, *args)
    deadline = time.monotonic() + 180
    while not (tmp_path / "t" / "trials" / "trial-0001" / "config.toml").exists():  # trial 1 is training
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = _done(_cli(tmp_path, *args))
    assert "marked failed (their process died): trial 1" in out
    study = optuna.load_study(study_name=re.search(r"study '([^']+)'", out).group(1),
                              storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert states[1] == "FAIL" and "ended without finishing it" in study.trials[1].user_attrs["note"]
    assert sum(s == "COMPLETE" for s in states.values()) == 3  # the search went on to its total
    assert [r["state"] for r in _csv(tmp_path / "t" / "trials.csv")] == [states[n] for n in sorted(states)]


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite:///{}/shared.db", "journal:{}/shared.log", "postgresql"],
                         ids=["sqlite", "journal", "postgresql"])
def test_two_processes_share_one_study(tmp_path, storage, request):
    # postgresql: the session's server (conftest's postgres_url; skips where none can start), shared
    # by other tests: a study name of this test's own
    kind = storage
    storage = request.getfixturevalue("postgres_url") if kind == "postgresql" else storage.format(tmp_path)
    name = f"shared-{os.getpid()}-{time.time_ns()}"
    # digits: trials long enough (a few seconds) that the process started second gets some of them
    args = ["--data", "digits", "--set", "model.hidden=[16]", "--epochs", "2", "--trials", "8", "--storage", storage,
            "--study", name, "--pruner", "none"]
    procs = [_cli(tmp_path, *args, "--out", out) for out in ("a", "b")]
    outs = [_done(p) for p in procs]
    ran = [int(re.search(r"done: (\d+) new trials", out).group(1)) for out in outs]
    store = Storage.parse(storage).open()
    study = optuna.load_study(study_name=name, storage=store)
    numbers = [t.number for t in study.trials if t.state.name == "COMPLETE"]
    assert len(numbers) == len(set(numbers)) == sum(ran) == 8
    folders = [p.name for out in ("a", "b") for p in (tmp_path / out / "trials").iterdir()]
    assert len(folders) == len(set(folders)) == 8  # each trial trained once, by one process
    assert all(n > 0 for n in ran), ran  # both really worked on it
    if kind == "postgresql":  # the server may outlive the session (OPTILOOP_TEST_POSTGRES)
        optuna.delete_study(study_name=name, storage=store)


# Opens the storage argv[1] once argv[3] processes are ready (a file each in folder argv[2]): all at once.
_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from optiloop.tuning.study import Storage
import optuna
url, ready, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(ready / str(time.time_ns())).touch()
while len(list(ready.iterdir())) < n:
    time.sleep(0.001)
Storage.parse(url).open()
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_opening_a_new_storage_at_once_all_open_it(tmp_path, kind, request):
    # Optuna creates a new database's tables check-then-create: of several processes that open it at
    # once, all but one used to fail ("table studies already exists", a duplicate key); now they wait
    # and open it.
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'new.db'}"
    else:  # a new database of its own, on the session's throwaway server
        if os.environ.get("OPTILOOP_TEST_POSTGRES"):
            pytest.skip("makes a database of its own: only on the suite's own throwaway server")
        base = request.getfixturevalue("postgres_url")
        import psycopg2
        import sqlalchemy

        parts = sqlalchemy.engine.make_url(base)
        db = f"new_{os.getpid()}_{time.time_ns()}"
        conn = psycopg2.connect(dbname=parts.database, user=parts.username, **parts.query)
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {db}")
        conn.close()
        url = parts.set(database=db).render_as_string(hide_password=False)
    n = 4
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, url, str(ready), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        if p.returncode != 0:
            errors.append(err[-2000:])
    assert not errors, errors[0]
    assert Storage.parse(url).open().get_all_studies() == []


@pytest.mark.slow
def test_jobs_runs_processes_on_one_study(tmp_path):
    # digits: trials long enough (a second or two each) that the spawned process, which first pays its
    # interpreter and torch's import, still finds some to run (wine's were all done before it started)
    out = _done(_cli(tmp_path, "--data", "digits", "--set", "model.hidden=[16]", "--epochs", "2", "--trials", "6",
                     "--jobs", "2", "--out", "t", "--pruner", "none"))
    per = [int(n) for n in re.search(r"per process: (.*) trials", out).group(1).split(", ")]
    assert len(per) == 2 and sum(per) == 6
    rows = _csv(tmp_path / "t" / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 6 and len({r["worker"] for r in rows}) == 2


@pytest.mark.slow
def test_postgresql_storage(tmp_path, postgres_url):
    storage = Storage.parse(postgres_url)
    assert storage.kind == "rdb" and storage.url == postgres_url
    name = f"optiloop-test-{os.getpid()}-{time.time_ns()}"
    result = ol.tune(WINE, space={"optimizer.lr": {"low": 1e-3, "high": 1e-2}}, trials=2, epochs=1,
                     storage=postgres_url, study=name, out=tmp_path / "t", pruner="none")
    assert len(result.study.trials) == 2 and math.isfinite(result.best["value"])
    store = storage.open(create=False)
    assert store.engine.dialect.name == "postgresql"  # the study really lives there
    assert len(optuna.load_study(study_name=name, storage=store).trials) == 2
    optuna.delete_study(study_name=name, storage=postgres_url)
