"""What optiloop.Checkpoint costs per epoch, and what a cheaper on_epoch_end would save.

An experiment, not part of the library: it swaps ``Checkpoint.on_epoch_end`` in this process only
(src/ is untouched) and times ``optiloop.fit`` on bench_fit's workloads, variants interleaved.

    python benchmarks/exp_checkpoint.py --only a c --repeats 7

Variants:
    current    optiloop's Checkpoint as it is: the snapshot is serialized once per file written
               (twice in an epoch that improves the best), each file written, fsynced, replaced.
    once-link  serialize once per epoch, write last.pt (atomic, fsynced), and make best.pt a hard
               link to the same bytes (atomic link + replace): one torch.save, one fsync.
    none       no Checkpoint: the floor.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import optiloop as ol
from optiloop import checkpoint as ck
from optiloop.files import atomic_open

sys.path.insert(0, str(Path(__file__).parent))
import bench_fit as bench  # noqa: E402  (sibling script, not a package)

CURRENT = ck.Checkpoint.on_epoch_end


def _write(data: bytes, path: Path, keep_previous: bool) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
        if keep_previous and path.exists():
            os.replace(path, ck.previous_path(path))


def once_link(self: ck.Checkpoint, state, logs) -> None:
    """The proposed Checkpoint.on_epoch_end (see the docstring at the top)."""
    improved = False
    if self.monitor is not None:
        improved = self.monitor.update(self.monitor.value(logs))
        if improved:
            self.best_epoch = state.epoch
    buf = io.BytesIO()
    torch.save(ck.training_state(state), buf)
    data = buf.getvalue()
    if self.save_last:
        _write(data, self.last_path, keep_previous=True)
    if improved:
        if not self.save_last:
            _write(data, self.best_path, keep_previous=False)
            return
        tmp = self.best_path.with_name(f".{self.best_path.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.last_path, tmp)  # same inode: later last.pt replacements leave it be
        except OSError:  # no hard links on this file system: write the bytes again
            _write(data, self.best_path, keep_previous=False)
            return
        os.replace(tmp, self.best_path)


def run(w: bench.Workload, kind: str, epochs: int) -> float:
    ck.Checkpoint.on_epoch_end = once_link if kind == "once-link" else CURRENT  # type: ignore
    try:
        with tempfile.TemporaryDirectory() as d, bench.quiet_terminal():
            cbs = [] if kind == "none" else [ol.Checkpoint(d)]
            model = bench._model(w, torch.device("cpu"))
            t0 = time.perf_counter()
            ol.fit(model, (w.X, w.y), val_data=(w.Xv, w.yv), optimizer="adamw", lr=bench.LR,
                   epochs=epochs, batch_size=w.batch_size, metrics=["accuracy"], callbacks=cbs,
                   device="cpu", seed=bench.SEED)
            return (time.perf_counter() - t0) / epochs
    finally:
        ck.Checkpoint.on_epoch_end = CURRENT  # type: ignore[method-assign]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=["a", "b", "c"], default=["a", "c"])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    kinds = ["current", "once-link", "none"]
    for w in bench.workloads(False, args.only):
        for k in kinds:
            run(w, k, 1)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.repeats):
            for k in kinds[rep % 3 :] + kinds[: rep % 3]:
                times[k].append(run(w, k, w.epochs))
        for k in kinds:
            print(f"{w.key} {k:10s} min {min(times[k]) * 1e3:7.2f}  "
                  f"median {statistics.median(times[k]) * 1e3:7.2f} ms/epoch")


if __name__ == "__main__":
    main()
