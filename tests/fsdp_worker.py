"""A user script calling optiloop.fit(strategy="fsdp"), run under torchrun by tests/test_fsdp.py.

usage: torchrun --nproc_per_node=N fsdp_worker.py OUT_DIR [--scheduler NAME] [--custom-step]
                 [--run-dir DIR] [--sync-save] [--die-at-step K] [--dropout P] [--amp bf16]
                 [--blocks] [--checkpoint-on-rank0-only] [--device cuda]
Each rank saves rank<r>.pt: the final weights gathered whole, history, the LR at every step.
--die-at-step K: on torchrun's first attempt, rank 1 SIGKILLs itself after step K; torchrun
(--max-restarts=1) restarts every rank, and they resume from RUN_DIR's last checkpoint.
--dropout P: dropout in every block, with a different RNG stream per rank (seeded 1000 + rank), so
an exact restart needs each rank's own RNG state back.
"""

import argparse
import os
import sys
from pathlib import Path

import torch

import optiloop as ol
from optiloop.distributed import current_world

sys.path.insert(0, str(Path(__file__).parent))
# the same data, sizes, dict-batch step and LR log as the DDP worker
from ddp_worker import EPOCHS, B, N, StepLog, dataset, fit_kwargs  # noqa: E402, F401 (N: for tests)
from fsdp_model import Block, Net  # noqa: E402


def model(dropout=0.0):
    torch.manual_seed(0)
    return Net(dropout)


def scheduler(name):
    return {"name": "plateau", "patience": 0, "factor": 0.5, "threshold": 0.5} if name == "plateau" else name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--scheduler", default="onecycle")
    p.add_argument("--custom-step", action="store_true")
    p.add_argument("--run-dir")
    p.add_argument("--sync-save", action="store_true", help="Checkpoint(async_save=False)")
    p.add_argument("--die-at-step", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--amp")
    p.add_argument("--blocks", action="store_true", help="strategy=ol.FSDP(blocks=(Block,))")
    p.add_argument("--checkpoint-on-rank0-only", action="store_true")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    X, y = dataset()
    net = model(a.dropout)
    seed = 0
    if a.dropout:  # each rank its own RNG stream: dropout masks differ between ranks
        torch.manual_seed(1000 + int(os.environ["RANK"]))
        seed = None
    log = StepLog(a.die_at_step)
    callbacks = [log]
    resume = None
    if a.run_dir and (not a.checkpoint_on_rank0_only or os.environ["RANK"] == "0"):
        callbacks.append(ol.Checkpoint(a.run_dir, monitor="val_loss", every_n_steps=2, async_save=not a.sync_save))
    if a.run_dir and (Path(a.run_dir) / "last").exists():
        resume = a.run_dir
    strategy = ol.FSDP(blocks=(Block,)) if a.blocks else "fsdp"
    h = ol.fit(net, **fit_kwargs(a.custom_step, X, y), optimizer="adamw", lr=0.05, scheduler=scheduler(a.scheduler),
               epochs=EPOCHS, batch_size=B, metrics=["accuracy"], seed=seed, progress=False, callbacks=callbacks,
               resume=resume, strategy=strategy, amp=a.amp, device=a.device)
    world = current_world()
    # The sharded module, gathered whole (a collective: every rank takes part)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True))
    full = {k: v.cpu() for k, v in full.items()}
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    torch.save({"model": full, "history": rows, "lrs": log.lrs, "world_size": world.world_size,
                "epochs_run": len(rows), "param_dtypes": sorted({str(p.dtype) for p in net.parameters()}),
                "param_types": sorted({type(p).__name__ for p in net.parameters()})},
               Path(a.out) / f"rank{world.rank}.pt")


if __name__ == "__main__":
    main()
