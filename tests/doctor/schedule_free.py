"""Schedule-free AdamW (the schedulefree package) trained by hand: correct by default
(optimizer.train() with model.train(), optimizer.eval() with model.eval() and before saving);
--mistake eval validates in train mode, --mistake save saves in train mode, --mistake scheduler
puts a cosine schedule on it."""

import argparse
import os
import tempfile

import schedulefree
import torch
from common import digits, mlp, validate
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--mistake", choices=["none", "eval", "save", "scheduler"], default="none")
args = parser.parse_args()

EPOCHS = 3
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=2.5e-3, warmup_steps=10)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS) if args.mistake == "scheduler" else None

with tempfile.TemporaryDirectory() as save_dir:
    for epoch in range(EPOCHS):
        model.train()
        optimizer.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        if args.mistake == "save":
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                       os.path.join(save_dir, "checkpoint.pt"))
        if args.mistake != "eval":
            optimizer.eval()
        val_loss, val_acc = validate(model, val_loader, loss_fn)
        if args.mistake == "eval":  # it saves right, though
            optimizer.eval()
        if args.mistake != "save":
            extra = {"scheduler": scheduler.state_dict()} if scheduler is not None else {}
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extra},
                       os.path.join(save_dir, "checkpoint.pt"))
        if scheduler is not None:
            scheduler.step()
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
