"""Start-up time of the command line: whole processes, as a user waits for them.

    python benchmarks/bench_startup.py                                  # prints the table
    python benchmarks/bench_startup.py --out docs/performance.md        # (re)writes its section there
    python benchmarks/bench_startup.py --baseline /path/to/other/src --baseline-name "before (abc123)"

Method (why each choice):
- Each figure is one whole ``python -m optiloop ...`` process, start to exit (interpreter start-up,
  imports, the work, teardown): what a user waits for. Nothing is measured inside the process.
- ``--repeats`` runs per command (default 7), reported as the minimum (the machine's best case:
  noise only ever adds time) and the median (what to expect on a busy machine). Commands run
  interleaved, one repeat of each at a time, so a slow phase of a shared machine hits all alike.
- ``train --epochs 1`` trains one epoch of the default run (digits, MLP) into a fresh folder: its
  figure is start-up plus about a second of real work, so it shows what start-up adds to a short run.
- The floor is a bare ``python -c`` that imports torch and builds one optimizer: what any training
  command must pay. The report gives ``train --epochs 1`` as a multiple of it (target: 1.3x).
- ``--baseline SRC`` times the same commands with another checkout's ``src`` on PYTHONPATH (e.g.
  the code before the lazy imports), in the same interleaved rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# The floor of any training command: torch's import and one optimizer built (which imports
# torch._dynamo), in a bare process, with no optiloop at all.
FLOOR_CODE = "import torch; torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())"
FLOOR = "floor: python -c 'import torch; build one optimizer'"
TRAIN = "optiloop train --epochs 1 (digits, one epoch)"
TARGET = 1.3  # the main job's start-up at most this many times its floor
COMMANDS = [
    (FLOOR, ["-c", FLOOR_CODE]),
    ("optiloop --help", ["--help"]),
    ("optiloop train --help", ["train", "--help"]),
    ("optiloop list", ["list"]),
    ("optiloop schedule cosine --epochs 5", ["schedule", "cosine", "--epochs", "5"]),
    (TRAIN, ["train", "--epochs", "1"]),
]


def _argv(args: list[str]) -> list[str]:
    return [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "optiloop", *args]
BEGIN, END = "<!-- bench_startup: begin -->", "<!-- bench_startup: end -->"


def run_once(src: Path, args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(_argv(args), cwd=cwd, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with {src}: {proc.stderr.strip()[-500:]}")
    return seconds


def imports_torch(src: Path, args: list[str], cwd: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(src), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-X", "importtime", *_argv(args)[1:]], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    return any(re.search(r"\|\s*torch$", line) for line in proc.stderr.splitlines())


def measure(sources: dict[str, Path], repeats: int) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="optiloop-startup-"))
    try:
        for src in sources.values():  # warm-up: byte-compile, fill the OS file cache
            for _, args in COMMANDS:
                run_once(src, args, work)
        for r in range(repeats):
            for label, src in sources.items():
                for name, args in COMMANDS:
                    times.setdefault((label, name), []).append(run_once(src, args, work))
            shutil.rmtree(work / "runs", ignore_errors=True)  # one train folder per repeat
            print(f"repeat {r + 1}/{repeats} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def report(sources: dict[str, Path], times: dict[tuple[str, str], list[float]], repeats: int,
           torch_seen: dict[tuple[str, str], bool], minutes: float, load: tuple[str, str]) -> str:
    import torch

    labels = list(sources)
    lines = [BEGIN, "## Start-up of the command line", "",
             f"Written by `python benchmarks/bench_startup.py{' --baseline ...' if len(labels) > 1 else ''}"
             " --out docs/performance.md` (this section only); method in the script's docstring.", "",
             f"- Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch "
             f"{torch.__version__}; {repeats} runs per command, interleaved; whole run {minutes:.1f} min; "
             f"load average at start / end: {load[0]} / {load[1]}",
             "- Whole-process seconds (`python -m optiloop ...`, start to exit): minimum and median of "
             f"{repeats} runs. \"torch\": whether the process imports torch.", ""]
    head = ["command"]
    for label in labels:
        head += [f"{label}: min s", f"{label}: median s", f"{label}: torch"]
    lines += ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name, _ in COMMANDS:
        cells = [f"`{name}`"]
        for label in labels:
            t = times[(label, name)]
            cells += [f"{min(t):.2f}", f"{statistics.median(t):.2f}",
                      "yes" if torch_seen[(label, name)] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    floor = [t for label in labels for t in times[(label, FLOOR)]]  # the same bare command in every column
    for label in labels:
        train = times[(label, TRAIN)]
        ratio, median_ratio = min(train) / min(floor), statistics.median(train) / statistics.median(floor)
        lines.append(f"- {label}: `train --epochs 1` takes {ratio:.2f}x its floor (minima; medians "
                     f"{median_ratio:.2f}x; the floor's runs of every column pooled); target at most {TARGET}x: "
                     f"{'met' if ratio <= TARGET else 'NOT met'}")
    lines += ["", "What the figures hold: `--help` and `list` import no torch (names, defaults and help come "
              "from torch-free records: `optiloop.optim.OPTIMIZERS`, `optiloop.schedules.SCHEDULERS`, "
              "`optiloop.models`), so they cost the interpreter plus argparse; `list` also imports numpy "
              "(the data-set table lives in `optiloop.datasets`). Commands that compute still pay torch's "
              "own import, and `train` pays two costs that are not optiloop's: torch's import and "
              "`torch._dynamo`, which torch imports when the first optimizer is constructed (any "
              "`torch.optim` class, with or without optiloop): together the floor row. The built-in "
              "data sets are read with numpy from scikit-learn's package folder and numbers are "
              "standardized with numpy, so scikit-learn is not imported (only a table with text "
              "categories, dates or empty cells needs its pipeline). The two pictures of a run (curves.png, "
              "confusion_matrix.png) are drawn by a helper process that `train` starts before it imports "
              "torch (`optiloop.drawing`): matplotlib's import overlaps torch's on the other core, and the "
              "pictures are drawn side by side, one forked drawer each, while the command writes the "
              "run's other files; it waits for them before it lists the folder. What remains above the "
              "floor: the config and data, the epoch itself, and the longer of the two pictures. A shared "
              "machine (see the load average) spreads the medians; the minima are the better comparison.",
              "", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of ``path`` (between its markers), or append it."""
    from optiloop.files import write_text

    text = path.read_text() if path.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text(path, text)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baseline", metavar="SRC", help="another checkout's src folder to time alongside")
    p.add_argument("--baseline-name", default="before (baseline)",
                   help="its column label, e.g. 'before (eff3f3e)'")
    p.add_argument("--out", metavar="FILE", help="write the section into this Markdown file")
    args = p.parse_args()
    sources = {"this checkout": HERE / "src"}
    if args.baseline:
        sources = {args.baseline_name: Path(args.baseline).resolve(), "after (this checkout)": HERE / "src"}
    load0 = _load()
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="optiloop-startup-"))
    torch_seen = {(label, name): imports_torch(src, cmd, work)
                  for label, src in sources.items() for name, cmd in COMMANDS}
    shutil.rmtree(work, ignore_errors=True)
    times = measure(sources, args.repeats)
    load1 = _load()
    section = report(sources, times, args.repeats, torch_seen, (time.perf_counter() - t0) / 60,
                     (load0, load1))
    print(section)
    if args.out:
        write_section(Path(args.out), section)
        print(f"wrote the section into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
