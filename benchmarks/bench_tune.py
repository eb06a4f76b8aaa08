"""What the search saves: tune with pruning against compare's full grid, and 1 vs 2 processes.

    python benchmarks/bench_tune.py --out docs/tune.md   # the figures, into docs/tune.md (a few minutes)
    python benchmarks/bench_tune.py --quick              # a smoke run, prints the figures
    python benchmarks/bench_tune.py --part throughput --out docs/tune.md   # one part only

Method (why each choice):
- The grid is ``compare``'s: the five default optimizers, each at five LRs half a decade apart from
  a tenth to ten times its default LR (``lr_grid=5``), cosine schedule, every run to its last epoch.
  Its best validation figure (each run's best epoch, as compare reports it) is the quality bar.
- The search covers the same ground: ``optimizer.name`` from the same five, ``optimizer.lr_scale``
  continuous over the same tenth-to-ten-times range, the same cosine schedule, seed and epochs,
  with TPE and the default median pruner. A second search runs on the default space (schedules,
  weight decay, momentum / betas, warmup, batch size too).
- The figure is the epochs trained until a configuration within 0.5% of the grid's best is found
  (relative: 0.995 x the best accuracy, 1.005 x the best MAE), counting every epoch of every trial
  before it, pruned ones included, in trial order (one process, so trial order is time order). The
  grid's cost is all its epochs (it only knows its best once every run ended); the epochs after
  which its own run order first reached the bar are shown too. The target: the search at most a
  third of the grid's epochs.
- Two tasks: digits (val_acc) and diabetes (val_mae: a small, noisy regression, harder to pin down).
- Three seeds per task (the runs' initial weights and data order, and the sampler's seed): the grid
  and each search are run once per seed, each search judged against its own seed's grid; the table
  gives each seed's figure and the verdict goes by their median (one seed's figure swings with luck).
- Throughput: the same search (digits, a fixed number of trials, no pruning) in one process with
  torch's default threads, in one process with one thread (what each ``--jobs 2`` process gets:
  the fair baseline), and with ``--jobs 2`` on one study: wall-clock trials per minute over the whole call (the second
  process's interpreter, imports and first plots included), and in the steady state (the trials
  finished after every process finished its first). The machine's cores are shared with other
  work, whose load drifts: the settings run in the order A B C C B A and each figure is the
  median of its two runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import optiloop as ol  # noqa: E402
from optiloop.config import resolve  # noqa: E402
from optiloop.grid import DEFAULT_OPTIMIZERS  # noqa: E402

TASKS = {"digits": ("val_acc", "max"), "diabetes": ("val_mae", "min")}
WITHIN = 0.005


def reached(value: float, best: float, mode: str) -> bool:
    return value >= best * (1 - WITHIN) if mode == "max" else value <= best * (1 + WITHIN)


def grid(data: str, epochs: int, seed: int) -> tuple[float, int, int, float, int]:
    """compare's grid (a run that diverges, such as sgd at 10x its LR on diabetes, is a row whose
    final figures are nan): the best figure, the epochs in all, the epochs until the run order first
    reached the bar, the seconds, and how many runs diverged."""
    monitor, mode = TASKS[data]
    cfg = resolve(sets=[f"data.name={data}", f"train.seed={seed}"])
    t0 = time.perf_counter()
    rows = ol.compare(config=cfg, optimizers=DEFAULT_OPTIMIZERS, schedulers=["cosine"], lr_grid=5, epochs=epochs,
                      seeds=[seed], monitor=monitor, device="cpu")
    seconds = time.perf_counter() - t0
    runs = [(r["epochs_run"], r[f"best_{monitor}"] if math.isfinite(r[f"final_{monitor}"]) else None) for r in rows]
    values = [v for _, v in runs if v is not None]
    best = max(values) if mode == "max" else min(values)
    spent, first = 0, None
    for n, v in runs:
        spent += n
        if first is None and v is not None and reached(v, best, mode):
            first = spent
    return best, spent, first or 0, seconds, sum(v is None for _, v in runs)


def search(data: str, epochs: int, trials: int, space: dict | None, best: float, out: Path, seed: int) -> dict:
    """Epochs until a trial reached the bar; the search's totals."""
    monitor, mode = TASKS[data]
    t0 = time.perf_counter()
    result = ol.tune({"data": {"name": data}}, space=space, trials=trials, epochs=epochs, out=out, monitor=monitor,
                     pruner="median", seed=seed)
    seconds = time.perf_counter() - t0
    spent, found, found_at = 0, None, None
    ordered = sorted(result.study.trials, key=lambda t: t.number)
    for t in ordered:
        spent += int(t.user_attrs.get("epochs") or 0)
        if found is None and t.state.name == "COMPLETE" and reached(t.value, best, mode):
            found, found_at = spent, t.number
    value = result.best["value"] if result.best else float("nan")
    return {"found": found, "trial": found_at, "epochs": spent, "trials": len(ordered), "best": value,
            "pruned": sum(t.state.name == "PRUNED" for t in ordered), "seconds": seconds}


def throughput(jobs: int, trials: int, epochs: int, out: Path, threads: int | None = None) -> tuple[float, float]:
    """Trials per minute on one study: over the whole call (start-up included), and once every process
    has finished its first trial (each new process pays its interpreter, imports and first plots).
    ``threads``: torch threads of this process for the call (--jobs N gives each process its share)."""
    import torch

    own = torch.get_num_threads()
    torch.set_num_threads(threads or own)
    t0 = time.time()
    try:
        result = ol.tune({"data": {"name": "digits"}}, trials=trials, epochs=epochs, jobs=jobs, pruner="none",
                         out=out)
    finally:
        torch.set_num_threads(own)
    wall = trials / ((time.time() - t0) / 60)
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    first: dict[int, float] = {}
    for t in done:
        pid = t.user_attrs["optiloop_worker"]["pid"]
        first[pid] = min(first.get(pid, math.inf), t.datetime_complete.timestamp())
    since = max(first.values())
    end = max(t.datetime_complete.timestamp() for t in done)
    later = sum(t.datetime_complete.timestamp() > since for t in done)
    return wall, later / ((end - since) / 60) if end > since else math.nan


SEEDS = (0, 1, 2)


def search_part(epochs: int, trials: int, root: Path, seeds: tuple[int, ...] = SEEDS) -> list[str]:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores shared with "
             f"other work, torch {__import__('torch').__version__}, optuna {__import__('optuna').__version__}; "
             f"{epochs} epochs per run, searches of {trials} trials, seeds {', '.join(map(str, seeds))} (each search "
             "against its own seed's grid); `python benchmarks/bench_tune.py`.", "",
             "| task | seed | method | best figure | epochs until within 0.5% of the grid's best | epochs in all | "
             "runs / trials (pruned) | seconds |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    shares: dict[tuple[str, str], list[float]] = {}
    for data, (monitor, _) in TASKS.items():
        labels = ["tune, the grid's space, median pruner"]
        if data == "digits":  # the default space too (on digits only: the run stays a few minutes)
            labels.append("tune, the default space, median pruner")
        for seed in seeds:
            best, total, first, sec, diverged = grid(data, epochs, seed)
            lines.append(f"| {data} | {seed} | compare's grid (5 optimizers x 5 LRs, cosine) | {monitor} {best:.4f} | "
                         f"{total} (its run order reached it after {first}) | {total} | 25"
                         + (f", {diverged} diverged" if diverged else "") + f" | {sec:.0f} |")
            matched = {"optimizer.name": list(DEFAULT_OPTIMIZERS),
                       "optimizer.lr_scale": {"low": 0.1, "high": 10.0, "log": True}}
            for label in labels:
                space = matched if "grid's space" in label else None
                r = search(data, epochs, trials, space, best, root / f"tune-{data}-{len(lines)}", seed)
                found = (f"{r['found']} (trial {r['trial']})" if r["found"] is not None
                         else f"not within {trials} trials")
                lines.append(f"| {data} | {seed} | {label} | {monitor} {r['best']:.4f} | {found} | {r['epochs']} | "
                             f"{r['trials']} ({r['pruned']}) | {r['seconds']:.0f} |")
                # a search that never reached the bar counts as having cost the whole grid
                shares.setdefault((data, label), []).append((r["found"] if r["found"] is not None else total) / total)
            print("\n".join(lines[-1 - len(labels):]), flush=True)
    verdicts = []
    for (data, label), values in shares.items():
        median = statistics.median(values)
        verdict = "target met" if median <= 1 / 3 else "target not met"
        verdicts.append(f"{data}, {label}: {median:.0%} of the grid's epochs (median of "
                        f"{', '.join(f'{v:.0%}' for v in values)}) ({verdict})")
    return lines + ["", "Against the target (the search finds a configuration within 0.5% of the grid's best in at "
                    "most a third of the grid's epochs; median over the seeds):", ""] + [f"- {v}" for v in verdicts]


def throughput_part(trials: int, epochs: int, root: Path) -> list[str]:
    """1 process with torch's default threads, 1 process with 1 thread, and 2 processes (--jobs 2: one
    thread each), in the order A B C C B A: the machine's load drifts, and this order gives each the
    same share of it; the median of each setting's two runs, and both runs."""
    import torch

    settings = {"1 process, torch's default threads": (1, None),
                "1 process, 1 torch thread": (1, 1),
                "2 processes (`--jobs 2`: 1 torch thread each)": (2, None)}
    names = list(settings)
    runs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i, name in enumerate([*names, *reversed(names)]):
        jobs, threads = settings[name]
        runs[name].append(throughput(jobs, trials, epochs, root / f"jobs-{i}", threads))
        print(f"{name}: {runs[name][-1][0]:.1f} trials/min, steady {runs[name][-1][1]:.1f}", flush=True)
    med = {n: (statistics.median(w for w, _ in r), statistics.median(s for _, s in r)) for n, r in runs.items()}
    lines = [f"Measured {time.strftime('%Y-%m-%d')} (digits, {trials} trials of {epochs} epochs, no pruning, SQLite "
             f"storage, torch's default {torch.get_num_threads()} threads on {os.cpu_count()} shared cores; wall "
             "clock over the whole call, and in the steady state: the trials finished after every process had "
             "finished its first, over that time; each setting run twice, in the order A B C C B A, median):", "",
             "| setting | trials per minute, whole run | trials per minute, steady state | its two runs (whole run) "
             "|", "|---|---:|---:|---|"]
    lines += [f"| {n} | {w:.1f} | {s:.1f} | {', '.join(f'{x:.1f}' for x, _ in runs[n])} |" for n, (w, s) in med.items()]
    two, one = med[names[2]], med[names[1]]
    lines += ["", f"2 processes against 1 process with the same 1 thread each: {two[0] / one[0]:.2f}x over the whole "
              f"run, {two[1] / one[1]:.2f}x in the steady state; against torch's default threads: "
              f"{two[0] / med[names[0]][0]:.2f}x over the whole run."]
    return lines


def write_between(path: Path, part: str, text: str) -> None:
    start, end = f"<!-- bench_tune:{part}:start -->", f"<!-- bench_tune:{part}:end -->"
    doc = path.read_text()
    if start not in doc or end not in doc:
        raise SystemExit(f"{path}: no {start} ... {end} markers to write between")
    head, rest = doc.split(start, 1)
    path.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])
    print(f"written into {path} ({part})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the figures into this Markdown file between the markers")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    p.add_argument("--part", choices=("all", "search", "throughput"), default="all", help="measure only one part")
    args = p.parse_args()
    epochs, trials, jobs_trials, jobs_epochs = (2, 4, 4, 1) if args.quick else (8, 20, 10, 3)
    parts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)
        if args.part in ("all", "search"):
            parts["search"] = search_part(epochs, trials, root, (0,) if args.quick else SEEDS)
        if args.part in ("all", "throughput"):
            parts["throughput"] = throughput_part(jobs_trials, jobs_epochs, root)
    for part, lines in parts.items():
        text = "\n".join(lines)
        print(text)
        if args.out:
            write_between(ROOT / args.out if not args.out.is_absolute() else args.out, part, text)


if __name__ == "__main__":
    main()
