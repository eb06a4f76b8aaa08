"""Mistake: the LR sits at 0. --schedule decay: a linear decay to 0 over 2 epochs in a 5-epoch run;
--schedule warmup: a warmup factor epoch / 2 that starts at 0, so the whole first epoch is wasted."""

import argparse

import torch
from common import digits, mlp, validate
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--schedule", choices=["decay", "warmup"], default="decay")
args = parser.parse_args()

EPOCHS = 5
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
if args.schedule == "decay":
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=2)
else:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: min(1.0, epoch / 2))

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    scheduler.step()
    print(f"epoch {epoch + 1}: lr {optimizer.param_groups[0]['lr']:.4f} val_loss {val_loss:.4f}")
