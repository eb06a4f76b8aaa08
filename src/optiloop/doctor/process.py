"""The watched script's process: started in a process group of its own, which gets every signal
the doctor gets, and which holds the terminal while it runs (as a shell runs a job).

- ``kill -TERM PID`` / ``-INT`` / ``-HUP`` / ``-QUIT`` / ``-USR1`` / ``-USR2`` sent to the doctor
  reaches the script's whole process group (the script and what it started), and the doctor
  waits for it and exits with its code: nothing is left running as an orphan.
- From a terminal, Ctrl-C and Ctrl-Z go to the script's group only (it is the foreground one), so
  the script sees each once; the doctor stops with it on Ctrl-Z and continues it on ``fg``/``bg``.
- A signal the doctor was started with ignored (SIGINT under a shell's ``&``) stays ignored.

POSIX only, as the rest of optiloop (``fcntl`` locks). Imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

FORWARDED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                                                       "SIGTSTP") if hasattr(signal, name))


def run(cmd: Sequence[str]) -> int:
    """Run ``cmd`` as the script's process; return its exit code (-N if killed by signal N)."""
    tty = _foreground_terminal()
    child: list[subprocess.Popen] = []
    pending: list[int] = []

    def forward(signum, frame):
        if child:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child[0].pid, signum)
        else:  # arrived before the child existed: passed on as soon as it does
            pending.append(signum)

    previous = {}
    for s in FORWARDED:
        if signal.getsignal(s) is not signal.SIG_IGN:  # an ignored signal stays ignored (and the child inherits that)
            previous[s] = signal.signal(s, forward)
    try:
        child.append(subprocess.Popen(list(cmd), preexec_fn=lambda: _own_group(tty)))
        with contextlib.suppress(OSError):  # also from here: whichever runs first, the group exists
            os.setpgid(child[0].pid, child[0].pid)
        for signum in pending:
            forward(signum, None)
        return _wait(child[0], tty)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
            os.close(tty)


def _foreground_terminal() -> int | None:
    """A descriptor of the controlling terminal when this process's group is its foreground group
    (run from a shell, not with ``&``); None otherwise (a pipe, CI, the background)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _own_group(tty: int | None) -> None:
    """In the child, before the script starts: a process group of its own, holding the terminal."""
    os.setpgid(0, 0)
    if tty is not None:
        _give_terminal(tty, os.getpgrp())


def _give_terminal(tty: int, pgrp: int) -> None:
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may not otherwise take it
    try:
        os.tcsetpgrp(tty, pgrp)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


def _wait(child: subprocess.Popen, tty: int | None) -> int:
    """Wait for the child; when it is stopped (Ctrl-Z), stop with it, as the job the shell sees."""
    while True:
        try:
            _, status = os.waitpid(child.pid, os.WUNTRACED)
        except ChildProcessError:  # reaped elsewhere: its code is what Popen saw
            return child.returncode if child.returncode is not None else 0
        if not os.WIFSTOPPED(status):
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode
        if tty is not None:
            _give_terminal(tty, os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)  # the shell sees its job stop; `fg` / `bg` continues us here
        if tty is not None and _holds_terminal(tty):
            _give_terminal(tty, child.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGCONT)


def _holds_terminal(tty: int) -> bool:
    try:
        return os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False
