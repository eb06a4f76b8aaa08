"""Mistake: the scheduler is built on one optimizer, then the optimizer is rebuilt (switched to
AdamW) and the new one is stepped: the schedule drives an optimizer nobody steps."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)  # the mistake: the scheduler keeps the old one

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    scheduler.step()
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
