"""Small built-in models for the command line, and user models as ``package.module:function``.

Every model is built by a function ``(in_features, out_features, **options) -> nn.Module``; the
options are the extra keys of the config's ``[model]`` section (for example ``hidden = [128, 64]``).
A user function has the same form: it receives ``in_features`` and ``out_features`` as keywords
plus every other key of ``[model]``. The torch modules themselves live in ``optiloop.nets``, so
listing the names does not import torch.

Example:
    >>> from optiloop.models import build_model
    >>> build_model("mlp", 64, 10, hidden=[32], dropout=0.1)
    MLP(...)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .datasets import call_user_function, import_function, is_user_function
from .errors import OptiloopError, choices

if TYPE_CHECKING:
    from torch import nn


def mlp(in_features: int, out_features: int, hidden: Sequence[int] = (128,),
        dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron; ``hidden=[]`` is a linear model."""
    from torch import nn

    from .nets import MLP

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


def cnn(in_features: int, out_features: int, channels: Sequence[int] = (32, 64),
        dropout: float = 0.0) -> nn.Module:
    """A small conv net for square single-channel images given as flat rows (digits: 64 = 8x8)."""
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise OptiloopError(f"model 'cnn' needs square images as rows (e.g. 64 = 8x8 for digits); "
                            f"this data has {in_features} features: use model mlp")
    from .nets import CNN  # torch is imported when a model is built, not when names are listed

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
        try:
            return MODELS[name](in_features, out_features, **options)
        except (TypeError, ValueError, RuntimeError) as e:  # a wrong type or range for a model key
            raise OptiloopError(f"model {name!r}: {str(e).strip().splitlines()[0]}") from None
    if is_user_function(name):
        fn = import_function(name, "model")
        model = call_user_function(fn, f"model {name!r}", in_features=in_features, out_features=out_features,
                                   **options)
        from torch import nn  # torch: only when a model is built (list stays torch-free)

        if not isinstance(model, nn.Module):
            raise OptiloopError(f"model {name!r} must return a torch.nn.Module, "
                                f"got {type(model).__name__}")
        return model
    raise OptiloopError(f"model.name: unknown model {name!r}; choose one of: {choices(MODELS)} "
                        "or package.module:function")
