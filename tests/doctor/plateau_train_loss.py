"""Mistake: ReduceLROnPlateau fed the training loss (the epoch's mean, or with --feed last the last
batch's loss) although a validation loss is computed right there."""

import argparse

import torch
from common import digits, mlp, validate
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--feed", choices=["mean", "last"], default="mean")
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()

train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1)

for epoch in range(args.epochs):
    model.train()
    total, n = 0.0, 0
    for x, y in train_loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        n += len(x)
    train_loss = total / n
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    scheduler.step(train_loss if args.feed == "mean" else loss)  # the mistake: not val_loss
    print(f"epoch {epoch + 1}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
