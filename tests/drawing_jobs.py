"""Histories that behave one way where the test runs and another in the drawing helper's drawer
(tests/test_drawing.py): a module of their own, so that the helper can unpickle them without
importing the tests."""

from __future__ import annotations

import os
import time
import warnings

from optiloop.history import History


class _Elsewhere(History):
    def __init__(self, rows, *, here: int):
        super().__init__(rows)
        self.here = here  # the test's process id

    def keys(self):
        if os.getpid() != self.here:
            self.elsewhere()
        return super().keys()


class Warns(_Elsewhere):
    def elsewhere(self):
        warnings.warn("drawn with a warning", UserWarning, stacklevel=2)


class Dies(_Elsewhere):
    def elsewhere(self):
        os._exit(3)


class Hangs(_Elsewhere):
    def elsewhere(self):
        time.sleep(3600)
