"""The command line under crashes and torchrun: `train --resume`, refused settings and unsafe
checkpoints, `torchrun -m optiloop train`. Subprocesses, as a user runs them."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG

import optiloop as ol

SRC = Path(__file__).resolve().parents[1] / "src"
TRAIN = ("train", "--epochs", "4", "--early-stopping", "0", "--seed", "0", "--checkpoint-seconds", "0")


def env():
    return {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


def optiloop(cwd, *args, timeout=HANG):
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def history_without_time(run: Path):
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr, proc.stderr


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_uninterrupted_result(run_main, tmp_path):
    code, _, err = run_main(*TRAIN, "--out", "a")  # the uninterrupted run, in this process
    assert code == 0, err
    p = subprocess.Popen([sys.executable, "-m", "optiloop", *TRAIN, "--out", "b"], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("epoch 2/4"):
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=HANG)
    assert p.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "summary.json").exists()  # it really died before the end
    # the epochs it finished are on disk already, not only in the checkpoint
    assert 1 <= len(history_without_time(tmp_path / "b")) <= 2
    assert history_without_time(tmp_path / "b") == history_without_time(tmp_path / "a")[:len(
        history_without_time(tmp_path / "b"))]
    code, _, err = run_main("train", "--resume", "b")
    assert code == 0, err
    assert history_without_time(tmp_path / "b") == history_without_time(tmp_path / "a")
    a, b = (ol.load_checkpoint(tmp_path / d / "last.pt") for d in "ab")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert a["step"] == b["step"] and b["epoch"] == 4


def test_resume_refuses_changed_settings_and_unsafe_checkpoints(run_main, tmp_path):
    def optiloop(cwd, *args):  # in-process: the same command line, without a start-up per call
        return subprocess.CompletedProcess(args, *run_main(*args))

    assert optiloop(tmp_path, *TRAIN[:2], "2", "--out", "run").returncode == 0
    one_line_error(optiloop(tmp_path, "train", "--resume", "run", "--batch-size", "32"),
                   "settings changed (train.batch_size 64 -> 32); pass --force-resume")
    one_line_error(optiloop(tmp_path, "train", "--resume", "nowhere"), "--resume nowhere: no such run folder")

    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    for name in ("last.pt", "last.prev.pt", "evil.pt"):
        torch.save({"format": "optiloop.checkpoint", "model": Touch()}, tmp_path / "run" / name)
    one_line_error(optiloop(tmp_path, "train", "--resume", "run"), "refused")
    one_line_error(optiloop(tmp_path, "eval", "run/evil.pt"), "refused")
    assert not marker.exists()


@pytest.mark.slow
def test_torchrun_two_processes_one_run_folder_named_by_time_with_a_header_that_says_so(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "optiloop", "train", "--epochs", "2", "--batch-size", "32"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=HANG)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert re.fullmatch(r"digits-mlp-adamw-\d{8}-\d{6}", runs[0].name), runs[0].name  # as one process names it
    header = p.stdout.splitlines()[:3]
    assert header[0].startswith("optiloop train: ") and header[0].endswith(f"-> runs/{runs[0].name}/"), header
    assert header[1] == ("  2 processes (ddp): batch size 32 per process, 64 in all per optimizer step; the LR is "
                         "not scaled for it"), header
    assert p.stdout.count("optiloop train: ") == 1  # the header too is rank 0's alone
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert {"config.toml", "history.csv", "best.pt", "last.pt", "curves.png", "summary.json"} <= \
        {f.name for f in runs[0].iterdir()}
    assert p.stdout.count("done: 2 epochs") == 1  # the summary is printed by rank 0 only


def test_checkpoint_every_writes_mid_epoch_checkpoints(run_main, tmp_path):
    code, _, err = run_main("train", "--epochs", "1", "--checkpoint-every", "5", "--out", "run")
    assert code == 0, err
    # 23 steps per epoch: saves at steps 5, 10, 15, 20 (mid-epoch), then the epoch's own save;
    # the one before the last is kept as last.prev.pt
    prev = ol.load_checkpoint(tmp_path / "run" / "last.prev.pt")
    assert (prev["step"], prev["epoch_done"], prev["batch"]) == (20, False, 20)
    assert ol.load_checkpoint(tmp_path / "run" / "last.pt")["epoch_done"] is True


def test_trust_settings_are_validated_before_anything_is_written(run_main, tmp_path):
    for args, needle in ((["--set", "train.nonfinite=maybe"], "train.nonfinite"),
                         (["--checkpoint-every", "0"], "train.checkpoint_every"),
                         (["--checkpoint-seconds", "-1"], "train.checkpoint_seconds")):
        one_line_error(subprocess.CompletedProcess(args, *run_main("train", *args)), needle)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cli(run_main):
    """``optiloop ARGS`` in-process (no interpreter start-up), in tmp_path: a CompletedProcess."""
    return lambda *args: subprocess.CompletedProcess(args, *run_main(*args))


def test_resume_decides_per_setting_and_writes_config_only_once_accepted(cli, tmp_path):
    assert cli("train", "--data", "wine", "--epochs", "2", "--out", "run").returncode == 0
    config = (tmp_path / "run" / "config.toml").read_bytes()
    # what defines the saved state is refused, even when forced; the config is left as it was
    for flags, needle in ((["--optimizer", "sgd"], "optimizer.name 'adamw' -> 'sgd'"),
                          (["--lr", "0.5"], "optimizer.lr 0.001 -> 0.5"),
                          (["--scheduler", "step"], "scheduler.name 'cosine' -> 'step'"),
                          (["--seed", "3", "--force-resume"], "train.seed 0 -> 3"),
                          (["--set", "model.hidden=[8]"], "model.hidden [128] -> [8]")):
        proc = cli("train", "--resume", "run", *flags)
        one_line_error(proc, needle)
        assert "these define the saved state" in proc.stderr
        assert (tmp_path / "run" / "config.toml").read_bytes() == config
    # what changes each step needs --force-resume (the CLI's own flag is named)
    one_line_error(cli("train", "--resume", "run", "--epochs", "3"),
                   "train.epochs 2 -> 3); pass --force-resume to continue anyway")
    assert (tmp_path / "run" / "config.toml").read_bytes() == config
    assert cli("train", "--resume", "run").returncode == 0  # a plain resume still works
    # how the run is carried out is applied and recorded; forced changes too
    proc = cli("train", "--resume", "run", "--device", "cpu", "--epochs", "3", "--force-resume")
    assert proc.returncode == 0, proc.stderr
    assert "changed train.device 'auto' -> 'cpu'; train.epochs 2 -> 3" in proc.stdout
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert 'device = "cpu"' in saved and "epochs = 3" in saved
    assert len(history_without_time(tmp_path / "run")) == 3
    assert cli("train", "--resume", "run").returncode == 0  # the recorded config resumes


@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_and_a_dead_holder_frees_it(cli, tmp_path):
    from optiloop.files import FolderLock

    run = tmp_path / "run"
    run.mkdir()
    lock = FolderLock(run).acquire()  # another process "is training" in run/ (flock is per open file)
    try:
        one_line_error(cli("train", "--data", "wine", "--epochs", "1", "--out", "run"),
                       f"is in use by another optiloop process (pid {os.getpid()})")
        assert [p.name for p in run.iterdir()] == [".optiloop.lock"]  # nothing written
    finally:
        lock.release()
    assert cli("train", "--data", "wine", "--epochs", "1", "--out", "run").returncode == 0
    assert not (run / ".optiloop.lock").exists()  # released at the end
    lock = FolderLock(run).acquire()  # a resume of a running run is refused too
    try:
        one_line_error(cli("train", "--resume", "run"), "is in use by another optiloop process")
    finally:
        lock.release()
    # a holder killed with kill -9 leaves its lock file behind, but not its lock
    (tmp_path / "fresh").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
                               "from optiloop.files import FolderLock; FolderLock(sys.argv[1]).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path / "fresh"), str(SRC)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=HANG)
    assert (tmp_path / "fresh" / ".optiloop.lock").exists()
    assert cli("train", "--data", "wine", "--epochs", "1", "--out", "fresh").returncode == 0


@pytest.mark.parametrize("command", [("compare", "--optimizers", "sgd", "--epochs", "1"),
                                     ("lr-find", "--steps", "5")])
def test_compare_and_lr_find_refuse_a_folder_in_use(cli, tmp_path, command):
    from optiloop.files import FolderLock

    run = tmp_path / "out"
    run.mkdir()
    lock = FolderLock(run).acquire()
    try:
        one_line_error(cli(*command, "--data", "wine", "--out", "out"),
                       f"is in use by another optiloop process (pid {os.getpid()})")
        assert [p.name for p in run.iterdir()] == [".optiloop.lock"]  # nothing written
    finally:
        lock.release()
    assert cli(*command, "--data", "wine", "--out", "out").returncode == 0
    assert not (run / ".optiloop.lock").exists() and any(run.iterdir())  # written, then released


@pytest.mark.slow
def test_training_goes_on_when_the_reader_of_its_output_leaves(tmp_path):
    """`optiloop train | head -2`: printing stops, training finishes, the folder is whole."""
    p = subprocess.Popen([sys.executable, "-m", "optiloop", "train", "--data", "wine", "--epochs", "25",
                          "--checkpoint-seconds", "0", "--out", "run"], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("optiloop train:")
    p.stdout.close()  # the reader leaves
    err = p.stderr.read()
    assert p.wait(timeout=HANG) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert len(history_without_time(tmp_path / "run")) == 25
    assert {"config.toml", "history.csv", "last.pt", "curves.png", "summary.json"} <= \
        {f.name for f in (tmp_path / "run").iterdir()}
