"""A training process for tests/test_resume.py to kill and resume (not a test module itself).

usage: python resume_worker.py RUN_DIR OUT_FILE [--resume] [--slow-save N] [--custom-step] [--average ema|swa]
Prints "STEP k" after every optimizer step and "EPOCH e" after every epoch (after the checkpoint
for it is written). --slow-save N makes the N-th checkpoint write stop half-way, print "SAVING"
and sleep, so the parent can kill it in the middle of a write. --custom-step trains the same job
through the step contract: dict batches, a model returning (logits, loss), a step returning
StepOutput with a device-tensor count, two micro-batches per optimizer step. --average adds ol.EMA
or ol.SWA (from epoch 3) and writes its average too.
"""

import argparse
import io
import time

import torch
from torch import nn

import optiloop as ol
from optiloop import checkpoint as ckpt_mod


class Announce(ol.Callback):
    order = 200  # after Checkpoint: when "EPOCH e" is printed, last.pt for epoch e exists

    def on_step_end(self, state, logs):
        print(f"STEP {state.step}", flush=True)

    def on_epoch_end(self, state, logs):
        print(f"EPOCH {state.epoch}", flush=True)


def slow_save(n: int) -> None:
    real, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return real(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("SAVING", flush=True)
        time.sleep(60)
        f.write(data[len(data) // 2 :])

    ckpt_mod.torch.save = save


class LogitsAndLoss(nn.Module):
    """nanoGPT's shape: forward(x, targets) -> (logits, loss)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, targets):
        logits = self.net(x)
        return logits, nn.functional.cross_entropy(logits, targets)


def custom_step(model, batch):
    logits, loss = model(batch["x"], batch["y"])
    return ol.StepOutput(loss, outputs=logits, targets=batch["y"], count=(batch["y"] >= 0).sum())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--slow-save", type=int, default=0)
    p.add_argument("--custom-step", action="store_true")
    p.add_argument("--average", choices=("ema", "swa"))
    a = p.parse_args(argv)
    if a.slow_save:
        slow_save(a.slow_save)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    torch.manual_seed(0)
    # Dropout: the result depends on the torch RNG, so RNG state must be restored exactly.
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    data = {"train_data": (X[:150], y[:150]), "val_data": (X[150:], y[150:])}
    if a.custom_step:
        model = LogitsAndLoss(model)
        data = {"train_data": {"x": X[:150], "y": y[:150]}, "val_data": {"x": X[150:], "y": y[150:]},
                "step": custom_step, "grad_accum": 2, "batch_size": 8}
    averager = {"ema": lambda: ol.EMA(0.9), "swa": lambda: ol.SWA(3, swa_lr=5e-3, anneal_epochs=2),
                None: lambda: None}[a.average]()
    history = ol.fit(
        model, **{"batch_size": 16, **data}, optimizer="adamw", lr=1e-2,
        scheduler={"name": "cosine", "warmup_steps": 5}, epochs=5,
        metrics=["accuracy"], seed=0, progress=False, resume=a.run_dir if a.resume else None,
        callbacks=[ol.EarlyStopping(patience=20), ol.Checkpoint(a.run_dir, every_n_steps=4, every_seconds=0),
                   Announce(), *([averager] if averager else [])],
    )
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    out = {"model": model.state_dict(), "history": rows}
    if averager is not None:
        out["averaged"] = averager.averaged.state_dict()
    torch.save(out, a.out)


if __name__ == "__main__":
    main()
