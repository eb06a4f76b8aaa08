"""What a checkpoint holds, checked before any of it is used: beyond its types (``checkpoint.
check_training_state``), whether its content makes sense, whether it is this run's kind of state,
and whether a run checkpoint read back by ``eval`` / ``predict`` has the shape optiloop writes.

Each check raises a one-line ``CheckpointError`` naming the file and the first problem. A resume
treats one like damage: it falls back to ``last.prev.pt`` with a warning saying why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from .errors import CheckpointError


def _type(value: Any) -> str:
    return type(value).__name__


# --- a training state on its own ------------------------------------------------------------------
def is_optimizer_state(state: Any) -> bool:
    """A torch.optim ``state_dict`` (``state`` and ``param_groups`` of parameter lists), or a dict
    of them (an optimizer made of parts, such as muon's Muon + AdamW; a part may be None)."""
    if not isinstance(state, dict) or not state:
        return False
    if "param_groups" in state:
        groups = state["param_groups"]
        return isinstance(state.get("state"), dict) and isinstance(groups, list) and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    return all(part is None or is_optimizer_state(part) for part in state.values())


_SCHEDULE = {"interval": str, "steps_done": int, "main_lrs": list}


def check_content(ckpt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """What a training checkpoint's types cannot say: its optimizer and scheduler states are
    states, its weights are finite (optiloop never saves a broken state) and its epoch agrees
    with the history it holds."""
    # One optimizer and one schedule, or several by name (optimizer={"generator": ..., "discriminator": ...}).
    optimizers = _named(ckpt["optimizer"], is_optimizer_state)
    if optimizers is None:
        raise CheckpointError(f"checkpoint {path}: its optimizer entry is not a torch.optim state (state and "
                              "param_groups)")
    schedules = _named(ckpt["scheduler"], lambda s: "interval" in s)
    for schedule in schedules or [ckpt["scheduler"]]:
        bad = [k for k, t in _SCHEDULE.items() if not isinstance(schedule.get(k), t)]
        if bad or not isinstance(schedule.get("scheduler"), (dict, type(None))):
            raise CheckpointError(f"checkpoint {path}: its scheduler entry is not an optiloop schedule state"
                                  f" ({(bad or ['scheduler'])[0]!r} missing or of the wrong type)")
    for name, weight in ckpt["model"].items():
        if (weight.is_floating_point() or weight.is_complex()) and not bool(torch.isfinite(weight).all()):
            raise CheckpointError(f"checkpoint {path}: non-finite weights in {name!r} (optiloop never saves "
                                  "such a state)")
    done = len(ckpt["history"])
    expected = ckpt["epoch"] - (0 if ckpt["epoch_done"] else 1)
    if done != expected:
        raise CheckpointError(f"checkpoint {path}: epoch {ckpt['epoch']} does not match its history of "
                              f"{done} epoch{'s' if done != 1 else ''}")


# --- a training state for this run -----------------------------------------------------------------
def check_fits(ckpt: Mapping[str, Any], path: str | os.PathLike, *, optimizer: torch.optim.Optimizer,
               schedule: Any) -> None:
    """The saved optimizer and scheduler states are of the kinds this run built: the same param
    groups, the same optimizer's settings, the same scheduler and interval. Checked before
    anything is loaded, so a checkpoint of another run never half-loads."""
    _same_optimizer(ckpt["optimizer"], optimizer.state_dict(), path, type(optimizer).__name__)
    saved, live = ckpt["scheduler"], schedule.state_dict()
    if "interval" not in live:  # several optimizers: a schedule each, by the optimizer's name
        if not isinstance(saved, Mapping) or set(saved) != set(live):
            raise CheckpointError(f"checkpoint {path}: its schedules are for optimizers "
                                  f"{', '.join(saved) if isinstance(saved, Mapping) else 'none'}; this run has "
                                  f"{', '.join(live)}: it is another run's")
        for name, part in schedule.parts.items():
            _same_schedule(saved[name], live[name], path, f"this run's {name} {_schedule_name(part.schedule)}")
        return
    _same_schedule(saved, live, path, f"this run's {_schedule_name(schedule)}")


def _same_schedule(saved: Mapping[str, Any], live: Mapping[str, Any], path: Any, mine: str) -> None:
    if saved["interval"] != live["interval"]:
        raise CheckpointError(f"checkpoint {path}: its scheduler steps per {saved['interval']}, {mine} per "
                              f"{live['interval']}: it is another run's scheduler")
    if saved.get("name") not in (None, live.get("name")):
        raise CheckpointError(f"checkpoint {path}: its scheduler is {saved['name']!r}, {mine}: it is another "
                              "run's scheduler")
    inner_saved, inner_live = saved["scheduler"], live["scheduler"]
    if (inner_saved is None) != (inner_live is None) or (
            inner_saved is not None and _public(inner_saved) != _public(inner_live)):
        theirs = sorted(_public(inner_saved or {}) - _public(inner_live or {})) or ["none"]
        raise CheckpointError(f"checkpoint {path}: its scheduler state is another scheduler's (it holds "
                              f"{', '.join(theirs[:4])}, which {mine} does not)")
    if len(saved["main_lrs"]) != len(live["main_lrs"]):
        raise CheckpointError(f"checkpoint {path}: its scheduler drives {len(saved['main_lrs'])} param groups, "
                              f"{mine} {len(live['main_lrs'])}")


def _schedule_name(schedule: Any) -> str:
    name = getattr(schedule, "name", None)
    inner = getattr(schedule, "scheduler", None)
    return f"scheduler {name!r}" if name not in (None, "custom") else \
        f"scheduler {type(inner).__name__ if inner is not None else 'none'}"


def _public(state: Mapping[str, Any]) -> set[str]:
    """The settings that make a scheduler what it is (T_max, step_size, gamma ...), without the
    private bookkeeping a torch release may add."""
    return {k for k in state if not k.startswith("_") and k != "verbose"}


# What LR schedulers add to param groups (torch's OneCycleLR, CyclicLR, SWALR ...): not the optimizer's.
_SCHEDULER_KEYS = {"initial_lr", "max_lr", "min_lr", "base_lr", "max_momentum", "base_momentum", "swa_lr"}


def _same_optimizer(saved: Any, live: Mapping[str, Any], path: str | os.PathLike, cls: str) -> None:
    if "param_groups" not in live:  # an optimizer of parts: each part in turn
        if not isinstance(saved, dict) or set(saved) != set(live):
            raise CheckpointError(f"checkpoint {path}: its optimizer state has parts {sorted(saved)}, this run's "
                                  f"{cls} {sorted(live)}: it is another run's optimizer")
        for key, part in live.items():
            if (part is None) != (saved[key] is None):
                raise CheckpointError(f"checkpoint {path}: its optimizer's part {key!r} does not match this run's")
            if part is not None:
                _same_optimizer(saved[key], part, path, f"{cls} part {key!r}")
        return
    if "param_groups" not in saved:
        raise CheckpointError(f"checkpoint {path}: its optimizer state is not a {cls} state: it is another run's")
    theirs = [len(g["params"]) for g in saved["param_groups"]]
    ours = [len(g["params"]) for g in live["param_groups"]]
    if theirs != ours:
        raise CheckpointError(f"checkpoint {path}: its optimizer has param groups of {theirs} parameters, this "
                              f"run's {cls} {ours}: it is another run's optimizer")
    foreign = sorted({k for g in saved["param_groups"] for k in g} - {k for g in live["param_groups"] for k in g}
                     - _SCHEDULER_KEYS)
    if foreign:
        raise CheckpointError(f"checkpoint {path}: its optimizer state is not a {cls} state (it has "
                              f"{', '.join(foreign[:4])}): it is another run's optimizer")


# --- a run's checkpoint read back for eval / predict / export --------------------------------------
_SECTIONS = ("data", "model", "optimizer", "scheduler", "train")


def check_run_checkpoint(ckpt: Any, path: str | os.PathLike) -> None:
    """A checkpoint ``optiloop.load`` can rebuild a model from: weights by name, a config of
    sections, and what applying the model needs (``config["inference"]``) in the form optiloop
    writes it. One line names the first thing that is not; nothing runs on a wrong type."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {_type(ckpt)}, not an optiloop checkpoint")
    cfg = ckpt.get("config")
    if not cfg or "model" not in ckpt:
        raise CheckpointError(f"{path} holds no run config: load checkpoints written by optiloop train")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path}: its config must be a dict of sections, got {_type(cfg)}")
    for section in _SECTIONS:
        if not isinstance(cfg.get(section, {}), dict):
            raise CheckpointError(f"checkpoint {path}: config section {section!r} must be a dict, got "
                                  f"{_type(cfg[section])}")
    model = ckpt["model"]
    if not isinstance(model, dict):
        raise CheckpointError(f"checkpoint {path}: its model entry must be weights by name (a dict), got "
                              f"{_type(model)}")
    for key in ("model", "eval_model"):  # eval_model: an EMA / SWA average, where the run validated one
        weights = ckpt.get(key)
        if key == "eval_model" and weights is None:
            continue
        if not isinstance(weights, dict):
            raise CheckpointError(f"checkpoint {path}: its {key} entry must be weights by name (a dict), got "
                                  f"{_type(weights)}")
        bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"checkpoint {path}: {key} weights must be tensors by name; {bad[0]!r} is not")
    info = cfg.get("inference")
    if info is None:  # a run from before checkpoints carried it: rebuilt from the data
        return
    where = f"checkpoint {path}: config['inference']"
    _expect(info, dict, where)
    m = info.get("model")
    _expect(m, dict, f"{where}['model']")
    if "name" in m or ("import" not in m and "missing" not in m):  # optiloop train's model
        for key, kind in (("name", str), ("in_features", int), ("out_features", int), ("options", dict)):
            _expect(m.get(key), kind, f"{where}['model'][{key!r}]")
    # else fit(out=)'s recipe (an import path and its arguments, or why there is none): recipes.rebuild checks it
    p = info.get("preprocessing")
    if p is None and "name" not in m:  # fit(out=) on inputs that are not rows: load says so in one line
        return
    _expect(p, dict, f"{where}['preprocessing']")
    for key, kind in (("task", str), ("features", list), ("target", str), ("classes", list)):
        _expect(p.get(key), kind, f"{where}['preprocessing'][{key!r}]")
    if p["task"] not in ("classification", "regression"):
        raise CheckpointError(f"{where}: unknown task {p['task']!r}")
    for key in ("x_scaler", "y_scaler"):
        scaler = p.get(key)
        if scaler is None:
            continue
        _expect(scaler, dict, f"{where}['preprocessing'][{key!r}]")
        for part in ("mean", "scale", "var"):
            values = scaler.get(part)
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                raise CheckpointError(f"{where}['preprocessing'][{key!r}][{part!r}] must be a list of numbers")
        _expect(scaler.get("dtype"), str, f"{where}['preprocessing'][{key!r}]['dtype']")
    x = p.get("x_scaler")
    if x is not None and not len(x["mean"]) == len(p["features"]) == m["in_features"]:
        raise CheckpointError(f"{where}: {len(p['features'])} features, {len(x['mean'])} scaled, and a model "
                              f"of {m['in_features']} inputs")


def _expect(value: Any, kind: type, where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{where} must be a {kind.__name__}, got {_type(value)}")


def _named(value: Any, one: Any) -> list[Mapping[str, Any]] | None:
    """``[value]`` when it is one state (``one(value)``), its values when it is states by name, else None."""
    if isinstance(value, Mapping) and one(value):
        return [value]
    if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) and one(v) for v in value.values()):
        return list(value.values())
    return None
