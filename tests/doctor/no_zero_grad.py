"""Mistake: zero_grad() is never called, so every step uses the sum of all gradients so far."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 3
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

for epoch in range(EPOCHS):
    for x, y in train_loader:
        loss_fn(model(x), y).backward()  # the mistake: gradients pile up across batches
        optimizer.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
