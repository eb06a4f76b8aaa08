"""The diagnosis: rules over a Timeline, each finding one or two lines with the run's own numbers.

The notes' central lesson is *when* each part steps: the optimizer after every backward, an
epoch-based scheduler once per epoch after validation, OneCycleLR after every optimizer step,
ReduceLROnPlateau with the validation metric. Each rule below checks one way a script breaks
that, from what was recorded (no torch here), and is tuned to say nothing on correct scripts:
a rule fires only on evidence that a correct script cannot produce (see docs/doctor.md for every
threshold and why).

Example:
    >>> from optiloop.doctor.rules import diagnose
    >>> from optiloop.doctor.timeline import OptimizerRecord, Timeline
    >>> opt = OptimizerRecord(index=0, cls="SGD", step_seq=[1, 3, 5], lrs=[[0.1]] * 3, stale=[3, 5])
    >>> [f.rule for f in diagnose(Timeline(optimizers=[opt], zero_grad_calls=0))]
    ['zero-grad-missing']
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..intervals import classes_stepped_per
from .timeline import OptimizerRecord, SchedulerRecord, Timeline, median_int

# When each torch scheduler class is meant to step: the loop's own table (optiloop.intervals).
EPOCH_BASED = classes_stepped_per("epoch")  # lengths torch documents in epochs
STEP_BASED = classes_stepped_per("step")  # meant to step after every optimizer step
(PLATEAU,) = classes_stepped_per("metric")

# Thresholds (docs/doctor.md explains each).
PER_STEP_MIN_RATIO = 0.8  # scheduler steps / optimizer steps at or above this: stepped once per optimizer step
MICRO_MIN_RATIO = 1.8  # at or above: several scheduler steps per optimizer step (once per micro-batch)
# An epoch-based schedule stepped per batch must have run through its length this many times
# (StepLR: dropped 5 times; the others: used up in the first third of the run) ...
MIN_PERIODS = {"StepLR": 5, "ExponentialLR": 5}
MIN_PERIODS_DEFAULT = 3
MIN_PERIODS_NO_EPOCHS = 10  # ... and this many when epochs cannot be seen (no DataLoader)
# Schedules whose length must also be at most the number of epochs run to count as "in epochs":
# a per-step use with a short length is plausible for them (SGDR restarts, a short decay).
LENGTH_IN_EPOCHS_ONLY = ("CosineAnnealingWarmRestarts", "LinearLR", "PolynomialLR")
MATCH_RTOL = 1e-3  # a plateau metric "is" a loss aggregate when they agree this closely
ZERO_LR = 1e-8  # an LR at or below this fraction of the group's peak counts as 0


@dataclass(frozen=True)
class Finding:
    """One problem: what happened (with the run's numbers), the rule it breaks, the fix."""

    rule: str
    message: str
    why: str
    fix: str
    optimizer: int | None = None  # the optimizer whose LR it explains, if any

    def text(self) -> str:
        return f"{self.message}\nrule: {self.why}. fix: {self.fix}."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -------------------------------------------------------------------------------------------------
# what the rules share
# -------------------------------------------------------------------------------------------------
class Run:
    """A Timeline plus what every rule needs from it, computed once."""

    def __init__(self, tl: Timeline):
        self.tl = tl
        self.starts = tl.epoch_starts()
        self.epochs = len(self.starts)
        loader = tl.train_loader() if self.starts else None
        self.train_loader = loader.index if loader is not None else None

    def epoch(self, seq: int) -> int | None:
        return bisect.bisect_left(self.starts, seq) or None

    def steps_per_epoch(self, opt: OptimizerRecord) -> int:
        counts = self.tl.steps_per_epoch(opt)
        full = counts[:-1] if len(counts) > 1 else counts  # the last epoch may be cut short
        return median_int([c for c in full if c])

    def opt(self, s: SchedulerRecord) -> OptimizerRecord | None:
        return self.tl.optimizers[s.optimizer] if 0 <= s.optimizer < len(self.tl.optimizers) else None

    def attempts(self, s: SchedulerRecord) -> list[int]:
        """Its optimizer's step attempts since the scheduler was built."""
        o = self.opt(s)
        return o.attempts(after=s.created_seq) if o is not None else []

    def lr_series(self, s: SchedulerRecord, group: int = 0) -> list[float]:
        """The LR of one param group at each step its optimizer took since the scheduler was built."""
        o = self.opt(s)
        if o is None:
            return []
        first = bisect.bisect_right(o.step_seq, s.created_seq) if s.created_seq is not None else 0
        return [lrs[group] for lrs in o.lrs[first:] if group < len(lrs)]

    def cadence(self, s: SchedulerRecord) -> str:
        """How often the script stepped it: never, micro (several per optimizer step), step, epoch, other."""
        n, m = s.steps, len(self.attempts(s))
        if n == 0:
            return "never"
        if m == 0:
            return "other"
        ratio = n / m
        if m >= 2 and ratio >= MICRO_MIN_RATIO:
            return "micro"
        if ratio >= PER_STEP_MIN_RATIO and m >= 4 and (self.epochs == 0 or n > 1.5 * self.epochs):
            return "step"
        if self.epochs and n <= 1.5 * self.epochs + 1:
            return "epoch"
        return "other"

    def top_level(self) -> list[SchedulerRecord]:
        return [s for s in self.tl.schedulers if s.parent is None]

    def in_epochs(self) -> str:
        return f" in {_plural(self.epochs, 'epoch')}" if self.epochs else ""


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _lr(x: float) -> str:
    return f"{x:.3g}" if x != 0 else "0"


def _at(s: SchedulerRecord) -> str:
    return f", at {s.where()}" if s.sites else ""


def _close(a: float, b: float | None) -> bool:
    return b is not None and abs(a - b) <= MATCH_RTOL * max(abs(a), abs(b)) + 1e-12


# -------------------------------------------------------------------------------------------------
# the rules
# -------------------------------------------------------------------------------------------------
def optimizer_never_stepped(run: Run) -> Iterable[Finding]:
    tl = run.tl
    if not tl.completed or not tl.optimizers or any(o.attempts() for o in tl.optimizers):
        return
    o = tl.optimizers[0]
    z = f" although zero_grad() ran {tl.zero_grad_calls:,} times" if tl.zero_grad_calls else ""
    yield Finding(
        "optimizer-never-stepped",
        f"{o.label()} was built but optimizer.step() was never called{run.in_epochs()}{z}: "
        "the weights never changed",
        "the optimizer changes the weights only in step(), once per batch after loss.backward()",
        "call optimizer.step() right after loss.backward() in the batch loop")


def scheduler_wrong_optimizer(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        if s.steps == 0 or run.attempts(s):
            continue
        others = [o for o in run.tl.optimizers if o.index != s.optimizer and o.attempts(after=s.created_seq)]
        if not others:
            continue
        other = max(others, key=lambda o: o.steps)
        own = run.opt(s)
        lrs = {lrs[0] for lrs in other.lrs}
        kept = f" and its LR stayed at {_lr(other.lrs[0][0])} throughout" if len(lrs) == 1 and other.lrs else ""
        yield Finding(
            "scheduler-wrong-optimizer",
            f"{s.describe()} was stepped {s.steps:,} times but drives {own.label() if own else 'an optimizer'}, "
            f"which never stepped; the optimizer that trained, {other.label()}, took "
            f"{_plural(other.steps, 'step')}{kept}",
            "a scheduler sets the LR of the optimizer it was built on, and only that one",
            "build the scheduler on the optimizer you step, after creating that optimizer")


def scheduler_never_stepped(run: Run) -> Iterable[Finding]:
    if not run.tl.completed:
        return
    for s in run.top_level():
        m = len(run.attempts(s))
        if s.steps or not m:
            continue
        lr = run.lr_series(s)
        stayed = f": the LR stayed at {_lr(lr[0])} for all {m:,} optimizer steps" if lr and len(set(lr)) == 1 else ""
        yield Finding(
            "scheduler-never-stepped",
            f"{s.describe()} was built" + (f" ({s.site})" if s.site else "") + f" but never stepped{stayed}",
            "a scheduler changes the LR only when its step() is called", _where_to_step(s))


def epoch_scheduler_per_step(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        if s.cls not in EPOCH_BASED or run.cadence(s) != "step" or _given_epochs(s):
            continue
        length = _length(s)
        o = run.opt(s)
        if not length or o is None:
            continue
        spe = run.steps_per_epoch(o) if run.epochs else 0
        if run.epochs:
            # its length looks like epochs: shorter than one epoch's batches, or no more than the epochs run
            in_epochs = length <= run.epochs if s.cls in LENGTH_IN_EPOCHS_ONLY else (
                length < spe or length <= run.epochs)
            if not in_epochs or s.steps < MIN_PERIODS.get(s.cls, MIN_PERIODS_DEFAULT) * length:
                continue
        elif s.steps < MIN_PERIODS_NO_EPOCHS * length:
            continue
        lrs = run.lr_series(s)
        if not lrs or not _shape_ok(s, lrs):
            continue
        per = f" ({spe:,} per epoch)" if spe else ""
        yield Finding(
            "epoch-scheduler-per-step",
            f"{s.describe()} was stepped {s.steps:,} times{run.in_epochs()} — once per optimizer step{per}"
            f"{_at(s)} — so {_per_step_effect(s, length, lrs)}",
            f"{s.cls} counts epochs: step it once per epoch, after validation",
            "move scheduler.step() out of the batch loop, to after validation (or give its lengths in "
            "optimizer steps)", s.optimizer)


def step_scheduler_per_epoch(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        if s.cls not in STEP_BASED:
            continue
        n, m = s.steps, len(run.attempts(s))
        if n == 0 or m < 4 or n > 0.5 * m:
            continue
        total = s.params.get("total_steps") or s.params.get("cycle_steps")
        if not total or n >= total - 1:
            continue  # its whole cycle was counted in the unit it was stepped in
        lrs = run.lr_series(s)
        how = "once per epoch" if run.cadence(s) == "epoch" else "far less often than the optimizer"
        warm = s.params.get("warmup_steps")
        peak = s.params.get("max_lr")
        if s.cls == "OneCycleLR" and warm and n < warm and lrs and peak:
            effect = (f"the LR never left warmup: it rose only to {_lr(max(lrs))}, "
                      f"{100 * max(lrs) / peak[0]:.0f}% of max_lr {_lr(peak[0])}")
        else:
            effect = f"it went through only {n:,} of its {total:,} steps" + (
                f" and the LR ended at {_lr(lrs[-1])}" if lrs else "")
        yield Finding(
            "step-scheduler-per-epoch",
            f"{s.describe()} was stepped {n:,} times{run.in_epochs()} ({m:,} optimizer steps) — {how}{_at(s)} — "
            f"so {effect}",
            f"{s.cls} counts optimizer steps (total_steps = epochs × batches per epoch): step it after every "
            "optimizer.step()",
            "call scheduler.step() right after optimizer.step(), inside the batch loop", s.optimizer)


def scheduler_per_micro_batch(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        if s.cls == PLATEAU or run.cadence(s) != "micro" or _given_epochs(s):
            continue
        m = len(run.attempts(s))
        k = round(s.steps / m)
        length = _length(s)
        detail = ""
        if s.cls in ("CosineAnnealingLR", "LinearLR", "PolynomialLR") and length:
            detail = f": its length of {length:,} was used up by optimizer step {math.ceil(length / k):,}"
        elif s.cls == "OneCycleLR" and length:
            detail = f": its {length:,}-step cycle was used up by optimizer step {math.ceil(length / k):,}"
        elif s.cls == "StepLR" and length:
            detail = f": the LR fell ×{s.params.get('gamma', 0.1):g} every {length / k:.3g} optimizer steps"
        counts_epochs = s.cls in EPOCH_BASED and length and run.epochs and length <= run.epochs
        epochs = " (or once per epoch: its lengths count epochs)" if counts_epochs else ""
        yield Finding(
            "scheduler-per-micro-batch",
            f"{s.describe()} was stepped {s.steps:,} times for {m:,} optimizer steps — {k} times per optimizer "
            f"step, once per micro-batch of a {k}-batch gradient accumulation{_at(s)} — so its schedule ran "
            f"{k}× too fast{detail}",
            "under gradient accumulation a schedule counts optimizer steps, not micro-batches",
            "call scheduler.step() only where optimizer.step() runs, inside the accumulation block" + epochs,
            s.optimizer)


def plateau_fed_training_loss(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        if s.cls != PLATEAU:
            continue
        evidence = [e for e in run.tl.plateau if e.scheduler == s.index]
        if not evidence:
            continue
        verdicts = [plateau_verdict(run, e) for e in evidence]
        train = [(e, v) for e, v in zip(evidence, verdicts, strict=True) if v[0] == "train"]
        if any(v[0] == "val" for v in verdicts) or len(train) < max(1, math.ceil(len(evidence) / 2)):
            continue
        e, (_, what, val) = train[-1]
        epoch = run.epoch(e.seq)
        when = f"epoch {epoch}: " if epoch else ""
        vs = f", while the validation loss was {val:.4g}" if val is not None else ""
        yield Finding(
            "plateau-training-loss",
            f"ReduceLROnPlateau was fed the training loss: at {len(train)} of its {len(evidence)} steps "
            f"({s.where()}) the value passed was {what} ({when}{e.metric:.4g}{vs})",
            "ReduceLROnPlateau watches the validation metric; the training loss keeps falling, so the "
            "plateau that should cut the LR goes unseen",
            "pass the validation loss after validation: scheduler.step(val_loss)")


def warmup_never_ends(run: Run) -> Iterable[Finding]:
    if not run.tl.completed:
        return
    for s in run.top_level():
        if s.cls in STEP_BASED or s.cls == PLATEAU or s.steps == 0 or not s.base_lrs:
            continue
        for g, base in enumerate(s.base_lrs):
            lrs = run.lr_series(s, g)
            if len(lrs) < 3 or base <= 0:
                continue
            rising = all(b >= a * (1 - 1e-9) for a, b in zip(lrs, lrs[1:], strict=False))
            if not (rising and lrs[-1] > lrs[0] * 1.01 and lrs[-1] < 0.99 * base):
                continue
            how = ", once per epoch" if run.cadence(s) == "epoch" else ""
            total = _length(s)
            length = f" (its length: {total:,})" if total and s.cls in ("LinearLR", "ConstantLR") else ""
            group = f" of param group {g}" if len(s.base_lrs) > 1 else ""
            yield Finding(
                "warmup-never-ends",
                f"{s.describe()}'s warmup never ended: stepped {s.steps:,} times{how}{length}, it raised the "
                f"LR{group} from {_lr(lrs[0])} to {_lr(lrs[-1])} over {len(lrs):,} optimizer steps"
                f"{run.in_epochs()} — {100 * lrs[-1] / base:.0f}% of the base LR {_lr(base)}",
                "a warmup's length counts what you step it by: optimizer steps when stepped per batch, epochs "
                "when stepped per epoch",
                "step the warmup after every optimizer.step() (or give its length in epochs) so it ends early "
                "in the run", s.optimizer)
            break


def cosine_past_t_max(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        t_max = s.params.get("T_max")
        if s.cls != "CosineAnnealingLR" or not t_max or run.cadence(s) != "epoch" or s.steps < t_max + 2 \
                or _given_epochs(s):
            continue
        lrs = run.lr_series(s)
        if not lrs:
            continue
        low = min(lrs)
        yield Finding(
            "cosine-past-t-max",
            f"{s.describe()} was stepped {s.steps:,} times, once per epoch{_at(s)}, so after epoch {t_max} the "
            f"cosine turned back up: the LR climbed from {_lr(low)} to {_lr(lrs[-1])}",
            "T_max is the run's length in the unit you step by (epochs here); past it the cosine rises again",
            "set T_max to the number of epochs (CosineAnnealingWarmRestarts if you want restarts)", s.optimizer)


def scheduler_before_optimizer(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        attempts = run.attempts(s)
        if s.steps == 0 or not attempts or s.cls == PLATEAU or run.cadence(s) == "micro":
            continue
        early = bisect.bisect_left(s.step_seq, attempts[0])
        if early == 0 or _given_epochs(s):  # step(epoch) sets the epoch outright: nothing is skipped
            continue
        lrs = run.lr_series(s)
        start = s.lr_at_creation[0] if s.lr_at_creation else None
        skipped = ""
        if lrs and start is not None and not _close(lrs[0], start):
            skipped = f": training started at lr {_lr(lrs[0])} instead of {_lr(start)}"
        times = "once" if early == 1 else f"{early:,} times"
        yield Finding(
            "scheduler-before-optimizer",
            f"{s.cls}.step() was called {times} before the first optimizer.step(){_at(s)}, so the schedule "
            f"runs a step ahead and its first value was skipped{skipped}",
            "scheduler.step() comes after optimizer.step() (torch warns about this order too)",
            "move scheduler.step() after optimizer.step(): " + (
                "right after it, in the batch loop" if s.cls in STEP_BASED else "to the end of the epoch, after "
                "validation"))


def lr_at_zero(run: Run, explained: set[int]) -> Iterable[Finding]:
    for o in run.tl.optimizers:
        if o.index in explained or o.steps < 2:
            continue
        peaks = [max(lrs[g] for lrs in o.lrs if g < len(lrs)) for g in range(len(o.lrs[0]))]
        zero = [all(lr <= max(1e-12, ZERO_LR * peaks[g]) for g, lr in enumerate(lrs)) for lrs in o.lrs]
        count = sum(zero)
        if count < 2 or count < 0.01 * o.steps:
            continue
        first = zero.index(True)
        last = len(zero) - 1 - zero[::-1].index(True)
        span = f"step {first + 1:,}" + (f" to {last + 1:,}" if last > first else "")
        epochs = ""
        e1, e2 = run.epoch(o.step_seq[first]), run.epoch(o.step_seq[last])
        if e1:
            epochs = f", epoch {e1}" + (f" to {e2}" if e2 != e1 else "")
        if first == 0:
            cause = "it started at 0 (lr=0, or a warmup factor that starts at 0 such as lambda e: e / warmup)"
            fix = "start a warmup at (step + 1) / warmup_steps, so its first value is above 0"
        elif last == o.steps - 1:
            cause = "the schedule reached 0 and stayed there to the end: its length is shorter than the run"
            fix = "make the decay as long as the run (T_max / total_iters), or keep a floor (eta_min > 0)"
        else:
            cause = "the schedule passed through 0"
            fix = "keep the LR above 0 while training (eta_min > 0, or a length that matches the run)"
        yield Finding(
            "lr-at-zero",
            f"the LR of {o.label()} was 0 for {count:,} of its {o.steps:,} optimizer steps "
            f"({100 * count / o.steps:.0f}%: {span}{epochs}); {cause}",
            "an optimizer step at LR 0 changes nothing", fix)


def zero_grad_missing(run: Run) -> Iterable[Finding]:
    for o in run.tl.optimizers:
        k = len(o.stale)
        if k < 2:
            continue
        z = "was never called" if run.tl.zero_grad_calls == 0 else f"ran only {run.tl.zero_grad_calls:,} times"
        yield Finding(
            "zero-grad-missing",
            f"{o.label()} stepped {o.steps:,} times, and at {k:,} of them the gradients still held those of "
            f"earlier batches: zero_grad() {z}, so each update used the sum of all gradients since the last clear",
            "backward() adds into .grad; clear it once per optimizer step",
            "call optimizer.zero_grad() before each loss.backward() (or right after optimizer.step())")


def checkpoint_needs(run: Run) -> set[str]:
    """What a checkpoint to resume this run from must hold besides the model."""
    return {"optimizer"} | ({"scheduler"} if any(s.steps for s in run.top_level()) else set())


def checkpoint_incomplete(run: Run) -> Iterable[Finding]:
    tl = run.tl
    steps = sorted(s for o in tl.optimizers for s in o.attempts())
    mid = [s for s in tl.saves if s.path and "model" in s.holds and steps and s.seq < steps[-1]]
    if not mid:
        return
    needs = checkpoint_needs(run)
    scheduled = "scheduler" in needs
    if any(needs <= set(s.holds) for s in mid):
        return  # at least one resumable checkpoint; other saves (best weights ...) are exports
    paths: dict[str, list] = {}
    for s in mid:
        paths.setdefault(s.path, []).append(s)
    first_path, saves = next(iter(paths.items()))
    missing = sorted(needs - set(saves[-1].holds), key=["optimizer", "scheduler"].index)
    held = " and ".join(h for h in ("model", "optimizer", "scheduler") if h in saves[-1].holds)
    more = f" (and {_plural(len(paths) - 1, 'other file')} like it)" if len(paths) > 1 else ""
    epoch = run.epoch(saves[-1].seq)
    last = f", last in epoch {epoch}" if epoch else ""
    lost = {"optimizer": "the optimizer's momentum and moment estimates", "scheduler": "the LR schedule"}
    restart = " and ".join(lost[k] for k in missing)
    keys = ["'model': model.state_dict()", "'optimizer': optimizer.state_dict()"] + (
        ["'scheduler': scheduler.state_dict()"] if scheduled else [])
    if _loaded_after(tl, first_path, steps[-1]):
        purpose = ("; the script loaded it back after training, as a best-model snapshot for a test pass is, and as "
                   "such it needs only the model: this matters only for a checkpoint meant for resuming")
    else:
        purpose = ("; this matters only for a checkpoint meant for resuming (a best-model snapshot for evaluation or "
                   "export needs only the model)")
    yield Finding(
        "checkpoint-incomplete",
        f"{_display(first_path)}{more} was saved {_plural(len(saves), 'time')} during training{last}, holding the "
        f"{held} state but not the {' and '.join(missing)} state: resuming from it would restart {restart}{purpose}",
        "a checkpoint to resume from holds the whole training state: model, optimizer, scheduler (and the epoch)",
        "torch.save({" + ", ".join(keys) + ", 'epoch': epoch}, path)")


_SF_WHY = ("a schedule-free optimizer's parameters hold its training point y until optimizer.eval() switches them "
           "to the averaged point x, the weights to evaluate and save")


def schedule_free_evaluated_in_train_mode(run: Run) -> Iterable[Finding]:
    tl = run.tl
    passes: dict[int, list] = {}
    for c in tl.mode_checks:
        if c.event == "iterate" and not tl.trains(c.seq):
            for i in c.in_train:
                passes.setdefault(i, []).append(c)
    for i, checks in passes.items():
        o = tl.optimizers[i]
        loader = tl.loaders[checks[0].loader].dataset if checks[0].loader is not None else "a data set"
        epoch = run.epoch(checks[0].seq)
        yield Finding(
            "schedule-free-eval-in-train-mode",
            f"{o.label()} is schedule-free, but {len(checks):,} evaluation pass{'es' if len(checks) > 1 else ''} over "
            f"{loader} ran while it "
            f"was in train mode" + (f" (the first in epoch {epoch})" if epoch else "") +
            ": the model was evaluated at its training point y, not at the averaged weights x it trains",
            _SF_WHY, "call optimizer.eval() where you call model.eval(), and optimizer.train() where you call "
            "model.train()", optimizer=i)


def schedule_free_saved_in_train_mode(run: Run) -> Iterable[Finding]:
    tl = run.tl
    saves: dict[int, list] = {}
    for c in tl.mode_checks:
        if c.event == "save":
            for i in c.in_train:
                saves.setdefault(i, []).append(c)
    for i, checks in saves.items():
        o = tl.optimizers[i]
        where = _display(checks[0].path) if checks[0].path else "a buffer"
        yield Finding(
            "schedule-free-saved-in-train-mode",
            f"{where} was saved {_plural(len(checks), 'time')} while {o.label()}, a schedule-free optimizer, was in "
            "train mode: it holds the training point y, and a model loaded from it predicts with the wrong weights",
            _SF_WHY, "call optimizer.eval() before torch.save(...), then optimizer.train() to go on training",
            optimizer=i)


def scheduler_on_schedule_free(run: Run) -> Iterable[Finding]:
    for s in run.top_level():
        o = run.opt(s)
        if o is None or not o.schedule_free or _warmup_only(s):
            continue
        yield Finding(
            "scheduler-on-schedule-free",
            f"{s.describe()}{' (' + s.site + ')' if s.site else ''} drives {o.label()}, a schedule-free optimizer, and "
            f"was stepped {_plural(s.steps, 'time')}",
            "a schedule-free optimizer replaces the LR schedule by averaging its iterates; a decaying schedule on "
            "top of it undoes that (warmup is the one schedule it takes)",
            "drop the scheduler; for warmup pass warmup_steps= to the optimizer", optimizer=o.index)


def _warmup_only(s: SchedulerRecord) -> bool:
    """A linear warmup that ends at the base LR: the one schedule a schedule-free optimizer takes."""
    return s.cls == "LinearLR" and s.params.get("end_factor", 1.0) == 1.0


def _loaded_after(tl: Timeline, path: str | None, seq: int) -> bool:
    """The script read ``path`` back (torch.load) after event ``seq``."""
    same = os.path.normpath(path) if path else None
    return any(load.seq > seq and load.path and os.path.normpath(load.path) == same for load in tl.loads)


# -------------------------------------------------------------------------------------------------
def diagnose(tl: Timeline) -> list[Finding]:
    """All findings for a run, most consequential first; [] when the coupling is right."""
    run = Run(tl)
    findings: list[Finding] = []
    cadence_rules: list[Callable[[Run], Iterable[Finding]]] = [
        scheduler_wrong_optimizer, scheduler_never_stepped, epoch_scheduler_per_step, step_scheduler_per_epoch,
        scheduler_per_micro_batch, warmup_never_ends, cosine_past_t_max]
    findings += optimizer_never_stepped(run)
    for rule in cadence_rules:
        findings += rule(run)
    # an LR at 0 that a cadence finding already explains (StepLR stepped per batch ...) is not news
    explained = {f.optimizer for f in findings if f.optimizer is not None}
    findings += plateau_fed_training_loss(run)
    findings += scheduler_before_optimizer(run)
    findings += lr_at_zero(run, explained)
    findings += zero_grad_missing(run)
    findings += checkpoint_incomplete(run)
    findings += scheduler_on_schedule_free(run)
    findings += schedule_free_evaluated_in_train_mode(run)
    findings += schedule_free_saved_in_train_mode(run)
    return findings


# -------------------------------------------------------------------------------------------------
# helpers of the rules
# -------------------------------------------------------------------------------------------------
def _length(s: SchedulerRecord) -> int | None:
    """The schedule's own length in the unit it is stepped by (one period for StepLR)."""
    p = s.params
    if s.cls == "StepLR":
        return p.get("step_size")
    if s.cls == "MultiStepLR":
        return max(p["milestones"]) if p.get("milestones") else None
    if s.cls == "ExponentialLR":  # steps for the LR to fall ×10
        gamma = p.get("gamma")
        return math.ceil(math.log(0.1) / math.log(gamma)) if gamma and 0 < gamma < 1 else None
    if s.cls == "CosineAnnealingLR":
        return p.get("T_max")
    if s.cls == "CosineAnnealingWarmRestarts":
        return p.get("T_0")
    if s.cls == "OneCycleLR":
        return p.get("total_steps")
    return p.get("total_iters")


def _given_epochs(s: SchedulerRecord) -> bool:
    """The script passes the epoch to step() (e.g. CosineAnnealingWarmRestarts.step(epoch + i / iters),
    as torch documents): the schedule follows that number, not a count of calls."""
    return s.cls != PLATEAU and any(a is not None for a in s.step_arg)


def _shape_ok(s: SchedulerRecord, lrs: list[float]) -> bool:
    """Whether per-step stepping visibly broke this schedule (not a legit per-step use)."""
    if s.cls in ("StepLR", "MultiStepLR", "ExponentialLR"):
        return lrs[-1] < lrs[0]  # it decayed
    if s.cls == "LinearLR":
        return s.params.get("end_factor", 1.0) < s.params.get("start_factor", 1.0)  # a decay, not a warmup
    return True


def _per_step_effect(s: SchedulerRecord, length: int, lrs: list[float]) -> str:
    p = s.params
    if s.cls == "StepLR":
        return (f"the LR fell ×{p.get('gamma', 0.1):g} every {length:,} batches, from {_lr(lrs[0])} to "
                f"{_lr(lrs[-1])} by the end")
    if s.cls == "MultiStepLR":
        return f"all its milestones had passed by batch {length:,}: the LR was {_lr(lrs[-1])} from there on"
    if s.cls == "ExponentialLR":
        return f"the LR fell ×{p.get('gamma'):g} every batch, from {_lr(lrs[0])} to {_lr(lrs[-1])}"
    if s.cls in ("CosineAnnealingLR", "CosineAnnealingWarmRestarts"):
        word = "restarted" if s.cls == "CosineAnnealingWarmRestarts" else "swung between"
        if s.cls == "CosineAnnealingWarmRestarts":
            return f"the cosine {word} every {length:,} batches ({s.steps // length:,} restarts)"
        return (f"the cosine ran its whole course every {length:,} batches and the LR {word} "
                f"{_lr(min(lrs))} and {_lr(max(lrs))} {s.steps // length:,} times")
    rest = max(0, len(lrs) - length)
    return (f"its decay was over after {length:,} batches: the last {rest:,} optimizer steps "
            f"({100 * rest / len(lrs):.0f}%) ran at {_lr(lrs[-1])}")


def _where_to_step(s: SchedulerRecord) -> str:
    if s.cls == PLATEAU:
        return "call scheduler.step(val_loss) once per epoch, after validation"
    if s.cls in STEP_BASED:
        return "call scheduler.step() right after every optimizer.step()"
    return "call scheduler.step() once per epoch, after validation"


def plateau_verdict(run: Run, e) -> tuple[str | None, str, float | None]:
    """Whether a plateau metric is a training loss ("train"), a validation loss ("val") or unknown."""
    train: list[tuple[float | None, str]] = []
    val: list[float | None] = []
    for g in e.groups:
        # The data set decides where it is known; otherwise the phase (with gradients, before the
        # epoch's last optimizer step) does.
        known = run.train_loader is not None and g["loader"] is not None
        on_train_data = g["loader"] == run.train_loader if known else g["phase"] == "train"
        if on_train_data and g["phase"] == "train":
            train += [(g["mean"], "the epoch's mean training loss"), (g["wmean"], "the epoch's mean training loss"),
                      (g["last"], "the last training batch's loss")]
        elif on_train_data:
            train += [(g["mean"], "the loss on the training data"), (g["wmean"], "the loss on the training data")]
        else:
            val += [g["mean"], g["wmean"], g["last"]]
    if any(_close(e.metric, v) for v in val):
        return "val", "", None
    for value, what in train:
        if _close(e.metric, value):
            shown = next((g["wmean"] for g in e.groups if g["phase"] == "eval"
                          and (g["loader"] != run.train_loader or run.train_loader is None)), None)
            return "train", what, shown
    return None, "", None


def _display(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
