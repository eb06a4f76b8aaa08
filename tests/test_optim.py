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
    with pytest.raises(ol.OptiloopError, match=r"unknown optimizer 'adamx' \(did you mean 'adamax'\?\); "
                                                 r"choose one of: adafactor, adagrad"):
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


# --- param groups, layer-wise LR decay, decay on biases and norms ---------------------------------
class TinyTransformer(nn.Module):
    """Embeddings, a ModuleList of blocks, a final norm and a head: what layer_decay is for."""

    def __init__(self, n_blocks=3):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(self.norm(h)).mean(1)


def _ids(params):
    return {id(p) for p in params}


def test_param_groups_keep_their_own_values_fused_and_the_bias_split_inside_each():
    model = mlp()
    body = list(model[0].parameters()) + list(model[1].parameters()) + list(model[3].parameters())
    groups = [{"params": body, "lr": 1e-4, "weight_decay": 0.05}, {"params": model[5].parameters()}]
    opt = ol.build_optimizer("adamw", groups, lr=1e-3, weight_decay=0.01)
    assert opt.defaults["fused"] is True and all(g["fused"] for g in opt.param_groups)
    got = [(g["lr"], g["weight_decay"], _ids(g["params"])) for g in opt.param_groups]
    assert got == [
        (1e-4, 0.05, _ids([model[0].weight, model[3].weight])),
        (1e-4, 0.0, _ids([model[0].bias, model[1].weight, model[1].bias, model[3].bias])),
        (1e-3, 0.01, _ids([model[5].weight])),
        (1e-3, 0.0, _ids([model[5].bias])),
    ]
    # coupled L2 (SGD): the groups exactly as given
    opt = ol.build_optimizer("sgd", [{"params": body, "lr": 0.01}, {"params": model[5].parameters()}], lr=0.1)
    assert [(g["lr"], len(g["params"])) for g in opt.param_groups] == [(0.01, 6), (0.1, 2)]


def test_param_groups_from_a_generator_and_bad_groups():
    model = mlp()
    assert len(ol.build_optimizer("sgd", model.parameters(), lr=0.1).param_groups[0]["params"]) == 8
    with pytest.raises(ol.OptiloopError, match="param groups must each be a dict with 'params'"):
        ol.build_optimizer("sgd", [{"params": model.parameters()}, {"lr": 0.1}])
    with pytest.raises(ol.OptiloopError, match=r"'sgd': param group 1: lr must be a finite number \(got nan\)"):
        ol.build_optimizer("sgd", [{"params": model[0].parameters()}, {"params": model[5].parameters(),
                                                                        "lr": float("nan")}])


def test_layer_decay_scales_each_block_from_the_head_down():
    model = TinyTransformer(n_blocks=3)
    opt = ol.build_optimizer("adamw", model, lr=1.0, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == lr_of[id(model.norm.weight)] == 1.0  # after the blocks: full LR
    assert [lr_of[id(b[0].weight)] for b in model.blocks] == [0.125, 0.25, 0.5]
    assert lr_of[id(model.embed.weight)] == 0.0625  # before the blocks: one more step down
    assert opt.param_groups[0]["lr"] == 1.0  # group 0 (the History's lr) is the head's
    # the bias / norm split still holds inside every layer
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(model.blocks[0][0].weight)] == 0.01 and wd_of[id(model.blocks[0][1].weight)] == 0.0
    assert len(lr_of) == len(list(model.parameters()))
    # a scheduler scales every layer together, keeping the ratios
    sched = ol.build_scheduler("cosine", opt, epochs=4)
    opt.step(), sched.epoch_end()
    ratio = {g["lr"] / g["initial_lr"] for g in opt.param_groups}
    assert len({round(r, 12) for r in ratio}) == 1


def test_layer_decay_on_a_sequential_and_by_name():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = ol.build_optimizer("sgd", net, lr=1.0, layer_decay=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25, 0.125]  # group 0: the output layer
    opt = ol.build_optimizer({"name": "sgd", "layer_decay": 0.5, "blocks": "blocks"}, TinyTransformer(2), lr=1.0)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.125, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("kwargs,match", [
    ({"layer_decay": 0.0}, r"layer_decay must be a finite number in \(0, 1\] \(got 0.0\)"),
    ({"layer_decay": 1.5}, r"layer_decay must be a finite number in \(0, 1\]"),
    ({"layer_decay": 0.5, "blocks": "nope"}, "the model has no module 'nope'"),
    ({"layer_decay": 0.5, "blocks": "head"}, "'head' is a Linear, not an nn.ModuleList"),
    ({"blocks": "blocks"}, "set layer_decay too"),
    ({"decay_bias_and_norm": "yes"}, "decay_bias_and_norm must be true or false"),
])
def test_layer_decay_bad_input(kwargs, match):
    with pytest.raises(ol.OptiloopError, match=match):
        ol.build_optimizer("adamw", TinyTransformer(), **kwargs)


def test_layer_decay_needs_blocks_and_a_model():
    with pytest.raises(ol.OptiloopError, match="layer_decay needs the model's blocks"):
        ol.build_optimizer("adamw", nn.Linear(2, 2), layer_decay=0.5)
    with pytest.raises(ol.OptiloopError, match="layer_decay needs the model itself"):
        ol.build_optimizer("adamw", mlp().parameters(), layer_decay=0.5)


def test_decay_on_biases_and_norms_is_reachable_from_fit_and_the_optimizer_dict():
    model = mlp()
    spec = {"name": "adamw", "weight_decay": 0.1, "decay_bias_and_norm": True}
    opt = ol.build_optimizer(spec, model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    muon = ol.build_optimizer({"name": "muon", "decay_bias_and_norm": True}, model)
    assert [g["weight_decay"] for g in muon.adamw.param_groups] == [0.01]
    X, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    norm_scale = model[1].weight.detach().clone()  # LayerNorm weight: 1-D, decayed only when asked
    ol.fit(model, (X, y), optimizer={**spec, "lr": 0.0}, epochs=1, progress=False)
    assert torch.equal(model[1].weight, norm_scale)  # lr 0: not even decay moves it (decay is lr * wd)
    ol.fit(model, (X, y), optimizer={**spec, "lr": 0.1, "weight_decay": 0.5, "betas": (0.0, 0.0)},
           loss=lambda out, t: out.sum() * 0, epochs=1, progress=False)
    assert torch.allclose(model[1].weight, norm_scale * (1 - 0.1 * 0.5) ** 1)  # decoupled decay on a norm


# --- an optimizer built on other parameters (issue 12, bug 6) ----------------------------------
def test_an_optimizer_built_on_another_models_parameters_is_refused():
    model, other = mlp(), mlp()
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ol.OptiloopError, match="the optimizer holds none of the model's parameters") as e:
        ol.build_optimizer(opt, model)
    assert "\n" not in str(e.value)
    X, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with pytest.raises(ol.OptiloopError, match="holds none of the model's parameters"):
        ol.fit(model, (X, y), optimizer=opt, epochs=1, progress=False)
    # part of the model (a frozen body) and extra parameters (a learnable loss weight) are fine
    extra = nn.Parameter(torch.ones(()))
    assert ol.build_optimizer(torch.optim.SGD([*model[5].parameters(), extra], lr=0.1), model) is not None


# --- argument values ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,needle", [
    ("sgd", {"lr": float("nan")}, "lr must be a finite number (got nan)"),
    ("sgd", {"lr": float("inf")}, "lr must be a finite number (got inf)"),
    ("sgd", {"lr": True}, "lr must be a finite number (got True)"),
    ("sgd", {"momentum": float("nan")}, "momentum must be a finite number (got nan)"),
    ("sgd", {"weight_decay": "0.1"}, "weight_decay must be a finite number (got '0.1')"),
    ("sgd", {"nesterov": 1}, "nesterov must be true or false (got 1)"),
    ("adam", {"betas": (0.9, float("nan"))}, "betas must be 2 finite numbers, e.g. [0.9, 0.999]"),
    ("adam", {"betas": 0.9}, "betas must be 2 finite numbers"),
])
def test_bad_optimizer_values_are_one_line_naming_the_argument(name, kwargs, needle):
    with pytest.raises(ol.OptiloopError) as e:
        ol.build_optimizer(name, mlp(), **kwargs)
    assert str(e.value) == f"optimizer {name!r}: {needle}" or needle in str(e.value)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"optimizer {name!r}: ")
