"""Bit-exact resume after a real SIGKILL: at random moments, mid-epoch, at an epoch boundary,
and in the middle of a checkpoint write. Final weights, optimizer state and history (timing
aside) must equal an uninterrupted run's exactly."""

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG

import optiloop as ol

WORKER = Path(__file__).with_name("resume_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def start(run_dir, out, *extra):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_to_end(run_dir, out, *extra):
    """The worker run to its end in this process: only a process to be killed needs one of its own
    (a start-up, torch and its compiler stack imported again, costs more than this whole run)."""
    import resume_worker

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        resume_worker.main([str(run_dir), str(out), *extra])
    stdout = printed.getvalue()
    result = torch.load(out, weights_only=True)
    result["first_step"] = int(next(ln for ln in stdout.splitlines() if ln.startswith("STEP")).split()[1])
    return result


def resume(run_dir, out, *extra):
    """Resume, and check it continued from the saved step rather than starting over."""
    saved_step = ol.load_checkpoint(ol.checkpoint.find_resumable(run_dir))["step"]
    result = run_to_end(run_dir, out, "--resume", *extra)
    assert saved_step > 0 and result["first_step"] == saved_step + 1
    return result


def kill_when(p, marker):
    """Read the worker's output until `marker` appears, then SIGKILL it."""
    for line in p.stdout:
        if line.strip() == marker:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=HANG)
            return
    raise AssertionError(f"worker ended before {marker!r}: {p.stderr.read()}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    result = run_to_end(d / "run", d / "out.pt")
    return result, ol.load_checkpoint(d / "run" / "last.pt")


@pytest.fixture(scope="module")
def custom_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight-custom")
    result = run_to_end(d / "run", d / "out.pt", "--custom-step")
    return result, ol.load_checkpoint(d / "run" / "last.pt")


def assert_same_as(reference, result, run_dir):
    ref, ref_last = reference
    for k, v in ref["model"].items():
        assert torch.equal(v, result["model"][k]), k
    assert result["history"] == ref["history"]
    last = ol.load_checkpoint(run_dir / "last.pt")
    a, b = ref_last["optimizer"], last["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    for i, s in a["state"].items():
        for key, t in s.items():
            assert torch.equal(t, b["state"][i][key]), (i, key)
    assert last["scheduler"] == ref_last["scheduler"]
    assert not list(run_dir.glob("*optiloop-tmp"))  # the killed write's temporary was cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_step_then_resume_is_bit_exact(reference, tmp_path, seed):
    step = random.Random(seed).randint(5, 45)  # 10 steps per epoch, 50 in all
    p = start(tmp_path / "run", tmp_path / "out.pt")
    kill_when(p, f"STEP {step}")
    result = resume(tmp_path / "run", tmp_path / "out.pt")
    assert_same_as(reference, result, tmp_path / "run")


@pytest.mark.slow
def test_sigkill_at_an_epoch_boundary_then_resume_is_bit_exact(reference, tmp_path):
    p = start(tmp_path / "run", tmp_path / "out.pt")
    kill_when(p, "EPOCH 2")
    assert ol.load_checkpoint(tmp_path / "run" / "last.pt")["epoch_done"] is True
    result = resume(tmp_path / "run", tmp_path / "out.pt")
    assert_same_as(reference, result, tmp_path / "run")


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_then_resume_is_bit_exact(reference, tmp_path):
    run = tmp_path / "run"
    p = start(run, tmp_path / "out.pt", "--slow-save", "5")
    kill_when(p, "SAVING")
    assert list(run.glob(".last.pt.*optiloop-tmp")), "the kill should leave a half-written temporary"
    ol.load_checkpoint(run / "last.pt")  # the previous checkpoint is intact under its real name
    result = resume(run, tmp_path / "out.pt")
    assert_same_as(reference, result, run)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact_on_a_custom_step(custom_reference, tmp_path):
    """Dict batches, step=, a device-tensor count and accumulation: the same guarantee."""
    p = start(tmp_path / "run", tmp_path / "out.pt", "--custom-step")
    kill_when(p, "STEP 14")  # 10 steps per epoch: mid-epoch 2, after the save at step 12
    assert ol.load_checkpoint(tmp_path / "run" / "last.pt")["epoch_done"] is False
    result = resume(tmp_path / "run", tmp_path / "out.pt", "--custom-step")
    assert_same_as(custom_reference, result, tmp_path / "run")
