"""Imports started early on a background thread, off the command's critical path.

``optiloop train`` draws curves.png and the confusion matrix at its very end, and matplotlib's
import takes about half a second. Importing torch spends much of its time outside the GIL (loading
its shared libraries), so matplotlib imported on a second thread meanwhile costs the run next to
nothing. The thread is not a daemon: the interpreter waits for it at exit, so an import is never cut
off half-way. A failure there is ignored: the real import, when the picture is drawn, says what is
wrong.

Example:
    >>> thread = in_background("json")
    >>> thread.join(); thread.name
    'optiloop-preload'
"""

from __future__ import annotations

import importlib
import threading


def in_background(*modules: str) -> threading.Thread:
    """Import ``modules`` on a background thread; returns the (started) thread."""

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - said by the import that needs it, where it is needed
                return

    thread = threading.Thread(target=work, name="optiloop-preload")
    thread.start()
    return thread
