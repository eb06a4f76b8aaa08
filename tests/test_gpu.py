"""The CUDA path: zero host syncs per step, AMP, fused optimizers, data kept on the device.

CI has no GPU: these skip cleanly there and run wherever CUDA is available.
"""

import warnings

import pytest
import torch
from torch import nn

import optiloop as ol
import optiloop.loop as loop_mod

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def data(n=256, d=32, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))


def strict_step_loop(monkeypatch):
    """Run every _train_epoch under torch's sync debug mode 'error': any host sync raises."""
    real = loop_mod._Loop._train_epoch

    def strict(self):
        torch.cuda.set_sync_debug_mode("error")
        try:
            real(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(loop_mod._Loop, "_train_epoch", strict)


@cuda
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_no_host_sync_in_the_cuda_step_loop(monkeypatch, amp):
    strict_step_loop(monkeypatch)
    X, y = data()
    h = ol.fit(model(), (X, y), val_data=(X, y), device="cuda", amp=amp, epochs=2, batch_size=32,
               scheduler="onecycle", metrics=["accuracy"], clip_grad_norm=1.0, progress=False, seed=0)
    assert len(h) == 2 and h["val_loss"][-1] < h["val_loss"][0]


@cuda
def test_fp16_scheduler_not_stepped_when_the_scaler_skips():
    X, y = data()
    seen = {}

    class Count(ol.Callback):
        def on_fit_end(self, state, logs):
            seen.update(taken=state.step, scheduled=state.schedule.steps_done)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()"
        ol.fit(model(), (X, y), device="cuda", amp="fp16", epochs=1, batch_size=32, scheduler="onecycle",
               progress=False, seed=0, callbacks=[Count()])
    # GradScaler starts at 2**16 and may skip steps on overflow: the scheduler moves only with the
    # optimizer steps actually taken
    assert seen["taken"] == seen["scheduled"] <= 8


@cuda
def test_fused_optimizer_and_data_on_device():
    m = model().cuda()
    assert ol.build_optimizer("adamw", m).defaults["fused"] is True
    from optiloop.data import make_batches

    b = make_batches(data(), batch_size=32, shuffle=True, seed=0, device=torch.device("cuda"))
    assert b.X.is_cuda and b.y.is_cuda


def test_channels_last_cnn_trains_on_any_device():
    X = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 3, (32,))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    h = ol.fit(net, (X, y), channels_last=True, epochs=2, batch_size=8, progress=False, seed=0)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and len(h) == 2


def test_compiled_model_trains_and_checkpoints_the_plain_module(tmp_path):
    X, y = data(n=64)
    net = model()
    ol.fit(net, (X, y), val_data=(X, y), compile={"backend": "eager"}, epochs=2, batch_size=16,
           progress=False, seed=0, callbacks=[ol.Checkpoint(tmp_path)])
    saved = ol.load_checkpoint(tmp_path / "last.pt")["model"]
    assert set(saved) == set(net.state_dict())  # no "_orig_mod." prefixes
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


@cuda
def test_resume_on_cuda_continues_the_run(tmp_path):
    X, y = data()

    class StopAfter2(ol.Callback):
        def on_epoch_end(self, state, logs):
            if state.epoch == 2:
                state.request_stop("interrupted")

    def run(run_dir, extra=(), resume=None):
        net = model()
        h = ol.fit(net, (X, y), val_data=(X, y), device="cuda", epochs=3, batch_size=32, progress=False,
                   seed=0, callbacks=[ol.Checkpoint(run_dir), *extra], resume=resume)
        return net, h

    straight, _ = run(tmp_path / "a")
    run(tmp_path / "b", extra=[StopAfter2()])
    resumed, h = run(tmp_path / "b", resume=tmp_path / "b")  # crashed before: RNG state on the GPU
    assert h["epoch"] == [1, 2, 3]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)  # GPU kernels may differ in the last bits
