"""Schedules: the LR sequences equal torch's when driven by hand; intervals, warmup, state."""

import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

import optiloop as ol
from optiloop.schedules import LinearWarmup


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def by_hand(make, epochs, lr=0.1, metrics=None):
    """The textbook loop: train an epoch (optimizer.step), then scheduler.step() once."""
    opt = _opt(lr)
    sched = make(opt)
    lrs = []
    for e in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(metrics[e]) if metrics is not None else sched.step()
    return lrs


def ours(spec, epochs, lr=0.1, metrics=None, **kw):
    return ol.preview_schedule(spec, lr=lr, epochs=epochs, metrics=metrics, **kw)


def test_steplr_matches_torch():
    expected = by_hand(lambda o: tls.StepLR(o, step_size=10, gamma=0.1), 30)
    assert ours("step", 30, step_size=10, gamma=0.1) == expected
    assert expected[9] == 0.1 and math.isclose(expected[10], 0.01) and math.isclose(expected[29], 0.001)


def test_cosine_matches_torch():
    expected = by_hand(lambda o: tls.CosineAnnealingLR(o, T_max=50, eta_min=0.001), 50)
    assert ours("cosine", 50, T_max=50, eta_min=0.001) == expected
    # T_max defaults to the run length
    assert ours("cosine", 50, eta_min=0.001) == expected


def test_multistep_matches_torch():
    expected = by_hand(lambda o: tls.MultiStepLR(o, milestones=[60, 90, 120], gamma=0.1), 130)
    got = ours("multistep", 130, milestones=[60, 90, 120], gamma=0.1)
    assert got == expected
    assert got[59] == 0.1 and math.isclose(got[60], 0.01) and math.isclose(got[125], 1e-4)


def test_exponential_matches_torch():
    expected = by_hand(lambda o: tls.ExponentialLR(o, gamma=0.9), 20)
    assert ours("exponential", 20, gamma=0.9) == expected


def test_plateau_matches_torch_on_scripted_metric():
    metric = [1.0, 0.9, 0.8] + [0.8] * 8 + [0.5] + [0.5] * 10
    expected = by_hand(lambda o: tls.ReduceLROnPlateau(o, mode="min", factor=0.2, patience=5),
                       len(metric), metrics=metric)
    got = ours("plateau", len(metric), metrics=metric, mode="min", factor=0.2, patience=5)
    assert got == expected
    assert min(got) < 0.1  # it did reduce


def test_cosine_restarts_linear_polynomial_match_torch():
    assert ours("cosine_restarts", 20, T_0=5, T_mult=2) == by_hand(
        lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2), 20)
    assert ours("linear", 10) == by_hand(lambda o: tls.LinearLR(o, 1.0, 0.0, total_iters=10), 10)
    assert ours("polynomial", 10, power=2.0) == by_hand(
        lambda o: tls.PolynomialLR(o, total_iters=10, power=2.0), 10)
    assert ours("constant", 5) == [0.1] * 5


def test_onecycle_is_per_step_and_matches_torch():
    opt = _opt()
    s = ol.build_scheduler("onecycle", opt, epochs=3, steps_per_epoch=10, max_lr=1.0)
    assert s.interval == "step"
    ref_opt = _opt()
    ref = tls.OneCycleLR(ref_opt, max_lr=1.0, total_steps=30)
    for _ in range(30):
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        opt.step(), ref_opt.step()
        s.step_end(), ref.step()
        s.epoch_end()  # per-step schedules ignore epoch ends
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]


def test_intervals():
    o = _opt()
    assert ol.build_scheduler("step", o, step_size=2).interval == "epoch"
    assert ol.build_scheduler("plateau", _opt()).interval == "metric"
    assert ol.build_scheduler("cosine", _opt(), epochs=5, steps_per_epoch=4, interval="step").interval == "step"
    built = tls.OneCycleLR(_opt(), max_lr=0.1, total_steps=10)
    assert ol.build_scheduler(built, built.optimizer).interval == "step"


def test_cosine_per_step_spans_all_steps():
    lrs = ol.preview_schedule("cosine", lr=1.0, epochs=2, steps_per_epoch=5, interval="step", per_step=True)
    assert len(lrs) == 10 and lrs[0] == 1.0
    assert lrs[5] == pytest.approx((1 + math.cos(math.pi * 5 / 10)) / 2)


def test_epoch_schedule_does_not_move_within_an_epoch():
    lrs = ol.preview_schedule("step", lr=1.0, epochs=3, steps_per_epoch=4, per_step=True, step_size=1,
                              gamma=0.5)
    assert lrs == [1.0] * 4 + [0.5] * 4 + [0.25] * 4


def test_linear_warmup_function():
    w = LinearWarmup(4)
    assert [w(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_warmup_in_front_of_epoch_schedule():
    lrs = ol.preview_schedule("step", lr=1.0, epochs=3, steps_per_epoch=4, per_step=True, step_size=1,
                              gamma=0.5, warmup_steps=4)
    # first epoch ramps 1/4..4/4 of the main LR; then the main schedule is untouched
    assert lrs == [0.25, 0.5, 0.75, 1.0] + [0.5] * 4 + [0.25] * 4


def test_warmup_epochs_spanning_an_epoch_boundary_keeps_main_schedule_exact():
    lrs = ol.preview_schedule("exponential", lr=1.0, epochs=3, steps_per_epoch=2, per_step=True,
                              gamma=0.5, warmup_epochs=2)
    # warmup over 4 steps (k/4), multiplied onto the exponential schedule 1, 0.5, 0.25
    assert lrs == [0.25, 0.5, 0.5 * 0.75, 0.5, 0.25, 0.25]


def test_warmup_in_front_of_plateau():
    metric = [1.0] * 6
    lrs = ol.preview_schedule("plateau", lr=1.0, epochs=6, steps_per_epoch=2, per_step=True, metrics=metric,
                              patience=1, factor=0.5, warmup_steps=4)
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[-1] < 1.0  # plateau still reduces after warmup


def test_state_dict_round_trip_continues_identically():
    def run(split):
        opt = _opt()
        s = ol.build_scheduler("cosine_restarts", opt, T_0=3, warmup_steps=2, steps_per_epoch=2)
        lrs = []
        for e in range(8):
            if e == split:
                state = s.state_dict()
                opt2 = _opt()
                opt2.load_state_dict(opt.state_dict())
                s = ol.build_scheduler("cosine_restarts", opt2, T_0=3, warmup_steps=2, steps_per_epoch=2)
                s.load_state_dict(state)
                opt = opt2
            for _ in range(2):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                s.step_end()
            s.epoch_end()
        return lrs

    assert run(split=5) == run(split=None)


@pytest.mark.parametrize("bad,match", [
    ("cosinus", "unknown scheduler 'cosinus'; choose one of: constant, cosine"),
    ({"name": "step", "epochs": None}, "needs step_size"),
    ({"name": "step", "step_size": 2, "gamm": 0.1}, "scheduler 'step'.*gamm"),
    ({"name": "plateau", "interval": "step"}, "steps per metric"),
])
def test_bad_scheduler_input_is_one_clear_line(bad, match):
    epochs = bad.pop("epochs", 5) if isinstance(bad, dict) else 5
    with pytest.raises(ol.OptiloopError, match=match) as e:
        ol.build_scheduler(bad, _opt(), epochs=epochs)
    assert "\n" not in str(e.value)


def test_required_arguments_default_from_the_run_length():
    assert ol.build_scheduler("step", _opt(), epochs=30).scheduler.step_size == 10
    assert ol.build_scheduler("multistep", _opt(), epochs=40).scheduler.milestones == {20: 1, 30: 1}
    assert ol.build_scheduler("exponential", _opt(), epochs=5).scheduler.gamma == 0.9
    # per-step: a third of all steps
    assert ol.build_scheduler("step", _opt(), epochs=3, steps_per_epoch=10, interval="step").scheduler.step_size == 10


def test_preview_plateau_needs_metrics():
    with pytest.raises(ol.OptiloopError, match="metrics="):
        ol.preview_schedule("plateau", epochs=3)


def test_a_built_scheduler_must_drive_the_trained_optimizer():
    other = _opt()
    with pytest.raises(ol.OptiloopError, match="drives another optimizer"):
        ol.build_scheduler(tls.StepLR(other, step_size=1), _opt())
    X, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    with pytest.raises(ol.OptiloopError, match="drives another optimizer"):
        ol.fit(torch.nn.Linear(2, 2), (X, y), optimizer="sgd", scheduler=tls.StepLR(other, step_size=1),
               progress=False)


def test_without_warmup_outside_lr_changes_are_not_undone():
    opt = _opt()
    s = ol.build_scheduler("constant", opt, epochs=3)
    opt.param_groups[0]["lr"] = 0.05  # e.g. a user callback
    opt.step()
    s.step_end()
    s.epoch_end()
    assert opt.param_groups[0]["lr"] == 0.05


def test_bad_values_are_one_line_too():
    with pytest.raises(ol.OptiloopError, match="scheduler 'onecycle'") as e:
        ol.build_scheduler("onecycle", _opt(), epochs=2, steps_per_epoch=2, pct_start=2.0)
    assert "\n" not in str(e.value)
