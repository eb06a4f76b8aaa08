"""What the doctor saw while a script trained: plain Python records, no torch.

The recorder fills these in the watched process; the diagnosis, the report and the plot read them
(in the parent process of ``optiloop doctor``, which never imports torch). Every event carries a
``seq``: one counter shared by all kinds of event, so their order is known exactly.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FORMAT = 1  # doctor.json's "format": bumped when a field changes meaning


@dataclass
class OptimizerRecord:
    """One torch.optim optimizer and every step it took."""

    index: int
    cls: str
    site: str | None = None  # where the script built it ("train.py:31"); None if built before watching
    created_seq: int | None = None
    groups: int = 1
    step_seq: list[int] = field(default_factory=list)
    lrs: list[list[float]] = field(default_factory=list)  # per step: the LR of every param group
    stale: list[int] = field(default_factory=list)  # steps whose gradients were never cleared since the last step
    skipped: list[int] = field(default_factory=list)  # GradScaler.step calls that skipped the step (inf/NaN)
    schedule_free: bool = False  # keeps train / eval modes (the schedulefree package's optimizers)

    @property
    def steps(self) -> int:
        return len(self.step_seq)

    def attempts(self, after: int | None = None) -> list[int]:
        """Taken steps plus GradScaler-skipped ones: where the script meant to step."""
        seqs = sorted(self.step_seq + self.skipped)
        return seqs if after is None else [s for s in seqs if s > after]

    def label(self) -> str:
        return f"{self.cls} #{self.index + 1}" + (f" ({self.site})" if self.site else "")


@dataclass
class SchedulerRecord:
    """One torch.optim.lr_scheduler scheduler and every ``step()`` the script called on it."""

    index: int
    cls: str
    optimizer: int  # index of the optimizer it drives
    params: dict[str, Any] = field(default_factory=dict)  # its lengths and factors (step_size, T_max ...)
    site: str | None = None
    created_seq: int | None = None
    lr_at_creation: list[float] | None = None
    base_lrs: list[float] | None = None
    parent: int | None = None  # set for the parts of a SequentialLR / ChainedScheduler
    step_seq: list[int] = field(default_factory=list)
    step_arg: list[float | None] = field(default_factory=list)  # the metric (plateau) or epoch passed
    sites: dict[str, int] = field(default_factory=dict)  # call site of step() -> how many calls

    @property
    def steps(self) -> int:
        return len(self.step_seq)

    def describe(self) -> str:
        """``StepLR(step_size=30, gamma=0.1)``: the class and the arguments that shape it."""
        shown = {k: v for k, v in self.params.items() if k in _SHOWN}
        inner = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{self.cls}({inner})"

    def where(self) -> str:
        """The call site(s) of its step(), most used first."""
        ranked = sorted(self.sites.items(), key=lambda kv: -kv[1])
        return ", ".join(site for site, _ in ranked[:2])


_SHOWN = ("schedulers", "step_size", "milestones", "gamma", "T_max", "T_0", "T_mult", "total_steps", "total_iters",
          "start_factor", "end_factor", "power", "factor", "patience", "mode", "max_lr")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if v and len(set(v)) == 1 and not isinstance(v[0], int):  # one value for every param group
            return _short(v[0])
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


@dataclass
class LoaderRecord:
    """A data set iterated through DataLoaders: each iteration start is a candidate epoch."""

    index: int
    dataset: str  # "TensorDataset(1437)"
    length: int | None = None  # batches per pass (len of the DataLoader), when it has one
    iter_seq: list[int] = field(default_factory=list)


@dataclass
class SaveRecord:
    """One ``torch.save`` call and what it held."""

    seq: int
    path: str | None  # None for in-memory buffers
    holds: list[str]  # among "model", "optimizer", "scheduler", "scaler"


@dataclass
class ModeCheck:
    """Which schedule-free optimizers (that had stepped) were in train mode at a moment the
    evaluation point belongs: a pass over a data set starting ("iterate") or a ``torch.save``."""

    seq: int
    event: str  # "iterate" or "save"
    in_train: list[int]  # optimizer indices
    loader: int | None = None  # the data set iterated
    path: str | None = None  # the file saved


@dataclass
class LoadRecord:
    """One ``torch.load`` call: which file the script read back, and when."""

    seq: int
    path: str | None


@dataclass
class PlateauEvidence:
    """The value given to ``ReduceLROnPlateau.step`` next to the losses the script computed since
    the previous one, grouped by phase ("train": with gradients, before the epoch's last optimizer
    step; "eval": without gradients or after it) and by the data set being iterated."""

    scheduler: int
    seq: int
    metric: float
    groups: list[dict[str, Any]]  # {"phase", "loader", "n", "mean", "wmean", "last"}


@dataclass
class Timeline:
    """Everything recorded in one watched run."""

    script: str | None = None
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None
    error: str | None = None  # "ValueError: ..." when the script raised
    completed: bool = True  # False when the script raised or was interrupted: findings are "so far"
    torch_version: str | None = None
    optimizers: list[OptimizerRecord] = field(default_factory=list)
    schedulers: list[SchedulerRecord] = field(default_factory=list)
    loaders: list[LoaderRecord] = field(default_factory=list)
    saves: list[SaveRecord] = field(default_factory=list)
    plateau: list[PlateauEvidence] = field(default_factory=list)
    mode_checks: list[ModeCheck] = field(default_factory=list)  # only where a schedule-free optimizer exists
    loads: list[LoadRecord] = field(default_factory=list)
    zero_grad_calls: int = 0
    child_processes: int = 0  # started through multiprocessing (torch.multiprocessing.spawn ...), not followed

    # -- derived views ----------------------------------------------------------------------------
    def total_steps(self) -> int:
        return sum(o.steps for o in self.optimizers)

    def train_loader(self) -> LoaderRecord | None:
        """The data set whose iterations are followed by optimizer steps: the training data.

        An iteration "trains" when an optimizer steps after it starts and before any other
        iteration starts. The training set is the one whose iterations train most consistently
        (validation iterations are followed by the next epoch's iteration, not by steps); ties go
        to the one iterated first.
        """
        steps = sorted(s for o in self.optimizers for s in o.attempts())
        starts = sorted((q, ld.index) for ld in self.loaders for q in ld.iter_seq)
        if not steps or not starts:
            return None
        training = {ld.index: 0 for ld in self.loaders}
        for i, (q, idx) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else float("inf")
            if _any_between(steps, q, end):
                training[idx] += 1
        best = max(self.loaders, key=lambda ld: (training[ld.index] / len(ld.iter_seq),
                                                  training[ld.index], -ld.iter_seq[0]))
        return best if training[best.index] else None

    def epoch_starts(self) -> list[int]:
        """Seqs where training epochs began: iterations of the training data followed by steps."""
        loader = self.train_loader()
        if loader is None:
            return []
        steps = sorted(s for o in self.optimizers for s in o.attempts())
        starts = sorted(q for ld in self.loaders for q in ld.iter_seq)
        out = []
        for q in loader.iter_seq:
            i = bisect.bisect_right(starts, q)
            if _any_between(steps, q, starts[i] if i < len(starts) else float("inf")):
                out.append(q)
        return out

    def steps_per_epoch(self, opt: OptimizerRecord) -> list[int]:
        """Optimizer step attempts of ``opt`` in each training epoch."""
        starts = self.epoch_starts()
        attempts = opt.attempts()
        return [bisect.bisect_left(attempts, b) - bisect.bisect_right(attempts, a)
                for a, b in zip(starts, starts[1:] + [float("inf")], strict=True)]

    def trains(self, seq: int) -> bool:
        """A pass over a data set starting at ``seq`` is a training pass: an optimizer steps
        before the next pass (over any data set) starts."""
        steps = sorted(s for o in self.optimizers for s in o.attempts())
        starts = sorted(q for ld in self.loaders for q in ld.iter_seq)
        i = bisect.bisect_right(starts, seq)
        return _any_between(steps, seq, starts[i] if i < len(starts) else float("inf"))

    def epoch_of(self, seq: int) -> int | None:
        """1-based training epoch an event belongs to (None before the first epoch / unknown)."""
        return bisect.bisect_left(self.epoch_starts(), seq) or None

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        data = {k: v for k, v in data.items() if k != "format"}
        kinds = {"optimizers": OptimizerRecord, "schedulers": SchedulerRecord, "loaders": LoaderRecord,
                 "saves": SaveRecord, "plateau": PlateauEvidence, "mode_checks": ModeCheck,
                 "loads": LoadRecord}
        for key, kind in kinds.items():
            data[key] = [_build(kind, item) for item in data.get(key, [])]
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}})


def _build(kind, item: dict[str, Any]):
    return kind(**{k: v for k, v in item.items() if k in {f.name for f in fields(kind)}})


def _any_between(sorted_seqs: list[int], lo: float, hi: float) -> bool:
    i = bisect.bisect_right(sorted_seqs, lo)
    return i < len(sorted_seqs) and sorted_seqs[i] < hi


def median_int(values: list[int]) -> int:
    return int(statistics.median(values)) if values else 0
