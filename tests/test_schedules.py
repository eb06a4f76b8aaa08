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
    # transformers' k / W, except step 0 trains at 1 / W instead of 0
    assert [w(k) for k in range(6)] == [0.25, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_warmup_reaches_the_peak_then_the_main_schedule_runs_over_the_rest():
    # was: cosine multiplied by the ramp from epoch 1, peaking at 0.09045 and never at 0.1
    lrs = ol.preview_schedule("cosine", lr=0.1, epochs=10, warmup_epochs=2)
    assert max(lrs) == 0.1 and lrs[2] == 0.1
    assert lrs[2:] == by_hand(lambda o: tls.CosineAnnealingLR(o, T_max=8), 8)


def test_warmup_in_front_of_epoch_schedule():
    lrs = ol.preview_schedule("step", lr=1.0, epochs=3, steps_per_epoch=4, per_step=True, step_size=1,
                              gamma=0.5, warmup_steps=4)
    # the first epoch ramps to the main LR; the main schedule's own clock starts after it
    assert lrs == [0.25, 0.25, 0.5, 0.75] + [1.0] * 4 + [0.5] * 4


def test_warmup_ending_mid_epoch_starts_the_epoch_schedule_there():
    lrs = ol.preview_schedule("exponential", lr=1.0, epochs=3, steps_per_epoch=2, per_step=True,
                              gamma=0.5, warmup_steps=3)
    # steps 0-2 warm up; step 3 (end of epoch 2) trains at the main LR; the epoch's end steps it
    assert lrs == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0, 0.5, 0.5])


def test_warmup_in_front_of_plateau_multiplies_the_lr_it_sets():
    metric = [1.0] * 6
    lrs = ol.preview_schedule("plateau", lr=1.0, epochs=6, steps_per_epoch=2, per_step=True, metrics=metric,
                              patience=1, factor=0.5, warmup_steps=4)
    assert lrs[:5] == [0.25, 0.25, 0.5, 0.75, 1.0]
    assert lrs[-1] < 1.0  # plateau still reduces after warmup
    # the plateau watched every epoch, warmup ones included: the same reductions as without warmup
    plain = ol.preview_schedule("plateau", lr=1.0, epochs=6, steps_per_epoch=2, per_step=True,
                                metrics=metric, patience=1, factor=0.5)
    assert lrs[4:] == plain[4:]


def _lrs_resumed_at(split, build, epochs=8, steps_per_epoch=2):
    """The LR of every step of ``epochs`` epochs; at epoch ``split`` the schedule and optimizer are
    rebuilt and loaded from their state dicts, as a resume does (None: never)."""
    opt = _opt()
    s = build(opt)
    lrs = []
    for e in range(epochs):
        if e == split:
            state, opt2 = s.state_dict(), _opt()
            opt2.load_state_dict(opt.state_dict())
            s, opt = build(opt2), opt2
            s.load_state_dict(state)
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step_end()
        s.epoch_end()
    return lrs


def test_state_dict_round_trip_continues_identically():
    def build(opt):
        return ol.build_scheduler("cosine_restarts", opt, T_0=3, warmup_steps=2, steps_per_epoch=2)

    assert _lrs_resumed_at(5, build) == _lrs_resumed_at(None, build)


@pytest.mark.parametrize("bad,match", [
    ("cosinus", r"unknown scheduler 'cosinus' \(did you mean 'cosine'\?\); choose one of: constant, cosine"),
    ({"name": "step", "epochs": None}, "needs step_size"),
    ({"name": "step", "step_size": 2, "gamm": 0.1}, "scheduler 'step'.*gamm"),
    ({"name": "plateau", "interval": "epoch"}, "steps on its monitored metric .* or on each optimizer step's loss "
                                                "\\(interval='step'\\); interval='epoch' does not apply"),
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


# --- warmup equals transformers' schedules, step by step --------------------------------------------
def _two_groups(lrs=(0.1, 0.02)):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    return torch.optim.SGD([{"params": [a], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}])


def _per_step(opt, step, total):
    """Every group's LR for each of ``total`` optimizer steps; ``step()`` is called after each."""
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        step()
    return out


def _ours_per_step(spec, epochs, spe, **kw):
    opt = _two_groups()
    s = ol.build_scheduler(spec, opt, epochs=epochs, steps_per_epoch=spe, interval="step", **kw)
    return _per_step(opt, s.step_end, epochs * spe)


def _assert_same_but_the_first_step(ours, theirs, warmup):
    assert len(ours) == len(theirs)
    assert theirs[0] == [0.0, 0.0] and ours[0] == pytest.approx([0.1 / warmup, 0.02 / warmup], rel=1e-12)
    for k in range(1, len(ours)):
        for a, b in zip(ours[k], theirs[k]):
            assert a == pytest.approx(b, rel=1e-7, abs=0), k


@pytest.mark.parametrize("warmup", [1, 7, 25])
def test_warmup_cosine_and_linear_equal_transformers_per_step(warmup):
    transformers = pytest.importorskip("transformers")
    epochs, spe = 10, 13
    total = epochs * spe
    for name, theirs_fn in [("cosine", transformers.get_cosine_schedule_with_warmup),
                            ("linear", transformers.get_linear_schedule_with_warmup)]:
        opt = _two_groups()
        ref = theirs_fn(opt, num_warmup_steps=warmup, num_training_steps=total)
        theirs = _per_step(opt, ref.step, total)
        ours = _ours_per_step(name, epochs, spe, warmup_steps=warmup)
        _assert_same_but_the_first_step(ours, theirs, warmup)


def test_polynomial_to_an_end_lr_equals_transformers_per_step():
    transformers = pytest.importorskip("transformers")
    epochs, spe, warmup = 6, 10, 8
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = transformers.get_polynomial_decay_schedule_with_warmup(opt, warmup, epochs * spe, lr_end=1e-3, power=2.0)
    theirs = _per_step(opt, ref.step, epochs * spe)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    s = ol.build_scheduler("polynomial", opt, epochs=epochs, steps_per_epoch=spe, interval="step",
                           warmup_steps=warmup, power=2.0, eta_min=1e-3)
    ours = _per_step(opt, s.step_end, epochs * spe)
    assert ours[0] == [0.1 / warmup] and theirs[0] == [0.0]
    assert [x[0] for x in ours[1:]] == pytest.approx([x[0] for x in theirs[1:]], rel=1e-7)
    assert ours[-1][0] > 1e-3  # it decays to the end LR, not to 0


@pytest.mark.parametrize("decay", ["cosine", "linear", "1-sqrt"])
def test_wsd_equals_transformers_per_step(decay):
    transformers = pytest.importorskip("transformers")
    epochs, spe, warmup = 5, 20, 10
    total = epochs * spe
    decay_steps = round(0.2 * (total - warmup))  # the last 20% of the schedule after warmup
    opt = _two_groups()
    ref = transformers.get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=decay_steps,
                                        num_training_steps=total, decay_type=decay)
    theirs = _per_step(opt, ref.step, total)
    ours = _ours_per_step("wsd", epochs, spe, warmup_steps=warmup, decay=decay)
    _assert_same_but_the_first_step(ours, theirs, warmup)


def test_wsd_is_flat_then_decays_over_the_last_fraction_to_eta_min():
    lrs = ol.preview_schedule("wsd", lr=1.0, epochs=10, decay_fraction=0.3, decay="linear", eta_min=0.1)
    assert lrs[:7] == [1.0] * 7
    assert lrs[7:] == pytest.approx([1.0, 0.7, 0.4])
    with pytest.raises(ol.OptiloopError, match="scheduler 'wsd': decay must be one of: cosine, linear, 1-sqrt"):
        ol.build_scheduler("wsd", _opt(), epochs=4, decay="sqrt")


def test_polynomial_without_an_end_lr_is_torchs_own_class():
    s = ol.build_scheduler("polynomial", _opt(), epochs=10, power=2.0)
    assert type(s.scheduler).__name__ == "PolynomialLR"
    with pytest.raises(ol.OptiloopError, match="eta_min .* must not exceed the LR"):
        ol.build_scheduler("polynomial", _opt(0.1), epochs=10, eta_min=0.5)


def test_cyclic_is_torchs_cycliclr_per_step_peaking_at_the_set_lr():
    opt = _opt()
    s = ol.build_scheduler("cyclic", opt, epochs=4, steps_per_epoch=10)
    assert s.interval == "step" and s.derived == {"step_size_up": 5}
    ref_opt = _opt()
    ref = tls.CyclicLR(ref_opt, base_lr=0.01, max_lr=0.1, step_size_up=5)
    ours = _per_step(opt, s.step_end, 40)
    assert ours == _per_step(ref_opt, ref.step, 40)
    assert max(g for [g] in ours) == 0.1 and min(g for [g] in ours) == pytest.approx(0.01)  # peak: the set LR
    with pytest.raises(ol.OptiloopError, match="scheduler 'cyclic' steps per step"):
        ol.build_scheduler("cyclic", _opt(), epochs=4, steps_per_epoch=10, interval="epoch")


def test_a_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(ol.OptiloopError, match="warmup \\(20 steps\\) leaves no epochs"):
        ol.build_scheduler("cosine", _opt(), epochs=2, steps_per_epoch=10, warmup_epochs=2)
    # nothing to shorten: constant LR after a warmup of the whole run is fine
    assert ol.preview_schedule("constant", lr=1.0, epochs=2, warmup_epochs=2) == [0.5, 0.5]


def test_derived_lengths_are_what_runs_after_the_warmup():
    s = ol.build_scheduler("cosine", _opt(), epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert s.derived == {"T_max": 8} and s.recorded == {}
    s = ol.build_scheduler("step", _opt(), epochs=10, steps_per_epoch=5, interval="step", warmup_steps=5)
    assert s.recorded == {"step_size": 15}  # a third of the 45 steps after warmup


# --- the plateau's mode follows its monitor (issue 12, bug 1) -------------------------------------
def test_plateau_mode_follows_the_monitor():
    assert ol.build_scheduler({"name": "plateau", "monitor": "val_acc"}, _opt()).scheduler.mode == "max"
    assert ol.build_scheduler({"name": "plateau", "monitor": "val_top1_error"}, _opt()).scheduler.mode == "min"
    assert ol.build_scheduler("plateau", _opt()).scheduler.mode == "min"  # val_loss
    # the user's own mode wins; a name of no known direction needs one
    assert ol.build_scheduler("plateau", _opt(), monitor="val_acc", mode="min").scheduler.mode == "min"
    with pytest.raises(ol.OptiloopError, match="scheduler 'plateau': cannot tell whether 'val_custom' improves up "
                                               "or down; pass mode='min' or mode='max'"):
        ol.build_scheduler("plateau", _opt(), monitor="val_custom")
    assert ol.build_scheduler("plateau", _opt(), monitor="val_custom", mode="max").scheduler.mode == "max"


def test_plateau_on_accuracy_cuts_the_lr_only_when_accuracy_stalls():
    acc = [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9]
    lrs = ol.preview_schedule({"name": "plateau", "monitor": "val_acc", "patience": 1}, lr=1.0, epochs=8,
                              metrics=acc)
    assert lrs[:7] == [1.0] * 7 and lrs[7] == 0.1  # rising accuracy never cut it


def test_a_built_plateau_whose_mode_contradicts_the_monitor_is_refused():
    opt = _opt()
    with pytest.raises(ol.OptiloopError, match=r"ReduceLROnPlateau\(mode='min'\) would cut the LR while val_acc "
                                               r"improves; build it with mode='max'"):
        ol.build_scheduler(tls.ReduceLROnPlateau(opt), opt, monitor="val_acc")
    assert ol.build_scheduler(tls.ReduceLROnPlateau(opt, mode="max"), opt, monitor="val_acc").interval == "metric"


# --- a per-step scheduler stepped per epoch (issue 12, bug 7) --------------------------------------
@pytest.mark.parametrize("make", [lambda o: tls.OneCycleLR(o, max_lr=0.1, total_steps=10),
                                  lambda o: tls.CyclicLR(o, base_lr=0.01, max_lr=0.1)],
                         ids=["OneCycleLR", "CyclicLR"])
def test_a_built_onecycle_or_cyclic_stepped_per_epoch_warns(make):
    opt = _opt()
    with pytest.warns(UserWarning, match="is meant to be stepped after every optimizer step"):
        s = ol.build_scheduler(make(opt), opt, interval="epoch")
    assert s.interval == "epoch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ol.build_scheduler(make(_o := _opt()), _o).interval == "step"  # inferred: no warning


# --- frequency (Lightning's scheduler config) ------------------------------------------------------
def test_frequency_steps_every_n_epochs_and_derives_lengths_in_its_own_steps():
    lrs = ol.preview_schedule("step", lr=1.0, epochs=6, step_size=1, gamma=0.5, frequency=2)
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    s = ol.build_scheduler({"name": "cosine", "frequency": 2}, _opt(), epochs=10)
    assert s.derived == {"T_max": 5} and s.frequency == 2


def test_frequency_per_step_matches_torch_stepped_every_n_steps():
    opt = _opt()
    s = ol.build_scheduler("onecycle", opt, epochs=2, steps_per_epoch=6, frequency=3)
    assert s.derived == {"total_steps": 4}
    ref_opt = _opt()
    ref = tls.OneCycleLR(ref_opt, max_lr=0.1, total_steps=4)
    calls = [0]

    def every_third():
        calls[0] += 1
        if calls[0] % 3 == 0 and calls[0] < 12:
            ref.step()

    assert _per_step(opt, s.step_end, 12) == _per_step(ref_opt, every_third, 12)


def test_frequency_and_warmup_survive_a_state_dict_round_trip():
    spec = {"name": "step", "step_size": 1, "gamma": 0.5, "frequency": 2, "warmup_steps": 3}

    def build(opt):
        return ol.build_scheduler(spec, opt, epochs=8, steps_per_epoch=2)

    assert _lrs_resumed_at(3, build) == _lrs_resumed_at(None, build)


# --- argument values: one line naming the argument and its range (issue 13's catalogue) ----------
@pytest.mark.parametrize("spec,needle", [
    ({"name": "step", "step_size": 0}, "step_size must be an integer >= 1 (got 0)"),
    ({"name": "step", "step_size": True}, "step_size must be an integer >= 1 (got True)"),
    ({"name": "step", "step_size": 2.5}, "step_size must be an integer >= 1 (got 2.5)"),
    ({"name": "cosine", "T_max": 0}, "T_max must be an integer >= 1 (got 0)"),
    ({"name": "cosine", "T_max": ""}, "T_max must be an integer >= 1 (got '')"),
    ({"name": "cosine", "eta_min": -0.1}, "eta_min must be a finite number >= 0 (got -0.1)"),
    ({"name": "exponential", "gamma": float("nan")}, "gamma must be a finite number > 0 (got nan)"),
    ({"name": "step", "gamma": float("inf")}, "gamma must be a finite number > 0 (got inf)"),
    ({"name": "polynomial", "power": float("nan")}, "power must be a finite number >= 0 (got nan)"),
    ({"name": "multistep", "milestones": "x"}, "milestones must be a strictly increasing list of integers >= 1"),
    ({"name": "multistep", "milestones": [6, 3]}, "milestones must be a strictly increasing list"),
    ({"name": "multistep", "milestones": [2.5]}, "milestones must be a strictly increasing list"),
    ({"name": "plateau", "factor": 1.5}, "factor must be a finite number in (0, 1) (got 1.5)"),
    ({"name": "plateau", "patience": -1}, "patience must be an integer >= 0 (got -1)"),
    ({"name": "onecycle", "max_lr": 0}, "max_lr must be a finite number > 0 (or a list, one per param group)"),
    ({"name": "onecycle", "three_phase": 1}, "three_phase must be true or false (got 1)"),
    ({"name": "cosine", "frequency": 0}, "frequency must be an integer >= 1 (got 0)"),
    ({"name": "cosine", "warmup_steps": True}, "warmup_steps must be an integer >= 0 (got True)"),
    ({"name": "wsd", "decay_fraction": 0}, "decay_fraction must be a finite number in (0, 1] (got 0)"),
])
def test_bad_argument_values_are_one_line_naming_the_argument_and_range(spec, needle):
    opt = _opt()
    before = opt.param_groups[0].copy()
    with pytest.raises(ol.OptiloopError) as e:
        ol.build_scheduler(spec, opt, epochs=6, steps_per_epoch=2)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"scheduler {spec['name']!r}: ") and needle in msg, msg
    assert opt.param_groups[0] == before  # nothing was built: no initial_lr written into the group
