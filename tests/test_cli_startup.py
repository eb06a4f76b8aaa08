"""A CLI that starts instantly: what each command imports, seen from a real process.

Behaviour, not timing (the figures are benchmarks/bench_startup.py's): ``--help``, every
subcommand's ``--help`` and ``list`` import no torch; ``train`` imports scikit-learn only for a
table that needs its pipeline (text categories, dates, empty cells): never for the built-in sets
(read with numpy) nor for standardizing numbers; and matplotlib only to draw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG

import optiloop
from optiloop.cli import COMMANDS

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "sklearn", "matplotlib", "pandas")


def imported(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m optiloop ARGS``; the top-level packages it imported."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "optiloop", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=HANG)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "optiloop" in names  # the report is really there
    return proc, names


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["list"], *([name, "--help"] for name in COMMANDS)],
                         ids=lambda a: " ".join(a))
def test_help_and_list_import_no_torch(tmp_path, args):
    proc, names = imported(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert proc.stdout.strip()


@pytest.mark.slow
def test_list_torch_defaults_does_import_torch(tmp_path):
    proc, names = imported(tmp_path, "list", "--torch-defaults")
    assert proc.returncode == 0 and "torch" in names  # the check above would see an import


TRAIN = """
import json, sys
from optiloop.config import resolve
from optiloop.runs import RunFolder, TrainingRun

seen = {}
draw = RunFolder.write_curves

def spy(self, *args, **kwargs):
    seen["matplotlib_before_drawing"] = "matplotlib" in sys.modules
    return draw(self, *args, **kwargs)

RunFolder.write_curves = spy
run = TrainingRun(resolve(sets=sys.argv[1:] + ["train.epochs=1"]), out="run")
run.train(progress=False)
seen["matplotlib_after"] = "matplotlib" in sys.modules
seen["sklearn"] = "sklearn" in sys.modules
print(json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("sets", "sklearn"), [
    ([], False),  # the default run: digits
    (["data.name=wine"], False),
    (["data.name=data.npz"], False),
    (["data.name=table.csv"], True),  # a text column: one-hot encoded by scikit-learn's pipeline
])
def test_train_imports_sklearn_only_for_a_table_that_needs_it_and_matplotlib_only_to_draw(tmp_path, sets, sklearn):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.normal(size=(60, 3)), y=rng.integers(0, 2, 60))
    rows = [f"{rng.normal():.3f},{rng.choice(['a', 'b'])},{rng.integers(0, 2)}" for _ in range(60)]
    (tmp_path / "table.csv").write_text("x,kind,y\n" + "\n".join(rows) + "\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", TRAIN, *sets], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"matplotlib_before_drawing": False, "matplotlib_after": True, "sklearn": sklearn}
    assert (tmp_path / "run" / "curves.png").is_file()


def test_every_public_name_resolves_and_all_is_complete():
    assert sorted(optiloop.__all__) == sorted(optiloop._WHERE)
    for name in optiloop.__all__:
        assert getattr(optiloop, name) is not None
    assert optiloop.checkpoint.find_resumable  # submodules are reachable as attributes too
    with pytest.raises(AttributeError):
        optiloop.no_such_name  # noqa: B018


def test_help_texts_say_the_librarys_own_defaults():
    import inspect

    from optiloop import comparison, grid, lr_finder
    from optiloop.commands import lr_find

    parser = optiloop.cli.build_parser()
    compare_flags = {a.dest: a.default for a in parser._subparsers._group_actions[0].choices["compare"]._actions}
    defaults = inspect.signature(comparison.compare).parameters
    assert compare_flags["optimizers"] == ",".join(grid.DEFAULT_OPTIMIZERS) == ",".join(defaults["optimizers"].default)
    assert compare_flags["schedulers"] == ",".join(grid.DEFAULT_SCHEDULERS) == ",".join(defaults["schedulers"].default)
    assert compare_flags["epochs"] == grid.DEFAULT_EPOCHS == defaults["epochs"].default
    rules = next(a for a in parser._subparsers._group_actions[0].choices["lr-find"]._actions
                 if a.dest == "rule")
    assert tuple(rules.choices) == lr_finder.RULES
    assert lr_find.LRFindCommand.name == "lr-find"
