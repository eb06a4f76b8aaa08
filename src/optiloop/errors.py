"""The one exception type a user sees: a single line naming the problem and the valid choices."""


class OptiloopError(ValueError):
    """Bad input or an unrecoverable training fault. The CLI turns it into exit code 2."""


class CheckpointError(OptiloopError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


class NonFiniteLossError(OptiloopError):
    """Training produced a NaN or infinite loss."""


def choices(names) -> str:
    """Format valid choices for an error line: 'a, b, c'."""
    return ", ".join(sorted(names))
