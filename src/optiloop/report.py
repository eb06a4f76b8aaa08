"""The files of ``optiloop compare``: results.csv, overlay PNGs, report.md and report.html, and
the one summary-table layout they and the terminal share.

report.html is self-contained (the PNGs are embedded as base64), so it can be mailed or attached
to an issue as one file; report.md links the PNGs next to it. This module reads the rows and the
summary that ``optiloop.comparison`` computes and never imports it.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .files import atomic_open, write_text

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
_LINESTYLES = ("-", "--", ":", "-.")
# A marker per optimizer as well as a colour: two optimizers with identical curves (adam and
# adamw at a small weight decay) would otherwise hide one line under the other.
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")


def write_report(out: Path, rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]],
                 histories: Mapping[tuple, Any], settings: Mapping[str, Any]) -> list[Path]:
    """Write results.csv, the overlay PNGs, report.md and report.html into ``out``.

    Args:
        out: the comparison's folder (exists).
        rows: one dict per run, as ``compare`` returns them.
        summary: one dict per combination, as ``summarize(rows)`` returns them.
        histories: (optimizer, scheduler, seed) -> that run's History.
        settings: what the report states about the runs (epochs, lrs, data ...).

    Returns:
        The files written.
    """
    write_csv(out / "results.csv", rows)
    pictures = _plots(out, histories)
    md = _markdown(summary, pictures, settings)
    write_text(out / "report.md", md)
    write_text(out / "report.html", _html(summary, pictures, settings, out))
    return [out / "results.csv", *(out / p for p, _ in pictures), out / "report.md",
            out / "report.html"]


def _plots(out: Path, histories: Mapping[tuple, Any]) -> list[tuple[str, str]]:
    """One PNG per figure (val loss, val metric(s), LR), every combination overlaid."""
    from .plots import plot_overlay  # matplotlib: imported when a report is drawn

    optimizers = list(dict.fromkeys(k[0] for k in histories))
    schedulers = list(dict.fromkeys(k[1] for k in histories))
    curves: dict[str, dict[str, list[list[float]]]] = {}
    styles: dict[str, dict] = {}
    for (o, s, _), h in histories.items():
        label = f"{o} + {s}" if len(schedulers) > 1 else o
        styles[label] = {"color": _COLORS[optimizers.index(o) % len(_COLORS)],
                         "linestyle": _LINESTYLES[schedulers.index(s) % len(_LINESTYLES)],
                         "marker": _MARKERS[optimizers.index(o) % len(_MARKERS)],
                         "markersize": 7 - 1.2 * (optimizers.index(o) % 3), "markerfacecolor": "none"}
        for key in h.keys():
            if key.startswith("val_") or key == "lr":
                curves.setdefault(key, {}).setdefault(label, []).append(h[key])
    seeds = len({k[2] for k in histories})
    band = f" (mean of {seeds} seeds, band: min-max)" if seeds > 1 else ""
    names = {"val_loss": "validation loss", "val_acc": "validation accuracy",
             "val_mae": "validation mean absolute error", "val_mse": "validation mean squared error",
             "lr": "learning rate"}
    order = ["val_loss", *sorted(k for k in curves if k not in ("val_loss", "lr")), "lr"]
    pictures = []
    for key in order:
        if key not in curves:
            continue
        name = names.get(key, key.replace("_", " "))
        file = f"{key}.png"
        plot_overlay(curves[key], out / file, ylabel=name,
                     title=f"{name} per epoch{band if key != 'lr' else ''}",
                     styles=styles, log=True if key == "lr" else None,
                     xlabel="epoch" if key != "lr" else "epoch (LR at the epoch's start)")
        pictures.append((file, name))
    return pictures


# --- the summary table: one layout for the terminal, report.md and report.html -----------------
def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(key, header) of the figures a summary table shows, in order (keys without _mean/_std)."""
    keys = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")] if rows else []
    headers = {"best_val_loss": "best val_loss", "final_val_loss": "final val_loss",
               "best_epoch": "best epoch", "sec_per_epoch": "s/epoch"}
    wanted = [k for k in keys if k not in ("epochs_run", "seconds")]
    return [(k, headers.get(k, f"epochs to {k[len('epochs_to_'):]}" if k.startswith("epochs_to_")
                            else k.replace("_", " ", 1))) for k in wanted]


def format_value(mean: float | None, std: float | None, key: str, seeds: int) -> str:
    """``0.9722 ± 0.0031`` (± only with several seeds); epochs as whole numbers when they are."""
    if mean is None:
        return "-"
    if not math.isfinite(mean):
        return f"{mean} (diverged)"
    if key in ("best_epoch",) or key.startswith("epochs_to_"):
        text = f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}"
        digits = 1
    elif key == "sec_per_epoch":
        text, digits = f"{mean:.3f}", 3
    else:
        text, digits = f"{mean:.4f}", 4
    if seeds > 1 and std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def table_cells(rows: Sequence[Mapping[str, Any]], *, always_reached: bool = False
                ) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the summary table: the one layout every report uses.

    ``always_reached`` appends "(reached/seeds)" to the target column even for one seed.
    """
    cols = table_columns(rows)
    header = ["optimizer", "scheduler", "lr", *(h for _, h in cols)]
    body = []
    for r in rows:
        cells = [r["optimizer"], r["scheduler"], f"{r['lr']:g}"]
        for key, _ in cols:
            cell = format_value(r.get(f"{key}_mean"), r.get(f"{key}_std"), key, r["seeds"])
            if f"{key}_reached" in r and (always_reached or r["seeds"] > 1):
                cell += f" ({r[f'{key}_reached']})"
            cells.append(cell)
        body.append(cells)
    return header, body


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary (``summarize``) as an aligned plain-text table."""
    header, body = table_cells(rows)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
             for cells in [header, *body]]
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows to CSV (atomic): the union of keys as columns, in first-seen order."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    with atomic_open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(keys))
        w.writeheader()
        w.writerows(rows)



# --- report.md and report.html --------------------------------------------------------------------
def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    lrs = ", ".join(f"{o} {lr:g}" + "".join(f", {k} {v}" for k, v in settings["options"][o].items())
                    for o, lr in settings["lrs"].items())
    scheds = "; ".join(f"{s}" + (f" ({', '.join(f'{k}={v}' for k, v in spec.items() if k != 'name')})"
                                  if len(spec) > 1 else "")
                       for s, spec in settings["schedulers"].items())
    lines = [f"Data and model: {settings['data']}",
             f"Training: {settings['epochs']} epochs, batch size {settings['batch_size']}, loss "
             f"{settings['loss']}, metrics {', '.join(settings['metrics']) or 'none'}, seeds "
             f"{', '.join(map(str, settings['seeds']))}; no early stopping",
             f"Optimizers: {lrs}",
             f"Schedulers: {scheds}",
             "Every combination of a seed starts from the same initial weights and sees the same "
             "data order; the best epoch is the one with the lowest val_loss."]
    if settings.get("target"):
        key, value = settings["target"]
        lines.append(f"Target: {key} = {value:g}: epochs to reach it, mean over the runs that did "
                     "(in brackets: runs that reached it / runs); '-' = none did")
    return lines


def _markdown(summary, pictures, settings) -> str:
    header, body = table_cells(summary, always_reached=True)
    out = [f"# optiloop compare ({datetime.now():%Y-%m-%d %H:%M})", ""]
    out += [f"- {line}" for line in _settings_lines(settings)]
    out += ["", "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in body]
    out += ["", "Per-run figures: results.csv; each run's folder: runs/OPTIMIZER-SCHEDULER-seedN/.",
            ""]
    for file, name in pictures:
        out += [f"## {name[0].upper() + name[1:]}", "", f"![{name}]({file})", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.84em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.55em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
ul { line-height: 1.5; }
"""


def _html(summary, pictures, settings, out: Path) -> str:
    header, body = table_cells(summary, always_reached=True)
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>optiloop compare</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>optiloop compare <small>({datetime.now():%Y-%m-%d %H:%M})</small></h1>", "<ul>"]
    parts += [f"<li>{esc(line)}</li>" for line in _settings_lines(settings)]
    parts += ["</ul>", "<div class=\"scroll\"><table>",
              "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for cells in body:
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" if i < 2 else
                                      f"<td class=\"num\">{esc(c)}</td>"
                                      for i, c in enumerate(cells)) + "</tr>")
    parts += ["</table></div>", "<p>Per-run figures: <code>results.csv</code>; each run's folder: "
              "<code>runs/OPTIMIZER-SCHEDULER-seedN/</code>.</p>"]
    for file, name in pictures:
        data = base64.b64encode((out / file).read_bytes()).decode("ascii")
        parts += [f"<h2>{esc(name[0].upper() + name[1:])}</h2>",
                  f"<img alt=\"{esc(name)}\" src=\"data:image/png;base64,{data}\">"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
