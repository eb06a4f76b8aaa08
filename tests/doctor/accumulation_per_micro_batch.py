"""Mistake: gradient accumulation over 4 batches, but the scheduler is stepped after every
micro-batch. --scheduler onecycle: OneCycleLR sized in optimizer steps runs out of steps and torch
raises in the middle of training."""

import argparse
import math

import torch
from common import digits, mlp, validate
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--scheduler", choices=["cosine", "onecycle"], default="cosine")
args = parser.parse_args()

EPOCHS, ACCUM = 4, 4
train_loader, val_loader = digits(batch_size=32)
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
optimizer_steps = EPOCHS * math.ceil(len(train_loader) / ACCUM)
if args.scheduler == "cosine":
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=optimizer_steps)
else:
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=optimizer_steps)

for epoch in range(EPOCHS):
    for i, (x, y) in enumerate(train_loader):
        loss = loss_fn(model(x), y) / ACCUM
        loss.backward()
        if (i + 1) % ACCUM == 0 or i + 1 == len(train_loader):
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()  # the mistake: once per micro-batch
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
