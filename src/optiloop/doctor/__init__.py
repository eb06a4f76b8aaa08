"""``optiloop doctor``: watch a training script you already have and diagnose how it couples the
optimizer and the LR scheduler (when each is stepped, what plateau is fed, what checkpoints hold).

Two ways in:

- ``optiloop doctor train.py [ARGS...]`` (or ``python -m optiloop.doctor train.py``) runs the
  script unchanged in its own process and prints the diagnosis after the script's own output;
- ``with watch() as w: ...`` watches code run inside the block (notebooks) in this process.

Importing this package does not import torch; the recorder does, when a watch starts.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from optiloop.doctor import watch
    >>> model = torch.nn.Linear(4, 2)
    >>> loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
    >>> with watch() as w:
    ...     opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ...     sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)  # step_size counts epochs
    ...     for epoch in range(3):
    ...         for (x,) in loader:
    ...             opt.zero_grad()
    ...             model(x).sum().backward()
    ...             opt.step()
    ...             sched.step()  # but it is stepped in the batch loop
    >>> [f.rule for f in w.findings]
    ['epoch-scheduler-per-step']
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from .rules import Finding, diagnose
from .timeline import Timeline

if TYPE_CHECKING:
    from .recorder import Recorder  # torch's hooks: only when watching

__all__ = ["Finding", "Timeline", "Watch", "diagnose", "watch"]


class Watch:
    """A watch over torch for the code run inside a ``with`` block; see :func:`watch`.

    Attributes:
        timeline: what was recorded (optimizer steps with every group's LR, scheduler steps, epochs,
            saves); a snapshot so far while the block runs.
        findings: the diagnosis of ``timeline``: a list of :class:`Finding`, empty when right.
    """

    def __init__(self) -> None:
        self._recorder: Recorder | None = None
        self._timeline: Timeline | None = None
        self._findings: list[Finding] | None = None

    def __enter__(self) -> Watch:
        from .recorder import Recorder  # (as above)

        recorder = Recorder()
        recorder.install()  # refuses a second watch in the same process
        self._recorder, self._timeline, self._findings = recorder, None, None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        recorder = self._recorder
        if recorder is None:
            return
        recorder.uninstall()
        error = None
        if exc is not None:
            first = str(exc).strip().splitlines()
            error = exc_type.__name__ + (f": {first[0]}" if first else "")
        self._timeline = recorder.timeline(completed=exc is None, error=error)
        recorder.release()
        self._recorder = None
        self._findings = diagnose(self._timeline)

    @property
    def timeline(self) -> Timeline:
        if self._recorder is not None:
            return self._recorder.timeline()
        if self._timeline is None:
            raise RuntimeError("nothing watched yet: use it as `with watch() as w:`")
        return self._timeline

    @property
    def findings(self) -> list[Finding]:
        if self._recorder is not None or self._findings is None:
            return diagnose(self.timeline)
        return self._findings

    def report(self, name: str | None = None) -> str:
        """The diagnosis as text, as ``optiloop doctor`` prints it."""
        from .report import format_report  # matplotlib, through the report: at the end only

        return format_report(self.timeline, self.findings, name=name)

    def save(self, out: str | os.PathLike, name: str | None = None) -> list[Path]:
        """Write doctor.json and doctor.png into the folder ``out``; returns their paths."""
        from .report import write  # (as above)

        return write(self.timeline, self.findings, out, name=name)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython shows the report for a bare `w`
        p.text(self.report())


def watch() -> Watch:
    """Watch torch while the ``with`` block runs, then diagnose what it did.

    Optimizers, schedulers, DataLoaders and ``torch.save`` calls used inside the block are
    recorded through torch's public hooks; torch is un-instrumented when the block ends, also
    when it raises (then the findings are the ones so far).

    Example:
        >>> from optiloop.doctor import watch
        >>> with watch() as w:
        ...     pass  # train_model(model, train_loader, val_loader, ...)
        >>> w.findings
        []
    """
    return Watch()
