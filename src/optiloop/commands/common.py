"""Pieces several subcommands share: number formatting and the data / model arguments."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import OptiloopError


def fmt(v: Any) -> str:
    """A value as a person reads it: floats to 4 significant digits, lists bracketed."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def keywords(section: dict[str, Any], *skip: str) -> str:
    """``lr=0.001, weight_decay=0.01``: a config section's keys besides ``name`` (and ``skip``)."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in section.items() if k != "name" and k not in skip)


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --data, --model, --batch-size, --device, --set: what compare and lr-find share."""
    p.add_argument("--config", metavar="FILE", help="a train config (TOML); its data, model and "
                   "train sections are used")
    p.add_argument("--data", help="built-in data set, .csv / .npz file, or package.module:function "
                   "(default digits)")
    p.add_argument("--model", help="mlp, cnn, or package.module:function (default mlp)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default 64)")
    p.add_argument("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any config key, as in optiloop train (e.g. --set data.target=label "
                   "--set model.hidden=[64])")


def task_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config layer those arguments make (None: not given)."""
    return {"data": {"name": args.data}, "model": {"name": args.model},
            "train": {"batch_size": args.batch_size, "device": args.device}}


def rows_to_use(run: Any, data: str | None, *, target: str | None, need_labels: bool = False,
                hint: str) -> tuple[Any, Any]:
    """The rows eval and predict apply a run to: ``--data``'s, or without it the run's own
    validation split; ``hint`` ends the error when that split cannot be rebuilt (its data has moved)."""
    from ..runs import read_rows  # torch: only a command that applies a run reads rows

    if data is None:
        try:
            return run.validation_rows()
        except OptiloopError as e:
            raise OptiloopError(f"cannot rebuild the validation split of {run.checkpoint} ({e}); {hint}") from None
    return read_rows(data, run, target=target, need_labels=need_labels, what="--data", target_arg="--target")
