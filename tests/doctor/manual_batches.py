"""Correct, without a DataLoader: batches sliced from tensors by hand, gradients cleared by setting
them to None by hand, ReduceLROnPlateau fed the validation loss (computed with F.cross_entropy on
the whole validation set), and the weights exported once at the end."""

import os
import tempfile

import torch
import torch.nn.functional as F
from common import mlp
from sklearn.datasets import load_digits

data = load_digits()
X = torch.tensor(data.data, dtype=torch.float32) / 16.0
y = torch.tensor(data.target)
perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
X_val, y_val, X_train, y_train = X[perm[:360]], y[perm[:360]], X[perm[360:]], y[perm[360:]]

EPOCHS, BATCH = 6, 50
model = mlp()
optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
for epoch in range(EPOCHS):
    model.train()
    order = torch.randperm(len(X_train))
    for start in range(0, len(X_train), BATCH):
        idx = order[start:start + BATCH]
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(X_train[idx]), y_train[idx]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = F.cross_entropy(model(X_val), y_val).item()
    scheduler.step(val_loss)
    print(f"epoch {epoch + 1}: val_loss {val_loss:.4f} lr {optimizer.param_groups[0]['lr']:.5f}")

with tempfile.TemporaryDirectory() as out:
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
