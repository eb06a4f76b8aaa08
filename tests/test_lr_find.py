"""optiloop.lr_find and ``optiloop lr-find``: a suggestion that tracks the problem, and no side effects."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HANG
from matplotlib.image import imread

import optiloop as ol
from optiloop.lr_finder import suggest_steepest, suggest_valley

SRC = Path(__file__).resolve().parents[1] / "src"


def _quadratic(scale: float, n: int = 2048, d: int = 10, seed: int = 0):
    """Least squares with features of spread ``scale``: the mean-squared-error loss has Hessian
    2 E[x x^T] = 2 scale^2 I, so curvature L = 2 scale^2 and plain SGD diverges above 2 / L."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) * scale
    w = torch.randn(d, 1, generator=g) * 3 / scale  # same starting loss whatever the scale
    y = X @ w + 0.1 * torch.randn(n, 1, generator=g)
    return X, y, 2 * scale**2


@pytest.mark.parametrize("scale", [0.2, 3.0])
def test_suggestion_falls_in_the_stable_range_the_curvature_sets(scale):
    # The two windows [1/(100 L), 2/L] do not overlap (L = 0.08 vs 18): a suggestion that ignored
    # the problem could not pass both. Plain SGD, no bias: the quadratic is exactly as stated.
    X, y, L = _quadratic(scale)
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1, bias=False)
    r = ol.lr_find(model, (X, y), loss="mse", optimizer="sgd", min_lr=1e-6, max_lr=100,
                   steps=100, seed=0, device="cpu")
    assert r.rule == "valley" and r.suggestion == r.suggestions["valley"]
    for rule, lr in r.suggestions.items():
        assert 1 / (100 * L) <= lr <= 2 / L, (rule, lr, 2 / L)
    # The sweep went past 2/L and stopped on divergence, not at max_lr.
    assert r.stop_reason and "diverged" in r.stop_reason and len(r.lrs) < 100
    assert r.lrs[-1] > 2 / L
    assert all(math.isfinite(v) for v in r.losses)


def test_model_optimizer_and_rng_are_restored_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    X, y = torch.randn(256, 6), torch.randint(0, 3, (256,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # a real optimizer state (exp_avg, exp_avg_sq, step) to restore
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[:32]), y[:32]).backward()
        opt.step()
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {i: {k: v.clone() for k, v in s.items()} for i, s in
             enumerate(opt.state_dict()["state"].values())}
    rng = torch.get_rng_state()

    r = ol.lr_find(model, (X, y), optimizer=opt, steps=40, max_lr=100.0, device="cpu")
    assert len(r.lrs) >= 3

    after = model.state_dict()
    assert set(after) == set(weights)
    for k, v in weights.items():  # weights and BatchNorm running statistics
        assert torch.equal(after[k], v), k
    restored = opt.state_dict()
    for i, s in enumerate(restored["state"].values()):
        for k, v in s.items():
            assert torch.equal(v, state[i][k]), (i, k)
    assert restored["param_groups"][0]["lr"] == 1e-3
    assert not model.training and not model[3].training  # eval mode as before
    assert torch.equal(torch.get_rng_state(), rng)
    assert opt.state[next(model.parameters())]["exp_avg"] is not None  # state still wired to params


def test_a_built_by_name_run_leaves_the_model_alone_too():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    r = ol.lr_find(model, (X, y), optimizer="adamw", steps=30, seed=0, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    # The exponential sweep: a constant ratio between steps, starting at min_lr.
    ratios = np.diff(np.log(r.lrs))
    assert r.lrs[0] == pytest.approx(1e-7) and np.allclose(ratios, ratios[0])


def test_rules_on_curves_with_a_known_answer():
    lrs = list(10 ** np.linspace(-6, 1, 71))
    x = np.log10(lrs)
    falling = list(1 - np.tanh(2 * (x + 2)))  # falls fastest at 1e-2
    assert suggest_steepest(lrs, falling) == pytest.approx(1e-2, rel=0.3)
    # Flat, then falling from 1e-4 to 1e-1, then rising: the valley's middle is ~10^-2.5.
    valley = [2.0 if v < -4 else (2.0 - (v + 4) / 3 if v <= -1 else 1.0 + 5 * (v + 1)) for v in x]
    assert 10**-3 <= suggest_valley(lrs, valley) <= 10**-2


def test_plot_and_csv(tmp_path):
    X, y, _ = _quadratic(1.0, n=512)
    r = ol.lr_find(torch.nn.Linear(10, 1), (X, y), loss="mse", optimizer="sgd", steps=40,
                   min_lr=1e-5, max_lr=10, seed=0, device="cpu")
    r.plot(tmp_path / "lr_find.png", title="test")
    img = imread(tmp_path / "lr_find.png")
    assert img.shape[0] >= 300 and img.shape[1] >= 600 and img[..., :3].std() > 0.05
    r.to_csv(tmp_path / "lr_find.csv")
    lines = (tmp_path / "lr_find.csv").read_text().splitlines()
    assert lines[0] == "step,lr,loss,smoothed_loss" and len(lines) == len(r.lrs) + 1


@pytest.mark.parametrize("kwargs, needle", [
    ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr must be below max_lr"),
    ({"max_lr": float("nan")}, "max_lr must be a number > 0"),
    ({"steps": 2}, "steps must be an integer >= 3"),
    ({"rule": "cliff"}, "unknown rule 'cliff'; choose one of: steepest, valley"),
])
def test_bad_arguments(kwargs, needle):
    with pytest.raises(ol.OptiloopError, match=needle):
        ol.lr_find(torch.nn.Linear(2, 2), (torch.randn(8, 2), torch.randint(0, 2, (8,))), **kwargs)


# --- the command line, by subprocess ------------------------------------------------------------
def _cli(tmp_path, *args, timeout=HANG):
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "optiloop", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_lr_find_on_digits(tmp_path):
    proc = _cli(tmp_path, "lr-find", "--steps", "40", "--out", "lf")
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("suggested lr: "))
    suggested = float(line.split()[2])
    assert "valley rule" in line and "steepest" in line
    assert 1e-5 <= suggested <= 1.0  # AdamW on standardized digits: a sane decade, not an edge
    assert (tmp_path / "lf" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "lf" / "lr_find.csv").read_text().startswith("step,lr,loss")


def test_cli_lr_find_bad_input_exits_2_and_writes_nothing(run_main, tmp_path):
    code, _, err = run_main("lr-find", "--min-lr", "1", "--max-lr", "0.1", "--out", "lf")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "error: min_lr must be below max_lr (got 1 and 0.1)"
    assert not (tmp_path / "lf").exists() and not (tmp_path / "runs").exists()


def test_lr_find_takes_the_step_contract_on_dict_batches():
    """A model computing its own loss on dict batches: the same sweep as the default path."""
    from types import SimpleNamespace

    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    X, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)

    class OwnLoss(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x, labels):
            return SimpleNamespace(loss=nn.functional.cross_entropy(self.net(x), labels))

    own = ol.lr_find(OwnLoss(), {"x": X, "labels": y}, loss="model", steps=30, seed=0)
    torch.manual_seed(0)
    plain = ol.lr_find(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), (X, y), steps=30, seed=0)
    assert own.losses == plain.losses and own.suggestion == plain.suggestion
