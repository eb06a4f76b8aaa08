"""The example scripts under examples/, run as a user would (small sizes: CI's two cores)."""

import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import char_gpt  # noqa: E402


@pytest.mark.slow
def test_char_gpt_learns_the_text_well_below_the_unigram_baseline(capsys):
    result = char_gpt.main(["--no-progress", "--dim", "64", "--epochs", "1", "--stride", "16"])
    history, baseline = result["history"], result["baseline"]
    assert 3.0 < baseline < 4.0  # nats per character of English under its letter frequencies
    assert history["val_loss"][-1] < baseline - 0.5  # it learned context, not just frequencies
    assert history["val_loss"][-1] < history["val_loss"][0] or len(history) == 1
    sample = result["sample"]
    assert sample.startswith("The data") and len(sample) == len("The data") + 200
    assert "val loss" in capsys.readouterr().out
    # the example's default size is "a few hundred thousand parameters"
    assert 100_000 < sum(p.numel() for p in char_gpt.CharGPT(90).parameters()) < 1_000_000


def test_char_gpt_trains_through_the_step_contract_with_warmup_cosine_and_no_decay_on_norms():
    """The example's recipe, checked part by part on the real model: the step returns the
    model's own loss; AdamW's decay group excludes biases and LayerNorm scales."""
    import optiloop as ol

    torch.manual_seed(0)
    model = char_gpt.CharGPT(20, block=8, dim=16)
    opt = ol.build_optimizer("adamw", model, lr=1e-2, weight_decay=0.1)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name  # biases and norm scales: no decay
    lrs = ol.preview_schedule({"name": "cosine", "interval": "step", "warmup_steps": 4, "eta_min": 1e-3},
                              lr=1e-2, epochs=2, steps_per_epoch=6, per_step=True)
    # rising to the peak (the first step at lr / W, not 0), then falling over the remaining steps
    assert lrs[:5] == pytest.approx([1e-2 * k / 4 for k in (1, 1, 2, 3, 4)])
    assert lrs[-1] < lrs[4] == 1e-2


@pytest.mark.slow
def test_transformers_model_on_dict_batches_with_its_own_loss(capsys):
    pytest.importorskip("transformers")
    import hf_model

    result = hf_model.main(["--no-progress", "--epochs", "1", "--stride", "16"])
    assert result["history"]["val_loss"][-1] < result["baseline"] - 0.3
    assert "GPT-2 with" in capsys.readouterr().out


def test_the_wandb_example_logs_through_the_logger_protocol(monkeypatch, tmp_path):
    """docs/trackers.md's second tracker (examples/wandb_logger.py), run against a stand-in for the
    wandb package (W&B is not a dependency): the run's settings as its config, every recorded step
    and every epoch at steps that never go back, its end status, and a resume into the same run."""
    import types

    import optiloop as ol

    runs = []

    class Run:
        def __init__(self, **kwargs):
            self.kwargs, self.logged, self.exit_code = kwargs, [], None
            self.id = kwargs["id"] or f"run-{len(runs)}"

        def log(self, data, step):
            assert not self.logged or step >= self.logged[-1][0]  # W&B drops a step that goes back
            self.logged.append((step, data))

        def finish(self, exit_code):
            self.exit_code = exit_code

    def init(**kwargs):
        runs.append(Run(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    import wandb_logger

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(48, 5, generator=g), torch.randint(0, 3, (48,), generator=g)

    def train(epochs, resume=None):
        torch.manual_seed(0)
        return ol.fit(torch.nn.Linear(5, 3), (X, y), val_data=(X, y), optimizer="sgd", lr=0.1, epochs=epochs,
                      batch_size=16, metrics=["accuracy"], progress=False, seed=0, resume=resume,
                      callbacks=[wandb_logger.WandB("demo", grad_norm=True), ol.StepHistory(),
                                 ol.Checkpoint(tmp_path, every_seconds=0)])

    h = train(2)
    run = runs[0]
    assert run.kwargs["mode"] == "offline" and run.exit_code == 0
    assert (run.kwargs["config"]["optimizer.name"], run.kwargs["config"]["optimizer.lr"]) == ("sgd", 0.1)
    steps = [(s, d) for s, d in run.logged if "step/loss" in d]
    assert [s for s, _ in steps] == h.steps["step"] == list(range(1, 7))
    assert [d["step/grad_norm"] for _, d in steps] == h.steps["grad_norm"]
    epochs = [(s, d) for s, d in run.logged if "epoch/val_loss" in d]
    assert [(s, d["epoch/val_loss"]) for s, d in epochs] == [(3, h["val_loss"][0]), (6, h["val_loss"][1])]

    h = train(3, resume=str(tmp_path))  # one more epoch: the same W&B run goes on
    assert runs[1].kwargs["id"] == run.id and runs[1].exit_code == 0
    assert [d["epoch/val_loss"] for s, d in runs[1].logged if "epoch/val_loss" in d] == h["val_loss"][2:]
