"""Sharded (DCP) checkpoint folders in one process: the commit, rotation, asynchronous saves,
safe loading, export; and the strategy's one-line errors. The multi-process guarantees are in
tests/test_fsdp.py."""

import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

import optiloop as ol
from optiloop import sharded as S
from optiloop.files import TEMP_SUFFIX
from optiloop.training_state import FORMAT, rng_state

# A ShardedFolder in one process: DCP notes from its writer thread that it saves in one process
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def snapshot(model, opt, step):
    """What TrainState.snapshot() gives a ShardedFolder (the fields it splits are what matters)."""
    msd, osd = S.state_dicts(model, opt)
    return {"format": FORMAT, "model": msd, "optimizer": osd, "rng": rng_state(), "step": step,
            "history": {"rows": [{"epoch": 1, "loss": 0.5}] * step}}


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def load(path):
    model, opt = trained(seed=99)  # other weights: loading must replace them all
    own = S.load_into(path, model, opt, rank=0)
    return model, opt, S.read_train_state(path), own


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_save_commits_by_its_metadata_and_the_previous_folder_is_kept(tmp_path, async_save):
    folder = S.ShardedFolder(tmp_path, async_save=async_save)
    model, opt = trained()
    first = snapshot(model, opt, step=1)
    folder.save("last", first)
    first_weights = weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.rand(3)  # the RNG moves on too
    second = snapshot(model, opt, step=2)
    folder.save("last", second)  # waits for the first one to commit
    folder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "last.prev"]  # no temporaries left
    for name, saved, want in (("last", second, weights(model)), ("last.prev", first, first_weights)):
        got, got_opt, train, own = load(tmp_path / name)
        step = saved["step"]
        assert train["step"] == step and len(train["history"]["rows"]) == step
        assert "model" not in train and "rng" not in train  # shards and per-rank state live apart
        assert torch.equal(own["rng"]["torch"], saved["rng"]["torch"])
        for k, v in want.items():
            assert torch.equal(got.state_dict()[k], v), (name, k)
        assert torch.equal(got_opt.state[got[0].weight]["exp_avg"], opt.state[model[0].weight]["exp_avg"])


def test_an_async_save_holds_the_state_of_its_moment_while_training_goes_on(tmp_path):
    folder = S.ShardedFolder(tmp_path, async_save=True)
    model, opt = trained()
    before = weights(model)
    folder.save("last", snapshot(model, opt, step=1))
    with torch.no_grad():  # training changes the parameters in place while the writer runs
        for p in model.parameters():
            p.mul_(-3.0)
    folder.wait()
    got, _, _, _ = load(tmp_path / "last")
    for k, v in before.items():
        assert torch.equal(got.state_dict()[k], v), k


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_save_that_fails_before_its_metadata_leaves_the_previous_checkpoint_in_use(tmp_path, monkeypatch,
                                                                                    async_save):
    folder = S.ShardedFolder(tmp_path, async_save=async_save)
    model, opt = trained()
    folder.save("last", snapshot(model, opt, step=1))
    folder.wait()

    def broken_finish(self, metadata, results):
        raise OSError("disk full")

    monkeypatch.setattr(FileSystemWriter, "finish", broken_finish)
    with pytest.raises(ol.CheckpointError, match="writing checkpoint last failed, the previous one is kept"):
        folder.save("last", snapshot(model, opt, step=2))
        folder.wait()
    assert S.read_train_state(tmp_path / "last")["step"] == 1  # the committed one, untouched
    assert not (tmp_path / "last.prev").exists()  # nothing was rotated for a save that never committed
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert leftovers and not any((p / S.METADATA).exists() for p in leftovers)
    folder.clean()  # what the next run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_copy_links_a_committed_folder_and_waits_for_one_in_flight(tmp_path):
    folder = S.ShardedFolder(tmp_path, async_save=True)
    model, opt = trained()
    folder.save("best", snapshot(model, opt, step=3), keep_previous=False)
    folder.copy("best", "last")  # best is still being written: linked once it commits
    folder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    assert (tmp_path / "last" / S.METADATA).stat().st_ino == (tmp_path / "best" / S.METADATA).stat().st_ino
    assert S.read_train_state(tmp_path / "last")["step"] == 3


def test_resume_skips_an_uncommitted_or_incomplete_folder_with_a_warning(tmp_path):
    folder = S.ShardedFolder(tmp_path, async_save=False)
    model, opt = trained()
    folder.save("last", snapshot(model, opt, step=1))
    folder.save("last", snapshot(model, opt, step=2))
    (tmp_path / "last" / S.METADATA).unlink()  # as if its writer had died before the commit
    with pytest.warns(UserWarning, match="not committed.*resuming from last.prev instead"):
        assert S.find_resumable(tmp_path) == tmp_path / "last.prev"
    shard = next((tmp_path / "last.prev").glob("*.distcp"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with pytest.raises(ol.CheckpointError, match="incomplete: shard file .* missing or short"):
        S.find_resumable(tmp_path)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_metadata_or_values_that_would_run_code_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = S.ShardedFolder(tmp_path / "run", async_save=False)
    model, opt = trained()
    folder.save("last", snapshot(model, opt, step=1))
    S.verify(tmp_path / "run" / "last")
    with open(tmp_path / "run" / "last" / S.METADATA, "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ol.CheckpointError, match="metadata refused"):
        S.verify(tmp_path / "run" / "last")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's one-process note
        dcp.save({"train": Payload()}, checkpoint_id=tmp_path / "evil", no_dist=True)
    with pytest.raises(ol.CheckpointError, match="not plain data and loading it could run code"):
        S.read_train_state(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


def test_a_model_that_does_not_fit_is_named_in_one_line(tmp_path):
    folder = S.ShardedFolder(tmp_path, async_save=False)
    model, opt = trained()
    folder.save("last", snapshot(model, opt, step=1))
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    with pytest.raises(ol.CheckpointError, match=r"does not fit the model; shape mismatch .* 0.weight \(8, 4\) vs "
                                                 r"\(9, 4\)"):
        S.load_into(tmp_path / "last", other, torch.optim.AdamW(other.parameters()), rank=0)


def test_export_of_a_plain_run_and_of_a_sharded_checkpoint_give_the_same_kind_of_file(tmp_path):
    X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    ol.fit(model, (X, y), val_data=(X, y), epochs=2, progress=False, seed=0,
           callbacks=[ol.Checkpoint(tmp_path / "run", every_seconds=0)])
    assert ol.export(tmp_path / "run", tmp_path / "a.pt") == tmp_path / "run" / "best.pt"
    plain = torch.load(tmp_path / "a.pt", weights_only=True)
    assert type(plain) is dict and set(plain) == set(model.state_dict())
    opt = torch.optim.AdamW(model.parameters())
    model(X).sum().backward()
    opt.step()
    S.ShardedFolder(tmp_path / "sharded", async_save=False).save("last", snapshot(model, opt, step=1))
    assert ol.export(tmp_path / "sharded", tmp_path / "b.pt") == tmp_path / "sharded" / "last"  # no best: last
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert list(b) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(b[k], v)
    with pytest.raises(ol.OptiloopError, match="unknown which='first'; choose one of: best, last"):
        ol.export(tmp_path / "run", tmp_path / "c.pt", which="first")
    with pytest.raises(ol.CheckpointError, match="nothing to export in"):
        ol.export(tmp_path, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


# --- the strategy's one-line errors --------------------------------------------------------------
def small_fit(**kwargs):
    X, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    return ol.fit(torch.nn.Linear(4, 2), (X, y), epochs=1, progress=False, **kwargs)


def test_an_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ol.OptiloopError, match=r"unknown strategy 'zero3'; choose one of: auto, ddp, fsdp, none"):
        small_fit(strategy="zero3")


@pytest.mark.parametrize("strategy", ["fsdp", "ddp", ol.FSDP()])
def test_a_distributed_strategy_in_one_plain_process_says_how_to_launch_it(strategy):
    with pytest.raises(ol.OptiloopError, match=r"spreads training over several processes, but this is one "
                                               r"process; launch it with torchrun --nproc_per_node=N"):
        small_fit(strategy=strategy)


def test_fsdp_under_torchrun_with_one_process_says_so(monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ol.OptiloopError, match="torchrun started 1 process; use --nproc_per_node=N with N >= 2"):
        small_fit(strategy="fsdp")
    assert len(small_fit()) == 1  # auto: one process trains as "none"


def test_what_fsdp_cannot_take_is_refused_before_anything_is_sharded():
    from optiloop.distributed import check_fsdp

    model = torch.nn.Linear(4, 2)
    cases = [
        (dict(optimizer=torch.optim.SGD(model.parameters(), lr=0.1)), "pass the optimizer by name or dict"),
        (dict(optimizer={"name": "muon"}), "'muon' is not supported under strategy='fsdp'"),
        (dict(amp=torch.float16), "amp='fp16' is not supported under strategy='fsdp'.*use amp='bf16'"),
        (dict(compile=True), "compile= is not supported under strategy='fsdp'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ol.OptiloopError, match=message):
            check_fsdp(kwargs.get("optimizer", "adamw"), None, kwargs.get("amp"), kwargs.get("compile", False))
    check_fsdp("adamw", "onecycle", torch.bfloat16, False)  # what it takes
    with pytest.raises(ol.OptiloopError, match="FSDP\\(blocks=...\\) takes a tuple of nn.Module classes"):
        ol.FSDP(blocks="Block")


def test_an_fsdp_block_type_the_model_lacks_names_the_types_it_has():
    from optiloop.distributed import _blocks

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(ol.OptiloopError, match=r"matches no module of the model; its module types: Linear, ReLU, "
                                               r"Sequential"):
        _blocks(model, (torch.nn.TransformerEncoderLayer,))
    nested = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 2)])
    root = torch.nn.Sequential(nested)
    assert _blocks(root, None) == [nested[1], nested[0]]  # ModuleList children, innermost/last first
    assert _blocks(root, (torch.nn.Linear,)) == [nested[1], nested[0][0]]

