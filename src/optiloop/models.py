"""Small built-in models for the command line, and user models as ``package.module:function``.

Every model is built by a function ``(in_features, out_features, **options) -> nn.Module``; the
options are the extra keys of the config's ``[model]`` section (for example ``hidden = [128, 64]``).
A user function has the same form: it receives ``in_features`` and ``out_features`` as keywords
plus every other key of ``[model]``.

Example:
    >>> from optiloop.models import build_model
    >>> build_model("mlp", 64, 10, hidden=[32], dropout=0.1)
    MLP(...)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .datasets import import_function, is_user_function
from .errors import OptiloopError, choices


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) per hidden size, then a Linear head."""

    def __repr__(self) -> str:  # keeps doctest output short and stable
        return "MLP(...)"


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (128,),
        dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron; ``hidden=[]`` is a linear model."""
    hidden = _positive_ints("model.hidden", hidden, allow_empty=True)
    _dropout(dropout)
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return MLP(*layers)


class CNN(nn.Module):
    """Conv(3x3) -> BatchNorm -> ReLU per channel size, max-pooling between blocks, global
    average pooling, Linear head. Rows of ``side * side`` pixels become (N, 1, side, side)."""

    def __init__(self, in_features: int, out_features: int, channels: Sequence[int],
                 dropout: float):
        super().__init__()
        self.side = math.isqrt(in_features)
        blocks: list[nn.Module] = []
        width, size = 1, self.side
        for i, c in enumerate(channels):
            blocks += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(channels) - 1 and size >= 4:  # 8x8 -> 4x4 -> 2x2: stop before 1x1
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            width = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(len(x), 1, self.side, self.side)))


def cnn(in_features: int, out_features: int, channels: Sequence[int] = (32, 64),
        dropout: float = 0.0) -> nn.Module:
    """A small conv net for square single-channel images given as flat rows (digits: 64 = 8x8)."""
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise OptiloopError(f"model 'cnn' needs square images as rows (e.g. 64 = 8x8 for digits); "
                            f"this data has {in_features} features: use model mlp")
    channels = _positive_ints("model.channels", channels, allow_empty=False)
    _dropout(dropout)
    return CNN(in_features, out_features, channels, dropout)


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}
DESCRIPTIONS = {
    "mlp": "multilayer perceptron: hidden = [128] (sizes), dropout = 0.0",
    "cnn": "small conv net for square images (digits 8x8): channels = [32, 64], dropout = 0.0",
}


def _positive_ints(key: str, value: Any, *, allow_empty: bool) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok or (not value and not allow_empty):
        raise OptiloopError(f"{key}: must be a list of positive integers, e.g. [128, 64] "
                            f"(got {value!r})")
    return list(value)


def _dropout(p: Any) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise OptiloopError(f"model.dropout: must be >= 0 and < 1 (got {p!r})")


def model_options(name: str) -> list[str]:
    """The keys a built-in model takes besides in_features / out_features."""
    sig = inspect.signature(MODELS[name])
    return [k for k in sig.parameters if k not in ("in_features", "out_features")]


def build_model(name: str, in_features: int, out_features: int, **options: Any) -> nn.Module:
    """Build a built-in model by name, or call a user's ``package.module:function``.

    Raises:
        OptiloopError: unknown name, an option the model does not take, or a bad value.
    """
    if name in MODELS:
        unknown = sorted(set(options) - set(model_options(name)))
        if unknown:
            raise OptiloopError(f"model.{unknown[0]}: model {name!r} does not take it; "
                                f"valid keys: name, {', '.join(model_options(name))}")
        return MODELS[name](in_features, out_features, **options)
    if is_user_function(name):
        fn = import_function(name, "model")
        try:
            model = fn(in_features=in_features, out_features=out_features, **options)
        except TypeError as e:
            raise OptiloopError(f"model {name!r}: {str(e).splitlines()[0]}") from None
        if not isinstance(model, nn.Module):
            raise OptiloopError(f"model {name!r} must return a torch.nn.Module, "
                                f"got {type(model).__name__}")
        return model
    raise OptiloopError(f"model.name: unknown model {name!r}; choose one of: {choices(MODELS)} "
                        "or package.module:function")
