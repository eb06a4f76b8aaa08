"""Correct for what it is: the best epoch's weights kept as a snapshot (model only) and loaded back
after training for a test pass. As a checkpoint to resume from it would be incomplete, and the
doctor says that this matters only for such a checkpoint."""

import os
import tempfile

import torch
from common import digits, mlp, validate
from torch import nn

EPOCHS = 3
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)

with tempfile.TemporaryDirectory() as save_dir:
    best, path = float("inf"), os.path.join(save_dir, "best_model.pt")
    for epoch in range(EPOCHS):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        val_loss, val_acc = validate(model, val_loader, loss_fn)
        scheduler.step()
        if val_loss < best:
            best = val_loss
            torch.save(model.state_dict(), path)
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
    model.load_state_dict(torch.load(path, weights_only=True))  # the test pass uses the best epoch
    test_loss, test_acc = validate(model, val_loader, loss_fn)
    print(f"test: loss {test_loss:.4f} acc {test_acc:.3f}")
