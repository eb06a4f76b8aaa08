"""optiloop train's everyday flags (--grad-accum, --clip-grad-norm, --amp, --warmup, --weight-decay)
and what the console says (the run header, the LR's range per epoch, where a resume continues, a
"did you mean" for a mistyped name). In-process (the run_main fixture): no interpreter start-up."""

from __future__ import annotations

import csv
import sys

import pytest
import torch

from optiloop.commands.train import parse_warmup
from optiloop.config import tomllib
from optiloop.errors import OptiloopError

WINE = ["train", "--data", "wine", "--epochs", "2", "--checkpoint-seconds", "0"]  # 142 train rows: 3 batches of 64


def steps(run):
    with open(run / "steps.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def config(run):
    with open(run / "config.toml", "rb") as f:
        return tomllib.load(f)


def one_line(code, err, *needles):
    assert code == 2, err
    line, = err.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in line, line


def test_grad_accum_makes_fewer_optimizer_steps_and_is_recorded(run_main, tmp_path):
    code, out, err = run_main(*WINE, "--out", "plain")
    assert code == 0, err
    code, out, err = run_main(*WINE, "--grad-accum", "2", "--out", "accum")
    assert code == 0, err
    assert [r["step"] for r in steps(tmp_path / "plain")] == [1, 2, 3, 4, 5, 6]  # 3 batches a step each epoch
    assert [r["step"] for r in steps(tmp_path / "accum")] == [1, 2, 3, 4]  # ceil(3 / 2) = 2 per epoch
    assert config(tmp_path / "accum")["train"]["grad_accum"] == 2
    assert "each optimizer step: 2 batches of 64 (gradient accumulation: 128 samples)" in out
    assert "no gradient clipping; AMP off" in out


def test_clip_grad_norm_records_the_norm_and_clips(run_main, tmp_path):
    assert run_main(*WINE, "--out", "plain")[0] == 0
    code, out, err = run_main(*WINE, "--clip-grad-norm", "0.05", "--out", "clip")
    assert code == 0, err
    rows = steps(tmp_path / "clip")
    assert "grad_norm" in rows[0] and "grad_norm" not in steps(tmp_path / "plain")[0]
    # the norm before clipping is above the bound at every step: each step was clipped
    assert all(r["grad_norm"] > 0.05 for r in rows)
    assert config(tmp_path / "clip")["train"]["clip_grad_norm"] == 0.05
    assert "gradients clipped to norm 0.05" in out
    # clipped updates are smaller: the weights moved less from the same start than unclipped ones
    first = torch.load(tmp_path / "clip" / "last.pt", weights_only=True)["model"]
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(first[k], plain[k]) for k in first)
    assert steps(tmp_path / "clip")[0]["loss"] == steps(tmp_path / "plain")[0]["loss"]  # same start


def test_amp_bf16_runs_the_forward_under_autocast(run_main, tmp_path, monkeypatch):
    (tmp_path / "amp_probe.py").write_text(
        "import torch\n\n"
        "SEEN = []\n\n"
        "class Probe(torch.nn.Module):\n"
        "    def __init__(self, n, k):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(n, k)\n\n"
        "    def forward(self, x):\n"
        "        y = self.lin(x)\n"
        "        SEEN.append((torch.is_autocast_enabled('cpu'), y.dtype))\n"
        "        return y\n\n"
        "def build(in_features, out_features):\n"
        "    return Probe(in_features, out_features)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = run_main(*WINE, "--model", "amp_probe:build", "--amp", "bf16", "--out", "bf16")
    assert code == 0, err
    seen = sys.modules["amp_probe"].SEEN
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen[:3])
    assert config(tmp_path / "bf16")["train"]["amp"] == "bf16"
    assert "AMP bf16 (autocast)" in out
    seen.clear()
    assert run_main(*WINE, "--model", "amp_probe:build", "--out", "fp32")[0] == 0
    assert seen and not any(enabled for enabled, _ in seen) and seen[0][1] == torch.float32


@pytest.mark.parametrize("flag, first", [("4s", [0.25, 0.25, 0.5, 0.75]), ("1", [1 / 3, 1 / 3, 2 / 3])])
def test_warmup_in_epochs_or_steps_sets_the_first_lrs(run_main, tmp_path, flag, first):
    code, out, err = run_main(*WINE, "--lr", "0.01", "--warmup", flag, "--out", "w")
    assert code == 0, err
    lrs = [r["lr"] for r in steps(tmp_path / "w")]
    assert lrs[:len(first)] == pytest.approx([0.01 * f for f in first])
    assert lrs[len(first)] > lrs[len(first) - 1]  # the warmup has ended: the schedule's own LR
    key = "warmup_steps" if flag.endswith("s") else "warmup_epochs"
    assert config(tmp_path / "w")["scheduler"][key] == int(flag.rstrip("s"))
    n = 4 if flag == "4s" else 3
    assert f"after a linear warmup over {n} optimizer steps" in out


def test_weight_decay_flag_reaches_the_optimizer_and_the_header(run_main, tmp_path):
    code, out, err = run_main(*WINE, "--weight-decay", "0.2", "--out", "wd")
    assert code == 0, err
    assert config(tmp_path / "wd")["optimizer"]["weight_decay"] == 0.2
    assert "weight_decay=0.2" in out
    ckpt = torch.load(tmp_path / "wd" / "last.pt", weights_only=True)
    assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} >= {0.2}


@pytest.mark.parametrize("args, needle", [
    (["--grad-accum", "0"], "train.grad_accum: must be >= 1"),
    (["--clip-grad-norm", "-1"], "train.clip_grad_norm: must be > 0"),
    (["--clip-grad-norm", "nan"], "train.clip_grad_norm"),
    (["--amp", "fp8"], "train.amp: must be one of"),
    (["--warmup", "x"], "--warmup: give epochs"),
    (["--warmup", "2.5"], "--warmup: give epochs"),
    (["--warmup", "500steps"], "--warmup: give epochs"),
    (["--weight-decay", "-1"], "optimizer.weight_decay: must be >= 0"),
    (["--warmup", "9"], "warmup"),  # 9 epochs of warmup in a 2-epoch run
])
def test_bad_flag_values_are_one_line_and_write_nothing(run_main, tmp_path, args, needle):
    code, out, err = run_main(*WINE, *args, "--out", "bad")
    one_line(code, err, needle)
    assert not (tmp_path / "bad").exists()


def test_parse_warmup():
    assert parse_warmup("3") == ("warmup_epochs", 3) and parse_warmup("250s") == ("warmup_steps", 250)
    with pytest.raises(OptiloopError, match="--warmup"):
        parse_warmup("s")


def _epoch_lines(out):
    return [line for line in out.splitlines() if line.startswith("epoch ")]


def test_the_epoch_line_shows_the_lr_range_of_a_per_step_schedule(run_main, tmp_path):
    code, out, err = run_main(*WINE, "--scheduler", "onecycle", "--out", "one")
    assert code == 0, err
    lrs = [r["lr"] for r in steps(tmp_path / "one")]
    for line, (a, b) in zip(_epoch_lines(out), [(lrs[0], lrs[2]), (lrs[3], lrs[5])], strict=True):
        assert f"lr {a:.3g} -> {b:.3g}" in line, line
    code, out, err = run_main(*WINE, "--out", "cos")  # cosine per epoch: one LR per epoch, no range
    assert code == 0 and all("->" not in line for line in _epoch_lines(out))


def test_resume_says_where_it_continues(run_main, tmp_path):
    assert run_main(*WINE, "--out", "r")[0] == 0
    code, out, err = run_main("train", "--resume", "r", "--epochs", "3", "--force-resume")
    assert code == 0, err
    assert "resumed after epoch 2/3 (step 6): continuing with epoch 3" in out
    assert [line.split()[1] for line in _epoch_lines(out)] == ["3/3"]


@pytest.mark.parametrize("args, needle", [
    (["train", "--optimizer", "adamww"], "unknown optimizer 'adamww' (did you mean 'adamw'?)"),
    (["train", "--scheduler", "cosin"], "unknown scheduler 'cosin' (did you mean 'cosine'?)"),
    (["train", "--set", "train.epoch=3"], "train.epoch: unknown key (did you mean 'epochs'?)"),
    (["train", "--set", "optimzer.lr=0.1"], "unknown section [optimzer] (did you mean 'optimizer'?)"),
    (["train", "--optimizer", "sgd", "--set", "optimizer.momentm=0.9"], "momentm (did you mean 'momentum'?)"),
    (["schedule", "cosin"], "did you mean 'cosine'?"),
])
def test_a_mistyped_name_gets_a_did_you_mean(run_main, args, needle):
    one_line(*run_main(*args)[::2], needle)


def test_a_mistyped_subcommand_gets_a_did_you_mean(capsys):
    from optiloop.cli import main

    with pytest.raises(SystemExit) as e:  # argparse's own exit, code 2
        main(["trian"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'trian' (did you mean 'train'?)" in err
    with pytest.raises(SystemExit):
        main(["zzz"])
    assert "did you mean" not in capsys.readouterr().err  # nothing close: no guess
