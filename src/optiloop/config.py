"""The run config of ``optiloop train``: defaults <- TOML file <- ``--set`` <- flags, validated.

Sections: ``[data]``, ``[model]``, ``[optimizer]``, ``[scheduler]``, ``[train]``. ``data`` and
``train`` are closed (an unknown key is an error). ``model``, ``optimizer`` and ``scheduler`` take
a ``name`` plus the keys of what they name, passed through unchanged (``momentum``, ``betas``,
``step_size``, ``T_max``, ``warmup_epochs``, ``hidden`` ...): the builders check those and name the
keys they accept.

When a layer changes a section's ``name`` (``--optimizer sgd``), that section starts from the
name alone instead of the defaults written for the default name: nothing set for AdamW silently
carries over to SGD. Every optimizer section then starts from that name's command-line defaults,
the one table in ``optiloop.optim.OPTIMIZERS`` (sgd: ``lr = 0.1``, ``momentum = 0.9``), so
``train``, ``compare`` and ``lr-find`` use the same values and config.toml records them.

Run length: ``train.early_stopping`` (patience, default 5) comes with the default run length
only. A user who sets ``train.epochs`` (``--epochs``, ``--set``, or a config file) and no
``early_stopping`` gets every epoch asked for; setting both keeps both.

Every failure is an :class:`OptiloopError` with one line that starts with the key path, e.g.
``optimizer.lr: must be > 0 (got -1)``.

Example:
    >>> from optiloop.config import resolve
    >>> cfg = resolve(sets=["optimizer.lr=0.01", "model.hidden=[64, 32]"])
    >>> cfg["optimizer"]["lr"], cfg["model"]["hidden"], cfg["train"]["epochs"]
    (0.01, [64, 32], 30)
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import OptiloopError, choices, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = ("data", "model", "optimizer", "scheduler", "train")
# Sections another command reads from the same file (a run's config stays strict about them).
OTHER_SECTIONS = {"tune": "the search settings of optiloop tune, not a run setting"}

# The default run: a real data set, seconds on a CPU, >95% validation accuracy on digits.
DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"name": "digits", "val_fraction": 0.2, "seed": 0},
    "model": {"name": "mlp", "hidden": [128], "dropout": 0.0},
    "optimizer": {"name": "adamw"},  # + OPTIMIZERS["adamw"].defaults (lr 1e-3, weight_decay 0.01)
    "scheduler": {"name": "cosine"},
    "train": {"epochs": 30, "batch_size": 64, "early_stopping": 5, "monitor": "val_loss",
              "seed": 0, "device": "auto"},
}
# Sections whose keys depend on their name: the defaults above hold for the default name only.
NAMED = ("model", "optimizer", "scheduler")


# --- schema ---------------------------------------------------------------------------------------
SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit
EPOCHS_MAX = 1_000_000  # a bound for typos (1e21 epochs would never end)


def _finite(value: Any, path: str) -> None:
    """No NaN or infinity anywhere: no setting of a run means them (a NaN momentum trains NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: must be a finite number (got {value!r})")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _finite(v, path)


# What a resume (``optiloop train --resume``) may change, declared on each key below: "free" (how
# the run is carried out: applied and recorded), "forced" (what each step computes: only with
# force_resume), "fixed" (what the saved state is: a new run). A key says so itself, or its
# section's ``resume`` does.
FREE, FORCED, FIXED = "free", "forced", "fixed"


def _resume(policy: str) -> dict[str, Any]:
    return {"json_schema_extra": {"resume": policy}}


class _Closed(BaseModel):
    # strict: no "5" -> 5 or 3.7 -> 3 coercion; a TOML int is still accepted where a float goes.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class DataConfig(_Closed):
    resume: ClassVar[str] = FORCED  # other data: only with force_resume
    name: str  # a built-in data set, a .csv / .npz path, or package.module:function
    target: str | None = None
    task: Literal["auto", "classification", "regression"] = "auto"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    standardize: bool = True
    # A table as it comes (optiloop.tables): which columns, and what to do with empty cells, dates
    # and text. They change what the model sees: like the other data keys, a resume takes them
    # only with force_resume.
    drop: list[str] = Field(default_factory=list, description="columns to leave out", **_resume(FORCED))
    features: list[str] | None = Field(None, description="the columns to use, in this order (default: all but "
                                       "the target, IDs and data.drop)", **_resume(FORCED))
    impute: bool = Field(True, description="fill empty cells with the train split's median (numbers, dates) or "
                         "most frequent value (categories); false refuses them", **_resume(FORCED))
    max_categories: int = Field(50, ge=2, le=100_000, description="most levels a text column may have for one-hot "
                                "encoding; more is refused", **_resume(FORCED))
    dates: Literal["expand", "drop"] = Field("expand", description="date columns: year, month, day and weekday, "
                                             "or left out", **_resume(FORCED))


class ModelConfig(_Open):
    resume: ClassVar[str] = FIXED
    name: str


class OptimizerConfig(_Open):
    resume: ClassVar[str] = FIXED
    name: str
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .optim import OPTIMIZERS  # the registry module: kept out of config's import

        if v.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}{did_you_mean(v, OPTIMIZERS)}; choose one of: "
                             f"{choices(OPTIMIZERS)}")
        return v.lower()


class SchedulerConfig(_Open):
    resume: ClassVar[str] = FIXED
    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from .schedules import SCHEDULERS  # torch: a config of known names needs no scheduler

        if v.lower() not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}{did_you_mean(v, SCHEDULERS)}; choose one of: "
                             f"{choices(SCHEDULERS)}")
        return v.lower()


class TrainConfig(_Closed):
    resume: ClassVar[str] = FIXED  # monitor, seed, loss, metrics: they define the saved state
    epochs: int = Field(30, ge=1, le=EPOCHS_MAX, **_resume(FORCED))
    batch_size: int = Field(64, ge=1, le=2**31 - 1, **_resume(FORCED))
    early_stopping: int = Field(5, ge=0, description="patience in epochs; 0 turns it off", **_resume(FORCED))
    monitor: str = "val_loss"
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = Field("auto", **_resume(FREE))
    loss: str | None = None  # None: cross_entropy for classes, mse for regression
    metrics: list[str] | None = None  # None: ["accuracy"] for classes, ["mae"] for regression
    grad_accum: int = Field(1, ge=1, le=2**31 - 1, **_resume(FORCED))
    clip_grad_norm: float | None = Field(None, gt=0, **_resume(FORCED))
    amp: Literal["bf16", "fp16"] | None = Field(None, **_resume(FORCED))
    checkpoint_every: int | None = Field(None, ge=1, description="also write last.pt every N optimizer "
                                         "steps: a crash then costs at most N steps", **_resume(FREE))
    checkpoint_seconds: float = Field(60.0, ge=0, description="write last.pt at an epoch's end once this "
                                      "many seconds passed since the last save (and at the end); "
                                      "0 = every epoch", **_resume(FREE))
    nonfinite: Literal["stop", "skip", "ignore"] = Field("stop", **_resume(FREE))
    # None: "auto" (ddp under torchrun with several processes, else none); fsdp shards the model
    strategy: Literal["auto", "none", "ddp", "fsdp"] | None = Field(None, **_resume(FORCED))
    tensorboard: bool = Field(False, description="also write TensorBoard event files into the run folder",
                              **_resume(FREE))
    grad_norm: bool = Field(False, description="record the gradient norm per step (free with clip_grad_norm; "
                            "otherwise a few kernels per step)", **_resume(FREE))
    mlflow: bool | str = Field(False, description="log the run to MLflow: true (MLflow's default store) or a "
                               "tracking URI (sqlite:///mlflow.db, http://host:5000)", **_resume(FREE))

    @field_validator("mlflow", mode="before")
    @classmethod
    def _tracking_uri(cls, v: Any) -> Any:
        if not isinstance(v, (bool, str)) or (isinstance(v, str) and not v.strip()):
            raise ValueError(f"must be true, false or a tracking URI such as sqlite:///mlflow.db (got {v!r})")
        return v
    # Weight averaging (optiloop.averaging): the average is part of the saved state, so changing
    # it on a resume is forced: the average so far was made with the old setting.
    ema: float | None = Field(None, ge=0, lt=1, description="keep an exponential moving average of the "
                              "weights with this decay (ol.EMA); validation, best.pt, predict and export "
                              "use it", **_resume(FORCED))
    swa: int | None = Field(None, ge=1, description="stochastic weight averaging from this epoch on (ol.SWA): "
                            "SWALR takes over the LR; validation, best.pt, predict and export use the "
                            "average", **_resume(FORCED))
    swa_lr: float | None = Field(None, gt=0, description="the LR SWA anneals to (default: the LR reached at "
                                 "its start)", **_resume(FORCED))

    @model_validator(mode="after")
    def _one_average(self) -> TrainConfig:
        if self.ema is not None and self.swa is not None:
            raise ValueError("ema and swa both average the weights; set one of them")
        if self.swa_lr is not None and self.swa is None:
            raise ValueError("swa_lr goes with swa (the epoch SWA starts)")
        if self.swa is not None and self.swa > self.epochs:
            raise ValueError(f"swa = {self.swa} never starts in a run of {self.epochs} epochs; choose "
                             f"swa <= {self.epochs}")
        return self


class RunConfig(_Closed):
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    train: TrainConfig

    @model_validator(mode="before")
    @classmethod
    def _no_nan_or_infinity(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping):
            for section, values in raw.items():
                _finite(values, str(section))  # pass-through keys too (momentum, betas ...)
        return raw


def resume_policy(key: str) -> str:
    """What a resume may do to ``section.key``: FREE, FORCED or FIXED (declared on the key, else
    on its section; a section of its own name's keys, like ``optimizer.momentum``, is its section's).

    Example:
        >>> resume_policy("train.device"), resume_policy("train.epochs"), resume_policy("optimizer.lr")
        ('free', 'forced', 'fixed')
    """
    section, _, name = key.partition(".")
    field = RunConfig.model_fields.get(section)
    if field is None:
        return FIXED
    model = field.annotation
    own = model.model_fields.get(name)
    extra = own.json_schema_extra if own is not None and isinstance(own.json_schema_extra, dict) else {}
    return extra.get("resume", model.resume)


class TuneSection(_Closed):
    """``[tune]``: what ``optiloop tune`` searches and how (its flags override these). Not a run
    setting: a run's own config never holds it, and ``optiloop train`` refuses it."""

    space: dict[str, Any] | None = None  # "section.key" = {low, high, log, step} or [choices]; checked by tuning
    trials: int | None = Field(None, ge=1, le=EPOCHS_MAX)
    timeout: float | None = Field(None, gt=0)
    monitor: str | None = None
    pruner: Literal["median", "halving", "hyperband", "none"] | None = None
    sampler: Literal["tpe", "random", "grid"] | None = None
    storage: str | None = None
    study: str | None = None
    jobs: int | None = Field(None, ge=1, le=1024)


def validate_tune(raw: Any) -> dict[str, Any]:
    """Validate a ``[tune]`` table; return it as plain data (unset keys dropped)."""
    if not isinstance(raw, Mapping):
        raise OptiloopError("tune: must be a table of keys, e.g. [tune] in TOML")
    try:
        section = TuneSection.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise OptiloopError(_one_line({**err, "loc": ("tune", *err["loc"])})) from None
    return _drop_none(section.model_dump())


# --- one-line errors ------------------------------------------------------------------------------
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_TYPES = {"int": "an integer", "float": "a number", "string": "a string", "bool": "true or false",
          "list": "a list", "dict": "a table", "model": "a table"}


def _fields(loc: tuple) -> list[str]:
    """The valid keys at ``loc`` (a section or the top level)."""
    if len(loc) <= 1:
        return list(SECTIONS)
    if loc[0] == "tune":
        return list(TuneSection.model_fields)
    return list(RunConfig.model_fields[loc[0]].annotation.model_fields)


def _one_line(err: Mapping[str, Any]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    path = ".".join(loc)
    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        if len(loc) == 1:
            hint = f" ({OTHER_SECTIONS[path]})" if path in OTHER_SECTIONS else did_you_mean(path, SECTIONS)
            return f"unknown section [{path}]{hint}; valid sections: {', '.join(SECTIONS)}"
        return f"{path}: unknown key{did_you_mean(loc[-1], _fields(loc))}; valid keys: {', '.join(_fields(loc))}"
    if kind == "missing":
        return f"{path}: missing"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        bound = err["ctx"][key]
        shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
        return f"{path}: must be {op} {shown} (got {got!r})"
    if kind == "literal_error":
        return f"{path}: must be one of: {err['ctx']['expected']} (got {got!r})"
    if kind == "value_error":
        return f"{path + ': ' if path else ''}{err['ctx']['error']}"
    if kind == "finite_number":
        return f"{path}: must be a finite number (got {got!r})"
    base = kind.split("_")[0]
    if kind.endswith("_type") and base in _TYPES:
        return f"{path}: must be {_TYPES[base]} (got {got!r})"
    return f"{path}: {err['msg']} (got {got!r})"


def validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a merged config; return it as plain data (None values dropped for TOML)."""
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        # One line: the first problem. Union types (``float | None``) report one error per
        # member; the first member's is the meaningful one.
        raise OptiloopError(_one_line(errs[0])) from None
    return _drop_none(cfg.model_dump())


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


# --- layers ---------------------------------------------------------------------------------------
def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file; unreadable or malformed TOML is a one-line error."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise OptiloopError(f"--config: no file at {path}") from None
    except IsADirectoryError:
        raise OptiloopError(f"--config {path}: is a folder; give the TOML file (e.g. {path}/config.toml)") from None
    except PermissionError:
        raise OptiloopError(f"--config {path}: not readable (permission denied)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise OptiloopError(f"--config {path}: not valid TOML ({str(e).splitlines()[0]})") from None


def parse_value(text: str) -> Any:
    """A TOML scalar or array (``0.1``, ``true``, ``[128, 64]``, ``"x"``); else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # unquoted words: --set data.name=wine


def parse_set(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` -> (section, key, parsed value)."""
    key, eq, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not eq or not dot or not name:
        raise OptiloopError(f"--set {item!r}: use section.key=value, e.g. optimizer.lr=0.01 "
                            f"(sections: {', '.join(SECTIONS)})")
    return section, name.strip(), parse_value(value.strip())


def merge(base: Mapping[str, Any], layer: Mapping[str, Any], *, renames: bool = True
          ) -> dict[str, Any]:
    """``layer`` over ``base``, section by section. With ``renames``, a new ``name`` in a NAMED
    section drops ``base``'s other keys of that section (see the module docstring)."""
    out = copy.deepcopy(dict(base))
    for section, values in layer.items():
        if not isinstance(values, Mapping):
            if section not in SECTIONS:
                raise OptiloopError(f"unknown section [{section}]{did_you_mean(section, SECTIONS)}; valid sections: "
                                    f"{', '.join(SECTIONS)}")
            raise OptiloopError(f"{section}: must be a table of keys, e.g. [{section}] in TOML")
        current = dict(out.get(section, {}))
        new_name = values.get("name")
        if renames and section in NAMED and new_name is not None \
                and new_name != current.get("name"):
            current = {}
        current.update(copy.deepcopy(dict(values)))
        out[section] = current
    return out


def resolve(config_file: str | Path | Mapping[str, Any] | None = None, sets: Iterable[str] = (),
            flags: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Defaults <- ``config_file`` <- ``--set`` items <- flags; validated, as plain data.

    Everything the user gave is kept, whatever its layer; only the built-in defaults of a
    section whose ``name`` the user changed are dropped.

    Args:
        config_file: a TOML file with any of the five sections, or its sections already read.
        sets: ``section.key=value`` strings (value parsed as TOML).
        flags: ``{section: {key: value}}`` from named command-line flags (None values skipped).
    """
    user: dict[str, Any] = {}
    if config_file is not None:
        raw = config_file if isinstance(config_file, Mapping) else read_toml(config_file)
        user = merge(user, raw, renames=False)
    layer: dict[str, dict[str, Any]] = {}
    for item in sets:
        section, key, value = parse_set(item)
        layer.setdefault(section, {})[key] = value
    user = merge(user, layer, renames=False)
    if flags:
        user = merge(user, {s: {k: v for k, v in kv.items() if v is not None}
                            for s, kv in flags.items() if any(v is not None for v in kv.values())},
                     renames=False)
    train = user.get("train", {})
    if "epochs" in train and "early_stopping" not in train:  # a length asked for is run in full
        user = merge(user, {"train": {"early_stopping": 0}}, renames=False)
    defaults = DEFAULTS
    if _schedule_free(user) and "name" not in user.get("scheduler", {}):
        # a schedule-free optimizer replaces the LR schedule: the default one would be refused
        defaults = merge(DEFAULTS, {"scheduler": {"name": "constant"}})
    cfg = validate(merge(defaults, user))
    return with_optimizer_defaults(cfg)


def _schedule_free(user: Mapping[str, Any]) -> bool:
    from .optim import OPTIMIZERS  # (as above)

    name = user.get("optimizer", {}).get("name")
    return isinstance(name, str) and name.lower() in OPTIMIZERS and OPTIMIZERS[name.lower()].schedule_free


def with_optimizer_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """The optimizer section over its name's command-line defaults (``OPTIMIZERS[name].defaults``).

    Example:
        >>> with_optimizer_defaults({"optimizer": {"name": "sgd", "lr": 0.05}})["optimizer"]
        {'name': 'sgd', 'lr': 0.05, 'momentum': 0.9}
    """
    from .optim import OPTIMIZERS  # (as above)

    o = cfg["optimizer"]
    return {**cfg, "optimizer": {"name": o["name"], **OPTIMIZERS[o["name"]].defaults, **extras(o)}}


def extras(section: Mapping[str, Any], *known: str) -> dict[str, Any]:
    """A section's pass-through keys: everything but ``name`` and ``known``."""
    return {k: v for k, v in section.items() if k != "name" and k not in known}
