"""The doctor's output: the diagnosis as text, doctor.json, and doctor.png (matplotlib Agg, no torch)."""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

from ..files import atomic_open, write_text
from .rules import PLATEAU, ZERO_LR, Finding, Run, checkpoint_needs, plateau_verdict
from .timeline import Timeline

_CADENCE = {"step": "after every optimizer step", "epoch": "once per epoch", "micro": "once per micro-batch",
            "other": "{n} times"}


def header(tl: Timeline, name: str | None = None) -> str:
    """One line: the script, what it trained, how it ended."""
    run = Run(tl)
    name = name or tl.script or "the watched code"
    parts = []
    if run.epochs:
        parts.append(f"{run.epochs:,} epoch" + ("s" if run.epochs != 1 else ""))
    opts = [o for o in tl.optimizers]
    steps = sum(o.steps for o in opts)
    kinds = ", ".join(dict.fromkeys(o.cls for o in opts))
    parts.append(f"{steps:,} optimizer step" + ("s" if steps != 1 else "") + (f" ({kinds})" if kinds else ""))
    for s in run.top_level():
        if not s.steps:
            parts.append(f"{s.cls} never stepped")
            continue
        how = _CADENCE[run.cadence(s)].format(n=f"{s.steps:,}")
        if s.cls == PLATEAU and s.steps:
            verdicts = {plateau_verdict(run, e)[0] for e in tl.plateau if e.scheduler == s.index}
            if verdicts == {"val"}:
                how += ", on the validation loss"
        parts.append(f"{s.cls} stepped {how}")
    ended = f"exit code {tl.exit_code}" if tl.exit_code is not None else ""
    if tl.error:
        ended = f"raised {tl.error}" + (f" (exit code {tl.exit_code})" if tl.exit_code is not None else "")
    return f"optiloop doctor: {name} — " + "; ".join(parts) + (f"; {ended}" if ended else "")


def format_report(tl: Timeline, findings: list[Finding], *, name: str | None = None) -> str:
    """The diagnosis as printed after the script's output."""
    name = name or tl.script or "the watched code"
    if not tl.optimizers and tl.child_processes:
        ended = f" ({tl.error})" if tl.error else ""
        n = tl.child_processes
        return (f"optiloop doctor: {name} started {n} child process{'es' if n != 1 else ''} (multiprocessing, "
                f"torch.multiprocessing.spawn){ended} and trained there, if anywhere: its own process stepped "
                "no optimizer, and the doctor does not follow child processes, so there is nothing to diagnose; "
                "run the training function in the script's own process (one worker), or watch it there with "
                "optiloop.watch()")
    if not tl.optimizers:
        ended = f" ({tl.error})" if tl.error else ""
        return (f"optiloop doctor: {name} built no torch.optim optimizer{ended}, so there is nothing to "
                "diagnose (the doctor watches torch.optim optimizers and their LR schedulers)")
    lines = [header(tl, name)]
    so_far = "" if tl.completed else " so far"
    if not findings:
        lines.append(f"no problems found{so_far}")
        return "\n".join(lines)
    count = f"{len(findings)} problem" + ("s" if len(findings) != 1 else "")
    lines.append(f"{count}{so_far}:")
    for i, f in enumerate(findings, 1):
        body = f.text().replace("\n", "\n    ")
        lines.append(f"{i:>2}. {body}")
    return "\n".join(lines)


def to_json(tl: Timeline, findings: list[Finding]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings], "timeline": tl.to_dict()},
                      allow_nan=True) + "\n"


def write(tl: Timeline, findings: list[Finding], out: str | os.PathLike, *, name: str | None = None) -> list[Path]:
    """Write doctor.json and doctor.png into ``out`` (created); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "doctor.json", to_json(tl, findings))
    paths = [out / "doctor.json"]
    if any(o.steps for o in tl.optimizers):
        plot(tl, findings, out / "doctor.png", name=name)
        paths.append(out / "doctor.png")
    return paths


# -------------------------------------------------------------------------------------------------
# the picture
# -------------------------------------------------------------------------------------------------
_SCHED_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#17becf")


def plot(tl: Timeline, findings: list[Finding], path: str | os.PathLike, *, name: str | None = None) -> None:
    """doctor.png: the ``figure`` below, written atomically."""
    fig = figure(tl, findings, name=name)
    with atomic_open(path, "wb") as f:  # a crash never leaves a half-written PNG
        fig.savefig(f, format="png", dpi=100)


def figure(tl: Timeline, findings: list[Finding], *, name: str | None = None):
    """LR of every param group at each optimizer step; epochs, scheduler steps and saves marked.

    One panel per optimizer that stepped (up to three), and one for ReduceLROnPlateau's metric
    next to the training and validation losses when the script used one. Returns the matplotlib
    Figure.
    """
    from matplotlib.figure import Figure  # matplotlib: imported when a picture is drawn

    run = Run(tl)
    opts = [o for o in tl.optimizers if o.steps][:3]
    plateau = [e for e in tl.plateau]
    rows = len(opts) + (1 if plateau else 0)
    fig = Figure(figsize=(11, 2.9 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax, o in zip(axes, opts, strict=False):
        _lr_panel(ax, run, o)
    if plateau:
        _plateau_panel(axes[-1], run, plateau)
    problems = (f"{len(findings)} problem" + ("s" if len(findings) != 1 else "") + ": "
                + ", ".join(dict.fromkeys(f.rule for f in findings))) if findings else "no problems found"
    fig.suptitle(f"optiloop doctor: {name or tl.script or 'watched code'} — {problems}", fontsize=11)
    return fig


def _lr_panel(ax, run: Run, o) -> None:
    x = list(range(1, o.steps + 1))
    groups = len(o.lrs[0])
    values = [v for lrs in o.lrs for v in lrs]
    positive = [v for v in values if v > 0]
    series = [[lrs[g] if g < len(lrs) else float("nan") for lrs in o.lrs] for g in range(groups)]
    # Groups often share their LRs (a no-decay group): of groups with the very same LRs, each is
    # drawn thinner than the one before, on top of it and dashed, so every one stays visible.
    first = [next(h for h in range(g + 1) if series[h] == series[g]) for g in range(groups)]
    for g in range(groups):  # each step's LR holds for that step: draw it as a step function
        same = [h for h in range(groups) if first[h] == first[g]]
        k = same.index(g)
        label = "LR" if groups == 1 else f"LR, param group {g}" + (f" (= group {first[g]})" if k else "")
        ax.plot(x, series[g], lw=1.5 + 2.5 * (len(same) - 1 - k), ls=(0, (6, 4)) if k else "-",
                drawstyle="steps-mid", color=f"C{g % 10}", zorder=2 + g / groups, label=label)
    if positive and max(positive) / min(positive) > 1e3:
        ax.set_yscale("log")
    peaks = [max(lrs[g] for lrs in o.lrs if g < len(lrs)) for g in range(groups)]
    zero = [all(v <= max(1e-12, ZERO_LR * peaks[g]) for g, v in enumerate(lrs)) for lrs in o.lrs]
    for i, (a, b) in enumerate(_spans(zero)):
        ax.axvspan(a + 0.5, b + 1.5, color="#d62728", alpha=0.12, lw=0,
                   label="LR ≈ 0 (below 1e-8 of its peak)" if i == 0 else None)
    # epoch boundaries: before the first step of each training epoch
    for i, start in enumerate(run.starts):
        k = bisect.bisect_right(o.step_seq, start)
        ax.axvline(k + 0.5, color="#7f7f7f", ls=":", lw=0.8, label="epoch start" if i == 0 else None)
    if 1 < len(run.starts) <= 40:
        ticks = [bisect.bisect_right(o.step_seq, s) + 0.5 for s in run.starts]
        top = ax.secondary_xaxis("top")
        every = max(1, len(ticks) // 12)
        top.set_xticks(ticks[::every], [str(i + 1) for i in range(0, len(ticks), every)])
        top.set_xlabel("epoch", fontsize=8)
        top.tick_params(labelsize=7)
    # scheduler steps: a rug along the bottom, one row per scheduler driving this optimizer
    trans = ax.get_xaxis_transform()
    mine = [s for s in run.top_level() if s.optimizer == o.index and s.steps]
    for j, s in enumerate(mine):
        pos = _spread([bisect.bisect_right(o.step_seq, q) for q in s.step_seq])
        lo = 0.02 + 0.07 * j
        ax.vlines(pos, lo, lo + 0.055, transform=trans, color=_SCHED_COLORS[j % len(_SCHED_COLORS)],
                  lw=1.6 if len(pos) < 200 else 0.6, label=f"{s.cls}.step() ({s.steps:,}×)")
    # saves holding a model: triangles along the top, green when they hold all a resume needs
    saves = [s for s in run.tl.saves if s.path and "model" in s.holds]
    if saves:
        needs = checkpoint_needs(run)
        pos = [bisect.bisect_right(o.step_seq, s.seq) + 0.5 for s in saves]
        full = [needs <= set(s.holds) for s in saves]
        missing = " and ".join(sorted(needs - set().union(*(set(s.holds) for s in saves if not needs <= set(s.holds)))))
        for ok, color, text in ((True, "#2ca02c", "torch.save: resumable checkpoint"),
                                (False, "#ff7f0e", f"torch.save: model without {missing} state")):
            xs = [p for p, f in zip(pos, full, strict=True) if f == ok]
            if xs:
                ax.plot(xs, [0.95] * len(xs), "v", transform=trans, color=color, ms=7, ls="none", label=text)
    ax.set_xlim(0.5, o.steps + 1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{o.cls} #{o.index + 1}" + (f" ({o.site})" if o.site else ""), fontsize=9, loc="left")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _plateau_panel(ax, run: Run, evidence) -> None:
    from matplotlib.ticker import MaxNLocator  # (as above)

    n = list(range(1, len(evidence) + 1))
    for phase, color, text in (("train", "#1f77b4", "mean training loss"), ("eval", "#d62728", "validation loss")):
        ys = []
        for e in evidence:
            gs = [g for g in e.groups if g["phase"] == phase
                  and (phase == "train" or g["loader"] != run.train_loader or run.train_loader is None)]
            ys.append(gs[0]["wmean"] if gs and gs[0]["wmean"] is not None else float("nan"))
        if any(y == y for y in ys):  # wide and pale: the metric drawn over it shows when they coincide
            ax.plot(n, ys, "-", color=color, lw=5, alpha=0.35, label=text)
    ax.plot(n, [e.metric for e in evidence], "ko-", ms=4, lw=1.2, label="value passed to ReduceLROnPlateau.step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ReduceLROnPlateau.step() call")
    ax.set_ylabel("loss")
    ax.set_title("the plateau metric next to the losses the script computed", fontsize=9, loc="left")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _spread(done: list[int]) -> list[float]:
    """x positions of events given how many optimizer steps preceded each: the events between steps
    k and k + 1 spread evenly over that gap (four per step show as four ticks, one as one in the middle)."""
    out, i = [], 0
    while i < len(done):
        j = i
        while j < len(done) and done[j] == done[i]:
            j += 1
        out += [done[i] + (n + 1) / (j - i + 1) for n in range(j - i)]
        i = j
    return out


def _spans(flags: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            out.append((start, i - 1))
            start = None
    return out
