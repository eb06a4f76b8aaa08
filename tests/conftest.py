"""Fixtures shared by the tests: the command line in-process, trained runs shared by a session, and a
throwaway PostgreSQL server."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import matplotlib  # noqa: F401 - see below
import pytest
import torch
from torch import nn

import optiloop as ol

# torch single-threaded in the tests and every process they start (unless OMP_NUM_THREADS is set):
# on 2 cores shared with other work, torch's two OpenMP threads wait for each other at every small
# op, and a test ran up to 10 times slower than on one thread; the tests' small models gain nothing
# from a second thread. Set before torch is imported, so torch reads it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# matplotlib is imported here, so `optiloop train` run in-process by a test never starts the drawing
# helper (optiloop.drawing.start skips it where matplotlib is already imported) whichever tests ran
# before: in-process runs draw in the test's process, alike every time; the helper has tests of its
# own (tests/test_drawing.py), and every test that starts the command as a process uses it.

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


# --- a throwaway PostgreSQL server ----------------------------------------------------------------------
def _postgres_missing() -> str | None:
    """Why this machine cannot start a PostgreSQL server for the tests, or None if it can."""
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if shutil.which(b) is None]
    if missing:
        return (f"no PostgreSQL server to test against: {', '.join(missing)} not on PATH, and "
                "OPTILOOP_TEST_POSTGRES (postgresql+psycopg2://USER:PASS@HOST/DB) is not set")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver psycopg2 is not installed: pip install psycopg2-binary"
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the PostgreSQL server as"
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to start PostgreSQL as the 'postgres' user) is not on PATH"
    return None


@pytest.fixture(scope="session")
def postgres_url():
    """A SQLAlchemy URL of a PostgreSQL database for the session: OPTILOOP_TEST_POSTGRES where set;
    else a throwaway server started here (initdb + pg_ctl, as the 'postgres' user when we are root),
    reached only through a unix socket in its own temporary folder, and removed at the end. Skips,
    saying what is missing, where neither is possible. The database is shared by the session's
    tests: each uses a study name of its own."""
    url = os.environ.get("OPTILOOP_TEST_POSTGRES")
    if url:
        yield url
        return
    why = _postgres_missing()
    if why:
        pytest.skip(why)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    # Not under pytest's tmp_path_factory: its folders are 0700 and owned by us, so the 'postgres'
    # user could not reach them. A short path too: a unix socket's path is limited to ~107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="optiloop-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    folder.chmod(0o700)
    data, log, port = folder / "data", folder / "server.log", 5432  # the port only names the socket file

    def run(*cmd: str, timeout: float = 120) -> None:
        done = subprocess.run([*as_postgres, *cmd], cwd=folder, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.is_file() else ""
            pytest.fail(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{tail}")

    started = False
    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        # Only the unix socket (no TCP port to collide with); durability off: the data is thrown away.
        options = (f"-k {folder} -c listen_addresses='' -p {port} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")
        started = True
        yield f"postgresql+psycopg2://postgres@/postgres?host={folder}&port={port}"
    finally:
        if started:
            subprocess.run([*as_postgres, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], cwd=folder,
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


class SignalAt(ol.Callback):
    """A callback that sends this process ``signum`` after optimizer step ``step``, as a scheduler
    or a user's Ctrl-C would (the interrupt, resume and averaging tests)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_end(self, state, logs):
        if state.step == self.step:
            os.kill(os.getpid(), self.signum)


# --- a tiny classification task (the logger and tracker tests) ------------------------------------
def data(n=48, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def quiet(**kw):
    return {"progress": False, "seed": 0, **kw}
