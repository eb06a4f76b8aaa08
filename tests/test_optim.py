"""Optimizers by name: classes, pass-through keywords, decay groups, fast paths, Muon pair."""

import io

import pytest
import torch
from torch import nn

import optiloop as ol
from optiloop.muon import MuonWithAdamW, muon_split


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("name,cls", [
    ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
    ("rmsprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad), ("nadam", torch.optim.NAdam),
    ("radam", torch.optim.RAdam), ("adamax", torch.optim.Adamax), ("adafactor", torch.optim.Adafactor),
])
def test_names_build_torch_classes_that_train(name, cls):
    model = mlp()
    opt = ol.build_optimizer(name, model, lr=0.01)
    assert isinstance(opt, cls)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    before = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(model(x), y).item() < before


def test_torch_keywords_pass_through_unchanged():
    opt = ol.build_optimizer("sgd", mlp(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.1, 0.9, True, 5e-4)
    opt = ol.build_optimizer({"name": "adam", "betas": (0.8, 0.9)}, mlp())
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert opt.param_groups[0]["lr"] == ol.optimizer_defaults("adam")["lr"]
    # fit passes lr=None when not given: a dict's own lr must survive that
    assert ol.build_optimizer({"name": "adamw", "lr": 0.01}, mlp(), lr=None).param_groups[0]["lr"] == 0.01


def test_unknown_name_and_keyword_are_one_clear_line():
    with pytest.raises(ol.OptiloopError, match=r"unknown optimizer 'adamx'; choose one of: adafactor, adagrad"):
        ol.build_optimizer("adamx", mlp())
    with pytest.raises(ol.OptiloopError, match=r"optimizer 'adam' does not take momentum; it takes: .*betas"):
        ol.build_optimizer("adam", mlp(), momentum=0.9)


def test_decoupled_decay_skips_biases_and_norms_by_default():
    model = mlp()
    opt = ol.build_optimizer("adamw", model, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in model.parameters() if p.ndim == 1}
    # switchable: one group, everything decays
    opt = ol.build_optimizer("adamw", model, weight_decay=0.1, decay_bias_and_norm=True)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    # coupled L2 (SGD) keeps torch's meaning: every parameter
    assert len(ol.build_optimizer("sgd", model, weight_decay=0.1).param_groups) == 1
    # Adam joins when asked to decouple
    assert len(ol.build_optimizer("adam", model, weight_decay=0.1, decoupled_weight_decay=True).param_groups) == 2


def test_fastest_implementation_is_chosen_and_switchable():
    model = mlp()
    for name in ("adam", "adamw", "sgd", "adagrad"):
        assert ol.build_optimizer(name, model).defaults["fused"] is True, name
        assert not ol.build_optimizer(name, model, fast=False).defaults.get("fused")
    assert ol.build_optimizer("rmsprop", model).defaults["foreach"] is True
    # an explicit choice wins
    assert ol.build_optimizer("adamw", model, foreach=True).defaults["foreach"] is True


def test_built_optimizer_is_returned_as_is():
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    assert ol.build_optimizer(opt, None) is opt


def test_muon_split_keeps_hidden_2d_weights_only():
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    hidden, rest = muon_split(model)
    assert [p is model[1].weight for p in hidden] == [True]
    assert any(p is model[0].weight for p in rest) and any(p is model[3].weight for p in rest)


def test_muon_pair_steps_both_halves_and_shares_lr_with_a_scheduler():
    model = mlp()
    opt = ol.build_optimizer("muon", model, lr=0.02, adamw={"lr": 0.01})
    assert isinstance(opt, MuonWithAdamW)
    before = [p.detach().clone() for p in model.parameters()]
    sched = ol.build_scheduler("step", opt, step_size=1, gamma=0.5)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    sched.epoch_end()
    assert opt.muon.param_groups[0]["lr"] == 0.01 and opt.adamw.param_groups[0]["lr"] == 0.005


def test_muon_state_dict_round_trip():
    model = mlp()
    opt = ol.build_optimizer("muon", model, lr=0.02)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = ol.build_optimizer("muon", model, lr=0.02)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0] is opt2.muon.param_groups[0]  # still linked after loading
    m1, m2 = opt.muon.state, opt2.muon.state
    assert all(torch.equal(m1[p]["momentum_buffer"], m2[p]["momentum_buffer"]) for p in m1)


def test_torch_range_errors_become_one_line():
    with pytest.raises(ol.OptiloopError, match="optimizer 'sgd': Invalid learning rate: -1"):
        ol.build_optimizer("sgd", mlp(), lr=-1)


def test_no_trainable_parameters():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ol.OptiloopError, match="no trainable parameters"):
        ol.build_optimizer("sgd", model)


def test_muon_pair_works_with_onecycle():
    model = mlp()
    opt = ol.build_optimizer("muon", model, lr=0.02)
    sched = ol.build_scheduler("onecycle", opt, epochs=1, steps_per_epoch=4)
    lrs = []
    for _ in range(4):
        nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 3, (4,))).backward()
        opt.step()
        opt.zero_grad()
        sched.step_end()
        lrs.append(opt.muon.param_groups[0]["lr"])
    expected = ol.preview_schedule("onecycle", lr=0.02, epochs=1, steps_per_epoch=4, per_step=True)
    assert lrs[:3] == pytest.approx(expected[1:])  # the LR after each step is the next step's
    assert opt.adamw.param_groups[0]["lr"] == opt.muon.param_groups[0]["lr"]
