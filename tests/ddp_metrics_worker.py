"""torchmetrics metrics under DDP, run under torchrun by tests/test_metrics.py.

usage: torchrun --nproc_per_node=N ddp_metrics_worker.py OUT_DIR
Each rank saves rank<r>.pt: its history and final weights. Every rank must log the same exact
metrics, computed over every rank's samples (torchmetrics gathers them inside compute()).
"""

import sys
from pathlib import Path

import torch
from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score

import optiloop as ol
from optiloop.distributed import current_world

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402  (the same data and model as the DDP tests)


def metrics():
    return {"f1": MulticlassF1Score(2, average="macro"), "auroc": MulticlassAUROC(2)}


def main():
    X, y = ddp_worker.dataset()
    Xv, yv = X[:45], y[:45]  # 45 validation rows: not a multiple of the ranks, nothing padded
    net = ddp_worker.model()
    h = ol.fit(net, (X, y), val_data=(Xv, yv), optimizer="sgd", lr=0.5, epochs=2, batch_size=ddp_worker.B,
               metrics=metrics(), seed=0, progress=False)
    world = current_world()
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    torch.save({"history": rows, "model": net.state_dict()}, Path(sys.argv[1]) / f"rank{world.rank}.pt")


if __name__ == "__main__":
    main()
