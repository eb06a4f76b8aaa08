"""What a comparison found: one row per run (best and final figures, epochs to a target, timings),
the seeds folded into mean and std (``summarize``), each optimizer's best LR (``pick_best``), and
the rows as a DataFrame. ``report.py`` draws and writes them.

Example:
    >>> summarize([{"optimizer": "sgd", "scheduler": "cosine", "seed": s, "lr": 0.1,
    ...             "best_val_loss": v} for s, v in ((0, 1.0), (1, 3.0))])[0]["best_val_loss_mean"]
    2.0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .callbacks import Monitor
from .errors import OptiloopError


def run_row(history: Any, o: str, s: str, seed: int, lr: float, monitor: str, goal: tuple[str, float] | None,
         seconds: float, init_hash: str) -> dict[str, Any]:
    rows = history.rows
    val_keys = [k for k in history.keys() if k.startswith("val_")]
    # One best epoch per run, by the monitor; every "best_" figure is taken at that epoch, so a
    # row's best val_acc and best val_loss never come from two different epochs.
    finite = [r for r in rows if _finite(r.get(monitor))]
    pick = max if Monitor(monitor).mode == "max" else min
    best = pick(finite, key=lambda r: r[monitor]) if finite else None  # the first of equal values
    row: dict[str, Any] = {"optimizer": o, "scheduler": s, "seed": seed, "lr": lr, "monitor": monitor,
                           "best_epoch": best["epoch"] if best else None}
    for k in [monitor, *(k for k in val_keys if k != monitor)]:
        # A run whose monitor was never finite (diverged) has no best epoch: its last values show.
        row[f"best_{k}"] = (best or rows[-1]).get(k)
    for k in [monitor, *(k for k in val_keys if k != monitor), "train_loss"]:
        row[f"final_{k}"] = rows[-1].get(k)
    if goal is not None:
        key, value = goal
        better = (lambda v: v >= value) if Monitor(key).mode == "max" else (lambda v: v <= value)
        hit = next((r["epoch"] for r in rows if _finite(r.get(key)) and better(r[key])), None)
        row[f"epochs_to_{key}"] = hit
    # The loop's own per-epoch timing (train + validation): set-up costs such as the first
    # build of an optimizer class would otherwise count against whichever run comes first.
    epoch_seconds = [r["seconds"] for r in rows if _finite(r.get("seconds"))]
    row["sec_per_epoch"] = statistics.fmean(epoch_seconds) if epoch_seconds else seconds / len(rows)
    row["seconds"] = seconds
    row["epochs_run"] = len(rows)
    row["init_hash"] = init_hash
    return row


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def headline(row: Mapping[str, Any]) -> str:
    key = row.get("monitor") or "val_loss"
    v = row.get(f"best_{key}")
    text = f"{v:.4f}" if _finite(v) else f"{v}"
    return f"{key} {text} (best epoch {row['best_epoch']})" if row.get("best_epoch") else f"{key} {text}"


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fold seeds: one row per optimizer + scheduler + LR with ``KEY_mean`` and ``KEY_std`` (std
    0.0 for a single seed) for every numeric column, in the order the combinations first appear.

    Example:
        >>> summarize([{"optimizer": "sgd", "scheduler": "cosine", "seed": s, "lr": 0.1,
        ...             "best_val_loss": v} for s, v in ((0, 1.0), (1, 3.0))])[0]["best_val_loss_mean"]
        2.0
    """
    groups: dict[tuple[str, str, float], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["scheduler"], r["lr"]), []).append(r)
    out = []
    for (o, s, lr), rs in groups.items():
        agg: dict[str, Any] = {"optimizer": o, "scheduler": s, "lr": lr, "seeds": len(rs)}
        if "monitor" in rs[0]:
            agg["monitor"] = rs[0]["monitor"]
        for key in rs[0]:
            if key in ("seed", "lr") or not all(isinstance(r.get(key), (int, float))
                                                 or r.get(key) is None for r in rs):
                continue
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            if not all(math.isfinite(v) for v in vals):  # a diverged run: say so, hide nothing
                agg[f"{key}_mean"] = agg[f"{key}_std"] = math.nan
                continue
            agg[f"{key}_mean"] = statistics.fmean(vals) if vals else None
            agg[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
            if key.startswith("epochs_to_"):
                agg[f"{key}_reached"] = f"{len(vals)}/{len(rs)}"
        out.append(agg)
    return out


def pick_best(summary: Sequence[Mapping[str, Any]], monitor: str | None = None) -> list[dict[str, Any]]:
    """Each optimizer + scheduler's best LR: the summary row whose mean ``best_<monitor>`` over
    seeds is best (a diverged LR never wins; ties go to the lower mean val_loss at the best
    epoch, then to the first LR tried). Each row gains
    ``lrs_tried`` and ``at_grid_edge`` (the best LR is the smallest or largest tried, so a better
    one may lie outside the grid).

    Example:
        >>> rows = [{"optimizer": "sgd", "scheduler": "cosine", "lr": lr, "seeds": 1, "best_val_acc_mean": a}
        ...         for lr, a in ((0.01, 0.8), (0.1, 0.9), (1.0, 0.5))]
        >>> best = pick_best(rows, "val_acc")[0]
        >>> best["lr"], best["lrs_tried"], best["at_grid_edge"]
        (0.1, [0.01, 0.1, 1.0], False)
    """
    if not summary:
        return []
    monitor = monitor or summary[0].get("monitor") or "val_loss"
    sign = 1.0 if Monitor(monitor).mode == "max" else -1.0
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in summary:
        groups.setdefault((r["optimizer"], r["scheduler"]), []).append(r)
    out = []
    for rs in groups.values():
        def score(r: Mapping[str, Any]) -> tuple[float, float]:
            v, loss = r.get(f"best_{monitor}_mean"), r.get("best_val_loss_mean")
            # Equal monitored figures (two LRs both at 100% accuracy) go to the lower val_loss.
            return (sign * v if _finite(v) else -math.inf, -loss if _finite(loss) else -math.inf)

        best = max(rs, key=score)  # max keeps the first of equal scores
        lrs = sorted(r["lr"] for r in rs)
        out.append({**best, "lrs_tried": lrs, "at_grid_edge": len(lrs) > 2 and best["lr"] in (lrs[0], lrs[-1])})
    return out


def to_frame(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows as a pandas DataFrame (pandas is optional: ``pip install pandas``)."""
    try:
        import pandas as pd  # optional: only for a DataFrame
    except ImportError:
        raise OptiloopError("as_frame / to_frame need pandas, which is not installed "
                            "(pip install pandas); the rows are plain dicts without it") from None
    return pd.DataFrame(list(rows))
