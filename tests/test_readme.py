"""Every shell command README.md shows runs as written, in order, from a folder holding what the
project ships (a copy of examples/): the lines of its ```bash blocks, and the ``$ `` lines of its
transcripts, whose shown output must match what the command prints. The walk-through's Python
snippet runs too. A few commands are not run; NOT_RUN says which and why.

A plain ``optiloop ARGS`` line (no shell syntax in it) runs in this process, through the very
function the ``optiloop`` console script calls (``optiloop.cli.main``), with the arguments the
shell would pass: the same command, without paying an interpreter and torch start-up for each of
thirty lines (the doctor aside: its script's output
is a child process's). Every other line runs through bash, with ``optiloop`` and ``python`` on PATH.
The Python snippet runs as ``python snippet.py`` would run it (``runpy``), in this process too.

    python -m pytest -q tests/test_readme.py        # about a minute on 2 CPU cores (54 s measured)

Matching a transcript: shown lines match printed lines in order; a line ``...`` stands for any
number of lines, ``...`` inside a line for any text; numbers match to 2% (so a transcript stays
true on another CPU, where the last digits of a float may differ), times (``0.4s``, ``10.3 s``)
and the time part of folder names match any value; the printed output may go on after the last
shown line.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import HANG

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Commands the test leaves out, by how they start, and why.
NOT_RUN = {
    "python -m pip install": "installs into the environment it runs in (and needs the network); .ci/run runs it "
                            "in a fresh one",
    "python -m pytest": "the test suite itself, of which this test is a part",
    "torchrun": "starts several processes for minutes on 2 cores; test_distributed.py, test_fsdp.py and "
                "test_cli_resume.py run the same commands under 2 processes",
    "optiloop export runs/big": "exports the run the torchrun line before it makes",
    "optiloop tune --data wine --storage postgresql": "needs a PostgreSQL server at db; tests/test_tune.py and "
                                                      "tests/test_compare_study.py run studies on a throwaway one "
                                                      "(tests/conftest.py, postgres_url)",
}


@dataclass
class Shown:
    """A command the README shows, where, and the output it shows (transcripts only)."""

    command: str
    line: int
    output: list[str] | None = None  # None: a ```bash block line (exit code 0 is all it promises)
    python: bool = False  # the walk-through's Python snippet, run as a script
    skipped: str | None = field(default=None)


def shown_commands(text: str) -> list[Shown]:
    """The README's commands in document order."""
    found: list[Shown] = []
    lines = text.splitlines()
    i = 0
    walkthrough = False
    while i < len(lines):
        if lines[i].startswith("## "):
            walkthrough = lines[i].startswith("## Ten minutes")
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        lang, start = fence.group(1), i + 1
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        body = lines[start:end]
        if lang == "bash":
            for k, line in enumerate(body):
                if line.strip() and not line.strip().startswith("#"):
                    found.append(Shown(line.strip(), start + k + 1))
        elif lang == "python" and walkthrough:
            found.append(Shown("\n".join(body), start, python=True))
        elif lang == "":
            for k, line in enumerate(body):
                if line.startswith("$ "):
                    out = []
                    for rest in body[k + 1:]:
                        if rest.startswith("$ "):
                            break
                        out.append(rest)
                    found.append(Shown(line[2:].strip(), start + k + 1, output=out))
        i = end + 1
    for s in found:
        s.skipped = next((why for prefix, why in NOT_RUN.items() if s.command.startswith(prefix)), None)
    return found


_NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
# (a minus sign only where it cannot be a hyphen: "adamw-20261122" is a name, not -20261122)
_PIECES = re.compile(r"(\.\.\.)|(\d{8}-\d{6})|(\d+(?:\.\d+)? ?s\b)|((?:(?<![\w.])-)?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def line_pattern(shown: str) -> tuple[re.Pattern, list[float]]:
    """A shown output line as a regex (numbers captured, times and ``...`` free) and its numbers."""
    pattern, numbers, pos = "", [], 0
    for m in _PIECES.finditer(shown):
        pattern += re.escape(shown[pos:m.start()])
        if m.group(1):
            pattern += ".*"
        elif m.group(2):
            pattern += r"\d{8}-\d{6}(?:-\d+)?"
        elif m.group(3):
            pattern += r"\d+(?:\.\d+)? ?s\b"
        else:
            pattern += "(" + _NUMBER + ")"
            numbers.append(float(m.group(4)))
        pos = m.end()
    return re.compile(pattern + re.escape(shown[pos:]) + r"\s*$"), numbers


def matches(shown: str, printed: str) -> bool:
    pattern, numbers = line_pattern(shown.rstrip())
    m = pattern.match(printed.rstrip())
    return m is not None and all(math.isclose(float(g), n, rel_tol=0.02, abs_tol=1e-6)
                                 for g, n in zip(m.groups(), numbers, strict=True))


def check_transcript(shown: list[str], printed: list[str]) -> str | None:
    """None if the printed lines show what the README shows; else what differs."""
    at, free = 0, False
    for want in shown:
        if want.strip() == "...":
            free = True
            continue
        candidates = range(at, len(printed)) if free else range(at, min(at + 1, len(printed)))
        hit = next((j for j in candidates if matches(want, printed[j])), None)
        if hit is None:
            near = printed[at:at + 3] if at < len(printed) else ["(no more output)"]
            return f"shown: {want!r}\nprinted next: {near!r}"
        at, free = hit + 1, False
    return None


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A folder with what the project ships, and `optiloop` / `python` on PATH as a user has them
    (this interpreter, this checkout's optiloop)."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = work.parent / f"{work.name}-bin"
    bin_dir.mkdir()
    for name, target in (("optiloop", f'exec "{sys.executable}" -m optiloop "$@"'),
                         ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{target}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return work, env


_SHELL_SYNTAX = set("$`|&;<>(){}~\\")  # quotes are shlex's as they are bash's; globs: see below


def run_shown(command: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one README line from ``work``: a plain ``optiloop ARGS`` in this process, anything else
    through bash."""
    argv = shlex.split(command, comments=True)
    # (the doctor's script is a child process writing to the real stdout: it goes through bash)
    plain = argv[:1] == ["optiloop"] and argv[1:2] != ["doctor"] and not _SHELL_SYNTAX & set(command.split("#")[0])
    # a word bash would expand as a glob (model.hidden=[256,128] matches no file: bash keeps it as it is)
    plain = plain and not any(set(w) & set("*?[") and glob.glob(str(work / w)) for w in argv)
    if not plain:
        return subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=HANG)
    from optiloop.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with _in(work), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            warnings.simplefilter("default")  # printed on stderr, as in a terminal
            code = main(argv[1:])
    except SystemExit as e:  # argparse's own exits (--help, a usage error)
        code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _in(folder: Path):
    """Work from ``folder`` (contextlib.chdir, which Python 3.10 lacks)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def test_the_readme_lists_what_it_does_not_run_and_every_file_it_names_ships():
    commands = shown_commands(README.read_text())
    skipped = {s.skipped for s in commands if s.skipped}
    assert skipped == set(NOT_RUN.values()), "a NOT_RUN entry matches no command any more"
    assert len([s for s in commands if not s.skipped]) >= 30
    for s in commands:
        for path in re.findall(r"\bexamples/[\w./-]+", s.command):
            assert (ROOT / path).exists(), (s.line, path)  # a file the README names ships


@pytest.mark.slow
def test_every_command_the_readme_shows_runs_as_written(shell):
    work, env = shell
    done: dict[str, subprocess.CompletedProcess] = {}
    failures = []
    for s in shown_commands(README.read_text()):
        if s.skipped:
            continue
        if s.python:  # a script of its own, run as python would run it, in this process
            (work / "snippet.py").write_text(s.command + "\n")
            printed = io.StringIO()
            with _in(work), contextlib.redirect_stdout(printed):
                runpy.run_path(str(work / "snippet.py"), run_name="__main__")
            last = printed.getvalue().strip().splitlines()[-1]
            if last != "['grignolino' 'grignolino' 'grignolino' 'barbera' 'barbera']":
                failures.append(f"README line {s.line}: the Python snippet printed {printed.getvalue()[-500:]}")
            continue
        key = shlex.join(shlex.split(s.command, comments=True))
        proc = done.get(key)  # shown twice (a block, then its transcript): run once, its output checked
        if proc is None:
            proc = done[key] = run_shown(s.command, work, env)
        error = s.output is not None and bool(s.output) and s.output[0].startswith("error:")
        if proc.returncode != (2 if error else 0):
            failures.append(f"README line {s.line}: {s.command}\nexit code {proc.returncode}\n{proc.stderr[-2000:]}")
            continue
        if s.output:
            printed = (proc.stderr if error else proc.stdout).splitlines()
            why = check_transcript(s.output, printed)
            if why:
                failures.append(f"README line {s.line}: {s.command}\n{why}")
    assert not failures, "\n\n".join(failures)


def test_the_transcript_matcher_keeps_numbers_and_lets_times_go():
    assert matches("epoch 2/30  val_acc 0.8496  lr 0.000997  1.1s", "epoch 2/30  val_acc 0.8499  lr 0.000997  3.7s")
    assert not matches("epoch 2/30  val_acc 0.8496", "epoch 2/30  val_acc 0.7496")
    assert matches("files in runs/digits-mlp-adamw-20261122-053544/: best.pt",
                   "files in runs/digits-mlp-adamw-20261206-101010-2/: best.pt")
    assert matches("optiloop train: .../examples/wine.csv (138 train",
                   "optiloop train: /x/y/examples/wine.csv (138 train")
    assert check_transcript(["a 1", "...", "c 3"], ["a 1", "b 2", "b 2", "c 3", "d"]) is None
    assert check_transcript(["a 1", "c 3"], ["a 1", "b 2", "c 3"]) is not None  # no "...": the next line
