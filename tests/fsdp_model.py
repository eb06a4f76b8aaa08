"""The model tests/fsdp_worker.py trains: plain torch, nothing from optiloop (the export test loads
its weights in a process where importing optiloop fails)."""

import torch
from torch import nn

HIDDEN = 15  # odd: shards of unequal size (8 + 7 rows)


class Block(nn.Module):
    def __init__(self, width, dropout):
        super().__init__()
        self.linear, self.drop = nn.Linear(width, width), nn.Dropout(dropout)

    def forward(self, x):
        return x + self.drop(torch.tanh(self.linear(x)))


class Net(nn.Module):
    """Repeated blocks in a ModuleList: FSDP's default policy shards each, then the root."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.inp = nn.Linear(6, HIDDEN)
        self.blocks = nn.ModuleList(Block(HIDDEN, dropout) for _ in range(2))
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
