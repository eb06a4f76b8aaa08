"""Train an MLP on scikit-learn's handwritten digits with optiloop.fit (seconds on a CPU)."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import optiloop as ol


def main(out: str = "runs/digits-example") -> ol.History:
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixels are 0..16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    train, val = order[:1437], order[1437:]  # 80 / 20 split

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    history = ol.fit(
        model, (X[train], y[train]), val_data=(X[val], y[val]),
        optimizer="adamw", lr=3e-3, weight_decay=0.01, scheduler="cosine",
        epochs=30, batch_size=64, metrics=["accuracy"], seed=0,
        callbacks=[ol.EarlyStopping(monitor="val_loss", patience=5, restore_best=True),
                   ol.Checkpoint(out, monitor="val_loss")],
    )
    history.to_csv(f"{out}/history.csv")
    best = history.best("val_loss")
    print(f"best epoch {best['epoch']}: val_loss {best['val_loss']:.4f}, val_acc {best['val_acc']:.4f}; "
          f"files in {out}/")
    return history


if __name__ == "__main__":
    main()
