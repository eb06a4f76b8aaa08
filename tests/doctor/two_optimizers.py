"""Correct: two optimizers (SGD for the body, Adam for the head), each with its own scheduler
stepped once per epoch after validation (StepLR; ReduceLROnPlateau on the validation loss); a new
DataLoader is built every epoch, and gradients are cleared through the model."""

import torch
from common import digits, mlp, validate
from torch import nn
from torch.utils.data import DataLoader

EPOCHS = 4
base_loader, val_loader = digits()
model = mlp()
loss_fn = nn.CrossEntropyLoss()
body, head = model[0], model[2]
opt_body = torch.optim.SGD(body.parameters(), lr=0.05, momentum=0.9)
opt_head = torch.optim.Adam(head.parameters(), lr=1e-3)
sched_body = torch.optim.lr_scheduler.StepLR(opt_body, step_size=2, gamma=0.5)
sched_head = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_head, patience=0, factor=0.5)

for epoch in range(EPOCHS):
    loader = DataLoader(base_loader.dataset, batch_size=64, shuffle=True)
    for x, y in loader:
        model.zero_grad()
        loss_fn(model(x), y).backward()
        opt_body.step()
        opt_head.step()
    val_loss, val_acc = validate(model, val_loader, loss_fn)
    sched_body.step()
    sched_head.step(val_loss)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} val_acc {val_acc:.3f}")
