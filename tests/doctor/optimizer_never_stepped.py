"""Mistake: gradients are computed and cleared, but optimizer.step() is never called."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 3
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()  # the mistake: no optimizer.step() after it
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
