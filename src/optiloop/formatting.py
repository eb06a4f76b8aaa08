"""How a value reads in a progress line, a table cell or a message: one rule for every command."""

from __future__ import annotations

from typing import Any


def fmt(v: Any, digits: int = 4, none: str = "None") -> str:
    """Floats to ``digits`` significant digits, lists and tuples bracketed, None as ``none``.

    Example:
        >>> fmt(0.000123456), fmt([0.1, 2]), fmt(None, none="")
        ('0.0001235', '[0.1, 2]', '')
    """
    if v is None:
        return none
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x, digits, none) for x in v) + "]"
    return str(v)
