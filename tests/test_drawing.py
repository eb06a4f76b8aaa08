"""Pictures drawn by the command line's helper process (optiloop.drawing): the same files as drawn
here, on disk when the block ends, errors raised as they would be here, and nothing lost or left
running when the helper, a job or the command fails."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG
from drawing_jobs import Dies, Hangs, Warns
from matplotlib.image import imread

from optiloop import drawing
from optiloop.errors import OptiloopError
from optiloop.history import History

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the helper's tests read POSIX sessions")

ROWS = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.5 + e / 20, "val_acc": 0.45 + e / 20,
         "lr": 0.1 * 0.5 ** e} for e in (1, 2, 3)]
MATRIX = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 6]])


@pytest.fixture
def helper(monkeypatch):
    """A helper for this test, although this process has matplotlib imported (start() would not
    start one here), and a record of every picture drawn in this process instead."""
    h = drawing._Helper()
    monkeypatch.setattr(drawing, "_helper", h)
    here: list[str] = []
    draw_here = drawing._draw_here
    monkeypatch.setattr(drawing, "_draw_here", lambda job: (here.append(Path(job[1][-1]).name), draw_here(job)))
    yield h, here
    h.close()


def _pictures(folder: Path, history=None) -> None:
    drawing.draw("plot_history", history or History(ROWS), folder / "curves.png", best_epoch=2, title="a run")
    drawing.draw("plot_confusion", MATRIX, ["a", "b", "c"], folder / "cm.png", title="classes")


def test_pictures_the_helper_draws_equal_those_drawn_here_and_are_on_disk_when_the_block_ends(tmp_path, helper):
    h, here = helper
    (tmp_path / "helper").mkdir()
    (tmp_path / "here").mkdir()
    with drawing.pictures():
        _pictures(tmp_path / "helper")
    assert here == []  # neither was drawn in this process
    assert {p.name for p in (tmp_path / "helper").iterdir()} == {"curves.png", "cm.png"}  # no temp file left
    _pictures(tmp_path / "here")  # outside a block: drawn here, now
    assert here == ["curves.png", "cm.png"]
    # The same pixels as a fresh process draws (what `optiloop train` drew before the helper); this
    # test's process may hold matplotlib state that other tests left, so it is not the reference.
    (tmp_path / "fresh").mkdir()
    code = ("import sys, numpy as np; from pathlib import Path; from optiloop.history import History; "
            "from optiloop import plots; folder = Path(sys.argv[1]); "
            f"plots.plot_history(History({ROWS!r}), folder / 'curves.png', best_epoch=2, title='a run'); "
            f"plots.plot_confusion(np.array({MATRIX.tolist()!r}), ['a', 'b', 'c'], folder / 'cm.png', title='classes')")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fresh")], env=env, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("curves.png", "cm.png"):
        assert np.array_equal(imread(tmp_path / "helper" / name), imread(tmp_path / "fresh" / name))


def test_a_drawing_error_is_raised_when_the_block_ends_and_the_other_pictures_are_drawn(tmp_path, helper):
    with pytest.raises(OptiloopError, match="history is empty: nothing to plot"):
        with drawing.pictures():
            drawing.draw("plot_history", History(), tmp_path / "empty.png")
            drawing.draw("plot_history", History(ROWS), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "empty.png").exists()
    assert helper[1] == []  # the error came from the helper, not from drawing here


def test_the_blocks_own_error_wins_and_its_pictures_are_still_drawn(tmp_path, helper):
    with pytest.raises(KeyError, match="the block's"):
        with drawing.pictures():
            drawing.draw("plot_history", History(), tmp_path / "empty.png")  # fails too, later
            drawing.draw("plot_history", History(ROWS), tmp_path / "curves.png")
            raise KeyError("the block's")
    assert (tmp_path / "curves.png").is_file()


def test_a_helper_that_dies_leaves_its_pictures_to_this_process(tmp_path, helper):
    h, here = helper
    with drawing.pictures():
        drawing.draw("plot_history", History(ROWS), tmp_path / "curves.png")  # handed over ...
        h.proc.kill()  # ... and the helper is gone before it answered (its drawer may finish it too)
        h.proc.wait()
        drawing.draw("plot_confusion", MATRIX, ["a", "b", "c"], tmp_path / "cm.png")  # cannot be handed over
    assert sorted(here) == ["cm.png", "curves.png"]
    assert imread(tmp_path / "curves.png").ndim == 3 and imread(tmp_path / "cm.png").ndim == 3
    with drawing.pictures():  # and from then on, every picture is drawn here
        drawing.draw("plot_history", History(ROWS), tmp_path / "again.png")
    assert here[-1] == "again.png" and (tmp_path / "again.png").is_file()


def test_a_job_the_helper_cannot_take_is_drawn_here_and_the_others_there(tmp_path, helper):
    class OnlyHere(History):
        """A History the helper cannot receive: a class local to this function does not pickle."""

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(OnlyHere(ROWS))
    with drawing.pictures():
        drawing.draw("plot_history", OnlyHere(ROWS), tmp_path / "mine.png")
        drawing.draw("plot_history", History(ROWS), tmp_path / "curves.png")
    assert helper[1] == ["mine.png"]
    assert (tmp_path / "mine.png").is_file() and (tmp_path / "curves.png").is_file()


def test_warnings_given_while_drawing_are_issued_here(tmp_path, helper):
    with pytest.warns(UserWarning, match="drawn with a warning"):
        with drawing.pictures():
            drawing.draw("plot_history", Warns(ROWS, here=os.getpid()), tmp_path / "curves.png")
    assert helper[1] == [] and (tmp_path / "curves.png").is_file()  # drawn there, warned here


def test_a_drawer_that_dies_leaves_its_picture_to_this_process(tmp_path, helper):
    with drawing.pictures():
        drawing.draw("plot_history", Dies(ROWS, here=os.getpid()), tmp_path / "curves.png")
        drawing.draw("plot_confusion", MATRIX, ["a", "b", "c"], tmp_path / "cm.png")
    assert helper[1] == ["curves.png"]  # the other one was drawn there
    assert imread(tmp_path / "curves.png").ndim == 3 and imread(tmp_path / "cm.png").ndim == 3


def test_a_drawer_that_hangs_costs_time_only_and_stop_ends_it(tmp_path, helper, monkeypatch):
    h, here = helper
    monkeypatch.setattr(drawing._Helper, "SECONDS", 3.0)
    with drawing.pictures():
        drawing.draw("plot_history", Hangs(ROWS, here=os.getpid()), tmp_path / "curves.png")
    assert here == ["curves.png"] and (tmp_path / "curves.png").is_file()
    assert _group(h.proc.pid) != []  # the helper and its hung drawer
    h.close()
    assert _group(h.proc.pid) == []


def test_a_helper_that_stops_reading_cannot_hang_the_command(tmp_path, helper, monkeypatch):
    h, here = helper
    monkeypatch.setattr(drawing._Helper, "SECONDS", 3.0)
    h.proc.send_signal(signal.SIGSTOP)  # (as if hung): it reads nothing more
    big = History(ROWS)
    big.steps = type(big.steps)([{"step": i, "epoch": i / 1000, "lr": 0.1, "loss": 1.0} for i in range(40_000)])
    assert len(pickle.dumps(big)) > 1_000_000  # far more than a pipe holds
    with drawing.pictures():
        drawing.draw("plot_history", big, tmp_path / "curves.png")
    assert here == ["curves.png"] and (tmp_path / "curves.png").is_file()
    h.close()  # a stopped helper is killed
    assert h.proc.returncode == -signal.SIGKILL and _group(h.proc.pid) == []


def test_ctrl_c_in_the_block_is_not_kept_waiting_for_its_pictures(tmp_path, helper, monkeypatch):
    asked = []
    monkeypatch.setattr(drawing._Helper, "answers", lambda self: asked.append(1) or [])
    with pytest.raises(KeyboardInterrupt):
        with drawing.pictures():
            drawing.draw("plot_history", History(ROWS), tmp_path / "curves.png")
            raise KeyboardInterrupt
    assert asked == []  # straight out; the command's stop() ends the drawer


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the helper leads its own)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgrp(p) == pgid]


def _pgrp(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def test_the_helper_has_a_session_of_its_own_and_ends_with_its_pipe(helper):
    h, _ = helper
    assert os.getsid(h.proc.pid) != os.getsid(0)  # the terminal's Ctrl-C reaches the command only
    h.proc.stdin.close()  # what a killed command leaves it
    assert h.proc.wait(timeout=HANG) == 0


START = """
import os, sys
from optiloop import drawing
if sys.argv[1] == "matplotlib":
    import matplotlib
drawing.start()
print(drawing._helper is not None)
drawing.stop()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("case", "rank", "started"), [
    ("plain", None, True),
    ("rank 0", "0", True),
    ("rank 1", "1", False),  # rank 0 draws a torchrun's pictures
    ("matplotlib", None, False),  # already paid for here: nothing to gain
])
def test_start_starts_a_helper_only_where_it_helps(case, rank, started):
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | {"PYTHONPATH": str(SRC)}
    if rank is not None:
        env["RANK"] = rank
    proc = subprocess.run([sys.executable, "-c", START, case], env=env, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(started)


def _marked(mark: str) -> list[int]:
    """Processes whose environment holds ``mark`` (the command's helper and drawers inherit it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _gone(mark: str) -> list[int]:
    deadline = time.monotonic() + 60
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _marked(mark)


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")


@pytest.mark.slow
@needs_proc
def test_the_train_command_never_imports_matplotlib_its_pictures_are_there_when_it_ends_and_no_helper_stays(tmp_path):
    mark = f"OPTILOOP_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(SRC), mark.split("=")[0]: mark.split("=")[1]}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optiloop", "train", "--epochs", "1",
                           "--out", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "torch" in imported and "matplotlib" not in imported  # the helper drew both pictures
    for name in ("curves.png", "confusion_matrix.png"):
        assert imread(tmp_path / "run" / name).shape[1] > 500
    assert "confusion_matrix.png, curves.png" in proc.stdout  # listed as there, and they were
    assert "done: 1 epoch in" in proc.stdout  # (not "1 epochs")
    assert _marked(mark) == []  # ended with the command, not after it


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("args", [["--optimizer", "nope"], ["--set", "train.epochs=0"]], ids=["optimizer", "epochs"])
def test_a_command_refused_at_once_leaves_no_helper_behind(tmp_path, args):
    mark = f"OPTILOOP_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(SRC), mark.split("=")[0]: mark.split("=")[1]}
    proc = subprocess.run([sys.executable, "-m", "optiloop", "train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert _marked(mark) == []  # at once: stop() waited for the helper's end
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@needs_proc
def test_a_killed_command_leaves_no_helper_behind(tmp_path):
    mark = f"OPTILOOP_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(SRC), mark.split("=")[0]: mark.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-m", "optiloop", "train", "--epochs", "1000", "--out", "run"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("optiloop train:")  # the header: training has begun
        assert len(_marked(mark)) == 2  # the command and its helper
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=HANG)
        assert _gone(mark) == []
    finally:
        proc.kill()
        proc.wait()
