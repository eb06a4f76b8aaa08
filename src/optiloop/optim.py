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
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import OptiloopError, choices, did_you_mean

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
        unsharded_only: why it cannot step FSDP's sharded parameters (None: it can).
        module: the package holding ``torch_class`` when it is not ``torch.optim``: an optional
            engine, installed by ``pip install 'optiloop[<extra>]'``.
        extra: that optional extra's name.
        schedule_free: a schedule-free optimizer (train() / eval() modes the loop switches; no LR
            schedule but warmup: see optiloop.schedule_free).
    """

    torch_class: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    decoupled: bool = False
    decoupled_switch: str | None = None
    fused_on: tuple[str, ...] = ()
    builder: str | None = None
    unsharded_only: str | None = None
    module: str = "torch.optim"
    extra: str | None = None
    schedule_free: bool = False

    @property
    def cls(self) -> type[torch.optim.Optimizer]:
        """The optimizer class (imports torch, or the optional package that holds it)."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise OptiloopError(f"{self.module}.{self.torch_class} needs the {self.module} package: "
                                f"pip install 'optiloop[{self.extra}]'") from None
        return getattr(module, self.torch_class)


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
                          decoupled=True, builder="optiloop.muon:MuonWithAdamW",
                          unsharded_only="it orthogonalises whole matrices, and each rank holds a shard"),
    # Schedule-free (Defazio et al. 2024, the schedulefree package): no LR schedule, warmup only;
    # the loop switches their train / eval modes (optiloop.schedule_free). Their package's LRs.
    "adamw_schedulefree": OptimizerInfo(
        "AdamWScheduleFree", "schedule-free AdamW: no LR schedule (warmup_steps=); evaluates averaged weights",
        {"lr": 2.5e-3}, decoupled=True, module="schedulefree", extra="schedulefree", schedule_free=True,
        unsharded_only="its train / eval switch and BatchNorm pass are not written for sharded parameters"),
    "sgd_schedulefree": OptimizerInfo(
        "SGDScheduleFree", "schedule-free SGD with momentum: no LR schedule (warmup_steps=)",
        {"lr": 1.0}, module="schedulefree", extra="schedulefree", schedule_free=True,
        unsharded_only="its train / eval switch and BatchNorm pass are not written for sharded parameters"),
    "radam_schedulefree": OptimizerInfo(
        "RAdamScheduleFree", "schedule-free RAdam: no LR schedule and no warmup needed",
        {"lr": 2.5e-3}, decoupled=True, module="schedulefree", extra="schedulefree", schedule_free=True,
        unsharded_only="its train / eval switch and BatchNorm pass are not written for sharded parameters"),
}

# Keys optiloop sets itself; a user may still pass them to override.
_IMPL_KEYS = ("fused", "foreach")


def lookup(name: str) -> OptimizerInfo:
    """The record of ``name`` (any case); an unknown name is one line listing the valid ones."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptiloopError(f"unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS)}; choose one of: "
                            f"{choices(OPTIMIZERS)}")
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


# optiloop's own keys of an optimizer dict / config section, besides torch's keywords
OWN_KEYS = ("decay_bias_and_norm", "layer_decay", "blocks")


def check_kwargs(name: str, cls: type, kwargs: Mapping[str, Any]) -> None:
    """One line naming the keywords ``cls`` does not take (and the ones it does), or the first
    value of the wrong kind: a flag that is not true/false, a number that is not a finite one."""
    unknown = set(kwargs) - _accepted_keys(cls)
    if unknown:
        takes = (_accepted_keys(cls) - {"differentiable"}) | set(OWN_KEYS)
        hint = did_you_mean(next(iter(unknown)), takes) if len(unknown) == 1 else ""
        raise OptiloopError(f"optimizer {name!r} does not take {choices(unknown)}{hint}; it takes: {choices(takes)}")
    check_values(name, cls, kwargs)


def check_values(name: str, cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Each value has the kind of torch's default for that keyword (torch checks the ranges
    itself, but lets NaN, inf and True through)."""
    import torch

    sig = inspect.signature(cls.__init__).parameters
    for key, v in values.items():
        default = sig[key].default if key in sig else None
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise OptiloopError(f"optimizer {name!r}: {where}{key} must be true or false (got {v!r})")
        elif isinstance(default, (int, float)) and not isinstance(v, torch.Tensor):  # lr may be a tensor
            if not _finite(v):
                raise OptiloopError(f"optimizer {name!r}: {where}{key} must be a finite number (got {v!r})")
        elif isinstance(default, tuple) and all(isinstance(d, (int, float)) for d in default):  # betas
            if not (isinstance(v, (tuple, list)) and len(v) == len(default) and all(_finite(x) for x in v)):
                raise OptiloopError(f"optimizer {name!r}: {where}{key} must be {len(default)} finite numbers, "
                                    f"e.g. {list(default)} (got {v!r})")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _named_params(model_or_params) -> list[tuple[str, nn.Parameter]]:
    from torch import nn

    if isinstance(model_or_params, nn.Module):
        return [(n, p) for n, p in model_or_params.named_parameters() if p.requires_grad]
    return [(f"param{i}", p) for i, p in enumerate(model_or_params) if p.requires_grad]


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float | None,
                 options: Mapping[str, Any] | None = None) -> list[dict]:
    """Split parameters: >=2-D weights decay; biases and norm scales (<=1-D) get weight_decay=0.
    ``options`` (a group's own lr ...) go to both halves; ``weight_decay=None`` leaves the
    decaying half on the optimizer's default."""
    decay, no_decay = [], []
    for _, p in named:
        (decay if p.ndim >= 2 else no_decay).append(p)
    options = {k: v for k, v in (options or {}).items() if k not in ("params", "weight_decay")}
    decaying = {"params": decay, **options}
    if weight_decay is not None:
        decaying["weight_decay"] = weight_decay
    groups = [decaying, {"params": no_decay, **options, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def find_blocks(model: nn.Module, blocks: str | None = None) -> list[nn.Module]:
    """The model's sequence of blocks, for layer-wise LR decay: the ``nn.ModuleList`` /
    ``nn.Sequential`` named ``blocks`` (dotted, e.g. ``"encoder.layer"``), else the one with the
    most children holding parameters (a transformer's ``blocks`` / ``layers`` / ``h``; the model
    itself when it is a Sequential). Only children with parameters count as blocks.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> len(find_blocks(net))
        2
    """
    from torch import nn

    def holding(seq: nn.Module) -> list[nn.Module]:
        return [m for m in seq.children() if any(True for _ in m.parameters())]

    if blocks is not None:
        try:
            seq = model.get_submodule(blocks)
        except AttributeError:
            raise OptiloopError(f"layer_decay: the model has no module {blocks!r} (blocks=)") from None
        if not isinstance(seq, (nn.ModuleList, nn.Sequential)):
            raise OptiloopError(f"layer_decay: {blocks!r} is a {type(seq).__name__}, not an nn.ModuleList or "
                                "nn.Sequential of blocks")
        found = holding(seq)
    else:
        candidates = [holding(m) for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
        found = max(candidates, key=len, default=[])
    if len(found) < 2:
        raise OptiloopError("layer_decay needs the model's blocks: no nn.ModuleList or nn.Sequential of 2 or more "
                            "layers found; name it with blocks='encoder.layer'")
    return found


def layer_groups(model: nn.Module, layer_decay: float, blocks: str | None = None) -> list[tuple[float, list]]:
    """``(LR scale, named parameters)`` per layer for layer-wise LR decay (BEiT / timm): with ``L``
    blocks, parameters before the first block (embeddings) are layer 0, block ``i`` is layer
    ``i + 1``, parameters after the last (a head, a final norm) layer ``L + 1``; layer ``l``'s LR is
    scaled by ``layer_decay ** (L + 1 - l)``, so the head trains at the full LR and each block
    nearer the input at ``layer_decay`` times the next one's. Listed from the output down, so
    param group 0 (whose LR the History's ``lr`` shows) is the one nearest the set LR.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> [round(scale, 4) for scale, _ in layer_groups(net, 0.5)]
        [0.5, 0.25, 0.125]
    """
    found = find_blocks(model, blocks)
    where = {id(p): i + 1 for i, b in enumerate(found) for p in b.parameters()}
    n = len(found)
    layers: dict[int, list] = {}
    seen_block = False
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = where.get(id(p))
        if layer is None:
            layer = n + 1 if seen_block else 0
        else:
            seen_block = True
        layers.setdefault(layer, []).append((name, p))
    return [(layer_decay ** (n + 1 - layer), named) for layer, named in sorted(layers.items(), reverse=True)]


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


def _user_groups(model_or_params: Any) -> list[dict] | None:
    """The user's param groups (a list of dicts with ``params``), or None for a model / flat params."""
    from torch import nn

    if isinstance(model_or_params, (nn.Module, type(None))) or isinstance(model_or_params, Mapping):
        return None
    items = list(model_or_params)
    if not items or not isinstance(items[0], Mapping):
        return None
    if not all(isinstance(g, Mapping) and "params" in g for g in items):
        raise OptiloopError("param groups must each be a dict with 'params' (and its own lr, weight_decay ...)")
    out = []
    for g in items:
        params = g["params"]
        params = [params] if isinstance(params, nn.Parameter) else list(params)
        out.append({**g, "params": [p for p in params if p.requires_grad]})
    return out


def _check_same_parameters(opt: torch.optim.Optimizer, model_or_params: Any) -> None:
    """A built optimizer must train some of the model's parameters: one built on another model
    (or on a copy) would train nothing and still log a loss."""
    from torch import nn

    if not isinstance(model_or_params, nn.Module):
        return
    own = {id(p) for p in model_or_params.parameters()}
    if own and not any(id(p) in own for g in opt.param_groups for p in g["params"]):
        raise OptiloopError("the optimizer holds none of the model's parameters (built on another model, or on a "
                            "copy of it?); build it on this model's parameters, or pass its name")


def build_optimizer(
    spec: str | Mapping[str, Any] | torch.optim.Optimizer,
    model_or_params: nn.Module | Iterable[nn.Parameter] | Iterable[Mapping[str, Any]],
    *,
    fast: bool = True,
    decay_bias_and_norm: bool = False,
    layer_decay: float | None = None,
    blocks: str | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build a torch.optim optimizer by name.

    Args:
        spec: a name (``"sgd"``, ``"adamw"``, ...), a dict ``{"name": "sgd", "momentum": 0.9}``
            (it may also hold ``decay_bias_and_norm``, ``layer_decay`` and ``blocks``: that is how
            ``fit(optimizer=...)`` and a config's ``[optimizer]`` section reach them), or an
            already built optimizer (returned unchanged, after checking it trains this model).
        model_or_params: the model (preferred: Muon and ``layer_decay`` need its structure), its
            parameters, or param groups: a list of dicts ``{"params": ..., "lr": ...,
            "weight_decay": ...}`` with torch's per-group keys. Each group keeps its own values;
            the fused implementation and the bias / norm split apply inside every group.
        fast: use torch's fused implementation where it exists for the device, else foreach.
            ``False`` keeps torch's default. Passing ``fused=`` or ``foreach=`` also wins.
        decay_bias_and_norm: for decoupled-decay optimizers (AdamW, Adafactor, Muon, and Adam /
            NAdam / RAdam with ``decoupled_weight_decay=True``), biases and norm weights (every
            parameter of fewer than 2 dimensions) get no weight decay unless this is True.
        layer_decay: layer-wise LR decay for fine-tuning, e.g. 0.75: the head trains at ``lr``,
            the last block at ``0.75 * lr``, the one before at ``0.75**2 * lr`` ... down to the
            embeddings (see ``layer_groups``); needs a model.
        blocks: the dotted name of the model's ``nn.ModuleList`` of blocks for ``layer_decay``
            (default: found, see ``find_blocks``).
        **kwargs: torch's own keyword names (``lr``, ``momentum``, ``betas`` ...); those not given
            keep torch's defaults. For ``muon``, ``adamw=dict(...)`` configures the AdamW half
            (default: same ``lr``, torch defaults).

    Example:
        >>> import torch, optiloop as ol
        >>> opt = ol.build_optimizer("sgd", torch.nn.Linear(4, 2), lr=0.1, momentum=0.9)
        >>> type(opt).__name__, opt.param_groups[0]["momentum"]
        ('SGD', 0.9)
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> opt = ol.build_optimizer("adamw", [{"params": net[0].parameters(), "lr": 1e-4},
        ...                                    {"params": net[1].parameters()}], lr=1e-3)
        >>> [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
        [(0.0001, 0.01), (0.0001, 0.0), (0.001, 0.01), (0.001, 0.0)]
    """
    import torch

    if isinstance(spec, torch.optim.Optimizer):
        if kwargs or layer_decay is not None or decay_bias_and_norm:
            raise OptiloopError("a built optimizer takes no extra keywords; configure it directly")
        _check_same_parameters(spec, model_or_params)
        return spec
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: "not given", keep config's
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if "name" not in spec:
            raise OptiloopError(f"optimizer config needs a 'name'; choose one of: {choices(OPTIMIZERS)}")
        name = spec.pop("name")
        decay_bias_and_norm = spec.pop("decay_bias_and_norm", decay_bias_and_norm)
        layer_decay = spec.pop("layer_decay", layer_decay)
        blocks = spec.pop("blocks", blocks)
        kwargs = {**spec, **kwargs}
    else:
        name = spec
    name = str(name).lower()
    info = lookup(name)
    if not isinstance(model_or_params, torch.nn.Module):
        model_or_params = list(model_or_params)  # a generator (model.parameters()) is read once
    if not isinstance(decay_bias_and_norm, bool):
        raise OptiloopError(f"optimizer {name!r}: decay_bias_and_norm must be true or false "
                            f"(got {decay_bias_and_norm!r})")
    if layer_decay is not None and not (_finite(layer_decay) and 0 < layer_decay <= 1):
        raise OptiloopError(f"optimizer {name!r}: layer_decay must be a finite number in (0, 1] (got {layer_decay!r})")
    if blocks is not None and layer_decay is None:
        raise OptiloopError(f"optimizer {name!r}: blocks= names the blocks for layer_decay; set layer_decay too")
    groups = _user_groups(model_or_params)
    if layer_decay is not None and not isinstance(model_or_params, torch.nn.Module):
        raise OptiloopError(f"optimizer {name!r}: layer_decay needs the model itself, not its parameters or groups")
    if info.builder is not None:
        if groups is not None or layer_decay is not None:
            raise OptiloopError(f"optimizer {name!r} splits the model itself; it takes no param groups or "
                                "layer_decay")
        module, _, cls_name = info.builder.partition(":")
        return getattr(importlib.import_module(module), cls_name)(
            model_or_params, fast=fast, decay_bias_and_norm=decay_bias_and_norm, **kwargs)
    cls = info.cls
    check_kwargs(name, cls, kwargs)
    if groups is None:
        named = _named_params(model_or_params)
        if layer_decay is not None:
            base = kwargs.get("lr", optimizer_defaults(name)["lr"])
            groups = [{"params": [p for _, p in part], "lr": base * scale}
                      for scale, part in layer_groups(model_or_params, layer_decay, blocks)]
        else:
            groups = [{"params": [p for _, p in named]}]
    for i, g in enumerate(groups):
        check_values(name, cls, {k: v for k, v in g.items() if k != "params"}, where=f"param group {i}: ")
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise OptiloopError("the model has no trainable parameters")
    if fast:
        kwargs.update(fast_impl(name, groups[0]["params"][0].device, kwargs))
    decoupled = info.decoupled or bool(info.decoupled_switch and kwargs.get(info.decoupled_switch))
    if decoupled and not decay_bias_and_norm:
        # Inside every group: its >=2-D weights decay at the group's (or the optimizer's) rate,
        # its biases and norm scales not at all.
        wd = kwargs.pop("weight_decay", optimizer_defaults(name).get("weight_decay", 0.0))
        params: Any = [part for g in groups
                       for part in decay_groups([("", p) for p in g["params"]], g.get("weight_decay", wd), g)]
    else:
        params = groups
    try:
        return cls(params, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:  # torch's own range checks, one line
        raise OptiloopError(f"optimizer {name!r}: {str(e).strip().splitlines()[0]}") from None
