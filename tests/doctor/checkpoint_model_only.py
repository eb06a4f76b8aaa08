"""Mistake: the checkpoint written every epoch holds the model's weights only (--save model), or
the model and optimizer as in the notes' train_model but not the scheduler (--save notes): a
resume would restart the optimizer state and/or the LR schedule."""

import argparse
import os
import tempfile

import torch
from common import digits, mlp, validate
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--save", choices=["model", "notes"], default="model")
args = parser.parse_args()

EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)

with tempfile.TemporaryDirectory() as save_dir:
    for epoch in range(EPOCHS):
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        val_loss, val_acc = validate(model, val_loader, loss_fn)
        scheduler.step()
        if args.save == "model":
            torch.save(model.state_dict(), os.path.join(save_dir, "checkpoint.pt"))
        else:
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(), "loss": val_loss},
                       os.path.join(save_dir, "best_model.pth"))
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
