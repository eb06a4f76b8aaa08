"""Correct: gradient accumulation over 4 batches with OneCycleLR sized in optimizer steps and
stepped right after each optimizer step; gradients cleared after each optimizer step."""

import math

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS, ACCUM = 4, 4
train_loader, val_loader = digits(batch_size=32)
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
steps_per_epoch = math.ceil(len(train_loader) / ACCUM)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=EPOCHS, steps_per_epoch=steps_per_epoch)

for epoch in range(EPOCHS):
    for i, (x, y) in enumerate(train_loader):
        (loss_fn(model(x), y) / ACCUM).backward()
        if (i + 1) % ACCUM == 0 or i + 1 == len(train_loader):
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
