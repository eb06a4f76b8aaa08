"""Checkpoints: whole state, atomic writes under failure, corruption, safe loading, resume rules."""

import errno
import pathlib
import warnings

import pytest
import torch
from torch import nn

import optiloop as ol
from optiloop import checkpoint as C
from optiloop import training_state as TS


def data(n=48):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def train(run_dir, epochs=3, **kw):
    X, y = data()
    model = net()
    h = ol.fit(model, (X, y), val_data=(X, y), epochs=epochs, batch_size=8, seed=0, progress=False,
               scheduler="cosine", metrics=["accuracy"],
               callbacks=[ol.EarlyStopping(patience=5), ol.Checkpoint(run_dir, every_seconds=0)], **kw)
    return model, h


def test_checkpoint_holds_the_whole_training_state(tmp_path):
    model, h = train(tmp_path, config={"optimizer": {"name": "adamw"}})
    ck = ol.load_checkpoint(tmp_path / "last.pt")
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "callbacks", "history",
            "config", "data_seed", "settings"} <= set(ck)
    assert ck["epoch"] == 3 and ck["step"] == 18 and ck["config"] == {"optimizer": {"name": "adamw"}}
    assert ck["history"] == h.rows
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}
    es = ck["callbacks"]["EarlyStopping"]
    assert es["best_epoch"] == h.best("val_loss")["epoch"]
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())


def test_best_follows_the_monitor(tmp_path):
    _, h = train(tmp_path, epochs=4)
    assert ol.load_checkpoint(tmp_path / "best.pt")["epoch"] == h.best("val_loss")["epoch"]


class StopAfter(ol.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, state, logs):
        if state.epoch == self.epoch:
            state.request_stop("interrupted")


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path):
    straight, h_straight = train(tmp_path / "a", epochs=4)
    X, y = data()
    ol.fit(net(), (X, y), val_data=(X, y), epochs=4, batch_size=8, seed=0, progress=False, scheduler="cosine",
           metrics=["accuracy"], callbacks=[ol.EarlyStopping(patience=5), ol.Checkpoint(tmp_path / "b"),
                                            StopAfter(2)])
    assert ol.load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    resumed, h_resumed = train(tmp_path / "b", epochs=4, resume=tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in h_straight]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h_resumed] == strip


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_write_keeps_previous_checkpoint_byte_identical(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    C.save_checkpoint({"weights": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        C.save_checkpoint({"weights": torch.zeros(3), "bad": Unpicklable()}, path)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", disk_full)
    with pytest.raises(ol.DiskError, match=r"cannot write .*last.pt: No space left on device"):
        C.save_checkpoint({"weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert torch.equal(ol.load_checkpoint(path)["weights"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary, no .prev


def test_a_valid_best_exists_at_every_replace(tmp_path, monkeypatch):
    seen = []
    real_replace = C.os.replace

    def spy(src, dst):
        best = tmp_path / "best.pt"
        if best.exists():
            C.verify(best)  # raises if best.pt were ever missing or half-written
        seen.append(pathlib.Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(C.os, "replace", spy)
    train(tmp_path, epochs=3)
    assert seen.count("best.pt") >= 1 and "last.pt" in seen


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[: len(b) // 2], "corrupt or truncated"),
    (lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:], "fails its checksum"),
])
def test_corruption_is_detected_and_named(tmp_path, damage, match):
    path = tmp_path / "last.pt"
    C.save_checkpoint({"weights": torch.arange(1000.0)}, path)
    raw = path.read_bytes()
    # truncate the file, or flip a byte inside the tensor data record
    pos = raw.index(b"data/0") + 100 if "checksum" in match else 0
    path.write_bytes(_damage(raw, damage, pos))
    with pytest.raises(ol.CheckpointError, match=match) as e:
        ol.load_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _damage(raw, damage, pos):
    if pos == 0:
        return damage(raw)
    b = bytearray(raw)
    b[pos + 200] ^= 0xFF
    return bytes(b)


def test_resume_falls_back_to_previous_valid_checkpoint_with_a_warning(tmp_path):
    train(tmp_path, epochs=2)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match="last.pt is corrupt or truncated.*resuming from .*last.prev.pt"):
        path = C.find_resumable(tmp_path)
    assert path.name == "last.prev.pt" and ol.load_checkpoint(path)["epoch"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, h = train(tmp_path, epochs=3, resume=tmp_path)
    assert h["epoch"] == [1, 2, 3]


def test_no_valid_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ol.CheckpointError, match="nothing to resume"):
        C.find_resumable(tmp_path)


class Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": TS.FORMAT, "model": Touch(marker)}, evil)
    with pytest.raises(ol.CheckpointError, match="refused: it holds objects that are not plain data"):
        ol.load_checkpoint(evil)
    with pytest.raises(ol.CheckpointError, match="refused"):
        train(tmp_path / "run", resume=evil)
    assert not marker.exists()


def test_model_shape_mismatch_lists_keys(tmp_path):
    train(tmp_path, epochs=1)
    other = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2), nn.Linear(2, 2))
    with pytest.raises(ol.CheckpointError) as e:
        TS.load_model_weights(other, ol.load_checkpoint(tmp_path / "best.pt")["model"])
    msg = str(e.value)
    assert "missing: 3.weight, 3.bias" in msg and "0.weight (8, 4) vs (16, 4)" in msg


def test_changed_settings_are_refused_unless_forced(tmp_path):
    train(tmp_path, epochs=1)
    X, y = data()
    same = {"scheduler": "cosine", "progress": False, "resume": tmp_path}  # the run's own scheduler
    with pytest.raises(ol.OptiloopError, match="settings changed \\(batch_size 8 -> 16\\)"):
        ol.fit(net(), (X, y), epochs=2, batch_size=16, **same)
    with pytest.raises(ol.OptiloopError, match="train_data 48 samples.*-> 40 samples"):
        ol.fit(net(), (X[:40], y[:40]), epochs=2, batch_size=8, **same)
    h = ol.fit(net(), (X, y), epochs=2, batch_size=16, force_resume=True, **same)
    assert h["epoch"] == [1, 2]


def test_best_is_a_link_to_that_epochs_last_and_survives_later_saves(tmp_path):
    X, y = data()
    seen = {}

    class Snap(ol.Callback):
        order = 200  # after Checkpoint

        def on_epoch_end(self, state, logs):
            seen[state.epoch] = (tmp_path / "last.pt").read_bytes()

    ol.fit(net(), (X, y), val_data=(X, y), epochs=4, batch_size=8, seed=0, progress=False,
           callbacks=[ol.Checkpoint(tmp_path, monitor="val_loss", every_seconds=0), Snap()])
    best = ol.load_checkpoint(tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == seen[best["epoch"]]  # that epoch's state, intact


def test_link_or_copy_falls_back_to_a_copy(tmp_path, monkeypatch):
    (tmp_path / "a.pt").write_bytes(b"state")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "links not supported")

    monkeypatch.setattr(C.os, "link", no_links)
    C.link_or_copy(tmp_path / "a.pt", tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == b"state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


class CrashAt(ol.Callback):
    """Simulates a crash (an exception) after optimizer step `step`."""

    order = 200

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state, logs):
        if state.step == self.step:
            raise KeyboardInterrupt("simulated crash")


def _dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def _fit_dropout(train, run_dir, extra=(), resume=None):
    X, y = data()
    model = _dropout_net()
    ol.fit(model, train, val_data=(X, y), epochs=3, batch_size=8, seed=0, progress=False,
           callbacks=[ol.Checkpoint(run_dir, every_n_steps=2), *extra], resume=resume)
    return model


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
def test_mid_epoch_resume_is_exact_with_dropout(tmp_path, kind):
    X, y = data()
    train = (X, y) if kind == "tensors" else torch.utils.data.TensorDataset(X, y)
    straight = _fit_dropout(train, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _fit_dropout(train, tmp_path / "b", extra=[CrashAt(9)])  # 6 steps per epoch: mid-epoch 2
    assert ol.load_checkpoint(tmp_path / "b" / "last.pt")["epoch_done"] is False
    resumed = _fit_dropout(train, tmp_path / "b", resume=tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_mid_epoch_resume_warns_for_a_user_shuffling_loader(tmp_path):
    X, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8, shuffle=True)
    with pytest.raises(KeyboardInterrupt):
        _fit_dropout(loader, tmp_path, extra=[CrashAt(9)])
    with pytest.warns(UserWarning, match="own shuffling DataLoader"):
        _fit_dropout(loader, tmp_path, resume=tmp_path)


def nan_from_call(k):
    """cross-entropy that turns NaN from its k-th call on (6 batches per epoch here)."""

    def loss(out, target):
        loss.calls += 1
        value = nn.functional.cross_entropy(out, target)
        return value * float("nan") if loss.calls >= k else value

    loss.calls = 0
    return loss


def test_no_mid_epoch_checkpoint_of_a_nonfinite_state(tmp_path):
    X, y = data()
    with pytest.raises(ol.NonFiniteLossError):  # NaN from the 3rd batch of epoch 2 on
        ol.fit(net(), (X, y), loss=nan_from_call(9), epochs=3, batch_size=8, seed=0, progress=False,
               callbacks=[ol.Checkpoint(tmp_path, monitor="train_loss", every_n_steps=1)])
    for name in ("last.pt", "last.prev.pt"):
        ck = ol.load_checkpoint(tmp_path / name)
        assert all(torch.isfinite(t).all() for t in ck["model"].values()), name
    assert ol.load_checkpoint(tmp_path / "last.pt")["step"] == 8  # the last good step


def test_stale_temporary_cleanup_touches_only_optiloop_files(tmp_path):
    mine = tmp_path / ".last.pt.abc123.optiloop-tmp"
    theirs = [tmp_path / ".notes.pt.draft.tmp", tmp_path / "last.pt.tmp", tmp_path / ".x.optiloop-tmp"]
    for f in (mine, *theirs):
        f.write_bytes(b"x")
    assert C.remove_stale_temporaries(tmp_path) == [mine]
    assert all(f.exists() for f in theirs) and not mine.exists()


# --- when Checkpoint writes: every_seconds -------------------------------------------------------
class Record(ol.Callback):
    """After Checkpoint, per epoch: the epoch in last.pt / best.pt (None if absent) and the weights."""

    order = 200

    def __init__(self, run_dir):
        self.dir, self.last, self.best, self.weights = run_dir, {}, {}, {}

    def on_epoch_end(self, state, logs):
        for name, seen in (("last.pt", self.last), ("best.pt", self.best)):
            f = self.dir / name
            seen[state.epoch] = ol.load_checkpoint(f)["epoch"] if f.exists() else None
        self.weights[state.epoch] = {k: v.clone() for k, v in state.unwrapped_model.state_dict().items()}


def fit_recorded(run_dir, epochs=5, callbacks=(), **ck):
    X, y = data()
    rec = Record(run_dir)
    model = net()
    # mode="max" on val_loss: the best epoch is an early one (the loss falls), not the last
    ckpt = ol.Checkpoint(run_dir, monitor="val_loss", mode="max", **ck)
    h = ol.fit(model, (X, y), val_data=(X, y), epochs=epochs, batch_size=8, seed=0, progress=False,
               callbacks=[ckpt, rec, *callbacks])
    return model, h, rec


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_shorter_than_every_seconds_saves_once_at_the_end_with_the_true_best(tmp_path):
    _, h, rec = fit_recorded(tmp_path, every_seconds=3600)
    best_epoch = max(h, key=lambda r: r["val_loss"])["epoch"]
    assert best_epoch < 5  # else the test would not tell a kept best from the final state
    assert rec.last == {1: None, 2: None, 3: None, 4: None, 5: 5}
    assert rec.best == {1: None, 2: None, 3: None, 4: None, 5: best_epoch}
    assert not (tmp_path / "last.prev.pt").exists()  # one write of last.pt in the whole run
    best = ol.load_checkpoint(tmp_path / "best.pt")
    assert same_weights(best["model"], rec.weights[best_epoch])  # that epoch's state, not a later one
    assert best["callbacks"]["Checkpoint"]["best_epoch"] == best_epoch


def test_saves_follow_every_seconds(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(C.time, "monotonic", lambda: clock[0])

    class Tick(ol.Callback):  # each epoch "takes" 4 s
        order = -1

        def on_epoch_end(self, state, logs):
            clock[0] += 4.0

    _, _, rec = fit_recorded(tmp_path, epochs=8, every_seconds=10, callbacks=[Tick()])
    # saved once 10 s passed since the last save (t = 12, 24) and at the end (t = 32)
    assert rec.last == {1: None, 2: None, 3: 3, 4: 3, 5: 3, 6: 6, 7: 6, 8: 8}


def test_every_seconds_zero_saves_every_epoch(tmp_path):
    _, _, rec = fit_recorded(tmp_path, epochs=3, every_seconds=0)
    assert rec.last == {1: 1, 2: 2, 3: 3}


def test_best_is_written_before_the_last_that_records_it(tmp_path, monkeypatch):
    writes = []
    save, link = C.save_checkpoint, C.link_or_copy

    def spy_save(obj, path, **kw):
        writes.append(pathlib.Path(path).name)
        save(obj, path, **kw)

    def spy_link(src, dst, **kw):
        writes.append(f"{pathlib.Path(dst).name} = {pathlib.Path(src).name}")
        link(src, dst, **kw)

    monkeypatch.setattr(C, "save_checkpoint", spy_save)
    monkeypatch.setattr(C, "link_or_copy", spy_link)
    fit_recorded(tmp_path, epochs=4, every_seconds=3600)  # best kept in memory, written at the end
    assert writes == ["best.pt", "last.pt"]
    writes.clear()
    fit_recorded(tmp_path / "b", epochs=1, every_seconds=3600)  # the final epoch is the best
    assert writes == ["best.pt", "last.pt = best.pt"]


def test_a_kept_best_is_written_when_training_raises(tmp_path):
    X, y = data()
    with pytest.raises(ol.NonFiniteLossError):  # NaN from the 2nd batch of epoch 3 on
        ol.fit(net(), (X, y), loss=nan_from_call(14), epochs=4, batch_size=8, seed=0, progress=False,
               callbacks=[ol.Checkpoint(tmp_path, monitor="train_loss", every_seconds=3600)])
    best = ol.load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2 and all(torch.isfinite(t).all() for t in best["model"].values())
    # the broken state is never saved; the kept best, newer than any save, is also the last.pt
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "best.pt").read_bytes()


def test_a_failure_to_write_the_kept_best_does_not_hide_the_users_error(tmp_path, monkeypatch):
    def disk_full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    class Boom(ol.Callback):
        def on_epoch_end(self, state, logs):
            if state.epoch == 2:
                monkeypatch.setattr(C, "save_checkpoint", disk_full)
                raise RuntimeError("the user's own error")

    with pytest.raises(RuntimeError, match="the user's own error"), \
            pytest.warns(UserWarning, match="could not write the best state"):
        fit_recorded(tmp_path, epochs=3, every_seconds=3600, callbacks=[Boom()])


def test_a_stop_requested_after_checkpoint_ran_still_saves_the_final_epoch_as_it_ended(tmp_path):
    class LateStop(ol.Callback):
        order = 150  # after Checkpoint's epoch end: its save waits for fit end

        def on_epoch_end(self, state, logs):
            if state.epoch == 3:
                state.request_stop("late")

    es = ol.EarlyStopping(monitor="val_loss", mode="max", patience=50, restore_best=True)
    model, h, rec = fit_recorded(tmp_path, epochs=10, every_seconds=3600, callbacks=[es, LateStop()])
    last = ol.load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == len(h) == 3
    assert same_weights(last["model"], rec.weights[3])  # saved before restore_best ran
    assert not same_weights(last["model"], model.state_dict())


def test_resuming_an_early_stopped_run_keeps_it_finished(tmp_path):
    es = ol.EarlyStopping(monitor="val_loss", mode="max", patience=2)
    _, h, _ = fit_recorded(tmp_path, epochs=10, callbacks=[es])
    assert len(h) < 10
    X, y = data()
    h2 = ol.fit(net(), (X, y), val_data=(X, y), epochs=10, batch_size=8, seed=0, progress=False,
                callbacks=[ol.EarlyStopping(monitor="val_loss", mode="max", patience=2),
                           ol.Checkpoint(tmp_path, monitor="val_loss", mode="max")], resume=tmp_path)
    assert len(h2) == len(h)  # no epoch trained after the stop
    assert ol.load_checkpoint(tmp_path / "last.pt")["epoch"] == len(h)


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    import os

    fit_recorded(tmp_path, epochs=1)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_best_state_over_the_snapshot_limit_is_written_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(ol.Checkpoint, "SNAPSHOT_LIMIT", 0)
    _, _, rec = fit_recorded(tmp_path, epochs=3, every_seconds=3600)
    assert rec.best[1] == 1 and rec.last[1] is None


def test_early_stopping_with_restore_best_still_saves_the_final_epoch_as_it_ended(tmp_path):
    es = ol.EarlyStopping(monitor="val_loss", mode="max", patience=2, restore_best=True)
    model, h, rec = fit_recorded(tmp_path, epochs=10, every_seconds=3600, callbacks=[es])
    last = ol.load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == len(h) < 10
    assert same_weights(last["model"], rec.weights[len(h)])  # the stopped epoch's weights ...
    assert not same_weights(last["model"], model.state_dict())  # ... not the restored best


@pytest.mark.parametrize("kw", [{"every_seconds": -1}, {"every_seconds": "soon"}, {"every_n_steps": 0}])
def test_bad_checkpoint_settings_are_one_line(tmp_path, kw):
    with pytest.raises(ol.OptiloopError, match=next(iter(kw))) as e:
        ol.Checkpoint(tmp_path, **kw)
    assert "\n" not in str(e.value)


def test_cpu_copy_is_detached_from_later_updates_and_keeps_state_dict_metadata():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    sd = model.state_dict()
    copy = C.cpu_copy({"model": sd, "rng": [1, 2, 3], "shape": torch.Size([2, 3])})
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(copy["model"]["0.weight"], model[0].weight)
    assert type(copy["model"]) is type(sd) and copy["model"]._metadata == sd._metadata
    assert copy["shape"] == torch.Size([2, 3]) and copy["rng"] == [1, 2, 3]


def test_save_last_false_writes_no_last_pt_even_mid_epoch(tmp_path):
    X, y = data()
    ol.fit(net(), (X, y), val_data=(X, y), epochs=2, batch_size=8, seed=0, progress=False,
           callbacks=[ol.Checkpoint(tmp_path, save_last=False, every_n_steps=2, every_seconds=0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
