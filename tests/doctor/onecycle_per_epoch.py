"""Mistake: the notes' train_model steps every non-plateau scheduler once per epoch; with
OneCycleLR (sized in optimizer steps) the LR never leaves warmup."""

import torch
from common import digits, mlp, validate
from torch import nn


def train_model(model, train_loader, val_loader, loss_fn, optimizer, num_epochs, scheduler=None):
    history = {"train_loss": [], "val_loss": []}
    for epoch in range(num_epochs):
        model.train()
        train_loss = 0.0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
        val_loss, val_acc = validate(model, val_loader, loss_fn)
        if scheduler:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            else:
                scheduler.step()  # the mistake for OneCycleLR: it counts optimizer steps
        history["train_loss"].append(train_loss / len(train_loader))
        history["val_loss"].append(val_loss)
        print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
    return history


EPOCHS = 4
train_loader, val_loader = digits()
model = mlp()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=EPOCHS,
                                                steps_per_epoch=len(train_loader))
train_model(model, train_loader, val_loader, nn.CrossEntropyLoss(), optimizer, EPOCHS, scheduler)
