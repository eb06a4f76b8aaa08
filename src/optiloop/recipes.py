"""How a model object can be built again in another process: its recipe, as plain data.

A run folder holds weights; applying them (``optiloop predict`` / ``eval``, ``ol.load``) needs the
module they fit. ``optiloop train`` records its model by name; a model handed to
``fit(out=...)`` is an object, so its recipe is worked out here:

- built by :func:`make_model` (``ol.make_model("package.module:function_or_class", **kwargs)``):
  exactly that import path and those keyword arguments;
- otherwise an instance of a class importable by path (not defined in ``__main__`` or inside a
  function): the class and, for each constructor argument, the simple value (numbers, strings,
  booleans, lists / dicts of them) the instance keeps under the same name (``self.hidden =
  hidden``); an argument it does not keep takes its default (listed as ``assumed_defaults``).

Either way the recipe is checked before training: the model it builds (on the ``meta`` device:
no memory, no RNG draw) must have the very weight names and shapes of the model trained. What
fails says in one line why (``missing``), and the folder still holds the weights.

Example:
    >>> import torch
    >>> recipe_of(torch.nn.Linear(3, 2))["import"]
    'torch.nn.modules.linear:Linear'
    >>> rebuild(recipe_of(torch.nn.Linear(3, 2)), "run")
    Linear(in_features=3, out_features=2, bias=True)
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .datasets import call_user_function, import_function, is_user_function
from .errors import OptiloopError

RECIPE_ATTR = "_optiloop_recipe"  # set on a model by make_model


def _simple(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_simple(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _simple(v) for k, v in value.items())
    return False


def _plain(value: Any) -> Any:
    """Tuples as lists: what a checkpoint (weights_only) and TOML hold."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def import_path(obj: Any) -> str | None:
    """``package.module:Name`` when another process can import ``obj`` by it, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname or "." in qualname:
        return None
    try:
        found = getattr(importlib.import_module(module), qualname, None)
    except Exception:  # noqa: BLE001 - any failure to import means: not importable by path
        return None
    return f"{module}:{qualname}" if found is obj else None


def make_model(spec: str | Callable[..., nn.Module], /, **kwargs: Any) -> nn.Module:
    """Build a model from ``package.module:function`` (or a class, or the function itself) and
    remember how, so a run folder written by ``fit(out=...)`` can rebuild it in another process
    (``optiloop predict`` / ``eval``, ``ol.load``).

    Args:
        spec: ``"package.module:name"`` of a function or class returning an ``nn.Module``, or
            that function / class itself (it must be importable by path to be rebuilt).
        kwargs: its keyword arguments; simple values (numbers, strings, booleans, lists and dicts
            of them) to be recorded.

    Example:
        >>> model = make_model("torch.nn:Linear", in_features=4, out_features=3)
        >>> recipe_of(model)
        {'import': 'torch.nn:Linear', 'kwargs': {'in_features': 4, 'out_features': 3}}
    """
    if isinstance(spec, str):
        if not is_user_function(spec):
            raise OptiloopError(f"make_model: give 'package.module:name', got {spec!r}")
        fn, path = import_function(spec, "model"), spec
    elif callable(spec):
        fn, path = spec, import_path(spec)
    else:
        raise OptiloopError(f"make_model: give 'package.module:name' or a function, got {type(spec).__name__}")
    model = call_user_function(fn, f"model {path or getattr(fn, '__qualname__', fn)!r}", **kwargs)
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model {path or spec!r} must return a torch.nn.Module, got {type(model).__name__}")
    if path is None:
        why = (f"it was built by {getattr(fn, '__qualname__', fn)!r}, which another process cannot import "
               "(a lambda, or defined in __main__ or inside a function)")
        object.__setattr__(model, RECIPE_ATTR, {"missing": why})
    elif not _simple(kwargs):
        bad = sorted(k for k, v in kwargs.items() if not _simple(v))
        object.__setattr__(model, RECIPE_ATTR, {"missing": f"its arguments {', '.join(bad)} are not plain values "
                                                           "(numbers, strings, lists) that a run folder can record"})
    else:
        object.__setattr__(model, RECIPE_ATTR, {"import": path, "kwargs": _plain(kwargs)})
    return model


def recipe_of(model: nn.Module) -> dict[str, Any]:
    """How to build ``model`` again: ``{"import": "pkg.mod:Name", "kwargs": {...}}`` (and
    ``assumed_defaults``: constructor arguments it does not keep), or ``{"missing": why}``.
    Not yet checked against the model's weights (see :func:`checked_recipe`)."""
    made = getattr(model, RECIPE_ATTR, None)
    if made is not None:
        return dict(made)
    cls = type(model)
    path = import_path(cls)
    if path is None:
        where = "__main__ (the script)" if cls.__module__ == "__main__" else "a place another process cannot import"
        return {"missing": f"its class {cls.__qualname__} is defined in {where}: move it into a module, or build "
                           "it with ol.make_model('package.module:function', ...)"}
    kwargs, assumed = {}, []
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if p.kind is p.VAR_POSITIONAL:
            return {"missing": f"{cls.__qualname__} is built from *{name} (modules, not plain values): build it "
                               "in a function and pass ol.make_model('package.module:function', ...)"}
        if p.kind is p.VAR_KEYWORD:
            continue
        value = getattr(model, name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and _simple(value):
            kwargs[name] = _plain(value)
        elif p.default is not inspect.Parameter.empty:
            assumed.append(name)
        else:
            return {"missing": f"{cls.__qualname__}'s argument {name!r} is not kept as a plain attribute of the same "
                               f"name: build it with ol.make_model({path!r}, {name}=...)"}
    out: dict[str, Any] = {"import": path, "kwargs": kwargs}
    if assumed:
        out["assumed_defaults"] = assumed
    return out


def checked_recipe(model: nn.Module) -> dict[str, Any]:
    """:func:`recipe_of`, kept only if what it builds has exactly ``model``'s weight names and
    shapes (built on the meta device, with every RNG left as it was)."""
    recipe = recipe_of(model)
    if "missing" in recipe:
        return recipe
    try:
        with _rng_untouched(), torch.device("meta"):
            again = _build(recipe)
    except OptiloopError as e:
        return {"missing": f"{recipe['import']} cannot be built again ({e})"}
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in again.state_dict().items()}
    if want != got:
        differ = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        return {"missing": f"{_call(recipe)} builds other weights than the model trained ({', '.join(differ[:4])}"
                           f"{' ...' if len(differ) > 4 else ''}): build it with ol.make_model(...)"}
    return recipe


def rebuild(recipe: Mapping[str, Any], where: Any) -> nn.Module:
    """The model a recipe describes, freshly built; a recipe that could not be made is one line
    saying why (``where``: the run folder or checkpoint, for the message)."""
    if "missing" in recipe:
        raise OptiloopError(f"{where}: the model cannot be rebuilt here: {recipe['missing']}. Its weights are in "
                            "the checkpoint (optiloop export writes them as a plain state_dict)")
    return _build(recipe)


def _build(recipe: Mapping[str, Any]) -> nn.Module:
    fn = import_function(recipe["import"], "model")
    model = call_user_function(fn, f"model {recipe['import']!r}", **recipe.get("kwargs", {}))
    if not isinstance(model, nn.Module):
        raise OptiloopError(f"model {recipe['import']!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def _call(recipe: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in recipe.get("kwargs", {}).items())
    return f"{recipe['import']}({args})"


class _rng_untouched:
    """Python's, numpy's and torch's generators as they were: checking a recipe must not move
    the run's random numbers (its initial weights and data order follow the seed)."""

    def __enter__(self):
        self._py, self._np = random.getstate(), np.random.get_state()
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)
        random.setstate(self._py)
        np.random.set_state(self._np)
