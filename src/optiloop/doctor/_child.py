"""The watched process of ``optiloop doctor``: instrument torch, run the script as ``python
SCRIPT ARGS`` would, then leave the timeline for the parent. Started by ``command.py`` only.

    python -c <bootstrap> RECORD.json SCRIPT [ARGS...]
"""

from __future__ import annotations

import json
import os
import runpy
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def run_script(script: str, args: list[str]) -> tuple[int, str | None]:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]``, its folder first on
    ``sys.path``. Returns (exit code, "Type: message" if it raised). A raised exception's traceback
    is printed as Python prints it, without this module's or runpy's frames."""
    path = os.path.abspath(script)
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [script, *args]
    if sys.path:
        sys.path[0] = os.path.dirname(path)
    else:
        sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name="__main__")
        return 0, None
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0, None
        print(e.code, file=sys.stderr)  # sys.exit("message"), as Python does
        return 1, None
    except BaseException as e:  # noqa: BLE001 - the script's own failure, reported like Python does
        _print_traceback(e, path)
        first = str(e).strip().splitlines()
        return (130 if isinstance(e, KeyboardInterrupt) else 1), type(e).__name__ + (f": {first[0]}" if first else "")
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0


def _print_traceback(e: BaseException, path: str) -> None:
    tb = e.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != path:
        tb = tb.tb_next  # drop runpy's and our frames: the traceback starts in the script
    _strip_doctor_frames(e.with_traceback(tb), set())
    sys.stderr.flush()
    sys.excepthook(type(e), e, e.__traceback__)
    sys.stderr.flush()


def _strip_doctor_frames(e: BaseException | None, seen: set[int]) -> None:
    """Unlink the doctor's wrapper frames (recorder.py) from a traceback and the ones it chains to."""
    if e is None or id(e) in seen:
        return
    seen.add(id(e))
    kept = []
    tb = e.__traceback__
    while tb is not None:
        if os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) != _HERE:
            kept.append(tb)
        tb = tb.tb_next
    for a, b in zip(kept, [*kept[1:], None], strict=False):  # (no frame kept: nothing to link)
        a.tb_next = b
    e.__traceback__ = kept[0] if kept else None
    _strip_doctor_frames(e.__cause__, seen)
    _strip_doctor_frames(e.__context__, seen)


def main(argv: list[str]) -> int:
    record, script, *args = argv
    from .recorder import Recorder  # torch: after the script's own imports are set up

    recorder = Recorder()
    recorder.install()
    try:
        code, error = run_script(script, args)
    finally:
        recorder.uninstall()
    timeline = recorder.timeline(script=script, argv=args, exit_code=code, error=error,
                                 completed=error is None and code == 0)
    sys.stdout.flush()
    with open(record, "w", encoding="utf-8") as f:
        json.dump(timeline.to_dict(), f)
    return code
