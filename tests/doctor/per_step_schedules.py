"""Correct: schedules sized in optimizer steps and stepped after every optimizer step. --scheduler
cosine: CosineAnnealingLR over the whole run; step: StepLR dropping every 2 epochs' worth of steps;
warmup_cosine: a linear warmup over the first epoch, then cosine (SequentialLR); lambda_warmup: a
LambdaLR warmup whose first factor is 1 / warmup (never 0)."""

import argparse

import torch
from common import digits, mlp, validate
from torch import nn
from torch.optim import lr_scheduler

parser = argparse.ArgumentParser()
parser.add_argument("--scheduler", choices=["cosine", "step", "warmup_cosine", "lambda_warmup"], default="cosine")
args = parser.parse_args()

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
steps = EPOCHS * len(train_loader)
warmup = len(train_loader)
if args.scheduler == "cosine":
    scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
elif args.scheduler == "step":
    scheduler = lr_scheduler.StepLR(optimizer, step_size=2 * len(train_loader), gamma=0.1)
elif args.scheduler == "warmup_cosine":
    scheduler = lr_scheduler.SequentialLR(optimizer, [
        lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
        lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup)], milestones=[warmup])
else:
    scheduler = lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: lr {scheduler.get_last_lr()[0]:.5f} val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
