"""Correct: a complete checkpoint (model, optimizer, scheduler, epoch) written every epoch next to
best-weights snapshots, then training resumed from it in new objects, as a restarted job would."""

import os
import tempfile

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 4
train_loader, val_loader = digits()
loss_fn = nn.CrossEntropyLoss()


def build():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 3], gamma=0.1)
    return model, optimizer, scheduler


def train(model, optimizer, scheduler, first_epoch, last_epoch, folder):
    best = float("inf")
    for epoch in range(first_epoch, last_epoch):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        val_loss, _ = validate(model, val_loader, loss_fn)
        scheduler.step()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch}, os.path.join(folder, "last.pt"))
        if val_loss < best:
            best = val_loss
            torch.save(model.state_dict(), os.path.join(folder, "best_weights.pt"))
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} lr {optimizer.param_groups[0]['lr']:.4f}")


with tempfile.TemporaryDirectory() as folder:
    train(*build(), 0, 2, folder)  # the first job stops after 2 epochs
    model, optimizer, scheduler = build()  # the restarted job
    state = torch.load(os.path.join(folder, "last.pt"), weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    train(model, optimizer, scheduler, state["epoch"] + 1, EPOCHS, folder)
