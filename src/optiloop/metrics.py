"""Losses and metrics by name; metric accumulators that stay on the device.

Each metric adds a per-batch *sum* (a 0-d tensor, no host sync) and the sample count; an epoch's
value is sum / count, so a short last batch weighs exactly its size. ``MetricSet.compute`` reads
every accumulator in one transfer (and, under DDP, one all-reduce) per epoch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import OptiloopError, choices


def _match(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Shape a regression target like the output: (N,) vs (N, 1) must not broadcast to (N, N)."""
    if target.shape != output.shape and target.numel() == output.numel():
        return target.reshape(output.shape)
    return target


def _regression(fn):
    def loss(output, target):
        return fn(output, _match(output, target).to(output.dtype))

    loss.__name__ = fn.__name__
    return loss


def _bce(output, target):
    return F.binary_cross_entropy_with_logits(output, _match(output, target).to(output.dtype))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "bce": _bce,  # binary cross-entropy on logits
    "mse": _regression(F.mse_loss),
    "l1": _regression(F.l1_loss),
    "huber": _regression(F.huber_loss),
    "smooth_l1": _regression(F.smooth_l1_loss),
}


def get_loss(spec: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss by name, or any callable(output, target) -> scalar mean over the batch."""
    if callable(spec):
        return spec
    if spec not in LOSSES:
        raise OptiloopError(f"unknown loss {spec!r}; choose one of: {choices(LOSSES)} or a callable")
    return LOSSES[spec]


# --- metrics: each returns the batch *sum* over samples as a 0-d tensor -------------------------
def _predicted(output: torch.Tensor) -> torch.Tensor:
    if output.ndim == 1 or output.shape[-1] == 1:  # one logit: binary
        return (output.reshape(-1) > 0).long()
    return output.argmax(dim=-1)


def accuracy_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (_predicted(output) == target.reshape(-1).long()).sum()


def topk_sum(k: int) -> Callable:
    def topk(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        top = output.topk(min(k, output.shape[-1]), dim=-1).indices
        return (top == target.reshape(-1, 1)).any(dim=-1).sum()

    return topk


def _per_sample(err: torch.Tensor) -> torch.Tensor:
    return err.reshape(err.shape[0], -1).mean(dim=1).sum()


def mse_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _per_sample((output - _match(output, target)).square())


def mae_sum(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _per_sample((output - _match(output, target)).abs())


METRICS = {"accuracy": ("acc", accuracy_sum), "mse": ("mse", mse_sum), "mae": ("mae", mae_sum)}
_TOPK = re.compile(r"top(\d+)(_accuracy)?$")


def resolve_metric(spec: str | Callable) -> tuple[str, Callable]:
    """(log key, fn returning a batch sum). Callables return a batch *mean*, weighted by size."""
    if callable(spec):
        fn = spec

        def weighted(output, target):  # as_tensor: a callable may return a python float
            return torch.as_tensor(fn(output, target), device=output.device) * output.shape[0]

        return getattr(spec, "__name__", "metric"), weighted
    if spec in METRICS:
        return METRICS[spec]
    m = _TOPK.match(str(spec))
    if m:
        return f"top{m.group(1)}", topk_sum(int(m.group(1)))
    raise OptiloopError(
        f"unknown metric {spec!r}; choose one of: {choices(METRICS)}, top<k> (e.g. top5) or a callable"
    )


class MetricSet:
    """Mean loss plus named metrics for one phase ("train" or "val"), kept on the device.

    Per batch it only appends 0-d tensors to lists (no accumulation kernel, no sync); an epoch's
    figures are summed once, in one transfer. Keeping the per-batch losses also lets the loop name
    the first non-finite batch after the fact, and makes a partial epoch exactly resumable.

    Example:
        >>> import torch
        >>> ms = MetricSet(["accuracy"], torch.device("cpu"))
        >>> ms.update(torch.tensor(0.5), 3, torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]),
        ...           torch.tensor([0, 0, 0]))
        >>> ms.compute()
        {'loss': 0.5, 'acc': 0.6666666666666666}
    """

    def __init__(self, metrics: Sequence[str | Callable], device: torch.device):
        self.items = [resolve_metric(m) for m in metrics]
        keys = [k for k, _ in self.items]
        if len(set(keys)) != len(keys) or "loss" in keys:
            raise OptiloopError(f"metric names must be unique and not 'loss': {keys}")
        self.keys = ["loss", *keys]
        # fp64 sums keep long epochs exact; MPS has no fp64.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []  # per-batch mean loss
        self.sizes: list[int | torch.Tensor] = []  # per-batch count: ints known from shapes, or 0-d tensors
        self.sums: list[list[torch.Tensor]] = [[] for _ in self.items]  # per-batch metric sums

    @property
    def batches(self) -> int:
        return len(self.losses)

    def update(self, loss: torch.Tensor, count: int | torch.Tensor, outputs=None, targets=None) -> None:
        """Add one batch: its mean ``loss`` weighs ``count``. Nothing here syncs with the device."""
        self.losses.append(loss.detach())
        self.sizes.append(count)
        if self.items:
            if outputs is None:
                raise OptiloopError(f"metrics {', '.join(self.keys[1:])} need the step's outputs and targets; "
                                    "return ol.StepOutput(loss, outputs=..., targets=...) from step=")
            outputs = outputs.detach() if isinstance(outputs, torch.Tensor) else outputs
            for acc, (_, fn) in zip(self.sums, self.items, strict=True):
                acc.append(fn(outputs, targets))

    def _sizes(self) -> torch.Tensor:
        if all(type(s) is int for s in self.sizes):  # one small upload, no per-batch op
            return torch.tensor(self.sizes, dtype=self.dtype).to(self.device, non_blocking=True)
        return torch.stack([torch.as_tensor(s, device=self.device).to(self.dtype).reshape(()) for s in self.sizes])

    def totals(self) -> torch.Tensor:
        """[loss sum, metric sums..., count] in one device tensor: what one all-reduce needs."""
        if not self.sizes:
            return torch.zeros(len(self.keys) + 1, dtype=self.dtype, device=self.device)
        sizes = self._sizes()
        parts = [(torch.stack(self.losses).to(self.dtype) * sizes).sum()]
        parts += [torch.stack(acc).to(self.dtype).sum() for acc in self.sums]
        parts.append(sizes.sum())
        return torch.stack(parts)

    def compute(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """The phase's count-weighted means: one host transfer, after one optional all-reduce."""
        t = self.totals()
        if reduce is not None:
            t = reduce(t)
        *sums, count = t.tolist()  # the sync point: once per epoch (or per progress refresh)
        if count == 0:
            return {}
        return {k: s / count for k, s in zip(self.keys, sums, strict=True)}

    def first_nonfinite(self) -> int | None:
        """Index of the first batch whose loss is NaN/inf, or None (syncs; call on failure only)."""
        if not self.losses:
            return None
        bad = (~torch.isfinite(torch.stack(self.losses))).nonzero()
        return int(bad[0, 0]) if len(bad) else None

    def state_dict(self) -> dict:
        sizes = [s.cpu() if isinstance(s, torch.Tensor) else s for s in self.sizes]
        return {"losses": [t.cpu() for t in self.losses], "sizes": sizes,
                "sums": [[t.cpu() for t in acc] for acc in self.sums]}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [t.to(self.device) for t in state["losses"]]
        self.sizes = [s.to(self.device) if isinstance(s, torch.Tensor) else s for s in state["sizes"]]
        self.sums = [[t.to(self.device) for t in acc] for acc in state["sums"]]
