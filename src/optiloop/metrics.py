"""Losses and metrics by name; metric accumulators that stay on the device.

A named metric or a callable adds a per-batch *sum* (a 0-d tensor, no host sync) and the sample
count; an epoch's value is sum / count, so a short last batch weighs exactly its size (a
callable returns its batch *mean*: the epoch's value is the mean of batch means weighted by batch
size). ``MetricSet.compute`` reads every accumulator in one transfer (and, under DDP, one
all-reduce) per epoch. A torchmetrics ``Metric`` (F1, AUROC, R² ...) is updated per batch on the
device and computed once per epoch: its value is the epoch's own, not a mean of batch values.
"""

from __future__ import annotations

import copy
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence

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


# Elements (outputs + targets) held on the device for torchmetrics metrics before one update
# hands them over: 2**24 fp32 values are 64 MB.
HOLD_ELEMENTS = 1 << 24

METRICS = {"accuracy": ("acc", accuracy_sum), "mse": ("mse", mse_sum), "mae": ("mae", mae_sum)}
_TOPK = re.compile(r"top(\d+)(_accuracy)?$")

# torchmetrics class names (less Binary / Multiclass / Multilabel and "Score") -> log key
_CLASS_KEYS = {
    "accuracy": "acc", "f_beta": "fbeta", "mean_squared_error": "mse", "mean_absolute_error": "mae",
    "mean_squared_log_error": "msle", "mean_absolute_percentage_error": "mape", "jaccard_index": "iou",
    "mean_io_u": "miou", "matthews_corr_coef": "mcc", "cohen_kappa": "kappa", "pearson_corr_coef": "pearson",
    "spearman_corr_coef": "spearman", "hamming_distance": "hamming_distance",
}


def is_exact(spec: object) -> bool:
    """Whether ``spec`` is a torchmetrics ``Metric`` (checked without importing torchmetrics: a
    user holding one has imported it)."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(spec, tm.Metric)


def class_key(metric: object) -> str:
    """The log key of a torchmetrics metric, from its class: ``MulticlassF1Score`` -> ``f1``,
    ``BinaryAUROC`` -> ``auroc``, ``R2Score`` -> ``r2``, ``MulticlassAccuracy`` -> ``acc``.

    Example:
        >>> class MulticlassF1Score: ...
        >>> class MeanSquaredError: ...
        >>> class_key(MulticlassF1Score()), class_key(MeanSquaredError())
        ('f1', 'mse')
    """
    name = re.sub(r"^(Binary|Multiclass|Multilabel)", "", type(metric).__name__)
    name = re.sub(r"(?<=.)Score$", "", name)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return _CLASS_KEYS.get(snake, snake)


def resolve_metric(spec: str | Callable, key: str | None = None) -> tuple[str, Callable | torch.nn.Module]:
    """(log key, what computes it): a function returning a batch *sum*, or, for a torchmetrics
    ``Metric``, the metric itself (updated per batch, computed once per epoch). Callables return a
    batch *mean*, weighted here by the batch size. ``key`` names it instead of the default."""
    if is_exact(spec):
        return key or class_key(spec), spec
    if type(spec).__name__ == "MetricCollection":
        raise OptiloopError("a MetricCollection is not one metric; pass its metrics as a dict, "
                            "e.g. metrics={'f1': MulticlassF1Score(10), 'auroc': MulticlassAUROC(10)}")
    if callable(spec):
        fn = spec

        def weighted(output, target):  # as_tensor: a callable may return a python float
            return torch.as_tensor(fn(output, target), device=output.device) * output.shape[0]

        return key or getattr(spec, "__name__", "metric"), weighted
    if spec in METRICS:
        return key or METRICS[spec][0], METRICS[spec][1]
    m = _TOPK.match(str(spec))
    if m:
        return key or f"top{m.group(1)}", topk_sum(int(m.group(1)))
    raise OptiloopError(
        f"unknown metric {spec!r}; choose one of: {choices(METRICS)}, top<k> (e.g. top5), a callable "
        "or a torchmetrics Metric"
    )


Metrics = Sequence[str | Callable] | Mapping[str, str | Callable]


def resolve_metrics(metrics: Metrics) -> list[tuple[str, Callable | torch.nn.Module]]:
    """Every metric of a list (named by itself) or a dict (named by its keys), checked: keys are
    unique and none is ``loss``."""
    if isinstance(metrics, Mapping):
        items = [resolve_metric(spec, str(key)) for key, spec in metrics.items()]
    else:
        items = [resolve_metric(spec) for spec in metrics]
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys) or "loss" in keys:
        raise OptiloopError(f"metric names must be unique and not 'loss': {keys}; name them with a dict, "
                            "e.g. metrics={'f1_macro': ..., 'f1_micro': ...}")
    return items


def metric_keys(metrics: Metrics) -> list[str]:
    """The log keys of ``metrics`` (without ``train_`` / ``val_``), in order."""
    return [k for k, _ in resolve_metrics(metrics)]


class MetricSet:
    """Mean loss plus named metrics for one phase ("train" or "val"), kept on the device.

    Two kinds of metric:
        summed: names (accuracy, topk, mse, mae) and callables. Per batch a 0-d sum is appended
            (no accumulation kernel, no sync); the epoch's value is the sample-weighted mean,
            summed once, in one transfer (callables: the mean of batch means weighted by batch
            size, exact only for metrics that are means over samples).
        exact: torchmetrics ``Metric`` objects (a copy each, on the device): the batches' outputs
            wait on the device and are handed over in one ``update`` per ``HOLD_ELEMENTS`` (and
            at the epoch's end), so their value reads happen per chunk, not per step;
            ``compute`` once per epoch, so F1, AUROC or R² are the epoch's own values. Under DDP
            torchmetrics gathers every rank's state inside ``compute``, which every rank calls at
            the same point of the epoch. ``reset`` every epoch.
    Keeping the per-batch losses also lets the loop name the first non-finite batch after the
    fact, and makes a partial epoch exactly resumable (exact metrics' states included).

    Example:
        >>> import torch
        >>> ms = MetricSet(["accuracy"], torch.device("cpu"))
        >>> ms.update(torch.tensor(0.5), 3, torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]),
        ...           torch.tensor([0, 0, 0]))
        >>> ms.compute()
        {'loss': 0.5, 'acc': 0.6666666666666666}
    """

    def __init__(self, metrics: Metrics, device: torch.device):
        items = resolve_metrics(metrics)
        self.keys = ["loss", *(k for k, _ in items)]
        self.items = [(k, fn) for k, fn in items if not is_exact(fn)]  # summed
        self.exact = [(k, _copy_to(m, device)) for k, m in items if is_exact(m)]
        # fp64 sums keep long epochs exact; MPS has no fp64.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []  # per-batch mean loss
        self.sizes: list[int | torch.Tensor] = []  # per-batch count: ints known from shapes, or 0-d tensors
        self.sums: list[list[torch.Tensor]] = [[] for _ in self.items]  # per-batch metric sums
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []  # batches not yet handed to exact metrics
        self._held_elements = 0
        # The step's own values (StepOutput.logs): key -> (indices of the batches that gave it, values)
        self.logged: dict[str, tuple[list[int], list[torch.Tensor]]] = {}
        for _, m in self.exact:
            m.reset()

    @property
    def batches(self) -> int:
        return len(self.losses)

    def update(self, loss: torch.Tensor, count: int | torch.Tensor, outputs=None, targets=None,
               logs: Mapping[str, torch.Tensor | float] | None = None) -> None:
        """Add one batch: its mean ``loss`` (and each of the step's own ``logs``) weighs ``count``.
        Nothing here syncs with the device."""
        self.losses.append(loss.detach())
        self.sizes.append(count)
        if logs:
            self._log(logs)
        if self.items or self.exact:
            if outputs is None:
                raise OptiloopError(f"metrics {', '.join(self.keys[1:])} need the step's outputs and targets; "
                                    "return ol.StepOutput(loss, outputs=..., targets=...) from step=")
            outputs = outputs.detach() if isinstance(outputs, torch.Tensor) else outputs
            for acc, (_, fn) in zip(self.sums, self.items, strict=True):
                acc.append(fn(outputs, targets))
            if self.exact:
                self._hold(outputs, targets)

    def _log(self, logs: Mapping[str, torch.Tensor | float]) -> None:
        at = len(self.losses) - 1
        for key, value in logs.items():
            slot = self.logged.get(key)
            if slot is None:
                if key in self.keys or not isinstance(key, str) or not key:
                    raise OptiloopError(f"step log {key!r}: a log needs a name of its own, not one of the loop's "
                                        f"figures ({', '.join(self.keys)})")
                slot = self.logged[key] = ([], [])
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.detach().reshape(())
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = torch.tensor(float(value), device=self.device)
            else:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise OptiloopError(f"step log {key!r} must be one number (a scalar tensor or a float), got {shape}")
            slot[0].append(at)
            slot[1].append(value)

    def _hold(self, outputs, targets) -> None:
        """Keep the batch on the device for the exact metrics; hand the held batches over in one
        update per chunk (and at compute / state_dict). torchmetrics' updates read values back
        (AUROC checks whether outputs are probabilities, validation counts classes): per chunk,
        not per step."""
        if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
            for _, m in self.exact:
                m.update(outputs, targets)
            return
        targets = _match(outputs, targets)  # (N, 1) outputs vs (N,) targets, as for mse
        self._held.append((outputs, targets))
        self._held_elements += outputs.numel() + targets.numel()
        if self._held_elements >= HOLD_ELEMENTS:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._held:
            return
        held, self._held, self._held_elements = self._held, [], 0
        try:
            outputs, targets = torch.cat([o for o, _ in held]), torch.cat([t for _, t in held])
        except RuntimeError:  # batches of different trailing shapes (sequences): one update each
            for _, m in self.exact:
                for o, t in held:
                    m.update(o, t)
            return
        for _, m in self.exact:
            m.update(outputs, targets)

    def _sizes(self) -> torch.Tensor:
        if all(type(s) is int for s in self.sizes):  # one small upload, no per-batch op
            return torch.tensor(self.sizes, dtype=self.dtype).to(self.device, non_blocking=True)
        return torch.stack([torch.as_tensor(s, device=self.device).to(self.dtype).reshape(()) for s in self.sizes])

    def totals(self) -> torch.Tensor:
        """[loss sum, metric sums..., (log sum, log count) per step log..., count] in one device
        tensor: what one all-reduce needs."""
        if not self.sizes:
            return torch.zeros(len(self.items) + 2, dtype=self.dtype, device=self.device)
        sizes = self._sizes()
        parts = [(torch.stack(self.losses).to(self.dtype) * sizes).sum()]
        parts += [torch.stack(acc).to(self.dtype).sum() for acc in self.sums]
        for at, values in self.logged.values():
            weights = sizes if len(at) == len(self.sizes) else sizes[torch.tensor(at, device=self.device)]
            parts += [(torch.stack(values).to(self.dtype) * weights).sum(), weights.sum()]
        parts.append(sizes.sum())
        return torch.stack(parts)

    def compute(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                exact: bool = True) -> dict[str, float]:
        """The phase's figures: count-weighted means (one host transfer, after one optional
        all-reduce) and, with ``exact``, each torchmetrics metric's ``compute()`` (under DDP a
        collective: every rank must call this at the same point; ``exact=False`` for a
        progress read on one rank)."""
        t = self.totals()
        if reduce is not None:
            t = reduce(t)
        *sums, count = t.tolist()  # the sync point: once per epoch (or per progress refresh)
        if count == 0:
            return {}
        n = len(self.items) + 1
        values = {k: s / count for k, s in zip(["loss", *(k for k, _ in self.items)], sums[:n], strict=True)}
        logged = {k: (s / c if c else math.nan) for k, s, c in zip(self.logged, sums[n::2], sums[n + 1::2],
                                                                      strict=True)}
        if exact:
            self._hand_over()
            values.update({k: _number(k, m.compute()) for k, m in self.exact})
        return {**{k: values[k] for k in self.keys if k in values}, **logged}

    def first_nonfinite(self) -> int | None:
        """Index of the first batch whose loss is NaN/inf, or None (syncs; call on failure only)."""
        if not self.losses:
            return None
        bad = (~torch.isfinite(torch.stack(self.losses))).nonzero()
        return int(bad[0, 0]) if len(bad) else None

    def state_dict(self) -> dict:
        self._hand_over()
        sizes = [s.cpu() if isinstance(s, torch.Tensor) else s for s in self.sizes]
        return {"losses": [t.cpu() for t in self.losses], "sizes": sizes,
                "sums": [[t.cpu() for t in acc] for acc in self.sums],
                "exact": {k: _to_cpu(m.state_dict()) for k, m in self.exact},
                "logged": {k: {"at": list(at), "values": [t.cpu() for t in values]}
                           for k, (at, values) in self.logged.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.losses = [t.to(self.device) for t in state["losses"]]
        self.sizes = [s.to(self.device) if isinstance(s, torch.Tensor) else s for s in state["sizes"]]
        self.sums = [[t.to(self.device) for t in acc] for acc in state["sums"]]
        self.logged = {k: (list(v["at"]), [t.to(self.device) for t in v["values"]])
                       for k, v in state.get("logged", {}).items()}
        saved = state.get("exact", {})
        for k, m in self.exact:
            if k not in saved:
                raise OptiloopError(f"the checkpoint holds no state for metric {k!r}; resume with the metrics "
                                    "it was saved with")
            m.load_state_dict(saved[k])
            m.to(self.device)


def _copy_to(metric: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Our own copy of a torchmetrics metric (train and validation each keep one; the user's is
    untouched), on the device, with its states in its state_dict (mid-epoch checkpoints)."""
    m = copy.deepcopy(metric).to(device)
    m.persistent(True)
    m.reset()
    return m


def _to_cpu(state: Mapping) -> dict:
    def cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().cpu()
        if isinstance(v, list):
            return [cpu(x) for x in v]
        return v

    return {k: cpu(v) for k, v in state.items()}


def _number(key: str, value: object) -> float:
    """A torchmetrics result as one number; anything else is one line naming the metric."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise OptiloopError(f"metric {key!r} computed {shape}, not one number; build it to average to one value "
                        "(e.g. average='macro')")
