"""What a training checkpoint holds: the run's state as named parts that save and load themselves.

The shape follows torchtitan's checkpointer: a dict of ``Stateful`` parts (``state_dict()`` /
``load_state_dict(state)``), saved under their names and loaded back in the same order. The loop
builds the parts once (``TrainingState``); the Checkpoint callback decides when to save and
``checkpoint.CheckpointFolder`` where. The run's position (epoch, step, ...) is one part whose
values sit at the top level of the file, so the format is the one optiloop has always written.

``SCHEMA`` is the one table of a training checkpoint's keys and the types they hold;
``check_training_state`` checks a loaded file against it before anything of it is used.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .checkpoint_checks import check_content
from .errors import CheckpointError

FORMAT = "optiloop.checkpoint"
VERSION = 1

# Every key of a training checkpoint and the types its value may have.
SCHEMA: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "scaler": (dict, type(None)),
    "epoch": (int,), "epoch_done": (bool,), "batch": (int,), "step": (int,), "data_seed": (int,),
    "epoch_lr": (float, int), "partial_train": (dict, type(None)), "rng": (dict,), "callbacks": (dict,),
    "history": (list,), "settings": (dict,), "config": (dict, type(None)),
}
# Keys a checkpoint may lack (written by an older optiloop), with the types they hold when present.
# eval_model: the weights validation used when they differ from the training weights ("model"): an
# EMA / SWA average, or a schedule-free optimizer's evaluation point; None when they are the same.
OPTIONAL: dict[str, tuple[type, ...]] = {"eval_model": (dict, type(None))}
POSITION = ("epoch", "epoch_done", "batch", "step", "data_seed", "epoch_lr")  # the flat part's keys


@runtime_checkable
class Stateful(Protocol):
    """A part of the training state (torch's modules, optimizers and schedulers are ones)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def check_training_state(ckpt: Any, path: Any) -> dict[str, Any]:
    """A loaded file is an optiloop training checkpoint this version can resume: its format,
    version, every key of ``SCHEMA`` with a value of the right type, tensors as model weights. One
    line names the first problem; nothing of it is used before this passes."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an optiloop training checkpoint (no whole "
                              "training state in it)")
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this optiloop reads "
                              f"version 1 to {VERSION}")
    for key, types in [*SCHEMA.items(), *OPTIONAL.items()]:
        if key not in ckpt:
            if key in OPTIONAL:
                continue
            raise CheckpointError(f"checkpoint {path} is incomplete: no {key!r}")
        value = ckpt[key]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            want = " or ".join(t.__name__ for t in types)
            raise CheckpointError(f"checkpoint {path}: {key!r} must be {want}, got {type(value).__name__}")
    if min(ckpt["epoch"], ckpt["batch"], ckpt["step"]) < 0:
        raise CheckpointError(f"checkpoint {path}: negative epoch, batch or step")
    for key in ("model", "eval_model"):
        weights = ckpt.get(key) or {}
        bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"checkpoint {path}: {key} weights must be tensors by name; {bad[0]!r} is not")
    if not all(isinstance(r, dict) for r in ckpt["history"]):
        raise CheckpointError(f"checkpoint {path}: history must be a list of rows (dicts)")
    check_content(ckpt, path)  # finite weights, a position its history agrees with, states of the right shape
    return ckpt


def inference_weights(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a checkpoint's validation used, the ones to predict and export with: the
    averaged (EMA / SWA) or schedule-free evaluation weights when it holds them, else the model's."""
    return ckpt.get("eval_model") or ckpt["model"]


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights, or raise one line listing missing, unexpected and mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        parts = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch (checkpoint vs model)", mismatched)) if keys]
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state_dict)


# --- the parts -------------------------------------------------------------------------------------
class Weights:
    """The model's weights (the unwrapped module: no DDP / compile prefixes). Under FSDP the model
    and optimizer parts hold DCP's parameter-name state dicts of this rank's shards (``gather``:
    ``sharded.state_dicts``), which ``sharded.ShardedFolder`` writes and ``sharded.load_into``
    loads (a sharded resume loads them before the rest, so this part then has nothing to load)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 gather: Callable[[torch.nn.Module, torch.optim.Optimizer], tuple[dict, dict]] | None = None):
        self.model, self.optimizer, self.gather = model, optimizer, gather

    def state_dicts(self) -> tuple[dict, dict]:
        if self.gather is not None:
            return self.gather(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()

    def state_dict(self) -> dict:
        model, self.optimizer_state = self.state_dicts()  # DCP gathers both at once: keep the other
        return model

    def load_state_dict(self, state: dict) -> None:
        load_model_weights(self.model, state)


class OptimizerState:
    """The optimizer's state (saved with the weights under FSDP: DCP gathers both at once)."""

    def __init__(self, weights: Weights):
        self.weights = weights

    def state_dict(self) -> dict:
        w = self.weights
        state, w.optimizer_state = getattr(w, "optimizer_state", None), None
        return state if state is not None else w.state_dicts()[1]

    def load_state_dict(self, state: dict) -> None:
        self.weights.optimizer.load_state_dict(state)


class MaybeAbsent:
    """A part that may be absent (the fp16 GradScaler): saved as None, loaded only when both exist."""

    def __init__(self, part: Stateful | None):
        self.part = part

    def state_dict(self) -> Any:
        return self.part.state_dict() if self.part is not None else None

    def load_state_dict(self, state: Any) -> None:
        if self.part is not None and state is not None:
            self.part.load_state_dict(state)


class Fixed:
    """A value saved for the record and checked elsewhere, never loaded back (the settings a
    resume compares before loading, the resolved config)."""

    def __init__(self, get: Any):
        self.get = get

    def state_dict(self) -> Any:
        return self.get()

    def load_state_dict(self, state: Any) -> None:
        pass


class RNG:
    """Every random generator's state: python, numpy, torch (CPU and each CUDA device). A sharded
    checkpoint keeps every rank's; a plain one rank 0's. None (a rank the saved run did not have)
    keeps this process's own."""

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state(legacy=False)
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # numpy's key array becomes a tensor: weights_only loading takes tensors, not ndarrays
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                      "gauss": np_state["gauss"]},
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
        }

    def load_state_dict(self, s: dict[str, Any] | None) -> None:
        if s is None:
            return
        torch.set_rng_state(s["torch"].cpu())  # RNG states are CPU byte tensors, wherever loaded
        if s["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])
        n = s["numpy"]
        np.random.set_state({"bit_generator": n["bit_generator"],
                             "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
        random.setstate((s["python_version"], tuple(s["python"]), s["python_gauss"]))


class TrainingState:
    """The named parts of a run's state, in the order they are loaded back.

    ``state_dict()`` is what a checkpoint file holds: ``format``, ``version``, the position's keys,
    then one key per part. ``load_state_dict`` loads every part present in the file (a sharded
    resume has loaded the weights and optimizer already, so they are absent).
    """

    def __init__(self, position: Stateful, parts: Mapping[str, Stateful]):
        self.position, self.parts = position, dict(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.position.state_dict(),
                **{name: part.state_dict() for name, part in self.parts.items()}}

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.position.load_state_dict({k: ckpt[k] for k in POSITION})
        for name, part in self.parts.items():
            if name in ckpt:
                part.load_state_dict(ckpt[name])


def rng_state() -> dict[str, Any]:
    """This process's random generators' state (see ``RNG``)."""
    return RNG().state_dict()


def set_rng_state(state: dict[str, Any]) -> None:
    RNG().load_state_dict(state)
