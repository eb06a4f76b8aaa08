"""What a search tries: a space of config settings, sampled by an Optuna trial into config overrides.

A :class:`Space` is a list of :class:`Dimension` s, each one config key (``"optimizer.lr"``,
``"scheduler.name"``, ``"train.batch_size"``) with a range (``low``, ``high``, ``log``, ``step``)
or a list of choices. Sampling is define-by-run, Optuna's own convention: the names come first
(``optimizer.name``, ``scheduler.name``, ``model.name``), then every other key, and a key of a
named section is sampled only in the trials whose chosen name takes it (``optimizer.momentum``
for sgd and rmsprop, not for adam). ``optimizer.lr_scale`` is the LR as a multiple of each
optimizer's own default LR (sgd 0.1, adam 1e-3 ...): one parameter that means "around the
default" for every optimizer, so the importance plot can rank it.

Written in TOML as ``[tune.space]`` (or passed to ``ol.tune(space=...)`` as a dict)::

    [tune.space]
    "optimizer.name" = ["sgd", "adamw"]
    "optimizer.lr" = {low = 1e-4, high = 0.3, log = true}
    "scheduler.name" = ["cosine", "onecycle"]
    "model.hidden" = [[64], [128], [128, 64]]     # a list choice is one value

Example:
    >>> space = parse_space({"optimizer.lr": {"low": 1e-4, "high": 0.3, "log": True}},
    ...                     {"optimizer": {"name": "sgd"}, "scheduler": {"name": "cosine"}})
    >>> space.describe()
    ['optimizer.lr 0.0001..0.3 (log)']
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OptiloopError, choices
from ..formatting import fmt

if TYPE_CHECKING:
    import optuna

    from ..runs import Task

WHERE = "tune.space"
SECTIONS = ("optimizer", "scheduler", "model", "train")
# train settings worth searching; the rest say how a run is carried out, or fix its budget (epochs)
TRAIN_KEYS = ("batch_size", "grad_accum", "clip_grad_norm")
NAME_KEYS = ("optimizer.name", "scheduler.name", "model.name")  # sampled first: other keys depend on them
LR_SCALE = "optimizer.lr_scale"
RANGE_FIELDS = ("low", "high", "log", "step")
# Generic keys every scheduler takes (build_scheduler pops them before the torch class sees them).
SCHEDULER_KEYS = ("interval", "frequency", "warmup_epochs", "warmup_steps", "monitor")

# The default space (``ol.tune`` without a space): compare's five optimizers, the LR a decade either
# side of each one's default, and the settings that go with them.
DEFAULT_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
DEFAULT_SCHEDULERS = ("cosine", "onecycle", "wsd", "constant")
DEFAULT_BATCH_SIZES = (32, 64, 128)
DEFAULT_BETAS = ([0.9, 0.999], [0.9, 0.99], [0.95, 0.999])


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a range (``low``..``high``, maybe ``log`` or ``step``) or ``choices``.

    A range of two integers (and an integer ``step``) samples integers. A choice may be any TOML
    value; lists are handed to Optuna as their JSON text (its categorical values are scalars).
    """

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high, self.step) if v is not None)

    def encoded(self) -> list[Any]:
        """The choices as Optuna stores them: scalars as they are, lists as JSON text."""
        return [_encode(c) for c in self.choices or ()]

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Sample this key in ``trial`` (the parameter is named by the key)."""
        if self.choices is not None:
            picked = trial.suggest_categorical(self.key, self.encoded())
            return self.choices[self.encoded().index(picked)]
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """The values checked before the search starts: both ends of a range, every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def grid(self) -> list[Any]:
        """Every value, for the grid sampler (Optuna's encoding); a continuous range has none."""
        if self.choices is not None:
            return self.encoded()
        if self.integer and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None and not self.log:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [self.low + i * self.step for i in range(n + 1)]
        raise OptiloopError(f"sampler 'grid': {self.key!r} is a continuous range; give it as a list of values "
                            f"(e.g. \"{self.key}\" = [{self.low:g}, {self.high:g}]) or with a step")

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} [{', '.join(fmt(c, 6) for c in self.choices)}]"
        extra = [x for x in ("log" if self.log else "", f"step {self.step:g}" if self.step else "") if x]
        return f"{self.key} {self.low:g}..{self.high:g}" + (f" ({', '.join(extra)})" if extra else "")

    def to_plain(self) -> Any:
        """As written in TOML: a list of choices, or a table with low, high (log, step)."""
        if self.choices is not None:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


@dataclass(frozen=True)
class Space:
    """A search space: sample it with a trial into config overrides ``{section: {key: value}}``.

    Attributes:
        dimensions: the searched keys.
        default: whether this is the built-in default space (reports say so).
    """

    dimensions: tuple[Dimension, ...]
    default: bool = False

    def __call__(self, trial: optuna.trial.BaseTrial, base: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The overrides this trial tries on top of ``base`` (a resolved config)."""
        names = {s: base[s]["name"] for s in ("optimizer", "scheduler", "model")}
        out: dict[str, dict[str, Any]] = {}
        ordered = sorted(self.dimensions, key=lambda d: d.key not in NAME_KEYS)  # stable: names first
        for d in ordered:
            if d.key in NAME_KEYS:
                names[d.section] = d.suggest(trial)
                out.setdefault(d.section, {})["name"] = names[d.section]
            elif d.section == "train" or d.key == LR_SCALE or takes(d.section, names[d.section], d.name):
                value = d.suggest(trial)
                if d.key == LR_SCALE:
                    from ..grid import default_lr

                    out.setdefault("optimizer", {})["lr"] = default_lr(names["optimizer"]) * value
                else:
                    out.setdefault(d.section, {})[d.name] = value
        return out

    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def describe(self) -> list[str]:
        return [d.describe() for d in self.dimensions]

    def to_plain(self) -> dict[str, Any]:
        """As a ``[tune.space]`` table: what a study records to recognise its space."""
        return {d.key: d.to_plain() for d in self.dimensions}

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (every dimension must be discrete)."""
        return {d.key: d.grid() for d in self.dimensions}


# --- which keys a named optimizer / scheduler / model takes ----------------------------------------------
def takes(section: str, name: str, key: str) -> bool:
    """Whether the ``section`` named ``name`` takes ``key`` (sgd takes momentum, adam does not)."""
    return key in accepted_keys(section, name)


@functools.cache
def accepted_keys(section: str, name: str) -> frozenset[str]:
    """The keys the ``section`` named ``name`` takes; a user's ``package.module:function`` model
    takes whatever it declares (``*``: any)."""
    return frozenset(_accepted(section, name))


def _accepted(section: str, name: str) -> set[str]:
    import inspect

    if section == "optimizer":
        from ..optim import OWN_KEYS, lookup, optimizer_defaults

        info = lookup(name)
        return set(optimizer_defaults(name)) | set(info.defaults) | set(OWN_KEYS)
    if section == "scheduler":
        return _scheduler_keys(name)
    if section == "model":
        from ..models import MODELS, model_options

        if name in MODELS:
            return set(model_options(name))
        from ..datasets import import_function, is_user_function

        if is_user_function(name):
            params = inspect.signature(import_function(name, "model")).parameters
            if any(p.kind is p.VAR_KEYWORD for p in params.values()):
                return {"*"}
            return {k for k in params if k not in ("in_features", "out_features")}
        return set()
    return set()


def _scheduler_keys(name: str) -> set[str]:
    """The generic keys, the builder's own (wsd's decay_fraction ...) and those of the torch class it
    builds, found by building it once on a throwaway optimizer."""
    import inspect

    import torch

    from ..schedules import build_scheduler, lookup

    info = lookup(name)
    keys = set(SCHEDULER_KEYS)
    if info.make is None:
        return keys
    keys |= {k for k, p in inspect.signature(info.make).parameters.items()
             if k != "optimizer" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    built = build_scheduler(name, opt, epochs=8, steps_per_epoch=4).scheduler
    keys |= {k for k in inspect.signature(type(built).__init__).parameters
             if k not in ("self", "optimizer", "lr_lambda", "last_epoch", "verbose")}
    return keys


# --- parsing a [tune.space] table ------------------------------------------------------------------------
def parse_space(raw: Mapping[str, Any], base: Mapping[str, Any], *, where: str = WHERE) -> Space:
    """A checked :class:`Space` from a ``[tune.space]`` table; ``base`` (a resolved config) names the
    optimizer / scheduler / model a key is checked against when the space does not search the name.
    Every problem is one line that names the key (``where`` is put in front)."""
    if not isinstance(raw, Mapping):
        raise OptiloopError(f"{where}: must be a table of \"section.key\" = range or [choices]")
    if not raw:
        raise OptiloopError(f"{where}: empty; name at least one setting to search, e.g. "
                            "\"optimizer.lr\" = {low = 1e-4, high = 0.1, log = true}")
    dims = tuple(_dimension(str(k), v, where) for k, v in raw.items())
    if LR_SCALE in raw and "optimizer.lr" in raw:
        raise OptiloopError(f"{where}: 'optimizer.lr' and 'optimizer.lr_scale' both set the LR; keep one")
    space = Space(dims)
    _check_keys(space, base, where)
    return space


def _dimension(key: str, value: Any, where: str) -> Dimension:
    section, dot, name = key.partition(".")
    if not dot or not name or "." in name:
        raise OptiloopError(f"{where}: {key!r}: name a setting as \"section.key\", e.g. \"optimizer.lr\" "
                            f"(sections: {', '.join(SECTIONS)})")
    if section == "data":
        raise OptiloopError(f"{where}: {key!r}: data settings are not searched (every trial must be judged on "
                            f"the same validation split); searchable sections: {', '.join(SECTIONS)}")
    if section not in SECTIONS:
        raise OptiloopError(f"{where}: {key!r}: unknown section {section!r}; searchable sections: "
                            f"{', '.join(SECTIONS)}")
    if section == "train" and name not in TRAIN_KEYS:
        raise OptiloopError(f"{where}: {key!r}: not a searchable train setting; choose from: "
                            f"{', '.join(f'train.{k}' for k in TRAIN_KEYS)}")
    if isinstance(value, (list, tuple)):
        return _choices(key, list(value), where)
    if isinstance(value, Mapping):
        return _range(key, value, where)
    raise OptiloopError(f"{where}: {key!r}: give a range {{low = ..., high = ...}} or a list of choices "
                        f"[...] (got {value!r}); a fixed value goes in the config's own [{section}] section")


def _choices(key: str, values: list[Any], where: str) -> Dimension:
    if not values:
        raise OptiloopError(f"{where}: {key!r}: empty list of choices")
    for v in values:
        if v is None or (isinstance(v, float) and not math.isfinite(v)) or isinstance(v, dict):
            raise OptiloopError(f"{where}: {key!r}: {v!r} is not a value a setting can take")
    encoded = [_encode(v) for v in values]
    if len(set(map(json.dumps, encoded))) != len(encoded):
        raise OptiloopError(f"{where}: {key!r}: each choice once, please (got {fmt(values, 6)})")
    if key in NAME_KEYS:
        values = [str(v).lower() if key != "model.name" else v for v in values]
        known = _known_names(key)
        for v in values:
            if known is not None and v not in known and not (key == "model.name" and ":" in str(v)):
                raise OptiloopError(f"{where}: {key!r}: unknown {key.split('.')[0]} {v!r}; choose from: "
                                    f"{choices(known)}")
    return Dimension(key, choices=tuple(values))


def _known_names(key: str) -> Sequence[str] | None:
    if key == "optimizer.name":
        from ..optim import OPTIMIZERS

        return list(OPTIMIZERS)
    if key == "scheduler.name":
        from ..schedules import SCHEDULERS

        return list(SCHEDULERS)
    from ..models import MODELS

    return list(MODELS)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range(key: str, table: Mapping[str, Any], where: str) -> Dimension:
    unknown = [k for k in table if k not in RANGE_FIELDS]
    if unknown:
        raise OptiloopError(f"{where}: {key!r}: unknown field {unknown[0]!r}; a range takes: "
                            f"{', '.join(RANGE_FIELDS)}")
    if key in NAME_KEYS:
        raise OptiloopError(f"{where}: {key!r}: a name is chosen from a list, e.g. [\"sgd\", \"adamw\"]")
    for field_ in ("low", "high"):
        if field_ not in table:
            raise OptiloopError(f"{where}: {key!r}: a range needs low and high (missing {field_})")
        if not _number(table[field_]):
            raise OptiloopError(f"{where}: {key!r}: {field_} must be a finite number (got {table[field_]!r})")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise OptiloopError(f"{where}: {key!r}: log must be true or false (got {log!r})")
    if low == high:
        raise OptiloopError(f"{where}: {key!r}: empty range (low = high = {low:g}); for one value set it in "
                            "the config itself, else widen the range")
    if low > high:
        raise OptiloopError(f"{where}: {key!r}: inverted range (low {low:g} > high {high:g})")
    if log and low <= 0:
        raise OptiloopError(f"{where}: {key!r}: log = true needs low > 0 (got low = {low:g})")
    if step is not None:
        if not _number(step) or step <= 0:
            raise OptiloopError(f"{where}: {key!r}: step must be a number > 0 (got {step!r})")
        if log:
            raise OptiloopError(f"{where}: {key!r}: a log range takes no step (Optuna samples it continuously)")
        if step > high - low:
            raise OptiloopError(f"{where}: {key!r}: step {step:g} is larger than the range {low:g}..{high:g}")
    return Dimension(key, low=low, high=high, log=log, step=step)


def _check_keys(space: Space, base: Mapping[str, Any], where: str) -> None:
    """Every key of a named section is taken by at least one name the space can choose."""
    for d in space.dimensions:
        if d.key in NAME_KEYS or d.section == "train" or d.key == LR_SCALE:
            continue
        names = _candidates(space, base, d.section)
        if not any("*" in accepted_keys(d.section, n) or takes(d.section, n, d.name) for n in names):
            first = names[0]
            valid = sorted(accepted_keys(d.section, first) - {"*"})
            raise OptiloopError(f"{where}: {d.key!r}: no {d.section} searched takes {d.name!r} "
                                f"({', '.join(map(str, names))}); {first} takes: {', '.join(valid)}")


def _candidates(space: Space, base: Mapping[str, Any], section: str) -> list[str]:
    for d in space.dimensions:
        if d.key == f"{section}.name":
            return [str(c) for c in d.choices or ()]
    return [base[section]["name"]]


# --- the default space -----------------------------------------------------------------------------------
def default_space(epochs: int, fixed: Sequence[str] = ()) -> Space:
    """The space ``ol.tune`` searches when given none, for a run of ``epochs`` epochs: compare's five
    optimizers, the LR as a multiple (0.1 to 10) of each one's default, weight decay, momentum (sgd,
    rmsprop) or betas (adam, adamw), four schedules, warmup epochs (runs of 4 epochs or more) and the
    batch size. Keys in ``fixed`` (set on the command line) are left out.

    Example:
        >>> default_space(10).keys()[:3]
        ['optimizer.name', 'optimizer.lr_scale', 'optimizer.weight_decay']
    """
    dims = [
        Dimension("optimizer.name", choices=DEFAULT_OPTIMIZERS),
        Dimension(LR_SCALE, low=0.1, high=10.0, log=True),
        Dimension("optimizer.weight_decay", low=1e-6, high=0.1, log=True),
        Dimension("optimizer.momentum", low=0.0, high=0.95),
        Dimension("optimizer.betas", choices=DEFAULT_BETAS),
        Dimension("scheduler.name", choices=DEFAULT_SCHEDULERS),
    ]
    warmup = min(3, epochs // 4)
    if warmup >= 1:
        dims.append(Dimension("scheduler.warmup_epochs", low=0, high=warmup))
    dims.append(Dimension("train.batch_size", choices=DEFAULT_BATCH_SIZES))
    gone = set(fixed)
    if "optimizer.lr" in gone:
        gone.add(LR_SCALE)
    if "optimizer.name" in gone:  # one optimizer: its own keys only
        gone |= {"optimizer.momentum", "optimizer.betas"}
    return Space(tuple(d for d in dims if d.key not in gone), default=True)


# --- a trial's config ------------------------------------------------------------------------------------
def overrides_of(values: Mapping[str, Any], where: str = "space") -> dict[str, dict[str, Any]]:
    """A define-by-run space's return value as ``{section: {key: value}}``: it may be nested
    (``{"optimizer": {"lr": 0.01}}``) or flat (``{"optimizer.lr": 0.01}``)."""
    if not isinstance(values, Mapping):
        raise OptiloopError(f"{where} must return a dict of config overrides, e.g. {{\"optimizer.lr\": 0.01}}; "
                            f"got {type(values).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.setdefault(str(key), {}).update(value)
            continue
        section, dot, name = str(key).partition(".")
        if not dot:
            raise OptiloopError(f"{where} returned {key!r}; name settings as \"section.key\" or nest them")
        out.setdefault(section, {})[name] = value
    return out


def trial_config(base: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``base`` (a resolved config) with a trial's ``overrides``, validated as ``optiloop train``
    validates a config. A new optimizer / scheduler / model name starts that section afresh (nothing
    set for AdamW carries over to SGD), from the name's command-line defaults."""
    from ..config import merge, validate, with_optimizer_defaults

    return with_optimizer_defaults(validate(merge(base, overrides)))


def check_space(space: Space, base: Mapping[str, Any], task: Task, *, where: str = WHERE) -> None:
    """Before anything is written: each end of every range and every choice, one at a time on top of
    ``base``, gives a config that validates and builds (model, optimizer, scheduler) as a trial's
    will. One line names the key and value that fail."""
    from ..grid import default_lr

    for d in space.dimensions:
        for value in d.probes():
            layer: dict[str, dict[str, Any]] = {}
            if d.key == LR_SCALE:
                layer["optimizer"] = {"lr": default_lr(base["optimizer"]["name"]) * value}
            elif d.key in NAME_KEYS or d.section == "train":
                layer[d.section] = {d.name: value}
            else:
                name = next(n for n in [base[d.section]["name"], *_candidates(space, base, d.section)]
                            if "*" in accepted_keys(d.section, n) or takes(d.section, n, d.name))
                layer[d.section] = {"name": name, d.name: value}
            try:
                dry_build(trial_config(base, layer), task)
            except OptiloopError as e:
                raise OptiloopError(f"{where}: {d.key!r} = {fmt(value, 6)}: {e}") from None


def dry_build(cfg: Mapping[str, Any], task: Task) -> None:
    """Build the model, optimizer and scheduler of ``cfg`` as a run would (``TrainingRun`` does the
    same before its folder exists), on ``task``'s data shapes."""
    from ..config import extras
    from ..models import build_model
    from ..optim import build_optimizer
    from ..schedules import build_scheduler

    m, o, s, t = cfg["model"], cfg["optimizer"], cfg["scheduler"], cfg["train"]
    prep = task.preprocessing
    model = build_model(m["name"], len(prep.features), prep.out_features, **extras(m))
    opt = build_optimizer({"name": o["name"], **extras(o, "lr", "weight_decay")}, model, lr=o.get("lr"),
                          weight_decay=o.get("weight_decay"))
    steps = math.ceil(math.ceil(len(task.train_data[0]) / t["batch_size"]) / t.get("grad_accum", 1))
    build_scheduler({"name": s["name"], **extras(s)}, opt, epochs=t["epochs"], steps_per_epoch=steps)


SpaceLike = Space | Mapping[str, Any] | Callable[..., Any] | None
