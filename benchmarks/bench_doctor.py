"""What watching costs: a training loop run plain and under the doctor, side by side.

    python benchmarks/bench_doctor.py --out docs/doctor.md   # full run, figures into docs/doctor.md
    python benchmarks/bench_doctor.py --quick                # smoke run, prints the figures

Method (why each choice):
- In-process: the same training loop (scikit-learn's digits, an MLP, SGD) run plain and inside
  ``watch()``, alternating which goes first in each repeat so a slow phase of a shared machine hits
  both alike. Each epoch is timed on its own, in CPU time of this process with torch on one
  thread (``--threads``): CPU time leaves out the time spent waiting for a core on a shared
  machine, which wall-clock figures there mostly measure. Only the loop is timed (not installing
  the hooks or the diagnosis). Three couplings:
  a DataLoader with a per-epoch StepLR (the notes' train_model), in-memory tensor batches with
  OneCycleLR stepped every batch (the fastest step, so the largest relative cost), and a
  DataLoader with ReduceLROnPlateau (the doctor also keeps every loss for the plateau check).
- The cost per call: ``opt.step()``, ``scheduler.step()`` and ``zero_grad()`` on a one-parameter
  model, plain vs watched: what the doctor adds per training step, undiluted.
- End to end: ``python script.py`` against ``optiloop doctor script.py`` as subprocesses, in CPU time
  of the whole process tree and in wall time; the difference is the doctor's fixed cost (its own
  interpreter, the diagnosis, doctor.png).
- Every figure is over ``--repeats`` runs: the minimum (the least disturbed run) and the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optiloop.doctor import diagnose, watch
from optiloop.doctor.report import plot, to_json

ROOT = Path(__file__).resolve().parents[1]
CLOCK = time.process_time  # in-process figures: CPU time (see the method above)
START, END = "<!-- bench_doctor:start -->", "<!-- bench_doctor:end -->"


def data() -> tuple[torch.Tensor, ...]:
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm[360:]], y[perm[360:]], X[perm[:360]], y[perm[:360]]


def train(kind: str, epochs: int, tensors: tuple[torch.Tensor, ...]) -> list[float]:
    """One training run; returns the seconds per optimizer step of each epoch (validation included)."""
    X, y, Xv, yv = tensors
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batch = 64
    steps_per_epoch = -(-len(X) // batch)
    if kind == "loader_step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3))
    elif kind == "tensor_onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps_per_epoch)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    per_step = []
    for _ in range(epochs):
        t0 = CLOCK()
        steps = 0
        model.train()
        if kind == "tensor_onecycle":
            order = torch.randperm(len(X))
            batches = ((X[order[i:i + batch]], y[order[i:i + batch]]) for i in range(0, len(X), batch))
        else:
            batches = loader
        for xb, yb in batches:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            steps += 1
            if kind == "tensor_onecycle":
                sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = F.cross_entropy(model(Xv), yv)
        if kind == "loader_step":
            sched.step()
        elif kind == "loader_plateau":
            sched.step(val_loss)
        per_step.append((CLOCK() - t0) / steps)
    return per_step


def per_call(what: str, n: int, chunk: int = 1000) -> list[float]:
    """Seconds per call of one watched entry point on a one-parameter model, in chunks of calls:
    the doctor's cost per call, undiluted by any training work."""
    p = nn.Parameter(torch.zeros(1))
    p.grad = torch.ones(1)
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10 * n)
    opt.step()
    call = {"optimizer.step()": opt.step, "scheduler.step()": sched.step,
            "optimizer.zero_grad()": lambda: opt.zero_grad(set_to_none=False)}[what]
    out = []
    for _ in range(n // chunk):
        t0 = CLOCK()
        for _ in range(chunk):
            call()
        out.append((CLOCK() - t0) / chunk)
    return out


def paired(fn, repeats: int) -> tuple[list[float], list[float], float]:
    """fn() plain and watched, back to back, alternating which runs first. Returns all timings of
    each, pooled, and the paired overhead: the median over repeats of (watched run's median / the
    plain run's next to it) - 1, which cancels slow drifts in the load of a shared machine."""
    plain, watched, ratios = [], [], []
    for r in range(repeats):
        runs = {}
        for w in ((False, True) if r % 2 == 0 else (True, False)):
            if w:
                with watch():
                    runs[w] = fn()
            else:
                runs[w] = fn()
        plain += runs[False]
        watched += runs[True]
        ratios.append(statistics.median(runs[True]) / statistics.median(runs[False]) - 1)
    return plain, watched, statistics.median(ratios)


def end_to_end(repeats: int, epochs: int) -> dict[str, list[float]]:
    """``python train.py`` vs ``optiloop doctor train.py``: wall time, and CPU time of the whole process
    tree (parent and child), which a loaded machine inflates far less than wall time."""
    import resource

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
        from bench_doctor import data, train
        print("trained: %.0f µs of CPU per step" % (1e6 * min(train("loader_step", {epochs}, data()))))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    out: dict[str, list[float]] = {"plain wall": [], "doctor wall": [], "plain cpu": [], "doctor cpu": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.py"
        path.write_text(script)
        for r in range(repeats):
            for w in ((False, True) if r % 2 == 0 else (True, False)):
                cmd = [sys.executable, "-m", "optiloop", "doctor", "--out", str(Path(tmp) / "out"), str(path)] \
                    if w else [sys.executable, str(path)]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()  # wall clock: what a user waits, child processes included
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                name = "doctor" if w else "plain"
                out[f"{name} wall"].append(wall)
                out[f"{name} cpu"].append(cpu)
    return out


def fmt(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    lo, mid = min(values) * scale, statistics.median(values) * scale
    digits = 0 if lo >= 100 else 1 if lo >= 10 else 2
    return f"{lo:,.{digits}f}{unit} / {mid:,.{digits}f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the in-process loops (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 3 epochs, prints the figures")
    parser.add_argument("--out", help="markdown file whose benchmark section is replaced (docs/doctor.md)")
    args = parser.parse_args()
    repeats, epochs = (2, 3) if args.quick else (args.repeats, args.epochs)
    torch.set_num_threads(args.threads)
    tensors = data()
    train("loader_step", 1, tensors)  # warm up: first calls import and compile kernels

    rows = []
    names = {"loader_step": "DataLoader, StepLR once per epoch",
             "tensor_onecycle": "tensor batches, OneCycleLR every step",
             "loader_plateau": "DataLoader, ReduceLROnPlateau (losses kept)"}
    steps = epochs * -(-len(tensors[0]) // 64)
    for kind, title in names.items():
        p, w, over = paired(lambda kind=kind: train(kind, epochs, tensors), repeats)
        rows.append(f"| {title} | {steps:,} | {fmt(p, 1e6, ' µs')} | {fmt(w, 1e6, ' µs')} | {100 * over:+.1f}% |")
        print(rows[-1], flush=True)

    n = 20_000 if not args.quick else 2_000
    calls = []
    for what in ("optimizer.step()", "scheduler.step()", "optimizer.zero_grad()"):
        plain, watched, _ = paired(lambda what=what: per_call(what, n), repeats)
        calls.append(f"| `{what}` | {fmt(plain, 1e6, ' µs')} | {fmt(watched, 1e6, ' µs')} | "
                     f"{(statistics.median(watched) - statistics.median(plain)) * 1e6:+.2f} µs |")
        print(calls[-1], flush=True)

    with watch() as w:
        per_call("optimizer.step()", 100_000)
    t0 = CLOCK()
    findings = diagnose(w.timeline)
    t_diag = CLOCK() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = CLOCK()
        to_json(w.timeline, findings)
        plot(w.timeline, findings, Path(tmp) / "doctor.png")
        t_files = CLOCK() - t0
    scale = (f"For a 100,000-step timeline, the diagnosis takes {t_diag:.2f} s of CPU and doctor.json + "
             f"doctor.png {t_files:.2f} s.")
    print(scale, flush=True)

    e = end_to_end(max(2, repeats // 2), epochs)
    fixed = statistics.median(e["doctor cpu"]) - statistics.median(e["plain cpu"])
    e2e = (f"End to end, a {epochs}-epoch script run as `python train.py` and as `optiloop doctor train.py` "
           f"({len(e['plain cpu'])} runs each, min / median): CPU time of the whole process tree "
           f"{fmt(e['plain cpu'], unit=' s')} against {fmt(e['doctor cpu'], unit=' s')}, wall time "
           f"{fmt(e['plain wall'], unit=' s')} against {fmt(e['doctor wall'], unit=' s')}. The doctor's fixed "
           f"cost, about {fixed:.1f} s of CPU (median against median), is paid once: the parent interpreter (no "
           "torch in it), the child's bootstrap, the diagnosis, matplotlib and doctor.png; on a loaded machine "
           "its wall time is several times that.")
    print(e2e, flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load average {load:.1f} "
               f"at the end), torch {torch.__version__}, Python {platform.python_version()}")
    section = "\n".join([
        START,
        f"Measured by `python benchmarks/bench_doctor.py --out docs/doctor.md` on {machine}; {repeats} repeats, "
        f"{epochs} epochs of digits (1,437 training samples, batch 64), each epoch timed on its own in CPU time "
        f"({args.threads} torch thread). Time per optimizer step (the epoch's time over its steps, validation "
        "included), min / median over all epochs:",
        "",
        "| loop | steps per run | plain (min / median) | watched (min / median) | overhead (paired median) |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"What each watched call costs, on a one-parameter model ({n:,} calls per run, timed in chunks of 1,000; "
        "CPU time per call, min / median):",
        "",
        "| call | plain (min / median) | watched (min / median) | added (median against median) |",
        "|---|---:|---:|---:|",
        *calls,
        "",
        scale,
        "",
        e2e,
        END,
    ])
    if args.out:
        path = Path(args.out)
        text = path.read_text() if path.exists() else ""
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        path.write_text(text)
        print(f"written: {path}")
    else:
        print(section)


if __name__ == "__main__":
    main()
