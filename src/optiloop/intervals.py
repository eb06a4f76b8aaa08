"""When each torch scheduler class is meant to be stepped: the one table of that fact.

``build_scheduler`` infers a built scheduler's interval from it, the named schedulers take theirs
from it, and the doctor judges a script's stepping against it. torch-free, so the doctor's parent
process reads it without importing torch.
"""

from __future__ import annotations

INTERVALS = ("epoch", "step", "metric")

# torch.optim.lr_scheduler class name -> when the loop steps it: after each epoch (the lengths
# torch documents are in epochs), after each optimizer step, or on the monitored metric.
TORCH_SCHEDULERS: dict[str, str] = {
    "StepLR": "epoch", "MultiStepLR": "epoch", "ExponentialLR": "epoch", "CosineAnnealingLR": "epoch",
    "CosineAnnealingWarmRestarts": "epoch", "LinearLR": "epoch", "PolynomialLR": "epoch",
    "OneCycleLR": "step", "CyclicLR": "step",
    "ReduceLROnPlateau": "metric",
}


def torch_interval(class_names: str | tuple[str, ...] | list[str]) -> str:
    """The interval of a scheduler class, given its name or the names along its MRO (a subclass
    of OneCycleLR steps as OneCycleLR does); classes torch does not ship step per epoch.

    Example:
        >>> torch_interval("OneCycleLR"), torch_interval(("MyCosine", "CosineAnnealingLR")), torch_interval("X")
        ('step', 'epoch', 'epoch')
    """
    names = (class_names,) if isinstance(class_names, str) else class_names
    return next((TORCH_SCHEDULERS[n] for n in names if n in TORCH_SCHEDULERS), "epoch")


def classes_stepped_per(interval: str) -> tuple[str, ...]:
    """The torch scheduler classes stepped at ``interval``."""
    return tuple(name for name, when in TORCH_SCHEDULERS.items() if when == interval)
