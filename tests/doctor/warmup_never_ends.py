"""Mistake: a warmup sized in optimizer steps (two epochs' worth) but stepped once per epoch, so
the LR is still warming up when training ends."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
warmup_steps = 2 * len(train_loader)
total_steps = EPOCHS * len(train_loader)
scheduler = torch.optim.lr_scheduler.SequentialLR(
    optimizer,
    [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps),
     torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)],
    milestones=[warmup_steps])

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    scheduler.step()  # the mistake: once per epoch, but its lengths count optimizer steps
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
