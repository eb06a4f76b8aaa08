"""Pieces several subcommands share: number formatting, progress lines, the data / model
arguments, and the sweep arguments of compare and tune (storage, study, MLflow)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import OptiloopError
from ..formatting import fmt


def keywords(section: dict[str, Any], *skip: str) -> str:
    """``lr=0.001, weight_decay=0.01``: a config section's keys besides ``name`` (and ``skip``)."""
    return ", ".join(f"{k}={fmt(v)}" for k, v in section.items() if k != "name" and k not in skip)


def echo(line: str) -> None:
    """Print a progress line now (module level: worker processes get it by pickle)."""
    print(line, flush=True)


def add_sweep_arguments(p: argparse.ArgumentParser, *, runs: str, default_study: str) -> None:
    """--storage, --study and --mlflow: where a sweep's study lives, and its tracker (compare, tune)."""
    p.add_argument("--storage", metavar="URL", help="where the study lives, shared by every process that names "
                   "it: sqlite:///PATH.db, postgresql://USER:PASSWORD@HOST/DB, or journal:PATH (a journal file, "
                   "e.g. on a shared file system); default: OUT/study.db")
    p.add_argument("--study", metavar="NAME", help=f"the study's name in the storage (default {default_study})")
    p.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="URI",
                   help=f"also log it to MLflow: one parent run, {runs} a child with its config, figures, "
                   "history and files; URI as in optiloop train --mlflow (needs: pip install 'optiloop[mlflow]')")


def sweep_tracker(uri: Any, run_name: str | None) -> Any:
    """The MLflow tracker of a sweep (``--mlflow``), or None; made before anything is written, so a
    missing mlflow package is one line."""
    if not uri:
        return None
    from ..trackers import MLflowSweep  # mlflow: only when asked for

    return MLflowSweep(None if uri is True else uri, run_name=run_name)


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
