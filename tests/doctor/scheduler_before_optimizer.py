"""Mistake: scheduler.step() at the start of each epoch, before any optimizer.step(): the schedule
runs one epoch ahead and its first LR is never used."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)

for epoch in range(EPOCHS):
    scheduler.step()  # the mistake: before this epoch's training
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: lr {optimizer.param_groups[0]['lr']:.4f} val_loss {val_loss:.4f}")
