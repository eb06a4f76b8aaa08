"""Optimizers by name: one record per name, weight-decay groups, the fastest implementation.

We never reimplement an optimizer: every name maps to a torch.optim class and torch's own keyword
names pass through unchanged. What optiloop adds is the choice of implementation (fused, else
foreach), parameter groups that keep biases and norms out of decoupled weight decay, the Muon +
AdamW pair that Muon needs, and the defaults the command line starts from.

:data:`OPTIMIZERS` holds one :class:`OptimizerInfo` per name: everything optiloop knows about it.
Adding a name is adding a record here. torch is imported only when an optimizer is built, so
listing the names (``optiloop list``, ``--help``) costs nothing.

Two kinds of defaults, deliberately:
    ``build_optimizer("sgd", model)`` is torch's ``SGD`` with torch's defaults (lr 0.001, no
    momentum): the library never renames or re-tunes torch.
    The command line (``train``, ``compare``, ``lr-find``) starts from ``OptimizerInfo.defaults``
    (sgd: lr 0.1, momentum 0.9), written into each run's config.toml so it says what ran.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import OptiloopError, choices

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer name.

    Attributes:
        torch_class: the class in ``torch.optim`` (its keywords are the ones a user passes).
        description: one line for ``optiloop list``.
        defaults: the command line's defaults (train, compare and lr-find alike); keys not here
            keep torch's default. Every record names its ``lr``, so ``optiloop list`` shows it.
        decoupled: weight decay is decoupled from the gradient (AdamW-style) ...
        decoupled_switch: ... or becomes so when this keyword is True (Adam's
            ``decoupled_weight_decay``). Decaying a bias or a norm's scale there only shrinks it
            toward zero for no regularisation benefit, so those go to a group with weight_decay=0.
        fused_on: device types where torch has a fused kernel (torch does not expose this).
        builder: ``"module:Class"`` built as ``Class(model, fast=..., **kwargs)`` instead of
            ``torch_class(params, **kwargs)`` (Muon's pair needs the model's structure).
    """

    torch_class: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    decoupled: bool = False
    decoupled_switch: str | None = None
    fused_on: tuple[str, ...] = ()
    builder: str | None = None

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        """The torch.optim class (imports torch)."""
        import torch

        return getattr(torch.optim, self.torch_class)


OPTIMIZERS: dict[str, OptimizerInfo] = {
    # Learning rates that work on small, standardized problems (digits, wine ...) with batch size
    # 64: a comparison at one shared LR would only show which optimizer likes that LR. Plain SGD
    # without momentum is not the SGD anyone tunes.
    "sgd": OptimizerInfo("SGD", "stochastic gradient descent (momentum, nesterov)",
                         {"lr": 0.1, "momentum": 0.9}, fused_on=("cpu", "cuda", "mps")),
    "adam": OptimizerInfo("Adam", "Adam; decoupled_weight_decay=true makes it AdamW", {"lr": 1e-3},
                          decoupled_switch="decoupled_weight_decay", fused_on=("cpu", "cuda", "mps")),
    "adamw": OptimizerInfo("AdamW", "Adam with decoupled weight decay", {"lr": 1e-3, "weight_decay": 0.01},
                           decoupled=True, fused_on=("cpu", "cuda", "mps")),
    "rmsprop": OptimizerInfo("RMSprop", "running mean of squared gradients (momentum, centered)", {"lr": 1e-3}),
    "adagrad": OptimizerInfo("Adagrad", "per-parameter LR from the sum of squared gradients",
                             {"lr": 1e-2}, fused_on=("cpu",)),
    # The rest: torch's own LR, named here so the command line shows what it uses.
    "nadam": OptimizerInfo("NAdam", "Adam with Nesterov momentum", {"lr": 2e-3},
                           decoupled_switch="decoupled_weight_decay"),
    "radam": OptimizerInfo("RAdam", "rectified Adam (no warmup needed)", {"lr": 1e-3},
                           decoupled_switch="decoupled_weight_decay"),
    "adamax": OptimizerInfo("Adamax", "Adam with the infinity norm", {"lr": 2e-3}),
    "adafactor": OptimizerInfo("Adafactor", "factored second moments: little optimizer memory",
                               {"lr": 1e-2}, decoupled=True),
    "muon": OptimizerInfo("Muon", "Muon on 2-D hidden weights, AdamW on the rest", {"lr": 1e-3},
                          decoupled=True, builder="optiloop.muon:MuonWithAdamW"),
}

# Keys optiloop sets itself; a user may still pass them to override.
_IMPL_KEYS = ("fused", "foreach")


def lookup(name: str) -> OptimizerInfo:
    """The record of ``name`` (any case); an unknown name is one line listing the valid ones."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptiloopError(f"unknown optimizer {name!r}; choose one of: {choices(OPTIMIZERS)}")
    return OPTIMIZERS[key]


def optimizer_defaults(name: str) -> dict[str, Any]:
    """torch's default hyperparameters for a registered optimizer, e.g. ``{"lr": 0.001, ...}``.

    Example:
        >>> optimizer_defaults("sgd")["momentum"], OPTIMIZERS["sgd"].defaults["momentum"]
        (0, 0.9)
    """
    sig = inspect.signature(lookup(name).cls.__init__)
    skip = {"self", "params", "differentiable", "capturable", *_IMPL_KEYS}
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in skip and p.default is not inspect.Parameter.empty
    }


def _accepted_keys(cls: type) -> set[str]:
    return {k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "params")}


def check_kwargs(name: str, cls: type, kwargs: Mapping[str, Any]) -> None:
    """One line naming the keywords ``cls`` does not take, and the ones it does."""
    unknown = set(kwargs) - _accepted_keys(cls)
    if unknown:
        raise OptiloopError(
            f"optimizer {name!r} does not take {choices(unknown)}; "
            f"it takes: {choices(_accepted_keys(cls) - {'differentiable'})}"
        )


def _named_params(model_or_params) -> list[tuple[str, nn.Parameter]]:
    from torch import nn

    if isinstance(model_or_params, nn.Module):
        return [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    params = list(model_or_params)
    if params and isinstance(params[0], dict):
        raise OptiloopError("pass a model or a flat iterable of parameters, not param groups")
    return [(f"param{i}", p) for i, p in enumerate(params) if p.requires_grad]


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Split parameters: >=2-D weights decay; biases and norm scales (<=1-D) get weight_decay=0."""
    decay, no_decay = [], []
    for _, p in named:
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def fast_impl(name: str, device: torch.device, kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """The fastest implementation torch has for optimizer ``name`` on this device."""
    if any(k in kwargs for k in _IMPL_KEYS):
        return {}  # the user chose
    info = lookup(name)
    keys = _accepted_keys(info.cls)
    if "fused" in keys and device.type in info.fused_on:
        return {"fused": True}
    if "foreach" in keys:
        return {"foreach": True}
    return {}


def build_optimizer(
    spec: str | Mapping[str, Any] | torch.optim.Optimizer,
    model_or_params: nn.Module | Iterable[nn.Parameter],
    *,
    fast: bool = True,
    decay_bias_and_norm: bool = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build a torch.optim optimizer by name.

    Args:
        spec: a name (``"sgd"``, ``"adamw"``, ...), a dict ``{"name": "sgd", "momentum": 0.9}``,
            or an already built optimizer (returned unchanged).
        model_or_params: the model (preferred: Muon needs module structure) or its parameters.
        fast: use torch's fused implementation where it exists for the device, else foreach.
            ``False`` keeps torch's default. Passing ``fused=`` or ``foreach=`` also wins.
        decay_bias_and_norm: for decoupled-decay optimizers (AdamW, Adafactor, Muon, and Adam /
            NAdam / RAdam with ``decoupled_weight_decay=True``), biases and norm weights get no
            weight decay unless this is True.
        **kwargs: torch's own keyword names (``lr``, ``momentum``, ``betas`` ...); those not given
            keep torch's defaults. For ``muon``, ``adamw=dict(...)`` configures the AdamW half
            (default: same ``lr``, torch defaults).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = ol.build_optimizer("sgd", torch.nn.Linear(4, 2), lr=0.1, momentum=0.9)
        >>> type(opt).__name__, opt.param_groups[0]["momentum"]
        ('SGD', 0.9)
    """
    import torch

    if isinstance(spec, torch.optim.Optimizer):
        if kwargs:
            raise OptiloopError("a built optimizer takes no extra keywords; configure it directly")
        return spec
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: "not given", keep config's
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise OptiloopError(f"optimizer config needs a 'name'; choose one of: {choices(OPTIMIZERS)}")
        name = spec.pop("name")
        kwargs = {**spec, **kwargs}
    else:
        name = spec
    name = str(name).lower()
    info = lookup(name)
    named = _named_params(model_or_params)
    if not named:
        raise OptiloopError("the model has no trainable parameters")
    if info.builder is not None:
        module, _, cls_name = info.builder.partition(":")
        return getattr(importlib.import_module(module), cls_name)(model_or_params, fast=fast, **kwargs)
    cls = info.cls
    check_kwargs(name, cls, kwargs)
    device = named[0][1].device
    if fast:
        kwargs.update(fast_impl(name, device, kwargs))
    decoupled = info.decoupled or bool(info.decoupled_switch and kwargs.get(info.decoupled_switch))
    if decoupled and not decay_bias_and_norm:
        wd = kwargs.pop("weight_decay", optimizer_defaults(name).get("weight_decay", 0.0))
        params: Any = decay_groups(named, wd)
    else:
        params = [p for _, p in named]
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:  # torch's own range checks, one line
        raise OptiloopError(f"optimizer {name!r}: {str(e).strip().splitlines()[0]}") from None
