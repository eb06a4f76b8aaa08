"""Mistake: CosineAnnealingLR with T_max in epochs, stepped once per batch: the LR oscillates."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)

for epoch in range(EPOCHS):
    model.train()
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        scheduler.step()  # the mistake: T_max counts epochs, this runs per batch
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
