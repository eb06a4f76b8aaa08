"""optiloop doctor: the corpus (one real training script per mistake, and correct ones) run under
watch(), the rules on scripted timelines, watch() itself, and the command line by subprocess."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG
from matplotlib.image import imread

from optiloop.cli import main
from optiloop.doctor import Timeline, diagnose, watch
from optiloop.doctor._child import run_script
from optiloop.doctor.timeline import LoaderRecord, OptimizerRecord, PlateauEvidence, SaveRecord, SchedulerRecord
from optiloop.errors import OptiloopError

CORPUS = Path(__file__).resolve().parent / "doctor"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def batches() -> int:
    """Batches per epoch of the corpus's digits training loader (batch size 64)."""
    sys.path.insert(0, str(CORPUS))
    try:
        from common import digits
    finally:
        sys.path.remove(str(CORPUS))
    return len(digits()[0])


@functools.cache
def watched(script: str, *args: str):
    """Run a corpus script in this process under watch(); its stdout is kept aside. Each script
    and arguments run once per session: the tests only read what the watch saw."""
    out = io.StringIO()
    with watch() as w, contextlib.redirect_stdout(out):
        code, error = run_script(str(CORPUS / script), list(args))
    return w, code, error, out.getvalue()


# -------------------------------------------------------------------------------------------------
# the corpus: every mistake flagged (and only it), nothing flagged on the correct scripts
# -------------------------------------------------------------------------------------------------
def expected_mistakes(b: int) -> list[tuple[str, list[str], str, list[str]]]:
    """(script, args, the one rule expected, substrings with the run's own numbers)."""
    return [
        ("steplr_per_batch.py", [], "epoch-scheduler-per-step",
         [f"StepLR(step_size=2, gamma=0.1) was stepped {4 * b} times in 4 epochs", f"({b} per epoch)",
          "fell ×0.1 every 2 batches", "steplr_per_batch.py:20"]),
        ("cosine_per_batch.py", [], "epoch-scheduler-per-step",
         [f"CosineAnnealingLR(T_max=4) was stepped {4 * b} times", f"{4 * b // 4} times"]),
        ("onecycle_per_epoch.py", [], "step-scheduler-per-epoch",
         [f"OneCycleLR(total_steps={4 * b}, max_lr=0.1) was stepped 4 times in 4 epochs ({4 * b} optimizer steps)",
          "once per epoch", "never left warmup"]),
        ("plateau_train_loss.py", [], "plateau-training-loss", ["at 5 of its 5 steps", "mean training loss"]),
        ("plateau_train_loss.py", ["--feed", "last", "--epochs", "3"], "plateau-training-loss",
         ["at 3 of its 3 steps", "last training batch's loss"]),
        ("scheduler_other_optimizer.py", [], "scheduler-wrong-optimizer",
         ["drives SGD #1", "AdamW #2", f"{4 * b} steps", "stayed at 0.003"]),
        ("warmup_never_ends.py", [], "warmup-never-ends", ["stepped 4 times, once per epoch", "of the base LR 0.003"]),
        ("lr_zero.py", [], "lr-at-zero", [f"0 for {3 * b} of its {5 * b} optimizer steps", "epoch 3 to 5",
                                          "reached 0 and stayed there"]),
        ("lr_zero.py", ["--schedule", "warmup"], "lr-at-zero", [f"0 for {b} of its {5 * b}", "started at 0"]),
        ("scheduler_never_stepped.py", [], "scheduler-never-stepped",
         ["StepLR(step_size=2, gamma=0.1) was built", f"stayed at 0.1 for all {4 * b} optimizer steps"]),
        ("optimizer_never_stepped.py", [], "optimizer-never-stepped", [f"zero_grad() ran {3 * b} times"]),
        ("checkpoint_model_only.py", [], "checkpoint-incomplete",
         ["checkpoint.pt was saved 3 times during training", "not the optimizer and scheduler state"]),
        ("checkpoint_model_only.py", ["--save", "notes"], "checkpoint-incomplete",
         ["best_model.pth", "holding the model and optimizer state but not the scheduler state"]),
        ("no_zero_grad.py", [], "zero-grad-missing", [f"stepped {3 * b} times, and at {3 * b - 1} of them",
                                                       "zero_grad() was never called"]),
        ("scheduler_before_optimizer.py", [], "scheduler-before-optimizer",
         ["ExponentialLR.step() was called once before the first optimizer.step()",
          "started at lr 0.05 instead of 0.1"]),
    ]


def _case_id(script: str, args: list[str]) -> str:
    return " ".join([script.removesuffix(".py"), *args])


MISTAKES = [_case_id(script, args) for script, args, _, _ in expected_mistakes(0)]


@pytest.mark.slow
@pytest.mark.parametrize("case", MISTAKES)  # one script per test: one failure hides no other
def test_every_mistake_is_flagged_with_its_numbers_and_nothing_else(batches, case):
    script, args, rule, needles = expected_mistakes(batches)[MISTAKES.index(case)]
    w, code, error, _ = watched(script, *args)
    assert code == 0 and error is None, (script, error)
    assert [f.rule for f in w.findings] == [rule], (script, args, w.report())
    text = w.findings[0].text()
    for needle in needles:
        assert needle in text, (script, needle, text)
    assert "rule: " in text and "fix: " in text


@pytest.mark.slow
def test_scheduler_per_micro_batch_under_gradient_accumulation(batches):
    w, code, _, _ = watched("accumulation_per_micro_batch.py")
    micro = math.ceil(1438 / 32)  # the script's loader: batch size 32
    optimizer_steps = 4 * math.ceil(micro / 4)
    assert code == 0
    assert [f.rule for f in w.findings] == ["scheduler-per-micro-batch"], w.report()
    text = w.findings[0].message
    assert f"stepped {4 * micro} times for {optimizer_steps} optimizer steps — 4 times per optimizer step" in text
    assert f"used up by optimizer step {math.ceil(optimizer_steps / 4)}" in text


@pytest.mark.slow
def test_a_script_that_raises_keeps_the_findings_so_far(monkeypatch):
    # OneCycleLR stepped per micro-batch runs out of steps: torch raises in the second epoch
    script = CORPUS / "accumulation_per_micro_batch.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--scheduler", "onecycle"])
    monkeypatch.syspath_prepend(str(CORPUS))
    with pytest.raises(ValueError, match="Tried to step"), watch() as w, \
            contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(script), run_name="__main__")
    assert not w.timeline.completed and w.timeline.error.startswith("ValueError: Tried to step")
    assert [f.rule for f in w.findings] == ["scheduler-per-micro-batch"]
    assert "so far:" in w.report()


@pytest.mark.parametrize("mistake, rule, needles", [
    ("eval", "schedule-free-eval-in-train-mode",
     ["AdamWScheduleFree #1", "is schedule-free, but 3 evaluation passes over TensorDataset(359) ran while it was in "
      "train mode (the first in epoch 1)", "optimizer.eval() where you call model.eval()"]),
    ("save", "schedule-free-saved-in-train-mode",
     ["checkpoint.pt was saved 3 times while AdamWScheduleFree #1", "optimizer.eval() before torch.save"]),
    ("scheduler", "scheduler-on-schedule-free",
     ["CosineAnnealingLR(T_max=3) (", "drives AdamWScheduleFree #1 (", "schedule_free.py:23",
      "a schedule-free optimizer, and was stepped 3 times"]),
])
def test_schedule_free_mistakes_are_flagged_and_its_documented_use_is_not(mistake, rule, needles):
    pytest.importorskip("schedulefree")
    w, code, error, _ = watched("schedule_free.py")
    assert code == 0 and error is None and w.findings == [], w.report()
    assert w.timeline.optimizers[0].schedule_free
    w, code, error, _ = watched("schedule_free.py", "--mistake", mistake)
    assert code == 0 and error is None, error
    assert [f.rule for f in w.findings] == [rule], w.report()
    text = w.findings[0].text()
    for needle in needles:
        assert needle in text, (needle, text)


CORRECT = [
    ("train_model.py", [], "StepLR stepped once per epoch"),
    ("train_model.py", ["--scheduler", "cosine"], "CosineAnnealingLR stepped once per epoch"),
    ("train_model.py", ["--scheduler", "plateau"], "ReduceLROnPlateau stepped once per epoch, on the validation loss"),
    ("train_model.py", ["--scheduler", "onecycle"], "OneCycleLR stepped after every optimizer step"),
    ("train_model.py", ["--scheduler", "none"], "optimizer steps (SGD)"),
    ("per_step_schedules.py", [], "CosineAnnealingLR stepped after every optimizer step"),
    ("per_step_schedules.py", ["--scheduler", "step"], "StepLR stepped after every optimizer step"),
    ("per_step_schedules.py", ["--scheduler", "warmup_cosine"], "SequentialLR stepped after every optimizer step"),
    ("per_step_schedules.py", ["--scheduler", "lambda_warmup"], "LambdaLR stepped after every optimizer step"),
    ("accumulation.py", [], "OneCycleLR stepped after every optimizer step"),
    ("manual_batches.py", [], "ReduceLROnPlateau stepped 6 times, on the validation loss"),
    ("resume_checkpoints.py", [], "MultiStepLR stepped once per epoch"),
    ("two_optimizers.py", [], "StepLR stepped once per epoch; ReduceLROnPlateau stepped once per epoch, on the "
                              "validation loss"),
    ("amp_onecycle.py", [], "OneCycleLR stepped after every optimizer step"),
    ("optiloop_fit.py", [], "ReduceLROnPlateau stepped once per epoch"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, coupling", CORRECT, ids=[_case_id(s, a) for s, a, _ in CORRECT])
def test_correct_scripts_have_no_findings(script, args, coupling):
    w, code, error, _ = watched(script, *args)
    assert code == 0 and error is None, (script, error)
    report = w.report()
    assert w.findings == [], report
    assert report.endswith("no problems found"), report
    assert coupling in report, report  # the doctor saw the coupling it vouches for


@pytest.mark.slow
def test_the_correct_scripts_exercised_what_they_claim(batches):
    w, *_ = watched("amp_onecycle.py")
    opt = w.timeline.optimizers[0]
    assert opt.skipped and opt.steps + len(opt.skipped) == 3 * batches  # GradScaler skipped some steps
    w, *_ = watched("two_optimizers.py")
    assert [o.cls for o in w.timeline.optimizers] == ["SGD", "Adam"]
    assert w.timeline.loaders[0].iter_seq and len(w.timeline.epoch_starts()) == 4  # a new DataLoader per epoch
    w, *_ = watched("resume_checkpoints.py")
    assert {tuple(s.holds) for s in w.timeline.saves} == {("model",), ("model", "optimizer", "scheduler")}


# -------------------------------------------------------------------------------------------------
# rules on scripted timelines: the thresholds that keep correct scripts quiet
# -------------------------------------------------------------------------------------------------
class Script:
    """Builds a Timeline event by event, as the recorder would."""

    def __init__(self, epochs: int, steps: int, lr: float = 0.1):
        self.seq = 0
        self.tl = Timeline()
        self.opt = OptimizerRecord(index=0, cls="SGD", created_seq=self.next())
        self.tl.optimizers.append(self.opt)
        self.loader = LoaderRecord(index=0, dataset="TensorDataset(640)", length=steps)
        self.tl.loaders.append(self.loader)
        self.epochs, self.steps, self.lr = epochs, steps, lr

    def next(self) -> int:
        self.seq += 1
        return self.seq

    def scheduler(self, cls: str, **params) -> SchedulerRecord:
        s = SchedulerRecord(index=len(self.tl.schedulers), cls=cls, optimizer=0, params=params,
                            created_seq=self.next(), lr_at_creation=[self.lr], base_lrs=[self.lr])
        self.tl.schedulers.append(s)
        return s

    def run(self, lr_at, per_step=(), per_epoch=(), save=None) -> Timeline:
        k = 0
        for _ in range(self.epochs):
            self.loader.iter_seq.append(self.next())
            for _ in range(self.steps):
                self.opt.step_seq.append(self.next())
                self.opt.lrs.append([lr_at(k)])
                k += 1
                for s in per_step:
                    s.step_seq.append(self.next())
            for s in per_epoch:
                s.step_seq.append(self.next())
            if save:
                self.tl.saves.append(SaveRecord(seq=self.next(), path="ckpt.pt", holds=save))
        return self.tl


def test_per_step_steplr_is_flagged_only_when_its_period_is_shorter_than_an_epoch():
    legit = Script(epochs=6, steps=20)  # step_size counts steps: 40 = two epochs' worth
    s = legit.scheduler("StepLR", step_size=40, gamma=0.1)
    assert diagnose(legit.run(lambda k: 0.1 * 0.1 ** (k // 40), per_step=[s])) == []
    wrong = Script(epochs=6, steps=20)
    s = wrong.scheduler("StepLR", step_size=5, gamma=0.1)
    assert [f.rule for f in diagnose(wrong.run(lambda k: 0.1 * 0.1 ** (k // 5), per_step=[s]))] == [
        "epoch-scheduler-per-step"]


def test_steplr_per_batch_on_small_data_and_legit_iteration_schedules():
    # 23 batches per epoch, step_size=30 meant as epochs, stepped per batch for 40 epochs: flagged
    small = Script(epochs=40, steps=23)
    s = small.scheduler("StepLR", step_size=30, gamma=0.1)
    assert [f.rule for f in diagnose(small.run(lambda k: 0.1 * 0.1 ** (k // 30), per_step=[s]))] == [
        "epoch-scheduler-per-step"]
    # one long epoch, an iteration schedule dropping 3 times: not flagged
    one = Script(epochs=1, steps=10_000)
    s = one.scheduler("StepLR", step_size=3000, gamma=0.1)
    assert diagnose(one.run(lambda k: 0.1 * 0.1 ** (k // 3000), per_step=[s])) == []
    # CosineAnnealingWarmRestarts.step(epoch + i / iters) every batch, as torch documents: not flagged
    sgdr = Script(epochs=6, steps=20)
    s = sgdr.scheduler("CosineAnnealingWarmRestarts", T_0=2)
    tl = sgdr.run(lambda k: 0.1, per_step=[s])
    s.step_arg = [k / 20 for k in range(len(s.step_seq))]
    assert diagnose(tl) == []


def test_plateau_fed_a_validation_loss_computed_with_gradients_before_training():
    # each epoch: validation (with gradients, before the epoch's steps), training, plateau.step(val_loss)
    tl = Timeline(optimizers=[OptimizerRecord(index=0, cls="SGD", step_seq=[], lrs=[])],
                  loaders=[LoaderRecord(index=0, dataset="train"), LoaderRecord(index=1, dataset="val")])
    plateau = SchedulerRecord(index=0, cls="ReduceLROnPlateau", optimizer=0, created_seq=0)
    tl.schedulers.append(plateau)
    seq = 1
    for epoch in range(3):
        tl.loaders[1].iter_seq.append(seq)
        tl.loaders[0].iter_seq.append(seq + 1)
        tl.optimizers[0].step_seq += [seq + 2 + i for i in range(5)]
        tl.optimizers[0].lrs += [[0.1]] * 5
        val, train = 1.0 - 0.1 * epoch, 1.2 - 0.1 * epoch
        plateau.step_seq.append(seq + 8)
        plateau.step_arg.append(val)
        tl.plateau.append(PlateauEvidence(scheduler=0, seq=seq + 8, metric=val, groups=[
            {"phase": "train", "loader": 1, "n": 2, "mean": val, "wmean": val, "last": val},
            {"phase": "train", "loader": 0, "n": 5, "mean": train, "wmean": train, "last": train}]))
        seq += 10
    assert diagnose(tl) == []
    for e in tl.plateau:  # now fed the training loss instead
        e.metric = e.groups[1]["mean"]
    assert [f.rule for f in diagnose(tl)] == ["plateau-training-loss"]


def test_cosine_stepped_past_t_max_per_epoch_turns_back_up():
    sc = Script(epochs=12, steps=10)
    s = sc.scheduler("CosineAnnealingLR", T_max=6)
    lr = [0.05 * (1 + math.cos(math.pi * e / 6)) for e in range(12)]
    findings = diagnose(sc.run(lambda k: lr[k // 10], per_epoch=[s]))
    assert [f.rule for f in findings] == ["cosine-past-t-max"]
    assert "after epoch 6 the cosine turned back up" in findings[0].message
    fine = Script(epochs=6, steps=10)
    s = fine.scheduler("CosineAnnealingLR", T_max=6)
    assert diagnose(fine.run(lambda k: lr[k // 10], per_epoch=[s])) == []


def test_never_stepped_rules_wait_for_a_finished_run():
    sc = Script(epochs=2, steps=10)
    sc.scheduler("StepLR", step_size=1)
    tl = sc.run(lambda k: 0.1)
    assert [f.rule for f in diagnose(tl)] == ["scheduler-never-stepped"]
    tl.completed = False  # the script raised in its first epochs: no verdict on what it never did
    assert diagnose(tl) == []


def test_a_resumable_checkpoint_makes_weight_only_saves_exports():
    sc = Script(epochs=3, steps=10)
    s = sc.scheduler("StepLR", step_size=1)
    tl = sc.run(lambda k: 0.1, per_epoch=[s], save=["model"])
    assert [f.rule for f in diagnose(tl)] == ["checkpoint-incomplete"]
    tl.saves.append(SaveRecord(seq=tl.saves[0].seq + 1, path="last.pt", holds=["model", "optimizer", "scheduler"]))
    assert diagnose(tl) == []
    final_only = Script(epochs=3, steps=10)
    tl = final_only.run(lambda k: 0.1)
    tl.saves.append(SaveRecord(seq=final_only.next(), path="model.pt", holds=["model"]))  # after the last step
    assert diagnose(tl) == []


def test_epochs_come_from_the_training_data_not_the_validation_data():
    sc = Script(epochs=3, steps=10)
    tl = sc.run(lambda k: 0.1)
    val = LoaderRecord(index=1, dataset="TensorDataset(100)", length=1)
    tl.loaders.append(val)
    for start in tl.loaders[0].iter_seq[1:] + [sc.next()]:  # validation right before each next epoch
        val.iter_seq.append(start - 0.5)
    assert tl.train_loader().index == 0
    assert tl.epoch_starts() == tl.loaders[0].iter_seq
    assert tl.steps_per_epoch(tl.optimizers[0]) == [10, 10, 10]


@pytest.mark.slow
def test_timeline_survives_json():
    w, *_ = watched("checkpoint_model_only.py", "--save", "notes")
    data = json.loads(json.dumps(w.timeline.to_dict()))
    again = Timeline.from_dict(data)
    assert again == w.timeline
    assert [f.to_dict() for f in diagnose(again)] == [f.to_dict() for f in w.findings]


# -------------------------------------------------------------------------------------------------
# watch(): same findings in-process, torch left as it was
# -------------------------------------------------------------------------------------------------
def _torch_surface():
    from torch.optim import lr_scheduler
    from torch.optim.optimizer import _global_optimizer_post_hooks
    from torch.utils.data import DataLoader

    return (torch.save, torch.serialization.save, torch.optim.Optimizer.__init__, torch.optim.Optimizer.zero_grad,
            torch.nn.Module.zero_grad, DataLoader.__iter__, lr_scheduler.LRScheduler.step,
            lr_scheduler.LRScheduler.__init__, lr_scheduler.ReduceLROnPlateau.step, lr_scheduler.StepLR.__init__,
            torch.nn.functional.cross_entropy, torch.amp.GradScaler.step, dict(_global_optimizer_post_hooks))


def test_watch_uninstruments_torch_on_exit_even_when_the_block_raises():
    before = _torch_surface()
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before watching, as in a notebook
    with pytest.raises(RuntimeError, match="boom"), watch() as w:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # also patches the loss functions
        assert _torch_surface() != before
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(torch.randn(4, 3)), torch.zeros(4, 2)).backward()
            opt.step()
        sched.step(1.0)
        raise RuntimeError("boom")
    assert _torch_surface() == before
    tl = w.timeline
    assert not tl.completed and tl.error == "RuntimeError: boom"
    assert tl.optimizers[0].steps == 3 and tl.optimizers[0].site is None  # seen from its first step
    assert tl.schedulers[0].cls == "ReduceLROnPlateau" and tl.schedulers[0].step_arg == [1.0]


def test_only_one_watch_at_a_time():
    with watch():
        with pytest.raises(OptiloopError, match="already watching"), watch():
            pass
    with watch() as w:  # the first one ended: a new one may start
        pass
    assert w.findings == []


def test_scheduler_subclass_defined_while_watching_is_seen():
    model = torch.nn.Linear(3, 1)
    with watch() as w:
        class Halving(torch.optim.lr_scheduler.LRScheduler):
            def get_lr(self):
                return [base * 0.5 ** self.last_epoch for base in self.base_lrs]

            def step(self):  # its own step, calling torch's: each call must count once, not twice
                super().step()

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = Halving(opt)
        for _ in range(3):
            opt.step()
            sched.step()
    s = w.timeline.schedulers[0]
    assert s.cls == "Halving" and s.steps == 3  # its own step() counted once per call, not twice
    assert [lrs[0] for lrs in w.timeline.optimizers[0].lrs] == pytest.approx([0.1, 0.05, 0.025])


def test_watching_reads_no_tensor_value_except_once_per_plateau_step(tmp_path):
    # Every call that would copy a tensor's value to the host (a sync on a GPU), counted with a
    # TorchFunctionMode: watching adds none per step; with a ReduceLROnPlateau it adds exactly one
    # read per plateau step (the epoch's losses, read together), which also shows the count works.
    from torch.overrides import TorchFunctionMode
    from torch.utils.data import DataLoader, TensorDataset

    reads = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
             torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__index__}

    class CountReads(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            CountReads.count += func in reads
            return func(*args, **(kwargs or {}))

    def train(plateau: bool) -> int:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt) if plateau
                 else torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=24))
        loader = DataLoader(TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,))), batch_size=8)
        CountReads.count = 0
        with CountReads():
            for _ in range(3):
                for x, y in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                    if not plateau:
                        sched.step()
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "c.pt")
                if plateau:
                    with torch.no_grad():
                        sched.step(0.5)
        return CountReads.count

    for plateau, added in ((False, 0), (True, 3)):
        plain = train(plateau)
        with watch():
            watched = train(plateau)
        assert watched - plain == added, (plateau, plain, watched)


# -------------------------------------------------------------------------------------------------
# the command line, by subprocess, as a user runs it
# -------------------------------------------------------------------------------------------------
def doctor(cwd: Path, *args: str, entry: tuple[str, ...] = ("-m", "optiloop", "doctor"),
           timeout: float = HANG) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *entry, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_cli_streams_the_script_then_diagnoses_and_writes_json_and_png(tmp_path, batches):
    proc = doctor(tmp_path, "--out", "diag", str(CORPUS / "steplr_per_batch.py"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]  # the script's
    assert lines[4].startswith("optiloop doctor: ") and f"{4 * batches} optimizer steps (SGD)" in lines[4]
    assert lines[5] == "1 problem:" and "StepLR(step_size=2, gamma=0.1) was stepped" in lines[6]
    assert lines[-1] == "files: diag/doctor.json, diag/doctor.png"
    report = json.loads((tmp_path / "diag" / "doctor.json").read_text())
    assert [f["rule"] for f in report["findings"]] == ["epoch-scheduler-per-step"]
    timeline = report["timeline"]
    assert timeline["exit_code"] == 0 and timeline["completed"]
    assert len(timeline["optimizers"][0]["lrs"]) == 4 * batches
    png = tmp_path / "diag" / "doctor.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(png)
    assert img.shape[1] >= 1000 and img[..., :3].std() > 0.05


@pytest.mark.slow
def test_cli_a_raising_script_shows_its_own_traceback_then_the_findings_so_far(tmp_path):
    proc = doctor(tmp_path, "--out", "d", str(CORPUS / "accumulation_per_micro_batch.py"), "--scheduler", "onecycle",
                  entry=("-m", "optiloop.doctor"))  # the other way in
    assert proc.returncode == 1
    tb = proc.stderr[proc.stderr.index("Traceback (most recent call last):"):].splitlines()
    assert tb[1].startswith(f'  File "{CORPUS / "accumulation_per_micro_batch.py"}", line ')  # no runpy frames
    files = [line.split('"')[1] for line in tb if line.startswith('  File "')]
    # nor the doctor's wrappers (by their path: a clone may well sit in a folder named optiloop)
    assert files and not [f for f in files if f.startswith(str(SRC)) or "runpy" in f], files
    assert tb[-1].startswith("ValueError: Tried to step")
    # torch's own warning still points at the script's line, as it would without the doctor
    assert "accumulation_per_micro_batch.py:" in proc.stderr.split("UserWarning")[0].splitlines()[-1]
    out = proc.stdout.splitlines()
    first = next(i for i, line in enumerate(out) if line.startswith("optiloop doctor: "))
    assert out[0].startswith("epoch 1") and first > 0
    assert "raised ValueError: Tried to step" in out[first] and out[first + 1] == "1 problem so far:"


@pytest.mark.slow
def test_cli_ctrl_c_and_a_script_without_optimizer(tmp_path):
    # The script prints, then "Ctrl-C" reaches its whole process group (as from a terminal): the
    # script gets KeyboardInterrupt (its traceback, exit code 130), the waiting doctor survives it
    # and reports in one line that there was no optimizer.
    (tmp_path / "hello.py").write_text(
        "import os, signal, sys, time\n"
        "print('hello from', sys.argv[1:], __name__, flush=True)\n"
        "os.killpg(os.getpgid(0), signal.SIGINT)\n"
        "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    # SIGINT as a terminal leaves it: a suite started in the background (`.ci/run &`) inherits it
    # ignored, and Python keeps an ignored SIGINT ignored, so the script would sleep on, exit 0.
    proc = subprocess.run([sys.executable, "-m", "optiloop", "doctor", "hello.py", "--out", "x"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=HANG, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, (proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == [
        "hello from ['--out', 'x'] __main__",  # --out after the script belongs to the script
        "optiloop doctor: hello.py built no torch.optim optimizer (KeyboardInterrupt), so there is nothing to "
        "diagnose (the doctor watches torch.optim optimizers and their LR schedulers)"]
    assert proc.stderr.splitlines()[-1] == "KeyboardInterrupt" and 'hello.py", line ' in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.py"]  # nothing written


def test_cli_missing_script_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "train.py", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: train.py does not exist; give the training script to run, e.g. "
                                        "optiloop doctor train.py --epochs 3"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_parent_process_never_imports_torch():
    # What `optiloop doctor` runs in its own process (the arguments, the diagnosis, the report and
    # the picture) needs no torch: only the child that runs the script imports it.
    code = ("import sys, argparse, optiloop.doctor.command as c, optiloop.doctor.report, optiloop.doctor.rules; "
            "c.add_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------------
# odd scripts, signals, child processes, snapshots, the picture
# -------------------------------------------------------------------------------------------------
NOT_PYTHON = {
    "shell text": b"#!/bin/sh\necho training\nexit 3\n",
    "binary": bytes(range(256)) * 4,
    "null bytes": b"x = 1\0\n",
}


@pytest.mark.parametrize("kind", NOT_PYTHON)
def test_a_script_that_is_not_python_is_one_line_exit_2(tmp_path, monkeypatch, capsys, kind):
    (tmp_path / "train.sh").write_bytes(NOT_PYTHON[kind])
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "train.sh"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.sh is not a Python script ("), captured.err
    assert "optiloop doctor runs a Python training script" in lines[0] and captured.out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["train.sh"]  # nothing written


def test_the_traceback_filter_takes_an_error_with_no_frame_of_the_script(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("def train(:\n    pass\n")
    code, error = run_script(str(tmp_path / "broken.py"), [])
    assert code == 1 and error.startswith("SyntaxError: "), error
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("SyntaxError: ") and "_child.py" not in err


def _alive(pid: int) -> bool:
    """Running (a zombie no container init reaps counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


SLEEPER = ("import os, pathlib, sys, time\n"
           "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
           "time.sleep(600)\n"
           "print('slept', flush=True)\n")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said", [
    (signal.SIGTERM, 143, "was killed by signal 15"),
    (signal.SIGINT, 130, "(KeyboardInterrupt)"),
    (signal.SIGHUP, 129, "was killed by signal 1"),
], ids=["TERM", "INT", "HUP"])
def test_a_signal_sent_to_the_doctor_reaches_the_script_and_the_doctor_exits_with_its_code(tmp_path, sig, code, said):
    """`kill -TERM PID` (or -INT, -HUP) to the doctor's own pid, not its process group: the script
    gets the signal too, no orphan is left, and the doctor exits with the script's code."""

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    def as_from_a_terminal():  # a suite started with `&` or nohup inherits SIGINT / SIGHUP ignored
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "optiloop", "doctor", "sleeper.py", "pid.txt"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_from_a_terminal)
    pid_file, script_pid = tmp_path / "pid.txt", None
    try:
        while script_pid is None and proc.poll() is None:
            text = pid_file.read_text() if pid_file.exists() else ""
            script_pid = int(text) if text else None
            time.sleep(0.05)
        assert script_pid is not None, proc.communicate()
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=HANG)
        assert proc.returncode == code, (out, err)
        assert not _alive(script_pid)  # ended with the doctor, not left running as an orphan
        assert "slept" not in out and said in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
        if script_pid is not None and _alive(script_pid):
            os.kill(script_pid, signal.SIGKILL)


@pytest.mark.slow
def test_optimizers_built_in_spawned_child_processes_are_said_to_be_out_of_sight(tmp_path):
    (tmp_path / "spawned.py").write_text(
        "import torch\n"
        "import torch.multiprocessing as mp\n\n"
        "def worker(rank):\n"
        "    model = torch.nn.Linear(4, 2)\n"
        "    opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "    for _ in range(3):\n"
        "        opt.zero_grad()\n"
        "        model(torch.randn(8, 4)).sum().backward()\n"
        "        opt.step()\n\n"
        "if __name__ == '__main__':\n"
        "    mp.spawn(worker, nprocs=2)\n")
    proc = doctor(tmp_path, "spawned.py")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "built no torch.optim optimizer" not in last, last
    assert "started 2 child processes" in last and "does not follow" in last, last


@pytest.mark.slow
def test_a_best_model_snapshot_loaded_back_for_testing_is_said_to_matter_only_for_resuming():
    w, code, error, out = watched("best_model_snapshot.py")
    assert code == 0 and error is None and "test: loss" in out
    assert [f.rule for f in w.findings] == ["checkpoint-incomplete"], w.report()
    text = w.findings[0].message
    assert "best_model.pt" in text and "loaded it back after training" in text, text
    assert "matters only for a checkpoint meant for resuming" in text, text
    assert [load.path.endswith("best_model.pt") for load in w.timeline.loads] == [True]


def test_doctor_png_keeps_every_param_group_visible_when_their_lrs_are_equal():
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb

    from optiloop.doctor.report import figure

    steps = 40  # three groups with the very same LRs: each drawn over the previous one
    tl = Timeline(optimizers=[OptimizerRecord(index=0, cls="AdamW", groups=3, step_seq=list(range(1, steps + 1)),
                                              lrs=[[1e-3 * (1 - k / steps)] * 3 for k in range(steps)])])
    fig = figure(tl, [], name="equal.py")
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith("LR")]
    assert len(lines) == 3 and len({to_rgb(line.get_color()) for line in lines}) == 3
    ax.get_legend().remove()  # count pixels of the curves, not of the legend's swatches
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    for line in lines:
        rgb = np.round(np.array(to_rgb(line.get_color())) * 255)
        assert (np.abs(img - rgb).max(axis=-1) <= 3).sum() > 300, line.get_label()
