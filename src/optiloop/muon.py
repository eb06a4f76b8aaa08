"""Muon on the 2-D hidden weights and AdamW on the rest, behind one torch Optimizer.

Muon orthogonalises 2-D weight updates; it is meant for hidden layers only. ``build_optimizer("muon",
model)`` builds this pair; the split is :func:`muon_split`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .errors import OptiloopError
from .optim import check_kwargs, decay_groups, fast_impl, optimizer_defaults


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a model's parameters for Muon: (2-D hidden weights, everything else).

    Embedding tables, the output head (the last Linear in module order), biases and norm weights
    go to AdamW.

    Example:
        >>> import torch
        >>> hidden, rest = muon_split(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
        >>> [tuple(p.shape) for p in hidden], len(rest)
        ([(8, 4)], 3)
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
    ``{"muon": ..., "adamw": ...}`` and ``load_state_dict`` restores both halves. AdamW's biases
    and norm scales get no weight decay unless ``decay_bias_and_norm=True``.
    """

    def __init__(self, model_or_params, *, fast: bool = True, adamw: Mapping | None = None,
                 decay_bias_and_norm: bool = False, **kwargs):
        if isinstance(model_or_params, nn.Module):
            hidden, rest = muon_split(model_or_params)
        else:
            params = [p for p in model_or_params if p.requires_grad]
            hidden = [p for p in params if p.ndim == 2]
            rest = [p for p in params if p.ndim != 2]
        if not hidden:
            raise OptiloopError("muon found no 2-D hidden weights; use adamw for this model")
        check_kwargs("muon", torch.optim.Muon, kwargs)
        adamw_kwargs = {"lr": kwargs.get("lr", optimizer_defaults("muon")["lr"]), **(adamw or {})}
        check_kwargs("adamw", torch.optim.AdamW, adamw_kwargs)
        self.muon = torch.optim.Muon(hidden, **kwargs)
        self.adamw = None
        if rest and fast:
            adamw_kwargs.update(fast_impl("adamw", rest[0].device, adamw_kwargs))
        if rest:
            wd = adamw_kwargs.pop("weight_decay", 0.01)
            named = [("", p) for p in rest]
            groups = [{"params": rest, "weight_decay": wd}] if decay_bias_and_norm else decay_groups(named, wd)
            self.adamw = torch.optim.AdamW(groups, **adamw_kwargs)
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
