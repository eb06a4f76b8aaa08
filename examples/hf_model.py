"""A Hugging Face transformers model trained with optiloop.fit on dict batches, ``loss="model"``.

The model is built from a small config (random weights, nothing downloaded): a 2-layer GPT-2 over
the characters of the text scikit-learn ships (see char_gpt.py). Batches are dicts
``{"input_ids": ..., "labels": ...}``; the model is called as ``model(**batch)`` and computes its
own loss (``output.loss``), as with transformers' own Trainer.

    pip install -e ".[hf]"          # transformers
    python examples/hf_model.py
"""

from __future__ import annotations

import torch
from char_gpt import arguments, character_ids, unigram_baseline  # the example beside this one

import optiloop as ol


def main(argv: list[str] | None = None) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    a = arguments(__doc__.splitlines()[0], dim=64).parse_args(argv)
    chars, train_ids, val_ids = character_ids()

    def batches(part: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
        starts = torch.arange(0, len(part) - a.block, stride)
        windows = part[starts[:, None] + torch.arange(a.block)]
        return {"input_ids": windows, "labels": windows}  # the model shifts the labels itself

    torch.manual_seed(a.seed)
    config = GPT2Config(vocab_size=len(chars), n_positions=a.block, n_embd=a.dim, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0)  # GPT-2's own ids lie outside this vocabulary
    model = GPT2LMHeadModel(config)
    history = ol.fit(
        model, batches(train_ids, a.stride), val_data=batches(val_ids, a.block), loss="model",
        optimizer="adamw", lr=a.lr, weight_decay=0.1,
        scheduler={"name": "cosine", "interval": "step", "warmup_steps": 50},
        clip_grad_norm=1.0, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, progress=a.progress,
    )
    baseline = unigram_baseline(train_ids, val_ids, len(chars))
    params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2 with {params:,} parameters: val loss {history['val_loss'][-1]:.3f} nats/char "
          f"(unigram baseline {baseline:.3f})")
    return {"history": history, "baseline": baseline, "parameters": params}


if __name__ == "__main__":
    main()
