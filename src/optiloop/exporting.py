"""Exports that give the same numbers: a run's model with its preprocessing, as files other tools read.

``optiloop export RUN --out FILE --format pt|safetensors|onnx`` and :func:`export`. For a run of
``optiloop train`` the exported module is :class:`Exported`: it takes the raw numeric features (NaN
for an empty cell) and returns what ``optiloop predict`` returns: class probabilities, or
regression values in the target's units. The filling of empty cells with the training medians,
the standardization and the target's scaling are part of it, as buffers beside the model's
weights:

- ``pt``: its ``state_dict`` (the model's weights under ``model.``, then ``input_fill``,
  ``input_mean``, ``input_scale`` and, for a regression, ``output_mean``, ``output_scale``), plain
  tensors for ``torch.load(weights_only=True)``;
- ``safetensors``: the same tensors, and as metadata the feature names and order, the labels,
  the task and the architecture (the model's name, options and printed structure);
- ``onnx``: the whole computation as a graph (input ``features``, output ``probabilities`` or the
  target's name), with the same metadata, for ONNX Runtime.

A table's text categories and dates cannot be computed by a graph of numbers: such an export takes
the encoded columns (numbers, date parts, one 0/1 column per category), says so in one line, and
writes ``FILE.encoding.json`` beside it: how to make those columns from a raw row.

A checkpoint of ``ol.fit`` without a run config records no preprocessing and no architecture: its
``pt`` and ``safetensors`` exports hold the model's weights under its own keys; ONNX is refused
(export the module yourself with ``torch.onnx.export(model, example)``).

Example:
    >>> import optiloop as ol
    >>> ol.export("runs/NAME", "model.onnx")  # doctest: +SKIP
    PosixPath('runs/NAME/best.pt')
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import load_checkpoint
from .errors import CheckpointError, OptiloopError, choices
from .files import atomic_open, write_text
from .models import build_model
from .preprocessing import Preprocessing
from .recipes import rebuild
from .training_state import inference_weights, load_model_weights

FORMATS = {"pt": (".pt", ".pth"), "safetensors": (".safetensors",), "onnx": (".onnx",)}
PACKAGES = {"safetensors": ("safetensors",), "onnx": ("onnx",)}  # what writing each format needs


class Exported(nn.Module):
    """A run's model between its preprocessing and its outputs: raw numbers in, ``predict``'s
    numbers out.

    ``forward(x)``: ``x`` float32 ``[rows, features]`` in the run's order, NaN for an empty cell;
    returns the class probabilities ``[rows, classes]``, or the regression values ``[rows]`` in
    the target's units.
    """

    def __init__(self, model: nn.Module, prep: Preprocessing):
        super().__init__()
        self.model = model
        fill, mean, scale = prep.tail()
        self.register_buffer("input_fill", torch.as_tensor(np.asarray(fill, dtype=np.float32)))
        self.register_buffer("input_mean", torch.as_tensor(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("input_scale", torch.as_tensor(np.asarray(scale, dtype=np.float32)))
        self.classification = prep.task == "classification"
        if not self.classification:
            y = prep.y_scaler
            self.register_buffer("output_mean", torch.tensor([float(y.mean_[0]) if y is not None else 0.0]))
            self.register_buffer("output_scale", torch.tensor([float(y.scale_[0]) if y is not None else 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.input_fill, x)
        out = self.model((x - self.input_mean) / self.input_scale).float()
        if self.classification:
            return torch.softmax(out, dim=1)
        return out.flatten(1)[:, 0] * self.output_scale + self.output_mean


@dataclass
class ExportReport:
    """What :func:`write` wrote: the file, its format, what it takes and gives (one line each),
    a note when part of the preprocessing stays outside, and the file written beside it."""

    source: Path
    out: Path
    format: str
    takes: str
    gives: str
    tensors: int
    note: str | None = None
    beside: Path | None = None


def export(source: str | os.PathLike, out: str | os.PathLike, *, format: str | None = None, which: str = "best",
           dtype: torch.dtype | None = None) -> Path:
    """Write a run's model, with its preprocessing, as a ``pt``, ``safetensors`` or ``onnx`` file.

    The exported module takes the raw numeric features (NaN for an empty cell) and returns what
    ``optiloop predict`` returns (class probabilities, or values in the target's units): see the
    module's docstring for each format's contents. A sharded (FSDP) checkpoint is consolidated on
    this one process. A table's categorical encoding stays outside the file: a
    :class:`~optiloop.errors.DataWarning` says so, and ``FILE.encoding.json`` beside it says how
    to make the columns the file takes.

    Args:
        source: a run folder (its ``best`` checkpoint, else its ``last``), a ``.pt`` checkpoint or
            a sharded checkpoint folder.
        out: the file to write.
        format: "pt", "safetensors" or "onnx"; None: from ``out``'s suffix.
        which: in a run folder, "best" or "last".
        dtype: cast the model's floating-point weights (e.g. ``torch.bfloat16``; pt and safetensors).

    Returns:
        The checkpoint it was made from.

    Example:
        >>> import optiloop as ol
        >>> ol.export("runs/demo", "model.pt")  # doctest: +SKIP
        PosixPath('runs/demo/best.pt')
    """
    report = write(source, out, format=format, which=which, dtype=dtype)
    if report.note:
        from .errors import DataWarning

        warnings.warn(report.note, DataWarning, stacklevel=2)
    return report.source


def write(source: str | os.PathLike, out: str | os.PathLike, *, format: str | None = None, which: str = "best",
          dtype: torch.dtype | None = None) -> ExportReport:
    """:func:`export`, returning what it wrote (the CLI prints it)."""
    out = Path(out)
    fmt = _format(out, format)
    if which not in ("best", "last"):
        raise OptiloopError(f"unknown which={which!r}; choose one of: best, last")
    if out.is_dir():
        raise OptiloopError(f"--out {out} is a folder; give a file name such as {out / ('model' + FORMATS[fmt][0])}")
    if dtype is not None and fmt == "onnx":
        raise OptiloopError("dtype applies to pt and safetensors (stored weights); an ONNX graph computes in float32")
    _require(fmt)
    from .sharded import _export_source, read_consolidated  # sharded checkpoints: torch.distributed.checkpoint

    src = _export_source(Path(source), which)
    ckpt = read_consolidated(src) if src.is_dir() else load_checkpoint(src)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{src} holds no model weights to export")
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    info = config.get("inference")
    weights = inference_weights(ckpt)  # an EMA / SWA average where the run validated one
    if info is None or info.get("preprocessing") is None or "missing" in info["model"]:
        # not rows of features, or a model that cannot be built again here: the weights as they are
        return _weights_only(src, weights, out, fmt, dtype)

    m = info["model"]
    if "name" in m:  # optiloop train's model: a built-in name or package.module:function
        model = build_model(m["name"], m["in_features"], m["out_features"], **m["options"])
    else:  # fit(out=...)'s: an import path and its arguments
        model = rebuild(m, src)
    load_model_weights(model, weights)
    prep = Preprocessing.from_state_dict(info["preprocessing"])
    module = Exported(model, prep).eval()
    columns = prep.encoded
    meta = _metadata(prep, m, model)
    if fmt == "onnx":
        tensors = _write_onnx(module, out, len(columns), meta, _output_name(prep))
    else:
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        if dtype is not None:
            state = {k: v.to(dtype) if k.startswith("model.") and v.is_floating_point() else v
                     for k, v in state.items()}
        _write_tensors(state, out, fmt, meta)
        tensors = len(state)
    takes, gives = meta["input"], meta["output"]
    note = beside = None
    if prep.table is not None and (prep.table.state["categorical"] or prep.table.state["dates"]):
        beside = out.with_name(out.name.removesuffix(out.suffix) + ".encoding.json")
        outside = [*prep.table.state["categorical"], *prep.table.state["dates"]]
        note = (f"the encoding of {', '.join(outside)} (text and dates) cannot be part of the {fmt} file: it takes "
                f"the {len(columns)} encoded columns that {beside.name} describes")
        write_text(beside, json.dumps(prep.table.description(), indent=2) + "\n")
    return ExportReport(src, out, fmt, takes, gives, tensors, note, beside)


def _format(out: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise OptiloopError(f"unknown export format {format!r}; choose one of: {choices(FORMATS)}")
        return format
    for fmt, suffixes in FORMATS.items():
        if out.suffix.lower() in suffixes:
            return fmt
    raise OptiloopError(f"cannot tell the format of {out.name}: name the file .pt, .safetensors or .onnx, or give "
                        f"the format ({choices(FORMATS)})")


def _require(fmt: str) -> None:
    for package in PACKAGES.get(fmt, ()):
        if importlib.util.find_spec(package) is None:
            raise OptiloopError(f"the {fmt} export needs the {package} package: pip install 'optiloop[export]'")


def _output_name(prep: Preprocessing) -> str:
    return "probabilities" if prep.task == "classification" else "prediction"


def _shown(names: list[Any], n: int = 6) -> str:
    return ", ".join(map(str, names[:n])) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def _metadata(prep: Preprocessing, m: dict[str, Any], model: nn.Module) -> dict[str, str]:
    """What a reader needs besides the tensors, as text (safetensors and ONNX take string pairs)."""
    columns = prep.encoded
    empty = "NaN for an empty cell" if prep.fill is not None or prep.table is not None else "no empty cells"
    takes = f"float32 [rows, {len(columns)}] 'features': {_shown(columns)}, in this order; {empty}"
    if prep.task == "classification":
        gives = f"float32 [rows, {len(prep.classes)}] 'probabilities' of the classes {_shown(prep.classes, 10)}"
    else:
        gives = f"float32 [rows] 'prediction': {prep.target} in its own units"
    # optiloop train's model by name; fit(out=)'s by its import path and arguments
    architecture = {"name": m.get("name", m.get("import")), "in_features": m.get("in_features"),
                    "out_features": m.get("out_features"), "options": m.get("options", m.get("kwargs", {})),
                    "module": _structure(model)}
    return {"format": "pt", "optiloop": __version__, "task": prep.task, "target": str(prep.target),
            "features": json.dumps(columns), "raw_features": json.dumps(prep.features),
            "classes": json.dumps(prep.classes, default=str), "architecture": json.dumps(architecture),
            "input": takes, "output": gives,
            "preprocessing": "inside: an empty cell (NaN) becomes the training median, then (x - input_mean) / "
                             "input_scale; " + ("softmax of the model's outputs" if prep.task == "classification"
                                                else "output * output_scale + output_mean")}


def _structure(model: nn.Module) -> str:
    """The module printed in full (the built-in models shorten their own repr)."""
    return nn.Module.__repr__(model)


def _write_tensors(state: dict[str, torch.Tensor], out: Path, fmt: str, meta: dict[str, str] | None) -> None:
    with atomic_open(out, "wb") as f:
        if fmt == "pt":
            torch.save(state, f)
        else:
            from safetensors.torch import save  # optiloop[export]

            f.write(save(state, metadata=meta))


def _write_onnx(module: Exported, out: Path, width: int, meta: dict[str, str], output: str) -> int:
    import onnx  # optiloop[export]: the metadata

    buffer = io.BytesIO()
    example = torch.zeros(2, width)
    with warnings.catch_warnings():  # the TorchScript exporter announces its successor; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, input_names=["features"], output_names=[output],
                          dynamic_axes={"features": {0: "rows"}, output: {0: "rows"}})
    graph = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    with atomic_open(out, "wb") as f:
        f.write(graph.SerializeToString())
    return len(graph.graph.initializer)


def _weights_only(src: Path, weights: dict[str, Any], out: Path, fmt: str, dtype: torch.dtype | None
                  ) -> ExportReport:
    """A checkpoint without a run config: the model's weights under its own keys."""
    if fmt == "onnx":
        raise OptiloopError(f"{src} records no model architecture or preprocessing (a checkpoint of ol.fit without a "
                            "run config): an ONNX graph needs both; export the module yourself with "
                            "torch.onnx.export(model, example), or write pt / safetensors weights")
    if dtype is not None:
        weights = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                   for k, v in weights.items()}
    state = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in weights.items()}
    _write_tensors(state, out, fmt, {"format": "pt", "optiloop": __version__} if fmt == "safetensors" else None)
    return ExportReport(src, out, fmt, "what the model takes (no preprocessing recorded)",
                        "the model's own outputs (load into the same module class)", len(state))
