"""Shared helpers: run the command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def cli(tmp_path):
    """``cli("train", "--epochs", "2")`` runs ``python -m optiloop`` in tmp_path."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
        return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run
