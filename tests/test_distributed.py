"""DDP with real torch.distributed processes (gloo on CPU), launched by torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG

import optiloop as ol

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def torchrun(out, *args, nproc=2, restarts=0):
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", str(HERE / "ddp_worker.py"), str(out), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def single_process(scheduler, batch_size, custom_step=False):
    """The same job in this process, with the given batch: what DDP must reproduce."""
    X, y = ddp_worker.dataset()
    net = ddp_worker.model()
    log = ddp_worker.StepLog(0)
    sched = {"name": "plateau", "patience": 0, "factor": 0.5, "threshold": 0.5} \
        if scheduler == "plateau" else scheduler
    h = ol.fit(net, **ddp_worker.fit_kwargs(custom_step, X, y), optimizer="sgd", lr=0.5, scheduler=sched,
               epochs=ddp_worker.EPOCHS,
               batch_size=batch_size, metrics=["accuracy"], seed=0, progress=False, callbacks=[log])
    return net.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in h], log.lrs


# --custom-step: dict batches through step= with two micro-batches per step, so DDP's no_sync
# accumulation runs on the custom path too
@pytest.mark.slow
@pytest.mark.parametrize("custom", [False, True], ids=["default-step", "custom-step"])
def test_two_processes_batch_b_equal_one_process_batch_2b(tmp_path, custom):
    ranks = torchrun(tmp_path / "ddp", *(["--custom-step"] if custom else []))
    weights, history, lrs = single_process("onecycle", 2 * ddp_worker.B, custom_step=custom)
    if custom:
        steps = ddp_worker.EPOCHS * ddp_worker.N // (4 * ddp_worker.B)  # 2 micro-batches of B per rank
        assert len(ranks[0]["lrs"]) == len(lrs) == steps
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        for k, v in weights.items():
            torch.testing.assert_close(r["model"][k], v, rtol=1e-5, atol=1e-6)
    # same history on every rank (all-reduced metrics), equal to the big-batch run's figures
    assert ranks[0]["history"] == ranks[1]["history"]
    for got, want in zip(ranks[0]["history"], history):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_one_scheduler_step_per_optimizer_step_whatever_the_world_size(tmp_path):
    ranks = torchrun(tmp_path / "ddp")
    _, _, lrs = single_process("onecycle", 2 * ddp_worker.B)
    steps = ddp_worker.EPOCHS * ddp_worker.N // (2 * ddp_worker.B)
    # OneCycleLR raises if stepped past its total, so finishing also proves no extra steps
    assert len(ranks[0]["lrs"]) == len(lrs) == steps
    assert ranks[0]["lrs"] == ranks[1]["lrs"] == pytest.approx(lrs)


@pytest.mark.slow
def test_plateau_steps_on_the_all_reduced_metric(tmp_path):
    ranks = torchrun(tmp_path / "ddp", "--scheduler", "plateau")
    _, history, _ = single_process("plateau", 2 * ddp_worker.B)
    got = [r["lr"] for r in ranks[0]["history"]]
    assert got == [r["lr"] for r in ranks[1]["history"]] == pytest.approx([r["lr"] for r in history])
    assert got[-1] < got[0]  # it did react to the metric


# 6 steps per epoch, a checkpoint every 2 steps: dying after step 5 resumes mid-epoch from step 4
# (each rank must get back its own partial-epoch figures), after step 7 from epoch 1's end; a
# script may create its Checkpoint on rank 0 only (the loop, not the callback, gathers).
@pytest.mark.slow
@pytest.mark.parametrize("die_at, extra", [(5, ()), (7, ()), (5, ("--checkpoint-on-rank0-only",))])
def test_one_run_folder_from_rank_zero_and_exact_restart_after_a_killed_rank(tmp_path, die_at, extra):
    straight = torchrun(tmp_path / "a", "--run-dir", str(tmp_path / "run_a"), *extra)
    assert sorted(p.name for p in (tmp_path / "run_a").iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]
    restarted = torchrun(tmp_path / "b", "--run-dir", str(tmp_path / "run_b"), "--die-at-step", str(die_at),
                         *extra, restarts=1)
    for a, b in zip(straight, restarted):
        for k, v in a["model"].items():
            assert torch.equal(v, b["model"][k]), k
        assert a["history"] == b["history"]
    # the restarted ranks resumed rather than starting over: fewer steps logged than a full run
    assert len(restarted[0]["lrs"]) < len(straight[0]["lrs"])


@pytest.mark.slow
def test_dataset_input_uses_a_distributed_sampler_and_early_stopping_stops_every_rank_together(tmp_path):
    # min_delta=0.5 on val_acc: no epoch after the first counts as an improvement, so patience 1
    # stops at epoch 2, on every rank from the same all-reduced figure
    ranks = torchrun(tmp_path / "ddp", "--as-dataset", "--early-stopping", "1")
    assert [r["epochs_run"] for r in ranks] == [2, 2]
    assert ranks[0]["history"] == ranks[1]["history"]
    # DistributedSampler(seed + epoch) shards the same permutation a 1-process RandomSampler draws
    X, y = ddp_worker.dataset()
    net = ddp_worker.model()
    h = ol.fit(net, torch.utils.data.TensorDataset(X, y), val_data=(X, y), optimizer="sgd", lr=0.5,
               scheduler="onecycle", epochs=ddp_worker.EPOCHS, batch_size=2 * ddp_worker.B, metrics=["accuracy"],
               seed=0, progress=False, callbacks=[ol.EarlyStopping(monitor="val_acc", patience=1, min_delta=0.5)])
    assert len(h) == 2
    for k, v in net.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][k], v, rtol=1e-5, atol=1e-6)
