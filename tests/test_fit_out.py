"""fit(out=...): the run folder of optiloop train from Python, continued by fit(resume=...) and
read back by optiloop predict / eval / export in a new process (runs/fitted.py, recipes.py)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import optiloop as ol
from optiloop.errors import OptiloopError
from optiloop.recipes import checked_recipe, recipe_of

SRC = Path(__file__).resolve().parents[1] / "src"
WORKER = Path(__file__).with_name("fit_out_worker.py")


def _data(n=120, features=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, features, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return X, y


def _env(*paths):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *map(str, paths)]), "MPLBACKEND": "Agg"}


class Kept(nn.Module):
    """Keeps its constructor arguments under their own names: rebuildable by path."""

    def __init__(self, features: int, classes: int, hidden: int = 8):
        super().__init__()
        self.features, self.classes, self.hidden = features, classes, hidden
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class Forgets(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Linear(width, 2)

    def forward(self, x):
        return self.net(x)


def test_fit_out_writes_the_run_folder_and_the_history_knows_its_monitor(tmp_path):
    X, y = _data()
    out = tmp_path / "runs" / "demo"
    model = ol.make_model("optiloop.models:mlp", in_features=6, out_features=3, hidden=[16])
    h = ol.fit(model, (X[:96], y[:96]), val_data=(X[96:], y[96:]), epochs=3, metrics=["accuracy"], seed=0,
               progress=False, scheduler="cosine", out=str(out),
               callbacks=[ol.EarlyStopping(monitor="val_acc", patience=5)])
    for name in ("config.toml", "history.csv", "steps.csv", "best.pt", "last.pt", "curves.png", "summary.json",
                 "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv"):
        assert (out / name).is_file(), name
    with open(out / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    with open(out / "steps.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * 3  # 96 rows / 32 per batch, 3 epochs
    summary = json.loads((out / "summary.json").read_text())
    # EarlyStopping watches val_acc: the folder's best.pt and the History agree on it
    assert summary["monitor"] == "val_acc" and h.monitor == "val_acc" and h.mode == "max"
    assert summary["best"]["epoch"] == h.best()["epoch"] == h.best("val_acc")["epoch"]
    assert summary["data"] == {"task": "classification", "train_samples": 96, "val_samples": 24, "features": 6,
                               "classes": 3}
    assert summary["model"]["import"] == "optiloop.models:mlp"
    assert summary["validation_classes"]["labels"] == [0, 1, 2]
    assert sum(map(sum, summary["validation_classes"]["confusion_matrix"])) == 24
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["config"]["inference"]["model"] == {"import": "optiloop.models:mlp", "kwargs": {
        "in_features": 6, "out_features": 3, "hidden": [16]}}
    assert ckpt["config"]["train"]["loss"] == "cross_entropy"
    # the same folder twice: refused in one line, nothing overwritten
    with pytest.raises(OptiloopError, match="already exists"):
        ol.fit(model, (X, y), epochs=1, progress=False, out=str(out))


def test_history_best_without_a_key_follows_the_monitor():
    rows = [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.9}, {"epoch": 2, "val_loss": 0.4, "val_acc": 0.8}]
    assert ol.History(rows).best()["epoch"] == 2  # no monitor recorded: val_loss, lowest
    assert ol.History(rows, monitor="val_acc").best()["epoch"] == 1  # its direction: highest
    X, y = _data()
    h = ol.fit(nn.Linear(6, 3), (X, y), val_data=(X, y), epochs=2, progress=False, seed=0, metrics=["accuracy"],
               callbacks=[ol.EarlyStopping(monitor="val_acc", patience=3)])
    assert (h.monitor, h.mode) == ("val_acc", "max")
    assert h.best() == max(h.rows, key=lambda r: (r["val_acc"], -r["epoch"]))
    assert ol.fit(nn.Linear(6, 3), (X, y), epochs=1, progress=False).monitor is None


def test_recipes_record_what_rebuilds_the_weights_and_say_why_not(tmp_path):
    assert recipe_of(Kept(4, 3, hidden=5)) == {"import": f"{__name__}:Kept",
                                               "kwargs": {"features": 4, "classes": 3, "hidden": 5}}
    assert checked_recipe(Kept(4, 3, hidden=5))["kwargs"]["hidden"] == 5
    assert "'width' is not kept" in recipe_of(Forgets(3))["missing"]
    assert "*args" in recipe_of(nn.Sequential(nn.Linear(2, 2)))["missing"]
    assert "lambda" in recipe_of(ol.make_model(lambda: nn.Linear(2, 2)))["missing"]
    # a recipe whose model has other weights is not kept: a wrongly read argument would mis-rebuild
    odd = Kept(4, 3, hidden=5)
    odd.hidden = 7
    assert "other weights" in checked_recipe(odd)["missing"]
    # checking on the meta device draws no random numbers: the run's initial weights are untouched
    torch.manual_seed(1)
    checked_recipe(Kept(4, 3))
    a = torch.rand(3)
    torch.manual_seed(1)
    Kept(4, 3)
    assert torch.equal(a, torch.rand(3))


@pytest.mark.slow
def test_optiloop_predict_eval_export_read_a_fit_folder_in_a_new_process(tmp_path):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, features, classes, hidden=8):\n"
        "        super().__init__()\n"
        "        self.features, self.classes, self.hidden = features, classes, hidden\n"
        "        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))\n\n"
        "    def forward(self, x):\n"
        "        return self.body(x)\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, numpy as np, torch, optiloop as ol\n"
        "from torch import nn\n"
        "from mynets import Net\n\n"
        "class Local(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.l = nn.Linear(6, 3)\n\n"
        "    def forward(self, x):\n"
        "        return self.l(x)\n\n"
        "g = torch.Generator().manual_seed(0)\n"
        "X = torch.randn(120, 6, generator=g); y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()\n"
        "model = Net(6, 3, hidden=12)\n"
        "ol.fit(model, (X[:96], y[:96]), val_data=(X[96:], y[96:]), epochs=3, seed=0, progress=False,\n"
        "       metrics=['accuracy'], out='runs/net')\n"
        "ol.fit(Local(), (X, y), epochs=1, progress=False, out='runs/local')\n"
        "new = torch.randn(10, 6, generator=g)\n"
        "np.savez('new.npz', X=new.numpy(), y=(new[:, 0] > 0).long().numpy())\n"
        "best = torch.load('runs/net/best.pt', weights_only=True)['model']\n"
        "model.load_state_dict(best)\n"
        "np.save('expected.npy', torch.softmax(model.eval()(new), 1).detach().numpy())\n")
    env = _env(tmp_path)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    pred = cli("predict", "runs/net", "--data", "new.npz", "--out", "pred.csv")
    assert pred.returncode == 0, pred.stderr
    with open(tmp_path / "pred.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = np.array([[float(r[f"proba_{c}"]) for c in range(3)] for r in rows])
    expected = np.load(tmp_path / "expected.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [int(r["y"]) for r in rows] == expected.argmax(1).tolist()

    ev = cli("eval", "runs/net", "--data", "new.npz", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["samples"] == 10
    ev = cli("eval", "runs/net")  # its own validation data were arrays in the script: one line says so
    assert ev.returncode == 2 and len(ev.stderr.strip().splitlines()) == 1 and "--data" in ev.stderr
    ex = cli("export", "runs/net", "--out", "net.pt")
    assert ex.returncode == 0, ex.stderr
    exported = torch.load(tmp_path / "net.pt", weights_only=True)  # the model inside its preprocessing
    assert {k.removeprefix("model.") for k in exported if k.startswith("model.")} == {
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    # a class defined in the script (__main__): one line saying what is missing; export still works
    bad = cli("predict", "runs/local", "--data", "new.npz")
    assert bad.returncode == 2, bad.stderr
    line, = bad.stderr.strip().splitlines()
    assert "Local is defined in __main__" in line and "Traceback" not in bad.stderr
    assert cli("export", "runs/local", "--out", "local.pt").returncode == 0
    # optiloop train cannot continue it: one line pointing at fit(resume=)
    res = cli("train", "--resume", "runs/net")
    assert res.returncode == 2 and "fit(" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def _worker(run_dir, out, *extra):
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["STEP 10"])  # last.pt then holds step 8: mid-epoch
def test_a_sigkilled_fit_out_resumes_bit_exact(tmp_path, kill_at):
    whole = _worker(tmp_path / "whole", tmp_path / "whole.pt")
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    p = _worker(tmp_path / "run", tmp_path / "never.pt")
    for line in p.stdout:
        if line.strip() == kill_at:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            break
    else:
        raise AssertionError(f"worker ended before {kill_at}: {p.stderr.read()}")
    assert p.returncode == -signal.SIGKILL and not (tmp_path / "never.pt").exists()
    again = _worker(tmp_path / "run", tmp_path / "resumed.pt", "--resume")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    a, b = torch.load(tmp_path / "whole.pt"), torch.load(tmp_path / "resumed.pt")
    assert a["history"] == b["history"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the folder holds the whole run, as the uninterrupted one's does
    for name in ("history.csv", "steps.csv"):
        def rows(folder, name=name):
            with open(folder / name, newline="") as f:
                return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
        assert rows(tmp_path / "run") == rows(tmp_path / "whole"), name
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_run"] == 5


def test_fit_resume_continues_the_folder_and_refuses_what_defines_the_saved_state(tmp_path, capsys):
    X, y = _data()
    out = str(tmp_path / "r")

    def run(**kw):
        args = {"epochs": 2, "seed": 0, "lr": 1e-2, "batch_size": 32, "progress": False, **kw}
        model = ol.make_model("optiloop.models:mlp", in_features=6, out_features=3, hidden=[8])
        return ol.fit(model, (X[:96], y[:96]), val_data=(X[96:], y[96:]),
                      callbacks=[ol.Checkpoint(out, every_seconds=0)], **args)

    run(out=out)
    with pytest.raises(OptiloopError, match=r"optimizer.lr 0.01 -> 0.5: these define the saved state"):
        run(resume=out, lr=0.5)
    with pytest.raises(ol.OptiloopError, match=r"train.epochs 2 -> 3.*force_resume=True"):
        run(resume=out, epochs=3)
    with pytest.raises(OptiloopError, match="drop out="):
        run(resume=out, out=str(tmp_path / "other"))
    capsys.readouterr()
    h = run(resume=out, epochs=3, force_resume=True, progress=True)
    assert "resumed after epoch 2/3 (step 6): continuing with epoch 3" in capsys.readouterr().out
    assert [r["epoch"] for r in h] == [1, 2, 3]
    with open(tmp_path / "r" / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    with open(tmp_path / "r" / "config.toml", "rb") as f:  # rewritten once the resume was accepted
        assert ol.config.tomllib.load(f)["train"]["epochs"] == 3
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs_run"] == 3


@pytest.mark.slow
def test_fit_out_under_torchrun_writes_one_folder_from_rank_0(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(
        "import torch, optiloop as ol\n"
        "g = torch.Generator().manual_seed(0)\n"
        "X = torch.randn(128, 6, generator=g); y = (X[:, 0] > 0).long()\n"
        "model = ol.make_model('optiloop.models:mlp', in_features=6, out_features=2, hidden=[8])\n"
        "ol.fit(model, (X[:96], y[:96]), val_data=(X[96:], y[96:]), epochs=2, seed=0, progress=False,\n"
        "       metrics=['accuracy'], out='runs/ddp')\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    folder = tmp_path / "runs" / "ddp"
    assert {"config.toml", "history.csv", "steps.csv", "best.pt", "last.pt", "curves.png", "summary.json",
            "confusion_matrix.csv"} <= {f.name for f in folder.iterdir()}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
