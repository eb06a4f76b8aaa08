"""Checkpoints at the edges: failed writes never lose the previous files, disk errors are one line,
damaged or crafted files are detected (and a resume falls back to the previous one)."""

from __future__ import annotations

import errno
import io
import os
import random
import warnings
import zipfile

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
