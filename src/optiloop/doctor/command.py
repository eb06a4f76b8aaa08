"""``optiloop doctor [--out DIR] SCRIPT [ARGS...]``: arguments and the parent process.

The script runs unchanged in a child process (same interpreter) that inherits this process's
stdout and stderr, so its output, progress bars and colours pass through untouched; torch is
instrumented in the child before the script starts. When the child ends, this process reads the
timeline it left, prints the diagnosis after the script's output, writes doctor.json and
doctor.png, and exits with the script's exit code. This process never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ..errors import OptiloopError

HELP = "run your own training script unchanged and diagnose how it steps its optimizer and LR scheduler"

# The child imports this very copy of optiloop (the one the parent runs), then takes its folder
# off sys.path again so the script sees the path Python would give it.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); from optiloop.doctor._child import main; "
              "del sys.path[0]; sys.exit(main(sys.argv[2:]))")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The doctor's arguments; its own options go before SCRIPT, everything after is the script's."""
    p.epilog = ("The doctor's own options go before SCRIPT; everything after SCRIPT is passed to it. The script's "
                "output and exit code pass through; the diagnosis follows its output.")
    p.add_argument("--out", metavar="DIR", help="folder for doctor.json and doctor.png (created; these two "
                   "files are replaced if there; default runs/doctor-<script>-<time>)")
    p.add_argument("script", metavar="SCRIPT", help="the training script (a .py file), run as `python SCRIPT "
                   "ARGS...` would run it")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments, "
                   "passed through unchanged")


def run(args: argparse.Namespace) -> int:
    """Run the script under watch, print the diagnosis, write the files; return the script's exit code."""
    script = Path(args.script)
    if not script.is_file():
        what = "is a folder" if script.is_dir() else "does not exist"
        raise OptiloopError(f"{args.script} {what}; give the training script to run, e.g. optiloop doctor "
                            "train.py --epochs 3")
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise OptiloopError(f"--out {args.out} is a file; give a folder for doctor.json and doctor.png")
    _check_python(script, args.script)

    with tempfile.TemporaryDirectory(prefix="optiloop-doctor-") as tmp:
        record = Path(tmp) / "timeline.json"
        code = _run_child(str(script), list(args.args), record)
        data = _read(record)

    from .report import format_report, write  # after the script ran: its start stays light
    from .rules import diagnose
    from .timeline import Timeline

    sys.stdout.flush()
    if data is None:
        how = f"was killed by signal {-code}" if code < 0 else f"ended (exit code {code})"
        print(f"optiloop doctor: {args.script} {how} before the doctor could collect its record "
              "(os._exit, or a signal), so there is nothing to diagnose")
        return _exit_status(code)
    timeline = Timeline.from_dict(data)
    findings = diagnose(timeline)
    print(format_report(timeline, findings, name=args.script), flush=True)
    if timeline.optimizers:
        out = Path(args.out) if args.out is not None else _default_out(script)
        try:
            paths = write(timeline, findings, out, name=args.script)
        except OSError as e:
            print(f"error: cannot write the doctor's files into {out}: {e.strerror or e}", file=sys.stderr)
            return 2
        print("files: " + ", ".join(str(p) for p in paths))
    return _exit_status(code)


def _check_python(script: Path, name: str) -> None:
    """Refuse, in one line, a script Python could not even compile (shell text, a binary): no
    process is started for it. Compiling imports nothing and runs nothing of it."""
    try:
        compile(script.read_bytes(), str(script), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        where = f"line {e.lineno}: " if isinstance(e, SyntaxError) and e.lineno else ""
        reason = (e.msg if isinstance(e, SyntaxError) else str(e)).strip().splitlines()[0][:120]
        raise OptiloopError(f"{name} is not a Python script ({where}{reason}); optiloop doctor runs a Python "
                            "training script, as python SCRIPT would") from None
    except OSError as e:
        raise OptiloopError(f"{name}: cannot read it ({e.strerror or e})") from None


def _run_child(script: str, script_args: list[str], record: Path) -> int:
    """Run the child in a process group of its own that gets every signal this process gets
    (``optiloop.doctor.process``); return its exit code."""
    from .process import run

    root = str(Path(__file__).resolve().parents[2])  # the folder holding this optiloop package
    cmd = [sys.executable, "-c", _BOOTSTRAP, root, str(record), script, *script_args]
    sys.stdout.flush()
    sys.stderr.flush()
    return run(cmd)


def _read(record: Path) -> dict | None:
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _exit_status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell reports it


def _default_out(script: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"doctor-{''.join(c if c.isalnum() or c in '_-' else '-' for c in script.stem)}-{stamp}"
    for i in range(1, 1000):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise OptiloopError(f"cannot find a free folder name next to {base}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m optiloop.doctor``."""
    parser = _Parser(prog="python -m optiloop.doctor", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except OptiloopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
