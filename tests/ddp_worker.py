"""A user script calling optiloop.fit, run under torchrun by tests/test_distributed.py.

usage: torchrun --nproc_per_node=N ddp_worker.py OUT_DIR [--scheduler NAME] [--run-dir DIR]
                 [--die-at-step K] [--as-dataset] [--early-stopping PATIENCE] [--custom-step]
Each rank saves rank<r>.pt: final weights, history, the LR at every optimizer step.
--die-at-step K: on torchrun's first attempt, rank 1 SIGKILLs itself after step K; torchrun
(--max-restarts=1) restarts every rank, and they resume from RUN_DIR's last checkpoint.
"""

import argparse
import os
import signal
from pathlib import Path

import torch

import optiloop as ol
from optiloop.distributed import current_world

N, B, EPOCHS = 96, 8, 3  # per-rank batch B; the 1-process reference uses 2B


def dataset():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 6, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    return X, y


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def custom_step(model, batch):
    """A step of the user's own on dict batches: what --custom-step trains with."""
    logits = model(batch["inputs"])
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    return ol.StepOutput(loss, outputs=logits, targets=batch["labels"])


def fit_kwargs(custom: bool, X, y) -> dict:
    """--custom-step: dict batches, step=, two micro-batches per optimizer step."""
    if not custom:
        return {"train_data": (X, y), "val_data": (X, y)}
    return {"train_data": {"inputs": X, "labels": y}, "val_data": {"inputs": X, "labels": y},
            "step": custom_step, "grad_accum": 2}


class StepLog(ol.Callback):
    def __init__(self, die_at):
        self.lrs, self.die_at = [], die_at

    def on_step_end(self, state, logs):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if self.die_at and first_attempt and state.world.rank == 1 and state.step == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--scheduler", default="onecycle")
    p.add_argument("--run-dir")
    p.add_argument("--die-at-step", type=int, default=0)
    p.add_argument("--as-dataset", action="store_true", help="pass a TensorDataset (DistributedSampler)")
    p.add_argument("--early-stopping", type=int, default=0, help="EarlyStopping patience on val_acc")
    p.add_argument("--custom-step", action="store_true", help="dict batches, step=, grad_accum=2")
    p.add_argument("--checkpoint-on-rank0-only", action="store_true",
                   help="create the Checkpoint on rank 0 only, as a script may")
    a = p.parse_args()
    X, y = dataset()
    net = model()
    log = StepLog(a.die_at_step)
    callbacks = [log]
    if a.early_stopping:
        callbacks.append(ol.EarlyStopping(monitor="val_acc", patience=a.early_stopping, min_delta=0.5))
    resume = None
    if a.run_dir and (not a.checkpoint_on_rank0_only or os.environ["RANK"] == "0"):
        callbacks.append(ol.Checkpoint(a.run_dir, monitor="val_loss", every_n_steps=2))
    if a.run_dir:
        if (Path(a.run_dir) / "last.pt").exists():
            resume = a.run_dir
    sched = {"name": "plateau", "patience": 0, "factor": 0.5, "threshold": 0.5} \
        if a.scheduler == "plateau" else a.scheduler
    data = fit_kwargs(a.custom_step, X, y)
    if a.as_dataset:
        data["train_data"] = torch.utils.data.TensorDataset(X, y)
    h = ol.fit(net, **data, optimizer="sgd", lr=0.5, scheduler=sched, epochs=EPOCHS,
               batch_size=B, metrics=["accuracy"], seed=0, progress=False, callbacks=callbacks,
               resume=resume)
    world = current_world()
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    torch.save({"model": net.state_dict(), "history": rows, "lrs": log.lrs, "world_size": world.world_size,
                "epochs_run": len(rows)},
               Path(a.out) / f"rank{world.rank}.pt")


if __name__ == "__main__":
    main()
