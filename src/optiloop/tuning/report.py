"""The files a search leaves for a person: trials.csv, best.toml, Optuna's own plots, report.md and a
self-contained report.html (the plots embedded as base64 PNGs).

Everything is read back from the study, so the files describe every trial the storage holds, this
session's and earlier ones, whichever process or machine ran them.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..formatting import fmt
from ..report import CSS
from .result import TuneResult
from .study import NOTE_ATTR, WORKER_ATTR

# (file, title, what it shows)
PLOTS = (
    ("history.png", "Optimization history", "each trial's value and the best so far"),
    ("importances.png", "Parameter importances", "how much of the value's variation each setting explains "
     "(fANOVA over the complete trials)"),
    ("parallel.png", "Parallel coordinates", "every complete trial's settings, coloured by its value"),
    ("intermediate.png", "Intermediate values", "the monitored value after every epoch of every trial: pruned "
     "trials are the lines that stop early"),
)


def write_results(result: TuneResult, space: Any, data: str, *, seconds: float) -> list[str]:
    """Write trials.csv, best.toml (when a trial completed), the plots, report.md and report.html into
    ``result.out``; return the names written."""
    from ..files import write_text
    from ..runs import write_csv_rows

    out = result.out
    trials = result.study.get_trials(deepcopy=False)
    header, rows = trial_table(trials, result.monitor)
    write_csv_rows(out / "trials.csv", header, rows)
    files = ["trials.csv"]
    if result.best is not None and result.best.get("config"):
        write_text(out / "best.toml", best_toml(result))
        files.append("best.toml")
    pictures = _plots(result, out)
    files += [p for p, _, _, _ in pictures if p]
    facts = _facts(result, trials, space, data, seconds)
    write_text(out / "report.md", _markdown(result, facts, header, rows, pictures))
    write_text(out / "report.html", _html(result, facts, header, rows, pictures, out))
    return sorted([*files, "report.md", "report.html"])


def trial_table(trials: Sequence[Any], monitor: str) -> tuple[list[str], list[list[Any]]]:
    """trials.csv: one row per trial; the sampled parameters as Optuna holds them (same names), then
    the LR each trial trained with when the space sampled it as a multiple of the default."""
    params: list[str] = []
    for t in trials:
        params += [p for p in t.params if p not in params]
    scaled = "optimizer.lr_scale" in params and "optimizer.lr" not in params
    header = ["number", "state", monitor, "best_epoch", "epochs", "note", "seconds", "started", "worker", "run",
              *params, *(["optimizer.lr"] if scaled else [])]
    rows = []
    for t in trials:
        w = t.user_attrs.get(WORKER_ATTR) or {}
        cfg = t.user_attrs.get("config") or {}
        row = [t.number, t.state.name, t.value if t.value is not None else "", t.user_attrs.get("best_epoch", ""),
               t.user_attrs.get("epochs", ""), t.user_attrs.get(NOTE_ATTR, ""), t.user_attrs.get("seconds", ""),
               t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "",
               f"{w.get('host', '')}:{w.get('pid', '')}" if w else "", t.user_attrs.get("run", ""),
               *(t.params.get(p, "") for p in params)]
        if scaled:
            row.append(cfg.get("optimizer", {}).get("lr", ""))
        rows.append(row)
    return header, rows


def best_toml(result: TuneResult) -> str:
    """The best trial's config, re-runnable with ``optiloop train --config best.toml``."""
    import tomli_w

    from .. import __version__

    b = result.best
    assert b is not None
    return (f"# optiloop {__version__} tune: the best trial of study {result.study_name!r} (trial {b['number']}, "
            f"{result.monitor} {b['value']:.6g} at epoch {b['best_epoch']}; run folder {b['run']}).\n"
            "# Re-run it with: optiloop train --config best.toml\n\n" + tomli_w.dumps(dict(b["config"])))


# --- Optuna's plots ---------------------------------------------------------------------------------------
def _plots(result: TuneResult, out: Path) -> list[tuple[str | None, str, str, str | None]]:
    """(file or None, title, caption, why not drawn) for each of Optuna's plots."""
    import warnings

    import matplotlib
    import optuna
    from optuna.visualization import matplotlib as ovm

    study, monitor = result.study, result.monitor
    draw = {
        "history.png": lambda: ovm.plot_optimization_history(study, target_name=monitor),
        "importances.png": lambda: ovm.plot_param_importances(study, target_name=monitor),
        "parallel.png": lambda: ovm.plot_parallel_coordinate(study, target_name=monitor),
        "intermediate.png": lambda: ovm.plot_intermediate_values(study),
    }
    done = []
    for file, title, caption in PLOTS:
        # Optuna's plots switch matplotlib to its ggplot style for the whole process: kept to them
        with matplotlib.rc_context():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # experimental-API and "too few trials" warnings
                    ax = draw[file]()
                fig = ax.figure if not hasattr(ax, "__len__") else ax.flat[0].figure
                if file == "intermediate.png":  # Optuna's steps are our epochs
                    from matplotlib.ticker import MaxNLocator

                    ax.set_xlabel("epoch")
                    ax.set_ylabel(monitor)
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                _save(fig, out / file, wide=file == "parallel.png")
                done.append((file, title, caption, None))
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError, optuna.exceptions.OptunaError) as e:
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                done.append((None, title, caption, why))
    return done


def _save(fig: Any, path: Path, *, wide: bool) -> None:
    import matplotlib.pyplot as plt

    from ..files import atomic_open

    try:
        fig.set_size_inches(12 if wide else 9, 5.5)
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)  # Optuna draws through pyplot: its figure registry must not grow


# --- report.md / report.html -----------------------------------------------------------------------------------
def _facts(result: TuneResult, trials: Sequence[Any], space: Any, data: str, seconds: float) -> list[str]:
    from .space import Space

    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    epochs = sum(int(t.user_attrs.get("epochs") or 0) for t in trials)
    cfg = (result.best or {}).get("config") or next((t.user_attrs["config"] for t in trials
                                                     if "config" in t.user_attrs), None)
    budget = cfg["train"]["epochs"] if cfg else None
    where = "; ".join(space.describe()) if isinstance(space, Space) else "a function of the trial (define-by-run)"
    lines = [
        f"Data and model: {data}",
        f"Searched: {where}" + (" (the default space)" if isinstance(space, Space) and space.default else ""),
        f"Objective: {result.direction} {result.monitor}, each trial's best epoch"
        + (f"; trials of up to {budget} epochs, no early stopping" if budget else ""),
        f"Trials: {len(trials)} ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); epochs trained: "
        f"{epochs}" + (f" ({len(trials) * budget} if every trial had run in full)" if budget and trials else ""),
        f"This session: {len(result.new_trials)} new trials in {seconds:.1f} s"
        + (f" on {len(result.workers)} processes" if len(result.workers) > 1 else ""),
        f"Study {result.study_name!r} on {result.storage}; open it with: {result.dashboard}",
    ]
    b = result.best
    if b is not None:
        lines.append(f"Best: trial {b['number']}, {result.monitor} {b['value']:.4f} at epoch {b['best_epoch']} "
                     f"({_settings(b['config'], b['params'])}); run folder {b['run']}; re-run it with: "
                     "optiloop train --config best.toml")
    else:
        lines.append("Best: no trial completed yet (all pruned or failed), so there is no best.toml")
    return lines


def _settings(cfg: Mapping[str, Any] | None, params: Mapping[str, Any]) -> str:
    """The best trial's searched settings as they ran (the LR itself, not its multiple)."""
    if not cfg:
        return ", ".join(f"{k} {v}" for k, v in params.items())
    words = []
    for key in params:
        section, _, name = key.partition(".")
        if key == "optimizer.lr_scale":
            section, name = "optimizer", "lr"
        value = cfg.get(section, {}).get(name)
        words.append(f"{section}.{name} {fmt(value, none='')}")
    return ", ".join(words)


_SHOWN = 30  # trials listed in the report; trials.csv has them all


def _shown_rows(result: TuneResult, header: list[str], rows: list[list[Any]]) -> tuple[list[str], list[list[str]]]:
    """The report's table: complete trials best first, then pruned, then the rest; a few columns."""
    keep = [i for i, h in enumerate(header) if h not in ("started", "worker", "seconds")]
    sign = -1.0 if result.direction == "maximize" else 1.0
    order = {"COMPLETE": 0, "PRUNED": 1}

    def key(r: list[Any]) -> tuple:
        v = r[2]
        return (order.get(r[1], 2), sign * v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf, r[0])

    picked = sorted(rows, key=key)[:_SHOWN]
    return [header[i] for i in keep], [[fmt(r[i], none="") for i in keep] for r in picked]


def _markdown(result: TuneResult, facts: list[str], header: list[str], rows: list[list[Any]],
              pictures: Sequence[tuple[str | None, str, str, str | None]]) -> str:
    out = [f"# optiloop tune: {result.study_name} ({datetime.now():%Y-%m-%d %H:%M})", ""]
    out += [f"- {line}" for line in facts]
    cols, body = _shown_rows(result, header, rows)
    more = f" ({_SHOWN} of {len(rows)}; all in trials.csv)" if len(rows) > _SHOWN else ""
    out += ["", f"## Trials, best first{more}", "", "| " + " | ".join(cols) + " |",
            "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    for file, title, caption, why in pictures:
        out += ["", f"## {title}", "", f"{caption[0].upper()}{caption[1:]}.", ""]
        out.append(f"![{title}]({file})" if file else f"(not drawn: {why})")
    return "\n".join(out) + "\n"


_CSS = CSS + """
th, td { white-space: nowrap; }
tr.pruned td { color: #777; }
figcaption small { font-weight: normal; color: #555; }
code { background: #f3f3f3; padding: 0.1em 0.3em; }
"""


def _html(result: TuneResult, facts: list[str], header: list[str], rows: list[list[Any]],
          pictures: Sequence[tuple[str | None, str, str, str | None]], out: Path) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>optiloop tune: {esc(result.study_name)}</title>", f"<style>{_CSS}</style></head><body>",
             f"<h1>optiloop tune: {esc(result.study_name)} <small>({datetime.now():%Y-%m-%d %H:%M})</small></h1>",
             "<ul>"]
    parts += [f"<li>{esc(line)}</li>" for line in facts]
    parts.append("</ul>")
    cols, body = _shown_rows(result, header, rows)
    more = f" ({_SHOWN} of {len(rows)}; all in trials.csv)" if len(rows) > _SHOWN else ""
    parts += [f"<h2>Trials, best first{esc(more)}</h2>", "<div class=\"scroll\"><table>",
              "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"]
    for r in body:
        cls = " class=\"pruned\"" if r[1] != "COMPLETE" else ""
        parts.append(f"<tr{cls}>" + "".join(
            f"<td class=\"num\">{esc(c)}</td>" if _numeric(c) else f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    parts += ["</table></div>", "<div class=\"figures\">"]
    for file, title, caption, why in pictures:
        if file is None:
            parts.append(f"<figure><figcaption>{esc(title)}</figcaption><p>Not drawn: {esc(why or '')}</p></figure>")
            continue
        data = base64.b64encode((out / file).read_bytes()).decode("ascii")
        parts += [f"<figure><figcaption>{esc(title)} <small>{esc(caption)}</small></figcaption>",
                  f"<img alt=\"{esc(title)}\" src=\"data:image/png;base64,{data}\"></figure>"]
    parts += ["</div>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

