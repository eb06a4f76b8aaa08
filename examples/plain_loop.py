"""A plain PyTorch training loop with a classic coupling mistake, for `optiloop doctor` to find:

    optiloop doctor examples/plain_loop.py --epochs 3

StepLR(step_size=2) means "drop the LR every 2 epochs", but this loop steps it after every batch,
so the LR falls tenfold every 2 batches and training stalls within the first epoch. Nothing here
uses optiloop: the doctor runs the script unchanged and watches torch.
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=6)
args = parser.parse_args()

digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
torch.manual_seed(0)
loader = DataLoader(TensorDataset(X[:1400], y[:1400]), batch_size=64, shuffle=True)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)

for epoch in range(args.epochs):
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        scheduler.step()  # the mistake: an epoch scheduler stepped per batch
    with torch.no_grad():
        acc = (model(X[1400:]).argmax(1) == y[1400:]).float().mean().item()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}  val_acc {acc:.3f}  lr {scheduler.get_last_lr()[0]:.2g}")
