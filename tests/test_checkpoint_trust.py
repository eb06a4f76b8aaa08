"""Checkpoints at the edges: failed writes never lose the previous files, disk errors are one line,
damaged or crafted files are detected (and a resume falls back to the previous one)."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import optiloop as ol
from optiloop import checkpoint as C
from optiloop import files as F
from optiloop import training_state as TS


def run(tmp_path, epochs=2, **kw):
    """A tiny real run with a checkpoint every epoch: last.pt (epoch 2) and last.prev.pt (epoch 1)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g)
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    ol.fit(net, (X, y), epochs=epochs, batch_size=8, progress=False, seed=0,
           callbacks=[ol.Checkpoint(tmp_path, monitor="train_loss", every_seconds=0)], **kw)
    return net, (X, y)


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- writing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_failed_save_never_loses_last_or_its_previous(tmp_path, monkeypatch, where):
    run(tmp_path)
    before = files(tmp_path)
    assert {"last.pt", "last.prev.pt"} <= set(before)
    real_fsync, real_replace, real_fdopen = os.fsync, os.replace, os.fdopen

    def fail(*a, **k):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if where == "fsync":
        monkeypatch.setattr(F.os, "fsync", fail)
    elif where == "replace":  # the rename onto last.pt fails (after the rotation was prepared)
        monkeypatch.setattr(F.os, "replace", lambda a, b: fail() if str(b).endswith("last.pt") else real_replace(a, b))
    else:
        class Full(io.BufferedWriter):
            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(F.os, "fdopen", lambda fd, mode, **k: Full(io.FileIO(fd, "w")))
    with pytest.raises(ol.DiskError, match=r"cannot write .*last.pt: (Input/output error|No space left on device)$"):
        C.save_checkpoint({"weights": torch.zeros(3)}, tmp_path / "last.pt")
    monkeypatch.setattr(F.os, "fsync", real_fsync)
    monkeypatch.setattr(F.os, "replace", real_replace)
    monkeypatch.setattr(F.os, "fdopen", real_fdopen)
    after = files(tmp_path)
    if where == "replace":  # the new file was durable: rotating last.pt to last.prev.pt is allowed
        assert after["last.prev.pt"] == before["last.pt"] and after["last.pt"] == before["last.pt"]
    else:
        assert after == before  # byte for byte, and no temporary left
    assert not [n for n in after if n.endswith("optiloop-tmp")]


def test_torch_saves_hidden_disk_error_is_named(tmp_path, monkeypatch):
    """torch.save turns a failed write into 'unexpected pos': the cause is what the user sees."""
    real_fdopen = os.fdopen

    class FullAfter(io.BufferedWriter):
        written = 0

        def write(self, data):
            FullAfter.written += len(data)
            if FullAfter.written > 200:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(F.os, "fdopen", lambda fd, mode, **k: FullAfter(io.FileIO(fd, "w")))
    with pytest.raises(ol.DiskError) as e:
        C.save_checkpoint({"weights": torch.zeros(10_000)}, tmp_path / "last.pt")
    monkeypatch.setattr(F.os, "fdopen", real_fdopen)
    assert str(e.value).endswith("last.pt: No space left on device") and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_error_in_the_cli_is_one_line_and_exit_code_1(tmp_path, monkeypatch, capsys):
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(C.torch, "save", read_only)
    code = main(["train", "--data", "wine", "--epochs", "1", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert "cannot write run/best.pt: Read-only file system" in err
    assert not [p for p in (tmp_path / "run").iterdir() if p.suffix == ".pt" or "tmp" in p.name]


# --- reading ------------------------------------------------------------------------------------
def _central_directory(path) -> range:
    data = path.read_bytes()
    start = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    first = data.find(b"PK\x01\x02")
    return range(first, len(data)) if start >= 0 else range(len(data) - 64, len(data))


def test_any_bit_flip_in_the_zip_headers_is_damage_and_resume_falls_back(tmp_path):
    """Flipped bits in the central directory raise anything from zipfile, zlib or torch's reader:
    each is one CheckpointError, and resuming takes last.prev.pt with a warning naming both."""
    run(tmp_path)
    last = tmp_path / "last.pt"
    good = last.read_bytes()
    prev_epoch = C.load_checkpoint(tmp_path / "last.prev.pt")["epoch"]
    rng = random.Random(0)
    positions = rng.sample(list(_central_directory(last)), 120)
    fell_back = 0
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 1 << rng.randrange(8)
        last.write_bytes(bytes(bad))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path, ckpt = C.load_resumable(tmp_path)  # never anything but a CheckpointError
        if path.name == "last.prev.pt":
            fell_back += 1
            assert ckpt["epoch"] == prev_epoch
            assert any("last.pt" in str(w.message) and "last.prev.pt" in str(w.message) for w in caught)
        else:  # a flip in a byte nothing reads (e.g. a comment): the file is still whole
            assert torch.equal(ckpt["model"]["weight"], torch.load(io.BytesIO(good), weights_only=True)
                               ["model"]["weight"])
    assert fell_back > 80  # nearly every header byte matters


class Code:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def crafted(tmp_path):
    good = C.load_checkpoint(tmp_path / "last.pt")
    yield "a list", [1, 2, 3], "not an optiloop training checkpoint"
    yield "no epoch", {k: v for k, v in good.items() if k != "epoch"}, "incomplete: no 'epoch'"
    yield "epoch as text", {**good, "epoch": "2"}, "'epoch' must be int, got str"
    yield "bool step", {**good, "step": True}, "'step' must be int, got bool"
    yield "future version", {**good, "version": 99}, "format version 99"
    yield "weights not tensors", {**good, "model": {"weight": [1.0, 2.0]}}, "model weights must be tensors"
    yield "history not rows", {**good, "history": [1, 2]}, "history must be a list of rows"
    yield "negative step", {**good, "step": -4}, "negative epoch, batch or step"


def test_crafted_checkpoints_are_refused_in_one_line_before_any_of_them_is_used(tmp_path):
    net, data = run(tmp_path)
    for name, content, needle in list(crafted(tmp_path)):
        bad = tmp_path / f"{name}.pt"
        torch.save(content, bad)  # CRC-valid zip files: only their content is wrong
        with pytest.raises(ol.CheckpointError, match=needle) as e:
            C.load_resumable(bad)
        assert "\n" not in str(e.value)
        before = [p.detach().clone() for p in net.parameters()]
        with pytest.raises(ol.CheckpointError, match=needle):
            ol.fit(net, data, epochs=3, batch_size=8, progress=False, resume=bad)
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # untouched


def test_a_crafted_last_is_damage_the_resume_falls_back_from(tmp_path):
    run(tmp_path)
    torch.save([1, 2, 3], tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=r"last.pt is not an optiloop training checkpoint.*from .*last.prev.pt"):
        path, ckpt = C.load_resumable(tmp_path)
    assert path.name == "last.prev.pt" and ckpt["epoch"] == 1


def test_code_in_a_crafted_checkpoint_never_runs_and_a_model_mismatch_is_not_damage(tmp_path):
    net, data = run(tmp_path)
    torch.save({"format": TS.FORMAT, "model": Code()}, tmp_path / "evil.pt")
    with pytest.raises(ol.CheckpointError, match="refused: it holds objects that are not plain data"):
        C.load_resumable(tmp_path / "evil.pt")
    with pytest.raises(ol.CheckpointError, match="checkpoint does not fit the model; shape mismatch"):
        ol.fit(nn.Linear(4, 3), data, epochs=3, batch_size=8, progress=False, resume=tmp_path)
    assert zipfile.is_zipfile(tmp_path / "last.pt")  # a wrong model leaves the run's files alone


# --- a run's files, crafted or swapped, through the command line ------------------------------------
def one_line(code: int, err: str, want: int = 2) -> str:
    lines = err.strip().splitlines()
    assert code == want, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(folder) -> dict:
    return {p.name: (p.read_bytes() if p.is_file() else "folder") for p in folder.iterdir()}


def craft(path, **changes) -> None:
    """Rewrite a checkpoint with some entries changed: a CRC-valid file whose content is wrong."""
    ckpt = torch.load(path, weights_only=True)
    for key, value in changes.items():
        ckpt[key] = value(ckpt) if callable(value) else value
    torch.save(ckpt, path)


WRONG_TYPES = {
    "model a tensor": {"model": torch.zeros(3)},
    "model a list": {"model": [1.0, 2.0]},
    "config a string": {"config": "adamw"},
    "config without its inference part": {"config": lambda c: {**c["config"], "inference": "x"}},
    "preprocessing of the wrong shape": {"config": lambda c: {**c["config"], "inference": {
        **c["config"]["inference"], "preprocessing": {"task": "classification", "features": 13}}}},
}


@pytest.mark.parametrize("case", WRONG_TYPES, ids=list(WRONG_TYPES))
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_of_a_checkpoint_with_wrong_content_types_is_one_line(run_main, copy_run, command, case):
    run = copy_run()
    craft(run / "best.pt", **WRONG_TYPES[case])
    code, out, err = run_main(command, str(run))
    assert "best.pt" in one_line(code, err) and out == ""
    with pytest.raises(ol.CheckpointError, match="best.pt"):
        ol.load(run)


def _nan(ckpt):
    return {k: torch.full_like(v, float("nan")) for k, v in ckpt["model"].items()}


# Each makes last.pt a file that must not be resumed; last.prev.pt (epoch 1) is still good.
UNFIT = {
    "optimizer = {}": (lambda run, other: craft(run / "last.pt", optimizer={}), "optimizer"),
    "another run's sgd last.pt": (lambda run, other: shutil.copy(other["sgd"] / "last.pt", run / "last.pt"),
                                  "optimizer"),
    "another run's last.pt with a StepLR": (
        lambda run, other: shutil.copy(other["step"] / "last.pt", run / "last.pt"), "scheduler"),
    "NaN weights": (lambda run, other: craft(run / "last.pt", model=_nan), "non-finite"),
    "an absurd epoch": (lambda run, other: craft(run / "last.pt", epoch=10**9), "epoch"),
}


@pytest.mark.parametrize("case", UNFIT, ids=list(UNFIT))
def test_resume_falls_back_from_a_last_pt_that_does_not_fit_and_says_which(run_main, copy_run, trained_runs, case):
    make, why = UNFIT[case]
    run = copy_run()
    make(run, trained_runs)
    with pytest.warns(UserWarning) as caught:
        code, out, err = run_main("train", "--resume", str(run))
    assert code == 0, err
    said = " ".join(str(w.message) for w in caught)
    assert "last.pt" in said and "resuming from" in said and "last.prev.pt" in said and why in said, said
    assert "epoch 2/2" in out  # it continued from last.prev.pt (epoch 1), not from the crafted epoch
    assert len((run / "history.csv").read_text().splitlines()) == 3  # header + epochs 1 and 2


@pytest.mark.parametrize("case", UNFIT, ids=list(UNFIT))
def test_resume_refuses_when_no_checkpoint_fits_and_writes_nothing(run_main, copy_run, trained_runs, case):
    make, why = UNFIT[case]
    run = copy_run()
    make(run, trained_runs)
    (run / "last.prev.pt").write_bytes((run / "last.pt").read_bytes())  # both unfit
    before = snapshot(run)
    code, _, err = run_main("train", "--resume", str(run))
    line = one_line(code, err)
    assert "no valid checkpoint to resume from" in line and why in line, line
    assert snapshot(run) == before


def test_a_folder_in_place_of_last_pt_is_one_line_exit_2_and_nothing_written(run_main, copy_run):
    run = copy_run()
    (run / "last.pt").unlink()
    (run / "last.pt").mkdir()
    before = snapshot(run)
    code, _, err = run_main("train", "--resume", str(run))
    line = one_line(code, err)
    assert "last.pt is a folder" in line, line
    assert snapshot(run) == before  # best.pt, last.prev.pt and the folder as they were


def test_a_run_folder_made_read_only_during_training_is_one_line_exit_1_and_leaves_no_temporary(
        run_main, tmp_path, monkeypatch):
    """After the first epoch the folder refuses every change, as a read-only folder does for a
    non-root user (root ignores chmod, so the refusal is simulated at the os calls)."""
    import optiloop.runs as R

    run = tmp_path / "run"
    locked = {"on": False}

    def refuse(real, *where):
        def call(*a, **k):
            paths = [a[i] for i in where if i < len(a)] + [k.get("dir")]
            if locked["on"] and any(p is not None and str(run) in str(Path(p).resolve()) for p in paths):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(*a, **k)
        return call

    for mod in (F, C):
        monkeypatch.setattr(mod.os, "unlink", refuse(os.unlink, 0))
        monkeypatch.setattr(mod.os, "replace", refuse(os.replace, 0, 1))
        monkeypatch.setattr(mod.os, "link", refuse(os.link, 0, 1))
    monkeypatch.setattr(F.tempfile, "mkstemp", refuse(F.tempfile.mkstemp))
    real_history = R.RunFolder.write_history

    def history_then_lock(self, history):
        real_history(self, history)
        locked["on"] = True

    monkeypatch.setattr(R.RunFolder, "write_history", history_then_lock)
    code, _, err = run_main("train", "--data", "wine", "--epochs", "3", "--checkpoint-seconds", "0",
                            "--out", str(run))
    line = one_line(code, err, want=1)
    assert "Permission denied" in line and str(run) in line, line
    locked["on"] = False
    assert not [p.name for p in run.iterdir() if p.name.endswith(F.TEMP_SUFFIX)]


def test_temporaries_a_failed_writer_could_not_remove_are_cleaned_at_the_next_start(tmp_path):
    for name in (".last.prev.pt.123.link.optiloop-tmp", ".history.csv.x1.optiloop-tmp", ".best.pt.x2.optiloop-tmp"):
        (tmp_path / name).write_bytes(b"half")
    (tmp_path / "notes.optiloop-tmp.txt").write_text("the user's")
    removed = C.remove_stale_temporaries(tmp_path)
    assert len(removed) == 3 and [p.name for p in tmp_path.iterdir()] == ["notes.optiloop-tmp.txt"]
