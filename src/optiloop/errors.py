"""The one exception type a user sees: a single line naming the problem and the valid choices."""

from __future__ import annotations

import signal


class OptiloopError(ValueError):
    """Bad input or an unrecoverable training fault. The CLI turns it into exit code 2."""


class CheckpointError(OptiloopError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


class NonFiniteLossError(OptiloopError):
    """Training produced a NaN or infinite loss, weights or validation loss."""


class DiskError(OptiloopError):
    """A file could not be written (disk full, read-only, permission, I/O error): not bad input,
    so the CLI exits with code 1. The previous files are intact and no temporary is left."""


class SettingsChanged(OptiloopError):
    """A resume whose settings differ from the saved run's in a way allowed only when forced.
    ``remedy`` says how to force it, in the words of whoever asked (a keyword, a flag)."""

    def __init__(self, path, changes: str, remedy: str = "pass force_resume=True to continue anyway"):
        self.path, self.changes, self.remedy = path, changes, remedy
        super().__init__(f"cannot resume {path}: settings changed ({changes}); {remedy}")

    def with_remedy(self, remedy: str) -> SettingsChanged:
        return SettingsChanged(self.path, self.changes, remedy)


class DataWarning(UserWarning):
    """What applying a run to new rows did beyond the plain transform (empty cells filled, a category
    never seen in training): one line; the CLI prints it as a note."""


def choices(names) -> str:
    """Format valid choices for an error line: 'a, b, c'."""
    return ", ".join(sorted(names))


def did_you_mean(word, names) -> str:
    """`` (did you mean 'train'?)`` when ``word`` is close to one of ``names`` (difflib), else "".

    Example:
        >>> did_you_mean("trian", ["train", "predict"]), did_you_mean("xyz", ["train"])
        (" (did you mean 'train'?)", '')
    """
    import difflib  # only an error line asks

    close = difflib.get_close_matches(str(word).lower(), [str(n) for n in names], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal (SIGTERM from a scheduler or preemption, Ctrl-C's SIGINT,
    SIGUSR1) after finishing its current step; a Checkpoint has saved that state to ``last.pt``.

    A KeyboardInterrupt, so code that handles Ctrl-C handles it. ``exit_code`` is the shell's
    convention for the signal: 143 for SIGTERM, 130 for SIGINT.
    """

    def __init__(self, signum: int, epoch: int, step: int):
        self.signum, self.epoch, self.step = signum, epoch, step
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {self.signal_name} at epoch {epoch}, step {step}")
