"""Stopping on a signal (SIGTERM from a scheduler or a preemption, Ctrl-C), and states that are
never saved (non-finite weights or validation loss)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import HANG, SignalAt
from torch import nn

import optiloop as ol
from optiloop import checkpoint as C

SRC = Path(__file__).resolve().parents[1] / "src"


def data(n=64):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, 0] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))




def train(model, folder, epochs=3, resume=None, callbacks=()):
    X, y = data()
    return ol.fit(model, (X, y), val_data=(X, y), optimizer="adamw", lr=1e-2, scheduler="cosine", epochs=epochs,
                  batch_size=8, seed=0, progress=False, resume=resume,
                  callbacks=[ol.Checkpoint(folder, every_seconds=3600), *callbacks])


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """SIGINT raises KeyboardInterrupt, as in a terminal, even where the suite was started in the
    background (a shell's `&` starts it with SIGINT ignored, and an ignored signal stays ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_a_signal_saves_the_current_state_and_resume_is_bit_exact(tmp_path, signum, code):
    straight = net()
    train(straight, tmp_path / "a")
    stopped = net()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    with pytest.raises(ol.TrainingInterrupted) as e:
        train(stopped, tmp_path / "b", callbacks=[SignalAt(11, signum)])  # epoch 2 of 3, mid-epoch
    assert (e.value.signum, e.value.exit_code, e.value.epoch, e.value.step) == (signum, code, 2, 11)
    assert isinstance(e.value, KeyboardInterrupt)  # code that handles Ctrl-C handles this too
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # our handlers are gone again
    last = C.load_checkpoint(tmp_path / "b" / "last.pt")
    assert (last["step"], last["epoch_done"]) == (11, False)  # the current state, not the best epoch
    resumed = net()
    h = train(resumed, tmp_path / "b", resume=tmp_path / "b")
    assert same(straight, resumed) and len(h) == 3


def test_a_second_ctrl_c_during_the_save_is_ignored(tmp_path, monkeypatch):
    real_save = C.save_checkpoint
    during = []

    def save_and_press_again(obj, path, **kw):
        if not obj["epoch_done"]:  # the interrupted state's save: Ctrl-C again, mid-write
            os.kill(os.getpid(), signal.SIGINT)
            during.append(path)
        return real_save(obj, path, **kw)

    monkeypatch.setattr(C, "save_checkpoint", save_and_press_again)
    with pytest.raises(ol.TrainingInterrupted) as e:
        train(net(), tmp_path, callbacks=[SignalAt(3, signal.SIGINT)])
    assert e.value.signal_name == "SIGINT" and during  # the second press came, during the write
    assert C.load_checkpoint(tmp_path / "last.pt")["step"] == 3  # and the write finished


def test_an_ignored_signal_stays_ignored(tmp_path):
    """`optiloop train &` from a script: the shell ignores SIGINT for it, so a Ctrl-C meant for the
    foreground job must not stop the training in the background."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the fixture restores it
    try:
        h = train(net(), tmp_path, callbacks=[SignalAt(3, signal.SIGINT)])
    except ol.TrainingInterrupted as e:  # a KeyboardInterrupt: uncaught, it would end the whole session
        pytest.fail(f"an ignored SIGINT stopped training: {e}")
    assert len(h) == 3 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert C.load_checkpoint(tmp_path / "last.pt")["epoch_done"]  # the run's normal end


def test_training_in_another_thread_keeps_the_processes_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("h", train(net(), tmp_path, epochs=1)))
    t.start()
    t.join()
    assert len(out["h"]) == 1 and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_sigterm_on_the_command_line_saves_exits_143_and_resumes_to_the_same_end(run_main, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    train = ["train", "--data", "wine", "--epochs", "30", "--batch-size", "16"]
    assert run_main(*train, "--out", "a")[0] == 0  # the uninterrupted run, in this process
    p = subprocess.Popen([sys.executable, "-m", "optiloop", *train, "--out", "b"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # the one that gets SIGTERM
    for line in p.stdout:
        if line.startswith("epoch 5/30"):
            p.send_signal(signal.SIGTERM)
            break
    rest, err = p.communicate(timeout=HANG)
    assert p.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("saved b/last.pt; continue with: optiloop train --resume b")
    saved = C.load_checkpoint(tmp_path / "b" / "last.pt")
    assert saved["epoch"] >= 5  # what it had done, not the best epoch kept since the last minute's save
    code, _, err = run_main("train", "--resume", "b")  # the command it printed, in this process
    assert code == 0, err
    a, b = (C.load_checkpoint(tmp_path / d / "last.pt") for d in "ab")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_a_run_killed_before_its_first_save_starts_over_on_resume(tmp_path, capsys, monkeypatch):
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "wine", "--epochs", "2", "--out", "run"]) == 0
    for f in ("best.pt", "last.pt", "last.prev.pt", "history.csv", "summary.json", "curves.png"):
        (tmp_path / "run" / f).unlink(missing_ok=True)  # as if killed before anything but its config
    capsys.readouterr()
    assert main(["train", "--resume", "run"]) == 0
    out = capsys.readouterr().out
    assert "saved nothing before it stopped: starting it from its beginning" in out
    assert C.load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 2


# --- states that are never saved ---------------------------------------------------------------------
def test_weights_made_non_finite_by_a_step_are_never_saved(tmp_path):
    """The loss is computed before the step: a finite loss can still leave NaN weights behind."""
    X, y = data()
    with pytest.raises(ol.NonFiniteLossError, match="non-finite (loss|weights)"):
        ol.fit(net(), (X, y), optimizer="sgd", lr=1e39, epochs=3, batch_size=8, progress=False, seed=0,
               callbacks=[ol.Checkpoint(tmp_path, monitor="train_loss", every_n_steps=1, every_seconds=0)])
    for f in tmp_path.glob("*.pt"):
        weights = C.load_checkpoint(f)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values()), f.name


@pytest.mark.parametrize("nonfinite", ["skip", "ignore"])
def test_a_non_finite_validation_loss_ends_the_run_whatever_nonfinite_says(tmp_path, nonfinite):
    X, y = data()
    calls = [0]

    def loss(out, target):  # validation (no grad) goes NaN from epoch 2 on
        if not torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] > 1:
                return nn.functional.cross_entropy(out, target) * float("nan")
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(ol.NonFiniteLossError, match="non-finite validation loss at epoch 2"):
        ol.fit(net(), (X, y), val_data=(X, y), loss=loss, epochs=4, batch_size=64, progress=False, seed=0,
               nonfinite=nonfinite, callbacks=[ol.Checkpoint(tmp_path, every_seconds=0)])
    assert C.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert C.load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_an_exploding_schedule_does_not_end_as_a_success(tmp_path, capsys, monkeypatch):
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", "--data", "wine", "--optimizer", "sgd", "--scheduler", "exponential",
                 "--set", "scheduler.gamma=1000.0", "--epochs", "12", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite" in err and len(err.strip().splitlines()) == 1, err
    for f in (tmp_path / "run").glob("*.pt"):
        assert all(torch.isfinite(w).all() for w in C.load_checkpoint(f)["model"].values()), f.name
