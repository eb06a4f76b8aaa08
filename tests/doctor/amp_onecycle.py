"""Correct: mixed precision (fp16 autocast on the CPU) with a GradScaler whose first steps are
skipped for inf gradients, and OneCycleLR stepped after every scaler.step(optimizer)."""

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 3
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=EPOCHS, steps_per_epoch=len(train_loader))
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # too large on purpose: the first steps overflow

for epoch in range(EPOCHS):
    for x, y in train_loader:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f} scale {scaler.get_scale():.0f}")
