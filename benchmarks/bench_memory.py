"""Memory per process, DDP vs FSDP: the parameters, gradients and optimizer state each process
holds while training the same few-million-parameter model with ``optiloop.fit``.

    python benchmarks/bench_memory.py --out docs/memory.md      # 2 and 4 processes (~3 min on 2 cores)
    python benchmarks/bench_memory.py --procs 2                 # prints the report only

Method (why each choice):
- Every figure comes from a real run: ``torchrun --nproc_per_node=N`` (gloo, CPU) starts this
  script's worker, which trains with ``fit(strategy=...)`` and AdamW (two state tensors per
  parameter, the common case) and measures from inside the run, through callbacks.
- Held bytes are counted per tensor storage, each storage once: a view does not count twice,
  and FSDP's padding of uneven shards counts (it is allocated). Parameters and gradients are
  read in ``on_before_optimizer_step`` (gradients present), optimizer state after the first
  step. Under FSDP these are the local shards (``DTensor.to_local()``).
- Each process's peak resident memory during training is also reported (``VmHWM`` after a reset
  at fit start, minus the resident memory then): it includes what the count leaves out
  (activations, DDP's gradient buckets, FSDP's all-gathered blocks during forward and backward,
  the allocator's slack), so it is the rougher figure. It is measured twice: with glibc's
  default malloc, which after the first large frees keeps freed blocks of a few MiB resident
  (its mmap threshold rises), and with ``MALLOC_MMAP_THRESHOLD_=65536``, which returns them to
  the system. FSDP allocates and frees a gathered block and a gradient buffer per block in
  every forward and backward, so the first figure shows the allocator's retention more than
  what FSDP holds; the second shows what is really resident.
- The largest figure over the ranks is reported: a process's memory limit is what sharding
  must fit under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve()
WIDTH, BLOCKS, FEATURES, CLASSES = 384, 5, 64, 10  # about 5.9 million parameters
SAMPLES, BATCH = 2048, 64


class Block(nn.Module):
    """A transformer's MLP block: norm, up-projection, GELU, down-projection, residual."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(FEATURES, WIDTH)
        self.blocks = nn.ModuleList(Block(WIDTH) for _ in range(BLOCKS))
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def held_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (DTensors: their local shards)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# --- the worker: one process of a torchrun job --------------------------------------------------
def worker(strategy: str, out: Path) -> None:
    import optiloop as ol

    class Meter(ol.Callback):
        figures: dict = {}

        def on_fit_start(self, state, logs):
            self.figures["rss_start_kb"] = _status_kb("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # the peak-RSS counter starts again from here
            except OSError:
                pass

        def on_before_optimizer_step(self, state, logs):
            if "grads" not in self.figures:
                params = list(state.unwrapped_model.parameters())
                self.figures["params"] = held_bytes(params)
                self.figures["grads"] = held_bytes(p.grad for p in params)
                self.figures["numel"] = sum(p.numel() for p in params)  # the whole model's

        def on_step_end(self, state, logs):
            if "optimizer" not in self.figures:
                self.figures["optimizer"] = held_bytes(v for s in state.optimizer.state.values()
                                                       for v in s.values() if isinstance(v, torch.Tensor))

        def on_fit_end(self, state, logs):
            self.figures["rss_peak_kb"] = _status_kb("VmHWM")

    g = torch.Generator().manual_seed(0)
    X = torch.randn(SAMPLES, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    torch.manual_seed(0)
    meter = Meter()
    ol.fit(Net(), (X, y), optimizer="adamw", lr=1e-3, epochs=1, batch_size=BATCH, progress=False, seed=0,
           callbacks=[meter], strategy=strategy)
    rank = int(os.environ.get("RANK", 0))
    (out / f"{strategy}-rank{rank}.json").write_text(json.dumps(meter.figures))


# --- the driver ---------------------------------------------------------------------------------
RETURN_FREED = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc: blocks over 64 KiB are mmapped, freed at once


def run(strategy: str, procs: int, allocator: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **allocator,
               "PYTHONPATH": f"{HERE.parents[1] / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               str(HERE), "--worker", strategy, "--tmp", tmp]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"{strategy} x{procs} failed:\n{p.stderr[-3000:]}")
        ranks = [json.loads((Path(tmp) / f"{strategy}-rank{r}.json").read_text()) for r in range(procs)]
    row = {k: max(r[k] for r in ranks) for k in ("params", "grads", "optimizer", "numel")}
    row["rss_growth_kb"] = max(r["rss_peak_kb"] - r["rss_start_kb"] for r in ranks)
    row["rss_start_kb"] = max(r["rss_start_kb"] for r in ranks)
    row.update(strategy=strategy, procs=procs, held=row["params"] + row["grads"] + row["optimizer"])
    return row


def mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def report(rows: list[dict], png: str | None) -> str:
    numel = rows[0]["numel"]
    lines = [
        "# Memory per process: DDP vs FSDP",
        "",
        f"Measured by `python {Path(*HERE.parts[-2:])}` on {date.today().isoformat()}: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores shared with other work (the resident-memory column moves by a few MiB "
        f"from run to run; the held-bytes columns are exact and repeat), Python {platform.python_version()}, "
        f"torch {torch.__version__}, gloo on CPU.",
        "",
        f"Model: {numel:,} parameters (float32), {BLOCKS} transformer MLP blocks of width {WIDTH} in an "
        f"`nn.ModuleList` (FSDP shards each block, then the root), AdamW (two state tensors per parameter), "
        f"batch {BATCH} per process, one epoch of {SAMPLES} samples.",
        "",
        "| strategy | processes | parameters MiB | gradients MiB | AdamW state MiB | held MiB | vs DDP | "
        "peak RSS growth MiB, freed returned | (glibc default) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ddp = {r["procs"]: r["held"] for r in rows if r["strategy"] == "ddp"}
    for r in rows:
        ratio = r["held"] / ddp[r["procs"]] if r["procs"] in ddp else float("nan")
        lines.append(f"| {r['strategy']} | {r['procs']} | {mib(r['params'])} | {mib(r['grads'])} | "
                     f"{mib(r['optimizer'])} | {mib(r['held'])} | {ratio:.2f} | {mib(r['rss_growth_kb'] * 1024)} | "
                     f"{mib(r['rss_default_kb'] * 1024)} |")
    lines += [
        "",
        "Held MiB: parameters + gradients + optimizer state per process (the largest over the ranks), "
        "each tensor storage counted once. Peak RSS growth: the process's peak resident memory during "
        "training minus its resident memory when fit started (parameters and optimizer already built); "
        "it adds activations and communication buffers (DDP's gradient buckets, FSDP's gathered blocks "
        "and unsharded gradients of one block at a time). First with `MALLOC_MMAP_THRESHOLD_=65536`, so "
        "that memory freed is returned to the system; then with glibc's default malloc, which keeps the "
        "per-block buffers FSDP frees resident once its mmap threshold has risen: that column measures "
        "the allocator's retention as much as FSDP.",
    ]
    if png:
        lines += ["", f"![held bytes per process]({Path(png).name})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['strategy'].upper()}\n{r['procs']} processes" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(rows)
    for key, name, color in (("params", "parameters", "#4c72b0"), ("grads", "gradients", "#dd8452"),
                             ("optimizer", "AdamW state", "#55a868")):
        values = [r[key] / 2**20 for r in rows]
        ax.bar(labels, values, bottom=bottom, label=name, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom")
    ax.set_ylabel("MiB held per process")
    ax.set_ylim(0, max(bottom) * 1.3)  # room for the totals and the legend above the bars
    ax.set_title(f"Parameters + gradients + AdamW state per process, {rows[0]['numel'] / 1e6:.1f}M-parameter model")
    ax.legend(loc="upper center", ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="2,4", help="numbers of processes, comma-separated (default 2,4)")
    p.add_argument("--out", help="write the report here (and the figure beside it as memory.png)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, Path(a.tmp))
        return
    rows = []
    for n in a.procs.split(","):
        for s in ("ddp", "fsdp"):
            row = run(s, int(n), RETURN_FREED)
            row["rss_default_kb"] = run(s, int(n), {})["rss_growth_kb"]
            rows.append(row)
    png = str(Path(a.out).with_name("memory.png")) if a.out else None
    if png:
        plot(rows, png)
    text = report(rows, png)
    if a.out:
        sys.path.insert(0, str(HERE.parents[1] / "src"))
        from optiloop.files import write_text

        write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
