"""The defaults of the two doors side by side: ``fit()`` and ``optiloop train``.

They differ on purpose where a library call and a finished command want different things (``fit``
trains what it is given, briefly and without files unless asked; ``train`` is a whole run that
should reach a good model on its own), and agree everywhere else. ``optiloop list`` prints this
table; the tests check its ``fit()`` column against ``fit``'s signature and its command-line
column against ``optiloop.config.DEFAULTS``. Torch-free: ``optiloop list`` imports no torch.

Example:
    >>> rows = {r[0]: r for r in table()}
    >>> rows["epochs"][1:3]
    ('10', '30')
"""

from __future__ import annotations

# fit()'s own defaults (checked against its signature by tests/test_defaults.py)
FIT = {"epochs": 10, "batch_size": 32, "optimizer": "adamw", "scheduler": None, "seed": None, "device": "auto",
       "grad_accum": 1, "clip_grad_norm": None, "amp": None}


def table() -> list[tuple[str, str, str, str]]:
    """Rows of (setting, fit(), optiloop train, why they differ or "same")."""
    from .config import DEFAULTS  # torch-free
    from .optim import OPTIMIZERS  # the registry: torch-free until an optimizer is built

    t, opt = DEFAULTS["train"], DEFAULTS["optimizer"]["name"]
    cli_opt = ", ".join(f"{k}={v:g}" for k, v in OPTIMIZERS[opt].defaults.items())
    return [
        ("epochs", str(FIT["epochs"]), str(t["epochs"]), "a command's run should converge on its own"),
        ("batch size", str(FIT["batch_size"]), str(t["batch_size"]), "the built-in data sets are small tables"),
        ("early stopping", "off (ol.EarlyStopping)", f"patience {t['early_stopping']}; off with --epochs",
         "fit runs the epochs asked for"),
        ("optimizer", f"{FIT['optimizer']} (torch's defaults)", f"{opt} ({cli_opt})", "same values"),
        ("scheduler", "none (constant LR)", DEFAULTS["scheduler"]["name"], "fit moves no LR unasked"),
        ("seed", "none (global RNG)", str(t["seed"]), "a command's run repeats exactly"),
        ("monitor", "its callbacks', else val_loss", t["monitor"], "same rule"),
        ("files", "none; out= writes a run folder", "a run folder under runs/", "fit returns a History"),
        ("device", FIT["device"], t["device"], "same"),
        ("accum., clipping, AMP", "off", "off", "same"),
    ]


def format_table() -> str:
    """The table as aligned text (``optiloop list``)."""
    rows = [("setting", "fit()", "optiloop train", "why"), *table()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
                     for r in rows)
