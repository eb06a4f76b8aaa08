"""Fixtures shared by the command-line tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_main(tmp_path, monkeypatch, capsys):
    """``optiloop ARGS`` in-process in an empty folder (no interpreter start-up: keeps the suite
    fast): returns (exit code, stdout, stderr)."""
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
