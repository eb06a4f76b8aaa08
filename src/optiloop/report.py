"""The files of ``optiloop compare``: results.csv, the PNGs (validation figures, training loss,
LR schedule, the validation figure against the LR), report.md and report.html, and the one
summary-table layout they and the terminal share.

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
                 best: Sequence[Mapping[str, Any]], histories: Mapping[tuple, Any],
                 settings: Mapping[str, Any]) -> list[Path]:
    """Write results.csv, the PNGs, report.md and report.html into ``out``.

    Args:
        out: the comparison's folder (exists).
        rows: one dict per run, as ``compare`` returns them.
        summary: one dict per optimizer + scheduler + LR, as ``summarize(rows)`` returns them.
        best: one dict per optimizer + scheduler, its best LR (``pick_best(summary)``).
        histories: (optimizer, scheduler, lr, seed) -> that run's History.
        settings: what the report states about the runs (epochs, lrs, monitor, target ...).

    Returns:
        The files written.
    """
    write_csv(out / "results.csv", rows)
    pictures = _plots(out, summary, best, histories, settings)
    write_text(out / "report.md", _markdown(summary, best, pictures, settings))
    write_text(out / "report.html", _html(summary, best, pictures, settings, out))
    return [out / "results.csv", *(out / p for p, _ in pictures), out / "report.md",
            out / "report.html"]


_NAMES = {"val_loss": "validation loss", "val_acc": "validation accuracy", "train_loss": "training loss",
          "val_mae": "validation mean absolute error", "val_mse": "validation mean squared error"}


def _label(o: str, s: str, lr: float, several_schedulers: bool) -> str:
    return f"{o} lr {lr:g}" + (f" + {s}" if several_schedulers else "")


def _plots(out: Path, summary: Sequence[Mapping[str, Any]], best: Sequence[Mapping[str, Any]],
           histories: Mapping[tuple, Any], settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The chosen run of each optimizer overlaid (validation figures, training loss, LR), and the
    validation figure against the LR when some optimizer was tried at several."""
    from .plots import plot_lr_runs, plot_lr_sensitivity, plot_overlay  # matplotlib: imported to draw

    optimizers = list(dict.fromkeys(k[0] for k in histories))
    schedulers = list(dict.fromkeys(k[1] for k in histories))
    several = len(schedulers) > 1
    chosen = {(r["optimizer"], r["scheduler"], r["lr"]) for r in best}
    curves: dict[str, dict[str, list[list[float]]]] = {}
    styles: dict[str, dict] = {}
    lr_runs: dict[str, Any] = {}
    base: dict[str, float] = {}
    for (o, s, lr, _), h in histories.items():
        if (o, s, lr) not in chosen:
            continue
        label = _label(o, s, lr, several)
        styles[label] = _style(optimizers.index(o), schedulers.index(s))
        lr_runs.setdefault(label, h)
        base[label] = lr
        for key in h.keys():
            if key.startswith("val_") or key == "train_loss":
                curves.setdefault(key, {}).setdefault(label, []).append(h[key])
    seeds = len({k[3] for k in histories})
    band = f" (mean of {seeds} seeds, band: min-max)" if seeds > 1 else ""
    grid = any(len(r.get("lrs_tried", [])) > 1 for r in best)
    which = ", each optimizer at its best LR" if grid else ""
    order = ["val_loss", *sorted(k for k in curves if k not in ("val_loss", "train_loss")), "train_loss"]
    pictures = []
    for key in order:
        if key not in curves:
            continue
        name = _NAMES.get(key, key.replace("_", " "))
        file = f"{key}.png"
        plot_overlay(curves[key], out / file, ylabel=name, title=f"{name} per epoch{which}{band}", styles=styles)
        pictures.append((file, name))
    plot_lr_runs(lr_runs, out / "lr.png", base=base, styles=styles,
                 title="learning-rate schedule, as a multiple of each optimizer's LR")
    pictures.append(("lr.png", "learning rate"))
    if grid:
        monitor = settings["monitor"]
        points: dict[str, list[tuple[float, float, float]]] = {}
        picked: dict[str, float] = {}
        sens_styles: dict[str, dict] = {}
        for r in summary:
            label = r["optimizer"] + (f" + {r['scheduler']}" if several else "")
            mean, std = r.get(f"best_{monitor}_mean"), r.get(f"best_{monitor}_std")
            if mean is not None and math.isfinite(mean):  # a diverged LR has no point to draw
                points.setdefault(label, []).append((r["lr"], mean, std or 0.0))
            sens_styles[label] = _style(optimizers.index(r["optimizer"]), schedulers.index(r["scheduler"]))
        for r in best:
            picked[r["optimizer"] + (f" + {r['scheduler']}" if several else "")] = r["lr"]
        name = _NAMES.get(monitor, monitor)
        spread = f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""
        plot_lr_sensitivity(points, out / "lr_sensitivity.png", ylabel=f"{name} at the best epoch",
                            chosen=picked, styles=sens_styles, title=f"{name} against the LR{spread}")
        pictures.append(("lr_sensitivity.png", f"{name} against the learning rate"))
    return pictures


def _style(i: int, j: int) -> dict[str, Any]:
    """One colour and marker per optimizer, one line style per scheduler."""
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": _LINESTYLES[j % len(_LINESTYLES)],
            "marker": _MARKERS[i % len(_MARKERS)], "markersize": 7 - 1.2 * (i % 3), "markerfacecolor": "none"}


# --- the summary table: one layout for the terminal, report.md and report.html -----------------
def table_columns(rows: Sequence[Mapping[str, Any]], target: str | None = None) -> list[tuple[str, str]]:
    """(key, header) of the figures a summary table shows, in order (keys without _mean/_std):
    the best epoch, every validation figure at it, the final monitored figure and training
    loss, epochs to the target, seconds per epoch. ``target`` (e.g. ``"val_acc ≥ 0.95"``)
    names the target column."""
    if not rows:
        return []
    keys = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    monitor = rows[0].get("monitor")
    if monitor is None:  # rows of another shape: every figure, in their own order
        wanted = [k for k in keys if k not in ("epochs_run", "seconds")]
    else:
        bests = [f"best_{monitor}", *(k for k in keys if k.startswith("best_val_") and k != f"best_{monitor}")]
        wanted = ["best_epoch", *bests, f"final_{monitor}", "final_train_loss",
                  *(k for k in keys if k.startswith("epochs_to_")), "sec_per_epoch"]
        wanted = [k for k in wanted if k in keys]

    def header(k: str) -> str:
        if k == "best_epoch":
            return "best epoch"
        if k == "sec_per_epoch":
            return "s/epoch"
        if k.startswith("epochs_to_"):
            return f"epochs to {target or k[len('epochs_to_'):]}"
        if k.startswith("best_") and monitor is not None:
            return f"{k[len('best_'):]} @best"
        return k.replace("_", " ", 1)

    return [(k, header(k)) for k in wanted]


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


def table_cells(rows: Sequence[Mapping[str, Any]], *, always_reached: bool = False, target: str | None = None,
                marked: set[tuple] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the summary table: the one layout every report uses.

    ``always_reached`` appends "(reached/seeds)" to the target column even for one seed;
    ``marked``: (optimizer, scheduler, lr) whose LR cell gets a ``*`` (the chosen LRs); a row
    with ``at_grid_edge`` gets ``(edge)``.
    """
    cols = table_columns(rows, target)
    header = ["optimizer", "scheduler", "lr", *(h for _, h in cols)]
    body = []
    for r in rows:
        lr = f"{r['lr']:g}" + ("*" if marked and (r["optimizer"], r["scheduler"], r["lr"]) in marked else "") \
            + (" (edge)" if r.get("at_grid_edge") else "")
        cells = [r["optimizer"], r["scheduler"], lr]
        for key, _ in cols:
            cell = format_value(r.get(f"{key}_mean"), r.get(f"{key}_std"), key, r["seeds"])
            if f"{key}_reached" in r and (always_reached or r["seeds"] > 1):
                cell += f" ({r[f'{key}_reached']})"
            cells.append(cell)
        body.append(cells)
    return header, body


def format_table(rows: Sequence[Mapping[str, Any]], *, target: str | None = None,
                 marked: set[tuple] | None = None) -> str:
    """A summary (``summarize`` or ``pick_best`` rows) as an aligned plain-text table."""
    header, body = table_cells(rows, target=target, marked=marked)
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
def _settings_lines(settings: Mapping[str, Any], grid: bool) -> list[str]:
    lrs = "; ".join(f"{o} lr {', '.join(f'{lr:g}' for lr in values)}"
                    + "".join(f", {k} {v}" for k, v in settings["options"][o].items())
                    for o, values in settings["lrs"].items())
    scheds = "; ".join(f"{s}" + (f" ({', '.join(f'{k}={v}' for k, v in spec.items() if k != 'name')})"
                                  if len(spec) > 1 else "")
                       for s, spec in settings["schedulers"].items())
    monitor = settings["monitor"]
    direction = "highest" if _maximized(monitor) else "lowest"
    jobs = settings.get("jobs", 1)
    lines = [f"Data and model: {settings['data']}",
             f"Training: {settings['epochs']} epochs, batch size {settings['batch_size']}, loss "
             f"{settings['loss']}, metrics {', '.join(settings['metrics']) or 'none'}, seeds "
             f"{', '.join(map(str, settings['seeds']))}; no early stopping"
             + (f"; {jobs} runs at a time in separate processes (s/epoch measured on shared cores)"
                if jobs > 1 else ""),
             f"Optimizers: {lrs}",
             f"Schedulers: {scheds}",
             f"Every run of a seed starts from the same initial weights and sees the same data order. A run's "
             f"best epoch is the one with the {direction} {monitor}; '@best' figures are taken at that epoch, "
             "'final' ones at the last."]
    if grid:
        lines.append(f"Each optimizer's LR (*) is the one with the {direction} mean {monitor} @best over the seeds. "
                     "It is chosen on the validation split these tables report, so the chosen figures are "
                     "optimistic: confirm the winner on data the choice never saw. '(edge)': the best LR is the "
                     "smallest or largest tried; a better one may lie outside the grid.")
    if settings.get("target"):
        lines.append(f"Target: {settings['target']}: epochs to reach it, mean over the runs that did "
                     "(in brackets: runs that reached it / runs); '-' = none did")
    return lines


def _maximized(key: str) -> bool:
    # The direction rule of optiloop.callbacks.Monitor, without importing it (this module draws
    # and writes only).
    return any(h in key.lower() for h in ("acc", "top", "f1", "auc", "precision", "recall", "r2"))


def _tables(summary, best, settings) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report's tables: the best LR of each optimizer, then every LR."""
    target = settings.get("target")
    grid = any(len(r.get("lrs_tried", [])) > 1 for r in best)
    if not grid:
        return [("Results", *table_cells(summary, always_reached=True, target=target))]
    marked = {(r["optimizer"], r["scheduler"], r["lr"]) for r in best}
    return [("Each optimizer at its best LR", *table_cells(best, always_reached=True, target=target)),
            ("Every LR tried (* = chosen)", *table_cells(summary, always_reached=True, target=target,
                                                         marked=marked))]


def _markdown(summary, best, pictures, settings) -> str:
    grid = any(len(r.get("lrs_tried", [])) > 1 for r in best)
    out = [f"# optiloop compare ({datetime.now():%Y-%m-%d %H:%M})", ""]
    out += [f"- {line}" for line in _settings_lines(settings, grid)]
    for title, header, body in _tables(summary, best, settings):
        out += ["", f"## {title}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
    out += ["", "Per-run figures: results.csv; each run's folder: runs/OPTIMIZER-SCHEDULER[-lrLR]-seedN/.",
            ""]
    for file, name in pictures:
        out += [f"## {name[0].upper() + name[1:]}", "", f"![{name}]({file})", ""]
    return "\n".join(out)


# The reports' style sheet (compare's; tune's adds to it).
CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em;
       max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.84em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.55em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 0.3em 0 1em; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 0.5em 1.5em; }
figure { margin: 0; }
figcaption { font-weight: 600; font-size: 1.1em; margin-top: 0.6em; }
ul { line-height: 1.5; }
"""


def _html(summary, best, pictures, settings, out: Path) -> str:
    grid = any(len(r.get("lrs_tried", [])) > 1 for r in best)
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>optiloop compare</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>optiloop compare <small>({datetime.now():%Y-%m-%d %H:%M})</small></h1>", "<ul>"]
    parts += [f"<li>{esc(line)}</li>" for line in _settings_lines(settings, grid)]
    parts.append("</ul>")
    for title, header, body in _tables(summary, best, settings):
        parts += [f"<h2>{esc(title)}</h2>", "<div class=\"scroll\"><table>",
                  "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
        for cells in body:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" if i < 2 else
                                          f"<td class=\"num\">{esc(c)}</td>"
                                          for i, c in enumerate(cells)) + "</tr>")
        parts.append("</table></div>")
    parts += ["<p>Per-run figures: <code>results.csv</code>; each run's folder: "
              "<code>runs/OPTIMIZER-SCHEDULER[-lrLR]-seedN/</code>.</p>", "<div class=\"figures\">"]
    for file, name in pictures:
        data = base64.b64encode((out / file).read_bytes()).decode("ascii")
        parts += [f"<figure><figcaption>{esc(name[0].upper() + name[1:])}</figcaption>",
                  f"<img alt=\"{esc(name)}\" src=\"data:image/png;base64,{data}\"></figure>"]
    parts += ["</div>", "</body></html>"]
    return "\n".join(parts) + "\n"
