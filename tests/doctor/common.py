"""What the doctor's corpus scripts share: scikit-learn's handwritten digits as DataLoaders, a
small MLP, and a validation pass. Each script writes its own training loop: that is where the
coupling mistakes live."""

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def digits(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over the 1,797 digits (80/20 split, pixels scaled to [0, 1])."""
    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    val, train = perm[: len(X) // 5], perm[len(X) // 5:]
    train_loader = DataLoader(TensorDataset(X[train], y[train]), batch_size=batch_size, shuffle=True, generator=g)
    val_loader = DataLoader(TensorDataset(X[val], y[val]), batch_size=256)
    return train_loader, val_loader


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def validate(model: nn.Module, loader: DataLoader, loss_fn) -> tuple[float, float]:
    """Mean loss and accuracy over ``loader`` (sample-weighted), in eval mode without gradients."""
    model.eval()
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            total += loss_fn(out, y).item() * len(x)
            correct += (out.argmax(1) == y).sum().item()
            n += len(x)
    model.train()
    return total / n, correct / n
