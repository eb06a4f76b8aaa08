"""Optimizers by name: name -> torch.optim class, weight-decay groups, fastest implementation.

We never reimplement an optimizer: every name maps to a torch.optim class and torch's own keyword
names pass through unchanged. What optiloop adds is the choice of implementation (fused, else
foreach), parameter groups that keep biases and norms out of decoupled weight decay, and the
Muon + AdamW pair that Muon needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import OptiloopError, choices

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adamax": torch.optim.Adamax,
    "adafactor": torch.optim.Adafactor,
    "muon": torch.optim.Muon,
}

# Optimizers whose weight decay is decoupled from the gradient (AdamW-style). Decaying a bias or a
# norm's scale there only shrinks it toward zero for no regularisation benefit, so by default
# those parameters go to a group with weight_decay=0. Adam/NAdam/RAdam join when asked to decouple.
_DECOUPLED = {"adamw", "adafactor", "muon"}
_MAY_DECOUPLE = {"adam", "nadam", "radam"}

# Keys optiloop sets itself; a user may still pass them to override.
_IMPL_KEYS = ("fused", "foreach")


def optimizer_defaults(name: str) -> dict[str, Any]:
    """torch's default hyperparameters for a registered optimizer, e.g. ``{"lr": 0.001, ...}``."""
    cls = _lookup(name)
    sig = inspect.signature(cls.__init__)
    skip = {"self", "params", "differentiable", "capturable", *_IMPL_KEYS}
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in skip and p.default is not inspect.Parameter.empty
    }


def _lookup(name: str) -> type[torch.optim.Optimizer]:
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptiloopError(f"unknown optimizer {name!r}; choose one of: {choices(OPTIMIZERS)}")
    return OPTIMIZERS[key]


def _accepted_keys(cls: type) -> set[str]:
    return {k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "params")}


def _check_kwargs(name: str, cls: type, kwargs: Mapping[str, Any]) -> None:
    unknown = set(kwargs) - _accepted_keys(cls)
    if unknown:
        raise OptiloopError(
            f"optimizer {name!r} does not take {choices(unknown)}; "
            f"it takes: {choices(_accepted_keys(cls) - {'differentiable'})}"
        )


def _named_params(model_or_params) -> list[tuple[str, nn.Parameter]]:
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


def _fast_impl(cls: type, device: torch.device, kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """The fastest implementation torch has for this class on this device."""
    if any(k in kwargs for k in _IMPL_KEYS):
        return {}  # the user chose
    keys = _accepted_keys(cls)
    if "fused" in keys and device.type in _FUSED_DEVICES.get(cls, ()):
        return {"fused": True}
    if "foreach" in keys:
        return {"foreach": True}
    return {}


# Devices where torch has a fused kernel for the class (torch does not expose this itself).
_FUSED_DEVICES = {
    torch.optim.Adam: ("cpu", "cuda", "mps"),
    torch.optim.AdamW: ("cpu", "cuda", "mps"),
    torch.optim.SGD: ("cpu", "cuda", "mps"),
    torch.optim.Adagrad: ("cpu",),
}


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
        **kwargs: torch's own keyword names (``lr``, ``momentum``, ``betas`` ...). For ``muon``,
            ``adamw=dict(...)`` configures the AdamW half (default: same ``lr``, torch defaults).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = ol.build_optimizer("sgd", torch.nn.Linear(4, 2), lr=0.1, momentum=0.9)
        >>> type(opt).__name__, opt.param_groups[0]["momentum"]
        ('SGD', 0.9)
    """
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
    cls = _lookup(name)
    named = _named_params(model_or_params)
    if not named:
        raise OptiloopError("the model has no trainable parameters")
    if name == "muon":
        return MuonWithAdamW(model_or_params, fast=fast, **kwargs)
    _check_kwargs(name, cls, kwargs)
    device = named[0][1].device
    if fast:
        kwargs.update(_fast_impl(cls, device, kwargs))
    decoupled = name in _DECOUPLED or (name in _MAY_DECOUPLE and kwargs.get("decoupled_weight_decay"))
    if decoupled and not decay_bias_and_norm:
        wd = kwargs.pop("weight_decay", optimizer_defaults(name).get("weight_decay", 0.0))
        params: Any = decay_groups(named, wd)
    else:
        params = [p for _, p in named]
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:  # torch's own range checks, one line
        raise OptiloopError(f"optimizer {name!r}: {str(e).strip().splitlines()[0]}") from None


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters for Muon: (2-D hidden weights, everything else).

    Muon orthogonalises 2-D weight updates; it is meant for hidden layers only. Embedding tables,
    the output head (the last Linear in module order), biases and norm weights go to AdamW.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = linears[-1].weight if linears else None
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    hidden, rest = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        is_hidden = p.ndim == 2 and p is not head and id(p) not in embeddings
        (hidden if is_hidden else rest).append(p)
    return hidden, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the 2-D hidden weights, AdamW on the rest, behind one Optimizer.

    ``param_groups`` is the Muon groups followed by the AdamW groups (the very same dicts), so an
    LR scheduler scales both halves together. ``step()`` steps Muon then AdamW; ``state_dict()`` is
    ``{"muon": ..., "adamw": ...}`` and ``load_state_dict`` restores both halves.
    """

    def __init__(self, model_or_params, *, fast: bool = True, adamw: Mapping | None = None, **kwargs):
        if isinstance(model_or_params, nn.Module):
            hidden, rest = muon_split(model_or_params)
        else:
            params = [p for p in model_or_params if p.requires_grad]
            hidden = [p for p in params if p.ndim == 2]
            rest = [p for p in params if p.ndim != 2]
        if not hidden:
            raise OptiloopError("muon found no 2-D hidden weights; use adamw for this model")
        _check_kwargs("muon", torch.optim.Muon, kwargs)
        adamw_kwargs = {"lr": kwargs.get("lr", optimizer_defaults("muon")["lr"]), **(adamw or {})}
        _check_kwargs("adamw", torch.optim.AdamW, adamw_kwargs)
        self.muon = torch.optim.Muon(hidden, **kwargs)
        self.adamw = None
        if rest and fast:
            adamw_kwargs.update(_fast_impl(torch.optim.AdamW, rest[0].device, adamw_kwargs))
        if rest:
            wd = adamw_kwargs.pop("weight_decay", 0.01)
            named = [("", p) for p in rest]
            self.adamw = torch.optim.AdamW(decay_groups(named, wd), **adamw_kwargs)
        # Muon's defaults (momentum ...) on the wrapper: schedulers such as OneCycleLR read them.
        super().__init__([{"params": hidden + rest}], dict(self.muon.defaults))
        self._link()

    def _parts(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    def _link(self) -> None:
        self.param_groups = [g for o in self._parts() for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._parts():
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        self._link()  # load_state_dict replaces the group dicts; re-share them
