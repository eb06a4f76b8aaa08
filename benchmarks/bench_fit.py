"""Training speed, side by side: a careful hand-written loop, the notes' train_model, optiloop.fit
and PyTorch Lightning's Trainer, on the same data, model, optimizer and seed, in one process.

    python benchmarks/bench_fit.py --out docs/performance.md      # full run (~10 min on 2 cores)
    python benchmarks/bench_fit.py --quick                          # smoke run, prints the report
    python benchmarks/bench_fit.py --device cuda --out perf_gpu.md  # the same on a GPU

Method (why each choice):
- Every figure is the minimum over ``--repeats`` runs; within a repeat the variants run in a
  rotated order, so slow phases of a shared machine hit every variant alike.
- A run is one whole training call. Its per-epoch figure spans the first epoch's start to the last
  epoch's end (training, validation, checkpoints, progress output); set-up and teardown (building
  the Trainer, Lightning's sanity check, the notes' final save) are reported separately, so short
  runs do not mix a fixed cost into the per-epoch figure.
- Progress bars write to a sink that claims to be a terminal and discards the text. Without it
  tqdm hides optiloop's bar (stderr is not a TTY) while the notes' and Lightning's bars still
  format and write every step; with it every bar does its real formatting work.
- Checkpoints go to a fresh temporary folder on the same disk as the user's would.
- Peak memory is measured in a fresh subprocess per variant: the kernel's peak-RSS counter is
  reset (``/proc/self/clear_refs``) after data and model exist, then read after training.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import optiloop as ol
from optiloop.files import write_text

LR = 1e-3  # AdamW with torch's default weight decay (0.01) for every variant
SEED = 0


# --- workloads ----------------------------------------------------------------------------------
@dataclass
class Workload:
    key: str
    title: str
    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    make_model: Callable[[], nn.Module]
    batch_size: int
    epochs: int

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch."""
        return -(-len(self.X) // self.batch_size)


def _digits(image: bool) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    if image:
        X = X.reshape(-1, 1, 8, 8)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(SEED))
    X, y = X[perm], y[perm]
    n_val = len(X) // 5
    return X[n_val:], y[n_val:], X[:n_val], y[:n_val]


def _synthetic(n: int = 20_000, n_val: int = 2_000, dim: int = 784) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(SEED)
    X = torch.randn(n + n_val, dim, generator=g)
    teacher = torch.randn(dim, 10, generator=g)
    y = (X @ teacher).argmax(1)  # learnable labels, so the runs do real work
    return X[:n], y[:n], X[n:], y[n:]


def _mlp(*sizes: int) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    return make


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def workloads(quick: bool, only: list[str] | None) -> list[Workload]:
    """(a) overhead-dominated digits MLP, (b) compute-heavier 20k x 784 MLP, (c) digits CNN."""
    e = (lambda full, q: q) if quick else (lambda full, q: full)
    out = [
        Workload("a", "(a) digits MLP 64-128-10, batch 64", *_digits(False), _mlp(64, 128, 10), 64,
                 e(40, 3)),
        Workload("b", "(b) synthetic 20,000x784 MLP 784-256-256-10, batch 128", *_synthetic(),
                 _mlp(784, 256, 256, 10), 128, e(3, 2)),
        Workload("c", "(c) digits 8x8 CNN (2 conv + 2 linear), batch 64", *_digits(True), _cnn, 64,
                 e(15, 2)),
    ]
    return [w for w in out if not only or w.key in only]


# --- helpers ----------------------------------------------------------------------------------
class _Terminal(io.TextIOWrapper):
    """/dev/null that says it is a terminal, so every progress bar renders (see module doc)."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    sink = _Terminal(open(os.devnull, "wb"), encoding="utf-8", line_buffering=True)
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = sink
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old
        sink.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model(w: Workload, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)  # the same initial weights in every variant
    return w.make_model().to(device)


@dataclass
class Run:
    seconds: float  # the whole call, set-up included
    loop: float  # first epoch's start to last epoch's end: the per-epoch figure's numerator
    parts: dict[str, float]  # seconds spent in named phases, summed over epochs
    impl: str = "for-loop"  # the optimizer implementation that ran


# --- variant 1: the careful hand-written loop -----------------------------------------------------
def run_raw(w: Workload, device: torch.device, epochs: int, ckpt_dir: Path) -> Run:
    """Pre-batched tensors on the device, a per-epoch shuffle by index, loss and correct counts
    accumulated as tensors and read once per epoch, torch's default (for-loop) AdamW."""
    t0 = time.perf_counter()
    model = _model(w, device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    X, y, Xv, yv = (t.to(device) for t in (w.X, w.y, w.Xv, w.yv))
    n, bs = len(X), w.batch_size
    g = torch.Generator().manual_seed(SEED)
    train_s = val_s = 0.0
    t_loop = time.perf_counter()
    for _ in range(epochs):
        t_ep = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=g).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for s in range(0, n, bs):
            idx = perm[s : s + bs]
            xb, yb = X[idx], y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (out.argmax(1) == yb).sum()
        _ = (loss_sum.item() / n, correct.item() / n)  # the epoch's one host sync
        t_val = time.perf_counter()
        train_s += t_val - t_ep
        model.eval()
        with torch.no_grad():
            vloss = torch.zeros((), device=device)
            vcorrect = torch.zeros((), dtype=torch.long, device=device)
            for s in range(0, len(Xv), bs):
                out = model(Xv[s : s + bs])
                vloss += F.cross_entropy(out, yv[s : s + bs], reduction="sum")
                vcorrect += (out.argmax(1) == yv[s : s + bs]).sum()
            _ = (vloss.item() / len(Xv), vcorrect.item() / len(Xv))
        val_s += time.perf_counter() - t_val
    _sync(device)
    t_end = time.perf_counter()
    return Run(t_end - t0, t_end - t_loop, {"train": train_s, "val": val_s}, _impl(opt))


# --- variant 2: the notes' train_model behaviour --------------------------------------------------
def run_notes(w: Workload, device: torch.device, epochs: int, ckpt_dir: Path) -> Run:
    """What the course notes' train_model does: DataLoader over a TensorDataset, ``.item()`` twice
    per step, a tqdm bar whose postfix is re-formatted every step, per-batch-mean averages, a
    print per epoch, the best model saved when val loss improves and a final save."""
    t0 = time.perf_counter()
    model = _model(w, device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    train_loader = DataLoader(TensorDataset(w.X, w.y), batch_size=w.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(SEED))
    val_loader = DataLoader(TensorDataset(w.Xv, w.yv), batch_size=w.batch_size)
    best = float("inf")
    t_loop = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, correct, batches = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"Epoch {epoch + 1}/{epochs} [Train]")
        for xb, yb in bar:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            total += loss.item()
            correct += (out.argmax(1) == yb).sum().item()
            batches += 1
            bar.set_postfix({"Loss": f"{total / batches:.4f}",
                             "Acc": f"{100 * correct / (batches * w.batch_size):.2f}%"})
        train_loss, train_acc = total / len(train_loader), correct / len(train_loader.dataset)
        model.eval()
        vtotal, vcorrect = 0.0, 0
        with torch.no_grad():
            for xb, yb in val_loader:
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                vtotal += F.cross_entropy(out, yb).item()
                vcorrect += (out.argmax(1) == yb).sum().item()
        val_loss, val_acc = vtotal / len(val_loader), vcorrect / len(val_loader.dataset)
        print(f"Epoch {epoch + 1}/{epochs}: Train Loss: {train_loss:.4f}, Train Acc: "
              f"{100 * train_acc:.2f}% | Val Loss: {val_loss:.4f}, Val Acc: {100 * val_acc:.2f}%")
        if val_loss < best:
            best = val_loss
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": opt.state_dict(), "loss": val_loss, "acc": val_acc},
                       ckpt_dir / "best_model.pth")
    t_loop = time.perf_counter() - t_loop
    torch.save({"epoch": epochs, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict()}, ckpt_dir / "final_model.pth")
    _sync(device)
    return Run(time.perf_counter() - t0, t_loop, {}, _impl(opt))


# --- variants 3..: optiloop.fit -------------------------------------------------------------------
class _Clock(ol.Callback):
    """Stamps epoch-boundary events at a given callback order; never runs on the step path."""

    def __init__(self, order: int, stamps: dict[str, list[float]], name: str):
        self.order, self.stamps, self.name = order, stamps, name

    def on_fit_start(self, state, logs):
        self.stamps["impl"] = [_impl(state.optimizer)]  # type: ignore[list-item]

    def on_epoch_start(self, state, logs):
        self.stamps.setdefault(f"start@{self.name}", []).append(time.perf_counter())

    def on_epoch_end(self, state, logs):
        self.stamps.setdefault(f"end@{self.name}", []).append(time.perf_counter())


def _span(stamps: dict[str, list[float]], a: str, b: str) -> float:
    return sum(y - x for x, y in zip(stamps.get(a, []), stamps.get(b, []), strict=True))


def _impl(opt: torch.optim.Optimizer) -> str:
    d = opt.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"


def _own_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> ol.StepOutput:
    """The default step's work, written as a user's ``step=``: what the custom path costs."""
    x, y = batch
    out = model(x)
    return ol.StepOutput(F.cross_entropy(out, y), outputs=out, targets=y)


def make_fit(fast: bool = True, progress: bool = True, checkpoint: bool = True, val: bool = True,
             every_seconds: float | None = None, raw_optimizer: bool = False, own_step: bool = False):
    """optiloop.fit with its defaults, or with one feature turned off (for the cost breakdown).
    ``every_seconds``: the Checkpoint's save interval (None: its default). ``raw_optimizer``:
    pass the very optimizer raw builds (one param group, for-loop AdamW), so that the only
    difference left is the loop itself. ``own_step``: the same work through ``step=``."""

    def run(w: Workload, device: torch.device, epochs: int, ckpt_dir: Path) -> Run:
        t0 = time.perf_counter()
        model = _model(w, device)
        stamps: dict[str, list[float]] = {}
        # Clocks around the ProgressBar (order 50) and Checkpoint (order 100) epoch-end work.
        cbs: list[ol.Callback] = [_Clock(-1000, stamps, "first"), _Clock(75, stamps, "mid"),
                                  _Clock(1000, stamps, "last")]
        if checkpoint:
            kw = {} if every_seconds is None else {"every_seconds": every_seconds}
            cbs.append(ol.Checkpoint(ckpt_dir, monitor="val_loss" if val else "train_loss", **kw))
        opt: Any = {"optimizer": torch.optim.AdamW(model.parameters(), lr=LR)} if raw_optimizer \
            else {"optimizer": "adamw", "lr": LR, "fast": fast}
        step = {"step": _own_step} if own_step else {}
        ol.fit(model, (w.X, w.y), val_data=(w.Xv, w.yv) if val else None, **opt, **step, epochs=epochs,
               batch_size=w.batch_size, metrics=["accuracy"], callbacks=cbs, device=device,
               seed=SEED, progress=progress)
        _sync(device)
        total = time.perf_counter() - t0
        loop = stamps["end@last"][-1] - stamps["start@first"][0]
        parts = {"checkpoint": _span(stamps, "end@mid", "end@last"),
                 "progress_epoch": _span(stamps, "end@first", "end@mid")
                 + _span(stamps, "start@first", "start@last")}
        return Run(total, loop, parts, str(stamps["impl"][0]))

    return run


# --- variant: PyTorch Lightning -------------------------------------------------------------------
def _lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None
    return pl


def run_lightning(w: Workload, device: torch.device, epochs: int, ckpt_dir: Path) -> Run:
    """A typical LightningModule: loss on the progress bar per step, accuracy per epoch,
    ModelCheckpoint on val_loss with save_last, DataLoaders over TensorDatasets."""
    pl = _lightning()
    t0 = time.perf_counter()

    class Module(pl.LightningModule):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def training_step(self, batch, _):
            x, y = batch
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            self.log("train_loss", loss, prog_bar=True)
            self.log("train_acc", (out.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            out = self.net(x)
            self.log("val_loss", F.cross_entropy(out, y), prog_bar=True)
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR)

    module = Module(_model(w, torch.device("cpu")))
    train = DataLoader(TensorDataset(w.X, w.y), batch_size=w.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(SEED))
    val = DataLoader(TensorDataset(w.Xv, w.yv), batch_size=w.batch_size)
    stamps: list[float] = []

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            stamps.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            stamps.append(time.perf_counter())

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_last=True)
    # logger=False: no CSV/TensorBoard files (optiloop keeps its history in memory);
    # everything else is Lightning's default, sanity-check validation included.
    trainer = pl.Trainer(max_epochs=epochs, accelerator=device.type, devices=1,
                         callbacks=[ckpt, Clock()], logger=False, enable_progress_bar=True,
                         enable_model_summary=False)
    trainer.fit(module, train, val)
    _sync(device)
    return Run(time.perf_counter() - t0, stamps[-1] - stamps[0], {},
               _impl(trainer.optimizers[0]))


VARIANTS: dict[str, tuple[str, Callable[..., Run]]] = {
    "raw": ("hand-written loop (for-loop AdamW)", run_raw),
    "notes": ("notes' train_model", run_notes),
    "fit": ("optiloop.fit defaults (fused AdamW, progress, checkpoint)", make_fit()),
    "fit_step": ("  defaults, the same work through step= (StepOutput with outputs)", make_fit(own_step=True)),
    "fit_every_epoch": ("  defaults, but checkpoint written every epoch (every_seconds=0)",
                        make_fit(every_seconds=0)),
    "fit_slow": ("optiloop.fit fast=False (for-loop AdamW)", make_fit(fast=False)),
    "fit_slow_noprog": ("  fast=False, no progress", make_fit(fast=False, progress=False)),
    "fit_slow_bare": ("  fast=False, no progress, no checkpoint",
                      make_fit(fast=False, progress=False, checkpoint=False)),
    "fit_slow_noval": ("  fast=False, no progress, no checkpoint, no val",
                       make_fit(fast=False, progress=False, checkpoint=False, val=False)),
    "fit_raw_opt": ("  raw's own optimizer object, no progress, no checkpoint",
                    make_fit(progress=False, checkpoint=False, raw_optimizer=True)),
    "lightning": ("Lightning Trainer (progress, checkpoint)", run_lightning),
}
MEMORY_VARIANTS = ["raw", "notes", "fit", "fit_slow", "lightning"]


def _available(name: str) -> bool:
    return name != "lightning" or _lightning() is not None


def timed(name: str, w: Workload, device: torch.device, epochs: int) -> Run:
    ckpt_dir = Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))
    try:
        gc.collect()
        with quiet_terminal(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return VARIANTS[name][1](w, device, epochs, ckpt_dir)
    finally:
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def _quiet_lightning_logs() -> None:
    import logging

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- peak memory: one fresh process per variant ---------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(name: str, workload: str, quick: bool, device: torch.device) -> None:
    """Run one variant once and print its peak RSS (total and above the pre-training baseline)."""
    _quiet_lightning_logs()
    w = workloads(quick, [workload])[0]
    _lightning()  # the same imports in every child: only training differs
    gc.collect()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    timed(name, w, device, w.epochs)
    peak = _status_kb("VmHWM")
    print(json.dumps({"variant": name, "base_kb": base, "peak_kb": peak, "delta_kb": peak - base}))


def measure_memory(workload: str, quick: bool, device: str,
                   repeats: int) -> dict[str, dict[str, int]]:
    """Peak RSS per variant, each run in a fresh process; the minimum over ``repeats`` processes
    (the allocator's high-water mark varies by a few MiB from run to run)."""
    runs: dict[str, list[dict[str, int]]] = {}
    for _ in range(repeats):
        for name in MEMORY_VARIANTS:
            if not _available(name):
                continue
            cmd = [sys.executable, __file__, "--child-memory", name, "--only", workload,
                   "--device", device] + (["--quick"] if quick else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
            if res.returncode != 0 or not lines:
                print(f"memory child {name} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            runs.setdefault(name, []).append(json.loads(lines[-1]))
    return {name: {k: min(r[k] for r in rs) for k in ("base_kb", "peak_kb", "delta_kb")}
            for name, rs in runs.items()}


# --- the report -----------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": str(os.cpu_count()),
            "torch": torch.__version__, "threads": str(torch.get_num_threads()),
            "interop_threads": str(torch.get_num_interop_threads()),
            "python": platform.python_version(), "optiloop": ol.__version__,
            "lightning": getattr(_lightning(), "__version__", "not installed")}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def report(results: dict[str, dict[str, list[Run]]], wls: list[Workload],
           memory: dict[str, dict[str, int]], args: argparse.Namespace, wall: float) -> str:
    m = machine()
    L: list[str] = ["# Performance", ""]
    L += ["Written by `python benchmarks/bench_fit.py" + (" --quick" if args.quick else "")
          + (f" --device {args.device}" if args.device != "cpu" else "")
          + " --out docs/performance.md`; do not edit by hand.", ""]
    L += ["## Machine", "",
          f"- CPU: {m['cpu']}, {m['cores']} cores; device: {args.device}",
          f"- torch {m['torch']} ({m['threads']} intra-op threads, "
          f"{m['interop_threads']} inter-op); Python {m['python']}; optiloop {m['optiloop']}; "
          f"Lightning {m['lightning']}",
          f"- repeats: {args.repeats} (each figure is the minimum), variants interleaved; "
          f"whole run {wall / 60:.1f} min; load average at start / end: {args.load_start} / "
          f"{_load()} (a load above the core count means other processes shared the CPU)", ""]
    L += ["## How it is measured", "",
          "One process, the same data, initial weights (seed 0), AdamW (lr 1e-3, weight decay "
          "0.01) and batch size for every variant. `raw` is a careful hand-written loop: tensors "
          "batched by index, a shuffle per epoch, loss and correct counts kept as tensors and read "
          "once per epoch, a validation pass, torch's default (for-loop) AdamW, no checkpoint, "
          "no progress bar. `notes` behaves like the course notes' `train_model` (DataLoader "
          "over a TensorDataset, `.item()` per step, tqdm postfix per step, best/final "
          "`torch.save`). "
          "`fit` is `optiloop.fit` with its defaults plus `optiloop.Checkpoint` with its defaults "
          "(best + last, atomic and fsynced; `last.pt` written once 60 s have passed since the "
          "last save and at the end of the run, a best epoch in between kept in memory until "
          "then, so runs shorter than a minute write once); the indented rows turn one feature off at a time, with the "
          "for-loop AdamW so that they compare with `raw`. Progress bars render into a "
          "terminal-like sink, so every bar does its formatting work.", "",
          "ms/epoch = (end of the last epoch − start of the first) / epochs, so it holds "
          "training, validation, checkpoints and progress output but not set-up; set-up and "
          "teardown per call (model, optimizer, loaders, Lightning's Trainer and sanity check, "
          "the notes' final save) are the separate `fixed ms/call` column. "
          "overhead µs/step = (ms/epoch − raw's ms/epoch) / steps per epoch; negative = faster "
          "than raw. The cost rows are differences of minima: on a shared 2-core machine, a few "
          "% either way (a negative cost) is run-to-run noise; compare the median column.", ""]
    verdicts: list[str] = []
    for w in wls:
        runs = results[w.key]
        best = {k: min(r.loop for r in v) / w.epochs for k, v in runs.items()}
        median = {k: statistics.median(r.loop for r in v) / w.epochs for k, v in runs.items()}
        fixed = {k: min(r.seconds - r.loop for r in v) for k, v in runs.items()}
        raw = best["raw"]
        L += [f"## {w.title}", "",
              f"{len(w.X)} train / {len(w.Xv)} val samples, {w.steps} steps/epoch, {w.epochs} "
              "epochs per run.", "",
              "| variant | optimizer | ms/epoch | × raw | overhead µs/step | median ms/epoch "
              "| fixed ms/call |", "|---|---|---:|---:|---:|---:|---:|"]
        for k, v in best.items():
            L.append(f"| {VARIANTS[k][0]} | {runs[k][0].impl} | {_ms(v)} | {v / raw:.3f} | "
                     f"{(v - raw) / w.steps * 1e6:+.1f} | {_ms(median[k])} | {_ms(fixed[k])} |")
        # epoch-boundary costs, per epoch
        def part(k: str, p: str, runs: dict[str, list[Run]] = runs, w: Workload = w) -> float:
            return min(r.parts.get(p, 0.0) for r in runs[k]) / w.epochs

        raw_train, raw_val = part("raw", "train"), part("raw", "val")
        L += ["", "Where the time goes (ms per epoch):", "",
              "| cost | ms/epoch | how |", "|---|---:|---|",
              f"| raw: training steps | {_ms(raw_train)} | timed inside the loop |",
              f"| raw: validation pass | {_ms(raw_val)} | timed inside the loop |"]
        if "fit_raw_opt" in best:
            loop = best["fit_raw_opt"] - raw
            L.append(f"| fit: the loop itself | {_ms(loop)} ({loop / w.steps * 1e6:+.1f} µs/step) "
                     "| fit given raw's own optimizer, no progress, no checkpoint − raw: the same "
                     "work, so the difference is the loop's (set-up excluded) |")
            L.append(f"| fit: biases and norm weights in a no-decay group | "
                     f"{_ms(best['fit_slow_bare'] - best['fit_raw_opt'])} | fit's AdamW (two param "
                     "groups, for-loop) − raw's optimizer (one group): the for-loop implementation "
                     "pays its Python overhead per group |")
        if "fit_slow_noval" in best:
            L.append(f"| fit: validation | {_ms(best['fit_slow_bare'] - best['fit_slow_noval'])} "
                     "| with − without val_data |")
            L.append(f"| fit: checkpoint (best + last, default every_seconds) | "
                     f"{_ms(best['fit_slow_noprog'] - best['fit_slow_bare'])} "
                     f"(timed: {_ms(part('fit', 'checkpoint'))}) | with − without Checkpoint; "
                     "timed = callback clocks around it |")
            if "fit_every_epoch" in best:
                L.append(f"| fit: writing the checkpoint every epoch instead | "
                         f"{_ms(best['fit_every_epoch'] - best['fit'])} | every_seconds=0 − default |")
            L.append(f"| fit: progress bar + summary line | "
                     f"{_ms(best['fit_slow'] - best['fit_slow_noprog'])} "
                     f"(epoch-boundary part timed: {_ms(part('fit', 'progress_epoch'))}) | "
                     "with − without progress |")
            L.append(f"| fit: fused instead of for-loop AdamW | "
                     f"{_ms(best['fit'] - best['fit_slow'])} | fast=True − fast=False |")
        L.append("")
        fit = best["fit"] / raw
        if w.key in ("a", "b"):
            verdicts.append(f"- {w.title}: fit ≤ 1.03× raw — "
                            f"**{'met' if fit <= 1.03 else 'NOT met'}** ({fit:.3f}×); "
                            "fit faster than raw — "
                            f"**{'met' if fit < 1 else 'NOT met'}**.")
        else:
            verdicts.append(f"- {w.title}: fit is {fit:.3f}× raw (no target).")
        if w.key == "a" and "lightning" in best:
            speedup = best["lightning"] / best["fit"]
            verdicts.append(f"- {w.title}: fit ≥ 1.7× faster than Lightning — "
                            f"**{'met' if speedup >= 1.7 else 'NOT met'}** ({speedup:.2f}×).")
    if not _available("lightning"):
        L += ["Lightning is not installed (`pip install -e '.[bench]' -c constraints.txt`): "
              "its rows are skipped.", ""]
    L += ["## Peak memory, workload (b)", ""]
    if memory:
        L += ["Each variant in a fresh process; peak RSS counter reset after data and model "
              "exist; delta = peak during training − RSS before it; minimum over 3 processes "
              "(1 with --quick): the high-water mark varies by a few MiB between identical "
              "runs.", "",
              "| variant | peak RSS MiB | training delta MiB | delta vs raw |",
              "|---|---:|---:|---:|"]
        raw_d = memory.get("raw", {}).get("delta_kb")
        for k, v in memory.items():
            rel = f"{v['delta_kb'] / raw_d:.2f}×" if raw_d else "–"
            L.append(f"| {VARIANTS[k][0]} | {v['peak_kb'] / 1024:.1f} | "
                     f"{v['delta_kb'] / 1024:.1f} | {rel} |")
        if raw_d and "fit" in memory:
            fit_peak, raw_peak = memory["fit"]["peak_kb"], memory["raw"]["peak_kb"]
            ok = fit_peak <= raw_peak * 1.05
            verdicts.append(f"- (b) peak memory of fit within 5% of raw — "
                            f"**{'met' if ok else 'NOT met'}** "
                            f"(peak RSS {fit_peak / raw_peak:.3f}×; training delta "
                            f"{(memory['fit']['delta_kb'] - raw_d) / 1024:+.1f} MiB).")
    else:
        L.append("Not measured in this run (`--no-memory`).")
    L += ["", "## Targets", "", *verdicts, ""]
    if args.device == "cpu":
        L += ["## GPU", "", "Not measured in this run. Run `python benchmarks/bench_fit.py "
              "--device cuda --out docs/performance-cuda.md` on a CUDA machine.", ""]
    return "\n".join(L)


def _other_sections(path: Path) -> str:
    """Sections other benchmarks keep in the same file between their own markers (e.g.
    bench_startup.py's): carried over, so re-running this one does not drop them."""
    import re

    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    found = re.finditer(r"(<!-- (\w+): begin -->.*?<!-- \2: end -->)", old, flags=re.S)
    return "".join("\n" + m.group(1) + "\n" for m in found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the Markdown report here (else stdout)")
    p.add_argument("--quick", action="store_true", help="few epochs, 1 repeat: a smoke run")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per variant (default 5; quick 1)")
    p.add_argument("--only", nargs="*", choices=["a", "b", "c"], help="workloads to run")
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="variants to run")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-process peak-RSS column")
    p.add_argument("--child-memory", metavar="VARIANT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.child_memory:
        child_memory(args.child_memory, args.only[0], args.quick, device)
        return 0
    args.repeats = args.repeats or (1 if args.quick else 5)
    _quiet_lightning_logs()
    names = [n for n in (args.variants or VARIANTS) if _available(n)]
    if "raw" not in names:
        names.insert(0, "raw")
    t_start = time.perf_counter()
    args.load_start = _load()
    wls = workloads(args.quick, args.only)
    results: dict[str, dict[str, list[Run]]] = {}
    for w in wls:
        for n in names:  # warm-up: imports, allocator, kernels; not timed
            timed(n, w, device, 1)
        runs: dict[str, list[Run]] = {n: [] for n in names}
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]  # rotate each repeat
            for n in order:
                runs[n].append(timed(n, w, device, w.epochs))
                ms = runs[n][-1].loop / w.epochs * 1e3
                print(f"{w.key} rep {rep} {n:16s} {ms:8.1f} ms/epoch", file=sys.stderr, flush=True)
        results[w.key] = runs
    memory = {} if args.no_memory or (args.only and "b" not in args.only) else \
        measure_memory("b", args.quick, args.device, 1 if args.quick else 3)
    text = report(results, wls, memory, args, time.perf_counter() - t_start)
    if args.out:
        write_text(args.out, text + _other_sections(args.out))
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
