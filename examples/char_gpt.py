"""A character-level GPT (nanoGPT's shape) trained with optiloop.fit on text shipped with scikit-learn.

The model returns ``(logits, loss)`` as nanoGPT's does, so it is trained through ``step=``. AdamW
keeps weight decay off biases and LayerNorm scales, the LR warms up linearly and then follows a
cosine, stepped after every optimizer step, and gradients are clipped to norm 1. The text is the
descriptions of scikit-learn's bundled data sets (``sklearn/datasets/descr/*.rst``, ~43k
characters): real English that every scikit-learn installation carries, no download.

    python examples/char_gpt.py                       # ~240k parameters, a minute or two on 2 CPU cores
    python examples/char_gpt.py --dim 64 --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import math
from importlib import resources

import torch
from torch import nn
from torch.nn import functional as F

import optiloop as ol


def load_text() -> str:
    """Every data-set description bundled with scikit-learn, in file-name order."""
    folder = resources.files("sklearn.datasets") / "descr"
    return "\n".join(f.read_text(encoding="utf-8") for f in sorted(folder.iterdir(), key=lambda f: f.name)
                     if f.name.endswith(".rst"))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A small decoder-only transformer; ``forward(idx, targets)`` returns ``(logits, loss)``."""

    def __init__(self, vocab: int, block: int = 64, dim: int = 96, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.block = block
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, dropout) for _ in range(layers)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied input and output embeddings, as in GPT-2

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        logits = self.head(self.ln(self.blocks(x)))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new: int, temperature: float = 0.8) -> torch.Tensor:
        for _ in range(new):
            logits, _ = self(idx[:, -self.block:])
            probs = F.softmax(logits[:, -1] / temperature, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
        return idx


def windows(ids: torch.Tensor, block: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets: every ``stride``-th window of ``block`` characters."""
    starts = torch.arange(0, len(ids) - block - 1, stride)
    idx = starts[:, None] + torch.arange(block)
    return ids[idx], ids[idx + 1]


def unigram_baseline(train: torch.Tensor, val: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats per character) of the validation text under the training text's
    character frequencies: what a model that ignores context achieves."""
    counts = torch.bincount(train, minlength=vocab).double() + 1  # add-one: no zero probabilities
    logp = (counts / counts.sum()).log()
    return float(-logp[val].mean())


def arguments(description: str, dim: int) -> argparse.ArgumentParser:
    """The options this example and hf_model.py share."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--stride", type=int, default=8, help="window stride: smaller = more windows per epoch")
    p.add_argument("--block", type=int, default=32, help="context length in characters")
    p.add_argument("--dim", type=int, default=dim, help="embedding width (2 layers, 4 heads)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def character_ids() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(vocabulary, training ids, validation ids): the text's first 90% and last 10%."""
    text = load_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    cut = int(0.9 * len(ids))
    return chars, ids[:cut], ids[cut:]


def main(argv: list[str] | None = None) -> dict:
    a = arguments(__doc__.splitlines()[0], dim=96).parse_args(argv)
    chars, train_ids, val_ids = character_ids()
    torch.manual_seed(a.seed)
    model = CharGPT(len(chars), block=a.block, dim=a.dim)
    steps_per_epoch = math.ceil(len(windows(train_ids, a.block, a.stride)[0]) / a.batch_size)

    history = ol.fit(
        model, windows(train_ids, a.block, a.stride), val_data=windows(val_ids, a.block, a.block),
        step=lambda model, batch: model(*batch)[1],  # (logits, loss): the loss is the second
        optimizer={"name": "adamw", "betas": (0.9, 0.95)}, lr=a.lr, weight_decay=0.1,
        scheduler={"name": "cosine", "interval": "step", "warmup_steps": min(100, steps_per_epoch),
                   "eta_min": a.lr / 10},
        clip_grad_norm=1.0, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, progress=a.progress,
    )

    baseline = unigram_baseline(train_ids, val_ids, len(chars))
    model.eval()
    prompt = torch.tensor([[chars.index(c) for c in "The data"]])
    torch.manual_seed(a.seed)
    sample = "".join(chars[i] for i in model.generate(prompt, 200)[0].tolist())
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters; val loss {history['val_loss'][-1]:.3f} nats/char "
          f"(unigram baseline {baseline:.3f}); sample:\n{sample}")
    return {"history": history, "baseline": baseline, "sample": sample, "parameters": params}


if __name__ == "__main__":
    main()
