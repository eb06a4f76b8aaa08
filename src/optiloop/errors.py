"""The one exception type a user sees: a single line naming the problem and the valid choices."""


class OptiloopError(ValueError):
    """Bad input or an unrecoverable training fault. The CLI turns it into exit code 2."""


class CheckpointError(OptiloopError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


class NonFiniteLossError(OptiloopError):
    """Training produced a NaN or infinite loss, weights or validation loss."""


class DiskError(OptiloopError):
    """A file could not be written (disk full, read-only, permission, I/O error): not bad input,
    so the CLI exits with code 1. The previous files are intact and no temporary is left."""


def choices(names) -> str:
    """Format valid choices for an error line: 'a, b, c'."""
    return ", ".join(sorted(names))
