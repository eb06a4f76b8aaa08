"""Fixtures shared by the tests: the command line in-process, and trained runs shared by a session."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest

# torch single-threaded in the tests and every process they start (unless OMP_NUM_THREADS is set):
# on 2 cores shared with other work, torch's two OpenMP threads wait for each other at every small
# op, and a test ran up to 10 times slower than on one thread; the tests' small models gain nothing
# from a second thread. Set before torch is imported, so torch reads it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A subprocess a test starts gets this long before the test calls it hung. It guards against a
# hang only, never against slowness: a correct run on the busiest machine ends long before it
# (override with OPTILOOP_TEST_HANG_SECONDS).
HANG = float(os.environ.get("OPTILOOP_TEST_HANG_SECONDS", 1800))


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """``optiloop ARGS`` in-process in an empty folder (no interpreter start-up: keeps the suite
    fast): returns (exit code, stdout, stderr)."""
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _train(folder: Path, *args: str) -> Path:
    """``optiloop train ARGS --out folder`` in-process; its output is dropped."""
    from optiloop.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["train", *args, "--out", str(folder)])
    assert code == 0, err.getvalue()
    return folder


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Small wine runs trained once per session, by name: ``adamw`` (the defaults), ``sgd``, and
    ``step`` (adamw with a StepLR). Each ran 2 epochs with a save every epoch, so it holds
    last.pt (epoch 2), last.prev.pt (epoch 1) and best.pt. Read-only for tests: copy one with
    ``copy_run`` before changing anything in it."""
    base = tmp_path_factory.mktemp("trained-runs")
    common = ["--data", "wine", "--epochs", "2", "--checkpoint-seconds", "0"]
    return {
        "adamw": _train(base / "adamw", *common),
        "sgd": _train(base / "sgd", *common, "--optimizer", "sgd"),
        "step": _train(base / "step", *common, "--scheduler", "step"),
    }


@pytest.fixture
def copy_run(trained_runs, tmp_path):
    """``copy_run("adamw")``: a private copy of a shared trained run, as ``tmp_path/run``."""

    def copy(name: str = "adamw", to: str = "run") -> Path:
        return Path(shutil.copytree(trained_runs[name], tmp_path / to))

    return copy
