"""Exports that give the same numbers: ``optiloop export --format pt|safetensors|onnx`` against
``optiloop predict`` on a classification and a regression run (ONNX Runtime on the .onnx file;
plain torch, in a process where optiloop cannot be imported, on the .pt and .safetensors files),
and a table's export that takes the encoded columns its .encoding.json describes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from table_data import new_rows, write_table

import optiloop as ol
from optiloop.cli import main
from optiloop.config import resolve
from optiloop.datasets import BUILTIN
from optiloop.errors import DataWarning
from optiloop.runs import TrainingRun

ort = pytest.importorskip("onnxruntime")  # optiloop[export]; the test extra installs it
safetensors = pytest.importorskip("safetensors")

# How a reader without optiloop applies the .pt / .safetensors tensors (docs/runs.md shows the same).
PLAIN_TORCH = r"""
import json, sys
sys.modules["optiloop"] = None  # importing optiloop fails from here on
import numpy as np, torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import load_file

pt, st, x_file, out_file = sys.argv[1:]
with safe_open(st, "pt") as f:
    meta = f.metadata()
arch = json.loads(meta["architecture"])
x = torch.from_numpy(np.load(x_file))

def outputs(sd):
    layers, width = [], arch["in_features"]
    for h in arch["options"]["hidden"]:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, arch["out_features"])).eval()
    net.load_state_dict({k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")})
    with torch.no_grad():
        out = net((torch.where(torch.isnan(x), sd["input_fill"], x) - sd["input_mean"]) / sd["input_scale"])
    if meta["task"] == "classification":
        return torch.softmax(out, dim=1).numpy()
    return (out[:, 0] * sd["output_scale"] + sd["output_mean"]).numpy()

np.savez(out_file, pt=outputs(torch.load(pt, weights_only=True)), safetensors=outputs(load_file(st)),
         features=np.array(json.loads(meta["features"])), classes=np.array(json.loads(meta["classes"])))
"""


def close(got: np.ndarray, expected: np.ndarray) -> None:
    """Within 1e-5 (relative beyond 1: a regression value of 150 is compared to 5 significant digits of float32)."""
    assert got.shape == expected.shape
    assert np.all(np.abs(got - expected) <= 1e-5 * np.maximum(1.0, np.abs(expected))), np.abs(got - expected).max()


def predict_cli(capsys, run: Path, data: Path) -> tuple[list[str], np.ndarray]:
    """``optiloop predict RUN --data FILE``: header and numbers (probabilities, or the value)."""
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(data)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header, body = rows[0], rows[1:]
    numbers = [[float(v) for v in r[1:]] for r in body] if len(header) > 1 else [[float(r[0])] for r in body]
    return header, np.array(numbers)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optiloop.errors.DataWarning")  # (empty cells in the rows: filled, on purpose)
@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_pt_safetensors_and_onnx_give_what_predict_gives(tmp_path, capsys, name):
    run = TrainingRun(resolve(sets=[f"data.name={name}", "train.epochs=3"]), out=tmp_path / "run")
    run.train(progress=False)
    X, _, features = BUILTIN[name][0]()
    rows = pd.DataFrame(X[:25], columns=features)
    rows.iloc[0, 2] = rows.iloc[3, 0] = np.nan  # empty cells: the export fills them as predict does
    rows.to_csv(tmp_path / "rows.csv", index=False)
    header, expected = predict_cli(capsys, tmp_path / "run", tmp_path / "rows.csv")
    if name == "diabetes":
        expected = expected[:, 0]
        assert 25 < expected.mean() < 350  # the target's own units

    for fmt in ("pt", "safetensors", "onnx"):
        capsys.readouterr()
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / f"model.{fmt}")]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        closing = lines[-1]
        assert closing.startswith(f"takes float32 [rows, {len(features)}] 'features': {features[0]}, ")
        assert ("'probabilities' of the classes 0, 1, 2" if name == "wine" else "'prediction': target") in closing
    x = rows.to_numpy(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    close(session.run(None, {"features": x})[0], expected)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["features"]) == features and meta["task"] == run.task.preprocessing.task

    np.save(tmp_path / "x.npy", x)
    files = [str(tmp_path / f) for f in ("model.pt", "model.safetensors", "x.npy", "out.npz")]
    p = subprocess.run([sys.executable, "-c", PLAIN_TORCH, *files],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    got = np.load(tmp_path / "out.npz")
    close(got["pt"], expected)
    close(got["safetensors"], expected)
    assert got["features"].tolist() == features  # the metadata: names and order, labels
    assert got["classes"].tolist() == ([0, 1, 2] if name == "wine" else [])


@pytest.mark.filterwarnings("ignore::optiloop.errors.DataWarning")
def test_a_tables_export_takes_the_encoded_columns_its_encoding_json_describes(tmp_path):
    df = write_table(tmp_path / "t.csv")
    TrainingRun(resolve(sets=[f"data.name={tmp_path / 't.csv'}", "data.target=outcome", "train.epochs=2"]),
                out=tmp_path / "run").train(progress=False)
    with pytest.warns(DataWarning, match="the encoding of plan, region, signup .* cannot be part of the onnx file: "
                                         "it takes the 13 encoded columns that model.encoding.json describes"):
        ol.export(tmp_path / "run", tmp_path / "model.onnx")
    spec = json.loads((tmp_path / "model.encoding.json").read_text())
    rows = new_rows(df)

    # the columns, made from the raw rows by the written rules alone (no optiloop)
    def encoded_column(c: dict) -> np.ndarray:
        raw = rows[c["from"]]
        if c["kind"] == "number":
            return raw.to_numpy(np.float64)
        if c["kind"].startswith("date "):
            days = pd.to_datetime(raw)
            part = c["kind"].split()[1]
            return {"year": days.dt.year, "month": days.dt.month, "day": days.dt.day,
                    "weekday": days.dt.day_of_week}[part].to_numpy(np.float64)
        text = raw.fillna(spec["most_frequent"][c["from"]]).astype(str)
        return (text == c["value"]).to_numpy(np.float64)

    x = np.column_stack([encoded_column(c) for c in spec["encoded"]]).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    close(session.run(None, {"features": x})[0], ol.load(tmp_path / "run").predict_proba(rows))
    assert spec["takes"] == ["signup", "age", "income", "plan", "region"]


def test_a_checkpoint_without_a_run_config_exports_weights_and_refuses_onnx(tmp_path):
    X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ol.fit(model, (X, y), val_data=(X, y), epochs=1, progress=False, seed=0, callbacks=ol.Checkpoint(tmp_path / "run"))
    ol.export(tmp_path / "run", tmp_path / "w.safetensors")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "w.safetensors")) == set(model.state_dict())  # the module's own keys
    with pytest.raises(ol.OptiloopError, match="records no model architecture or preprocessing .* ONNX graph needs"):
        ol.export(tmp_path / "run", tmp_path / "w.onnx")
    assert not (tmp_path / "w.onnx").exists()


@pytest.mark.parametrize(("out", "fmt", "needle"), [
    ("model.bin", None, "cannot tell the format of model.bin: name the file .pt, .safetensors or .onnx"),
    ("model.pt", "tflite", "unknown export format 'tflite'; choose one of: onnx, pt, safetensors"),
])
def test_an_unknown_format_is_one_line(tmp_path, out, fmt, needle):
    with pytest.raises(ol.OptiloopError, match=needle.replace(".", r"\.")):
        ol.export(tmp_path, tmp_path / out, format=fmt)
