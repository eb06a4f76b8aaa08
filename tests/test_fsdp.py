"""FSDP2 with real torch.distributed processes (gloo on CPU), launched by torchrun: the same
guarantees as DDP (tests/test_distributed.py), plus sharded DCP checkpoints, exact restart after a
killed rank, resharding onto one process and export to one plain file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import optiloop as ol

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
import fsdp_worker as W  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def torchrun(out, *args, nproc=2, restarts=0, ok=True):
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", str(HERE / "fsdp_worker.py"), str(out), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG)
    if not ok:
        return p
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def single_process(scheduler, custom=False, **kwargs):
    """The same job in this process with batch 2B: what 2 FSDP processes with batch B must equal."""
    X, y = W.dataset()
    net = W.model()
    log = W.StepLog(0)
    h = ol.fit(net, **W.fit_kwargs(custom, X, y), optimizer="adamw", lr=0.05, scheduler=W.scheduler(scheduler),
               epochs=W.EPOCHS, batch_size=2 * W.B, metrics=["accuracy"], seed=0, progress=False, callbacks=[log],
               **kwargs)
    return net.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in h], log.lrs


def assert_same_run(ranks, weights, history):
    for r in ranks:
        for k, v in weights.items():
            torch.testing.assert_close(r["model"][k], v, rtol=1e-5, atol=1e-6)
    assert ranks[0]["history"] == ranks[1]["history"]  # all-reduced figures: the same on every rank
    for got, want in zip(ranks[0]["history"], history, strict=True):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_two_sharded_processes_batch_b_equal_one_process_batch_2b_with_one_scheduler_step_per_step(tmp_path):
    ranks = torchrun(tmp_path / "fsdp")
    weights, history, lrs = single_process("onecycle")
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["param_types"] == ["DTensor"]  # the user's module was sharded in place
    assert_same_run(ranks, weights, history)
    # OneCycleLR raises if stepped past its total, so finishing also proves no extra steps
    steps = W.EPOCHS * W.N // (2 * W.B)
    assert len(ranks[0]["lrs"]) == len(lrs) == steps
    assert ranks[0]["lrs"] == ranks[1]["lrs"] == pytest.approx(lrs)


@pytest.mark.slow
def test_plateau_steps_on_the_all_reduced_metric_with_a_custom_step_accumulation_and_chosen_blocks(tmp_path):
    # dict batches through step=, two micro-batches per optimizer step weighed by their counts:
    # FSDP reduce-scatters each micro-batch, and the rescaling works on sharded gradients;
    # strategy=ol.FSDP(blocks=(Block,)) names the block type instead of the ModuleList default
    ranks = torchrun(tmp_path / "fsdp", "--scheduler", "plateau", "--custom-step", "--blocks")
    weights, history, _ = single_process("plateau", custom=True)
    assert_same_run(ranks, weights, history)
    got = [r["lr"] for r in ranks[0]["history"]]
    assert got == pytest.approx([r["lr"] for r in history])
    assert got[-1] < got[0]  # it did react to the metric


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-process run with dropout (a different RNG stream on each rank) and a
    checkpoint every 2 steps, written synchronously."""
    tmp = tmp_path_factory.mktemp("straight")
    ranks = torchrun(tmp / "out", "--run-dir", str(tmp / "run"), "--dropout", "0.2", "--sync-save")
    return tmp / "run", ranks


# 6 steps per epoch, a checkpoint every 2 steps (asynchronous): dying after step 5 resumes mid-epoch
# (each rank gets back its own partial figures and its own RNG), after step 7 from epoch 1's end
# or later, whichever save had committed
@pytest.mark.slow
@pytest.mark.parametrize("die_at", [5, 7])
def test_a_killed_rank_restarts_and_ends_bit_identical_to_an_uninterrupted_run(tmp_path, straight, die_at):
    run_a, uninterrupted = straight
    assert sorted(p.name for p in run_a.iterdir()) == ["best", "last", "last.prev"]
    restarted = torchrun(tmp_path / "out", "--run-dir", str(tmp_path / "run"), "--dropout", "0.2",
                         "--die-at-step", str(die_at), restarts=1)
    for a, b in zip(uninterrupted, restarted, strict=True):
        for k, v in a["model"].items():
            assert torch.equal(v, b["model"][k]), k
        assert a["history"] == b["history"]
    # the restarted ranks resumed rather than starting over: fewer steps logged than a full run
    assert len(restarted[0]["lrs"]) < len(uninterrupted[0]["lrs"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best", "last", "last.prev"]


class Capture(ol.Callback):
    """The model and optimizer as fit starts (after resuming)."""

    def on_fit_start(self, state, logs):
        names = {id(p): n for n, p in state.unwrapped_model.named_parameters()}
        self.model = {k: v.clone() for k, v in state.unwrapped_model.state_dict().items()}
        self.optimizer = {names[id(p)]: {k: v.clone() for k, v in state.optimizer.state[p].items()}
                          for g in state.optimizer.param_groups for p in g["params"]}
        self.lr = state.optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process_with_the_consolidated_state(tmp_path, straight):
    run_a, ranks = straight
    # torch's own consolidation of the sharded folder: the reference, independent of optiloop's loader
    dcp_to_torch_save(run_a / "last", tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    X, y = W.dataset()
    net, cap = W.model(0.2), Capture()
    with pytest.raises(ol.OptiloopError, match="world_size 2 -> 1"):  # the global batch would change
        ol.fit(net, (X, y), epochs=W.EPOCHS, batch_size=W.B, optimizer="adamw", resume=str(run_a),
               progress=False)
    # the saved run had finished: fit resumes, finds nothing left to train, and returns its history
    h = ol.fit(net, (X, y), val_data=(X, y), optimizer="adamw", lr=0.05, scheduler="onecycle",
               epochs=W.EPOCHS, batch_size=W.B, metrics=["accuracy"], progress=False, callbacks=[cap],
               resume=str(run_a), force_resume=True)
    assert set(cap.model) == set(whole["model"])
    for k, v in whole["model"].items():
        assert torch.equal(cap.model[k], v), k
    for k, v in ranks[0]["model"].items():  # the run's final weights, gathered by the run itself
        assert torch.equal(cap.model[k], v), k
    assert set(cap.optimizer) == set(whole["optimizer"]["state"])
    for name, st in whole["optimizer"]["state"].items():
        assert set(cap.optimizer[name]) == set(st)
        for k, v in st.items():
            assert torch.equal(cap.optimizer[name][k], v), (name, k)
    assert cap.optimizer["blocks.0.linear.weight"]["exp_avg"].abs().sum() > 0  # real state, not a fresh one
    assert cap.lr == whole["optimizer"]["param_groups"][0]["lr"]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in h] == ranks[0]["history"]


@pytest.mark.slow
def test_export_writes_one_plain_file_that_loads_without_optiloop(tmp_path, straight):
    run_a, ranks = straight
    src = ol.export(run_a, tmp_path / "model.pt", which="last")
    assert src == run_a / "last"
    X, _ = W.dataset()
    code = f"""
import sys
sys.modules["optiloop"] = None  # importing optiloop fails from here on
import torch
sys.path.insert(0, {str(HERE)!r})
from fsdp_model import Net
sd = torch.load({str(tmp_path / "model.pt")!r}, weights_only=True)
assert type(sd) is dict and all(type(v) is torch.Tensor for v in sd.values()), sd
net = Net().eval()
net.load_state_dict(sd)
torch.save(net(torch.load({str(tmp_path / "x.pt")!r})).detach(), {str(tmp_path / "y.pt")!r})
"""
    torch.save(X, tmp_path / "x.pt")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG,
                       env={**os.environ, "PYTHONPATH": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    reference = W.model(0.2).eval()
    reference.load_state_dict(ranks[0]["model"])
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), reference(X).detach())
    best = ol.export(run_a, tmp_path / "best.pt", dtype=torch.bfloat16)
    assert best == run_a / "best"
    assert {v.dtype for v in torch.load(tmp_path / "best.pt", weights_only=True).values()} == {torch.bfloat16}


def cli(cwd, *args, nproc=0):
    """``python -m optiloop ARGS`` as a user runs it; under torchrun with ``nproc`` processes."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return subprocess.run([sys.executable, *launcher, "-m", "optiloop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG)


@pytest.mark.slow
def test_cli_trains_with_fsdp_and_bf16_then_exports_and_evaluates_the_sharded_run(tmp_path):
    p = cli(tmp_path, "train", "--strategy", "fsdp", "--set", 'train.amp="bf16"', "--epochs", "3",
            "--early-stopping", "0", "--checkpoint-seconds", "0", "--out", "run", nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "run"
    files = {q.name for q in run.iterdir()}
    assert {"best", "last", "last.prev", "config.toml", "history.csv", "summary.json"} <= files
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    losses = [float(line.split(",")[1]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0]  # bf16 compute through FSDP's policy trains
    p = cli(tmp_path, "export", "run", "--out", "model.pt")
    assert p.returncode == 0, p.stderr
    assert "from run/best" in p.stdout
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {v.dtype for v in weights.values()} == {torch.float32}  # sharded masters stay float32
    # the consolidated model scores what the run reported for its best epoch (eval computes in
    # float32, the run in bfloat16: equal to bf16's precision)
    p = cli(tmp_path, "eval", "run", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["loss"] == pytest.approx(summary["best"]["val_loss"], rel=2e-3)


@pytest.mark.parametrize("args, needle", [
    (("--strategy", "fsdp"), "train.strategy: strategy='fsdp' spreads training over several processes, but this "
                             "is one process; launch it with torchrun --nproc_per_node=N (N >= 2)"),
    (("--strategy", "zero3"), "train.strategy: must be one of: 'auto', 'none', 'ddp' or 'fsdp' (got 'zero3')"),
])
def test_cli_bad_strategy_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, needle):
    from optiloop.cli import main

    monkeypatch.chdir(tmp_path)  # in-process: the same command line without an interpreter start-up
    assert main(["train", "--epochs", "1", "--out", "run", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {needle}"]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_checkpoint_made_on_rank_zero_only_is_refused_with_one_line(tmp_path):
    p = torchrun(tmp_path / "fsdp", "--run-dir", str(tmp_path / "run"), "--checkpoint-on-rank0-only", ok=False)
    assert p.returncode != 0
    assert "every process must create the same checkpoint callbacks" in p.stderr
    assert "rank 0: Checkpoint; rank 1: none" in p.stderr
    assert not (tmp_path / "run" / "last").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (nccl)")
def test_two_gpus_with_nccl_equal_one_cpu_process_batch_2b(tmp_path):  # pragma: no cover - no GPU in CI
    ranks = torchrun(tmp_path / "fsdp", "--device", "cuda")
    weights, history, _ = single_process("onecycle")
    for k, v in weights.items():  # GPU kernels differ from CPU ones in the last bits
        torch.testing.assert_close(ranks[0]["model"][k], v, rtol=1e-4, atol=1e-5)
