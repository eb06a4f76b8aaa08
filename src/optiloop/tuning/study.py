"""Optuna underneath: storages by URL, opening a study, and N trials run by one or more processes.

Nothing here knows what a trial trains: :func:`optimize` runs any picklable objective on a study
that :class:`StudySpec` describes, so a tune search and a grid comparison share it.

Storages (``--storage``):
    ``sqlite:///PATH.db``               one file; the default is ``study.db`` in the tune folder.
    ``postgresql://USER:PASS@HOST/DB``  (or ``mysql://...``, any SQLAlchemy URL Optuna takes): many
                                        machines, one study. Needs the driver (``psycopg2-binary``).
    ``journal:PATH``                    Optuna's journal file (``JournalFileBackend``): an append-only
                                        log that processes on a shared file system (NFS) can share.

Trials that die: a trial whose process was killed (SIGKILL, a lost machine) stays RUNNING in the
storage. Each process marks such trials FAIL before it starts a trial: on its own machine at once
(the trial's process id is gone), on others through Optuna's heartbeat (RDB storages: no heartbeat
for ``HEARTBEAT_GRACE`` seconds).

Counting: ``trials=N`` is the study's total. Every process stops once the study holds N trials that
finished (complete or pruned) or are running in a live process, so several processes, or the same
command run again, add up to N: a resumed search continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OptiloopError

INSTALL_HINT = "pip install 'optiloop[tune]'"
PRUNERS = ("median", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")
HEARTBEAT_INTERVAL = 20  # seconds between a running trial's heartbeats (RDB storages)
HEARTBEAT_GRACE = 120  # a trial silent this long is failed by the next process that looks
SQLITE_BUSY_SECONDS = 60  # processes sharing one SQLite file wait this long for its lock
SCHEMA_TRIES = 5  # opening a new database that other processes are creating the tables of, at once
WORKER_ATTR = "optiloop_worker"  # trial user attribute: the host and process that run it
NOTE_ATTR = "note"  # trial user attribute: why it ended as it did, in words


def require_optuna() -> Any:
    """The optuna module, quiet (its per-trial log lines, failed-trial tracebacks included, and
    experimental-feature warnings off);
    without it, one line that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise OptiloopError(f"the search runs on Optuna, which is not installed: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress lines say what each trial did
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# --- storages ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Storage:
    """An Optuna storage by URL (see the module docstring); ``kind`` is sqlite, rdb or journal."""

    url: str
    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, text: str, what: str = "--storage") -> Storage:
        text = str(text).strip()
        if text.startswith("journal:"):
            path = text[len("journal:"):].removeprefix("//")
            if not path:
                raise OptiloopError(f"{what} {text!r}: name the journal file, e.g. journal:/shared/tune.log")
            return cls(f"journal:{path}", "journal", Path(path))
        if text.startswith("sqlite:///"):
            path = text[len("sqlite:///"):]
            if not path or path == ":memory:":
                raise OptiloopError(f"{what} {text!r}: name the database file, e.g. sqlite:///tune.db "
                                    "(an in-memory database cannot be shared or resumed)")
            return cls(text, "sqlite", Path(path))
        head, _, rest = text.partition("://")
        scheme = head.partition("+")[0].lower()
        if "://" in text and scheme in ("postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql"):
            if head.lower() in ("postgresql", "postgres"):
                # The driver the hint installs (psycopg2-binary): SQLAlchemy 2.1 reads a bare
                # postgresql:// as psycopg 3, which that does not install.
                text = f"postgresql+psycopg2://{rest}"
            return cls(text, "rdb")
        raise OptiloopError(f"{what} {_safe(text)!r}: use sqlite:///PATH.db, postgresql://USER:PASSWORD@HOST/DB "
                            "(or mysql://...), or journal:PATH (a journal file, e.g. on a shared file system)")

    @classmethod
    def sqlite(cls, path: Path) -> Storage:
        return cls(f"sqlite:///{path}", "sqlite", path)

    @property
    def shown(self) -> str:
        """The URL with any password hidden: what messages and reports print."""
        return _safe(self.url)

    def open(self, *, create: bool = True) -> Any:
        """The Optuna storage; an unreachable one (no server, no driver, no folder) is one line.
        ``create=False``: refuse a journal or SQLite file that does not exist yet."""
        optuna = require_optuna()
        if self.kind == "journal":
            return self._journal(optuna, create)
        if self.kind == "sqlite" and self.path is not None:
            if not self.path.parent.is_dir():
                raise OptiloopError(f"storage {self.shown}: no folder {self.path.parent}")
            if not create and not self.path.is_file():
                raise OptiloopError(f"storage {self.shown}: no database file {self.path}")
        engine: dict[str, Any] = {}
        if self.kind == "sqlite":
            engine = {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
        for attempt in range(SCHEMA_TRIES):
            try:
                return optuna.storages.RDBStorage(self.url, engine_kwargs=engine,
                                                  heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE)
            except ImportError as e:  # the database driver (Optuna wraps SQLAlchemy's ModuleNotFoundError)
                name = getattr(e.__cause__, "name", None) or e.name or "its driver"
                driver = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
                          "pymysql": "PyMySQL"}.get(name, name)
                raise OptiloopError(f"storage {self.shown}: needs the database driver {name}, which is not "
                                    f"installed: pip install {driver}") from None
            except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many kinds; the message says which
                if attempt + 1 < SCHEMA_TRIES and _schema_race(e):
                    time.sleep(0.2 * (attempt + 1))  # the other process's tables are there once it commits
                    continue
                raise OptiloopError(f"storage {self.shown}: cannot open it ({_first_line(e)})") from None
        raise AssertionError("unreachable")

    def _journal(self, optuna: Any, create: bool) -> Any:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = self.path
        assert path is not None
        if not path.parent.is_dir():
            raise OptiloopError(f"storage {self.shown}: no folder {path.parent}")
        if not create and not path.is_file():
            raise OptiloopError(f"storage {self.shown}: no journal file {path}")
        try:
            # An open(O_EXCL) lock file: works on NFS, where symbolic-link locks may not.
            return optuna.storages.JournalStorage(JournalFileBackend(str(path), JournalFileOpenLock(str(path))))
        except OSError as e:
            raise OptiloopError(f"storage {self.shown}: cannot open it ({_first_line(e)})") from None

    def dashboard(self) -> str:
        """The command that opens this storage in optuna-dashboard."""
        if self.kind == "journal":
            return f"optuna-dashboard {self.path}"
        return f"optuna-dashboard {self.shown}"


def _schema_race(e: BaseException) -> bool:
    """Whether opening a storage failed because another process was creating its tables at that moment:
    Optuna creates them (and stamps their version) check-then-create, so of several processes that
    open a new database at once, all but one may find a table or row the others just made."""
    from sqlalchemy import exc

    return isinstance(e, (exc.IntegrityError, exc.ProgrammingError)) or (
        isinstance(e, exc.OperationalError) and "already exists" in str(e))


def _safe(url: str) -> str:
    """A URL with its password replaced by ***."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user, colon, _ = auth.partition(":")
    return f"{head}://{user}{':***' if colon else ''}@{host}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --- samplers and pruners ----------------------------------------------------------------------------------
def startup_trials(trials: int) -> int:
    """TPE's random start for a search of ``trials``: a quarter of them, 4 to 10. Optuna's default, 10,
    suits searches of hundreds of trials; in a 20-trial search it would spend half the budget at random
    (benchmarks/bench_tune.py measured the difference: docs/tune.md).

    Example:
        >>> [startup_trials(n) for n in (8, 20, 40, 200)]
        [4, 5, 10, 10]
    """
    return max(4, min(10, trials // 4))


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, its seed and (grid) its search space: picklable, built in each process."""

    name: str = "tpe"
    seed: int | None = 0
    grid: Mapping[str, Sequence[Any]] | None = None
    startup: int = 10  # tpe: random trials before the model takes over (``startup_trials``)

    def build(self, worker: int = 0, offset: int = 0) -> Any:
        """The sampler of process ``worker``; ``offset`` (trials already in the study) moves the seed
        so a resumed search does not draw its first trials again."""
        optuna = require_optuna()
        seed = None if self.seed is None else self.seed + 1000 * worker + offset
        if self.name == "grid":
            # Every process must shuffle the grid alike: Optuna hands trial k the grid's k-th point,
            # so processes with different orders would turn one trial number into different points.
            seed = self.seed
        if self.name == "tpe":
            # multivariate + group: a conditional space (momentum for sgd only) is modelled per group;
            # constant_liar: processes sharing the study do not all pick the same point.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=self.startup)
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.name == "grid":
            return optuna.samplers.GridSampler(dict(self.grid or {}), seed=seed)
        raise OptiloopError(f"unknown sampler {self.name!r}; choose one of: {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class PrunerSpec:
    """Which pruner, for trials of ``epochs`` epochs (each epoch is one step Optuna sees); ``custom``:
    an Optuna pruner object of the caller's own instead."""

    name: str = "median"
    epochs: int = 10
    custom: Any = None

    def build(self) -> Any:
        if self.custom is not None:
            return self.custom
        optuna = require_optuna()
        if self.name == "median":
            # A trial is stopped once it is worse than the median of the trials before it at the same
            # epoch; the first few trials run in full to set the median, and epoch 1 is never judged.
            return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
        if self.name == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
        if self.name == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=self.epochs, reduction_factor=3)
        if self.name == "none":
            return optuna.pruners.NopPruner()
        raise OptiloopError(f"unknown pruner {self.name!r}; choose one of: {', '.join(PRUNERS)}")


# --- a study ------------------------------------------------------------------------------------------------
RECORD_SECONDS = 5.0  # how long a new, empty study may go without optiloop's record (see StudySpec.check)


@dataclass(frozen=True)
class StudySpec:
    """Everything a process needs to open the study: picklable, so every worker opens its own."""

    storage: Storage
    name: str
    direction: str  # "minimize" or "maximize"
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)

    def find(self, storage: Any | None = None) -> Any | None:
        """The study if the storage holds it, else None (writes nothing)."""
        optuna = require_optuna()
        storage = storage if storage is not None else self.storage.open(create=False)
        try:
            storage.get_study_id_from_name(self.name)
        except KeyError:
            return None
        return optuna.load_study(study_name=self.name, storage=storage, sampler=self.sampler.build(),
                                 pruner=self.pruner.build())

    def check(self, study: Any, signature: Mapping[str, Any]) -> None:
        """An existing study must have been made for the same search (``signature``: the space, the
        monitor and direction, the base config): one line says what differs."""
        if study.direction.name.lower() != self.direction:
            raise OptiloopError(f"study {self.name!r} on {self.storage.shown} was made to "
                                f"{study.direction.name.lower()}, not {self.direction}; use another --study")
        saved = study.user_attrs.get("optiloop")
        # An empty study without a record may be one another process has just created and is about
        # to record (create() makes the study, then sets the attribute): give it a moment.
        deadline = time.monotonic() + RECORD_SECONDS
        while saved is None and time.monotonic() < deadline and not study.get_trials(deepcopy=False):
            time.sleep(0.05)
            saved = study.user_attrs.get("optiloop")
        if saved is None:
            raise OptiloopError(f"study {self.name!r} on {self.storage.shown} was not made by optiloop; "
                                "use another --study name")
        for part in sorted(signature, key=lambda p: (p != "space", p)):  # the space first: the likeliest change
            if saved.get(part) != signature[part]:
                raise OptiloopError(f"study {self.name!r} on {self.storage.shown} was made with another {part} "
                                    f"({_differs(saved.get(part), signature[part])}); continue it with the same "
                                    "settings, or start a new one with another --study or --out")

    def create(self, signature: Mapping[str, Any]) -> Any:
        """Create the study (or load it, if another process just did) and record ``signature``."""
        optuna = require_optuna()
        study = optuna.create_study(storage=self.storage.open(), study_name=self.name, direction=self.direction,
                                    sampler=self.sampler.build(), pruner=self.pruner.build(), load_if_exists=True)
        if "optiloop" not in study.user_attrs:
            study.set_user_attr("optiloop", dict(signature))
        else:  # another process made it a moment ago: it must be for the same search
            self.check(study, signature)
        return study

    def open(self, worker: int = 0) -> Any:
        """The existing study, with this process's sampler and pruner."""
        optuna = require_optuna()
        storage = self.storage.open()
        offset = len(storage.get_all_trials(storage.get_study_id_from_name(self.name), deepcopy=False))
        return optuna.load_study(study_name=self.name, storage=storage,
                                 sampler=self.sampler.build(worker, offset), pruner=self.pruner.build())


def _differs(old: Any, new: Any) -> str:
    """The first setting that differs, as ``key: A there, B here``."""
    a, b = _leaves(old), _leaves(new)
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {_brief(a.get(k))} there, {_brief(b.get(k))} here" if k else \
                f"{_brief(a.get(k))} there, {_brief(b.get(k))} here"
    return "differs"


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _brief(v: Any) -> str:
    text = "absent" if v is None else str(v)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the folder a study's runs go to -------------------------------------------------------------------------
def digest(signature: Any) -> str:
    """A short name for a study's signature (or any JSON-able description): the default study
    and folder names carry it, so that the same command finds them again."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:8]


STUDY_FILE = "study.toml"  # in a tune or compare folder: which storage and study its runs belong to


def folder_study(folder: Path, command: str, what: str = "--out") -> dict[str, str] | None:
    """``folder`` is new or empty (None), or a ``command`` folder (tune, compare): then what its
    study.toml says (storage, study), so the same command continues that study there."""
    from ..config import read_toml
    from ..files import check_writable
    from ..runs import ensure_empty

    marker = folder / STUDY_FILE
    if marker.is_file():
        saved = read_toml(marker)
        if not isinstance(saved.get("storage"), str) or not isinstance(saved.get("study"), str):
            raise OptiloopError(f"{marker}: names no storage and study; is it an optiloop {command} folder?")
        return {"storage": saved["storage"], "study": saved["study"]}
    ensure_empty(folder, what, f" (a {command} folder holds study.toml; this one does not)")
    check_writable(folder, what)
    return None


def continued_storage(folder: Path, saved: Mapping[str, str], given: Storage | None, study: str | None) -> Storage:
    """The storage of the study a folder holds (``saved``: its study.toml), checked against what the
    command gives: another storage or study is one line, and so is a password study.toml does not keep."""
    kept = Storage.parse(saved["storage"])
    store = given or kept
    if (study or saved["study"]) != saved["study"] or store.shown != kept.shown:
        raise OptiloopError(f"{folder} holds study {saved['study']!r} on {kept.shown}, not {study or saved['study']!r} "
                            f"on {store.shown}; continue that one, or choose a new --out")
    if given is None and ":***@" in kept.url:  # written with the password hidden
        raise OptiloopError(f"{folder}'s study is on {kept.shown}; study.toml keeps no password: give it again with "
                            "--storage")
    return store


def write_folder_study(folder: Path, storage: Storage, study: str, command: str) -> None:
    """study.toml: the storage (its password left out) and study this folder's runs belong to."""
    import tomli_w

    from ..files import write_text

    write_text(folder / STUDY_FILE, f"# optiloop {command}: the study this folder's runs belong to. Run the same "
               "command again to continue it.\n" + tomli_w.dumps({"storage": storage.shown, "study": study}))


# --- trials whose process died ---------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (Linux /proc), to tell a reused process id from the original."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker() -> dict[str, Any]:
    """What a trial records about the process that runs it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def alive(worker: Mapping[str, Any] | None) -> bool:
    """Whether the process that ran a trial still runs; True where this machine cannot tell (another
    host, or no record): the heartbeat decides there."""
    if not worker or worker.get("host") != socket.gethostname():
        return True
    pid = int(worker.get("pid", 0))
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the id now
        return False
    start = _start_time(pid)
    return start is None or worker.get("start") is None or start == worker.get("start")


def fail_dead_trials(study: Any) -> list[int]:
    """Mark FAIL the RUNNING trials whose process on this machine is gone (killed); heartbeat-stale
    trials of other machines too. Returns their numbers."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if alive(worker):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, NOTE_ATTR, f"its process ({worker['host']} pid "
                                               f"{worker['pid']}) ended without finishing it (killed?)")
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
            continue
    return failed


# --- running N trials in one or more processes ------------------------------------------------------------
COUNTED = ("COMPLETE", "PRUNED")  # finished trials that count toward N (a failed one is run again)


def counted(study: Any) -> int:
    """Trials that count toward the study's total: finished (complete, pruned) or running in a live process."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state.name in COUNTED or (t.state == TrialState.RUNNING and alive(t.user_attrs.get(WORKER_ATTR))):
            n += 1
    return n


class _Surplus(Exception):  # noqa: N818 - not an error: the study reached its total meanwhile
    """A trial started after the study reached its total (two processes started one each at once)."""


class _Budget:
    """Stops ``study.optimize`` once the study holds ``total`` counted trials (Optuna's
    MaxTrialsCallback, counting the trials other processes are running too)."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, study: Any, trial: Any) -> None:
        if counted(study) >= self.total:
            study.stop()


@dataclass
class _Guarded:
    """The objective, behind the checks every trial starts with: record this process; fail trials
    whose process died; refuse to run past the total (between one process's count and its next
    trial, another may have started the last one)."""

    objective: Callable[[Any], float]
    total: int

    def __call__(self, trial: Any) -> float:
        from optuna.trial import TrialState

        trial.set_user_attr(WORKER_ATTR, this_worker())
        study = trial.study
        fail_dead_trials(study)
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and (
            t.state.name in COUNTED or (t.state == TrialState.RUNNING and alive(t.user_attrs.get(WORKER_ATTR))))]
        if len(before) >= self.total:
            trial.set_user_attr(NOTE_ATTR, f"not run: the study already had its {self.total} trials")
            study.stop()
            raise _Surplus()
        return self.objective(trial)


@dataclass(frozen=True)
class WorkerResult:
    """What one process did: its trials' numbers (every state), and its error line if it failed."""

    worker: int
    trials: tuple[int, ...] = ()
    error: str | None = None


def optimize(study: StudySpec, objective: Callable[[Any], float], *, trials: int, jobs: int = 1,
             timeout: float | None = None, catch: Sequence[type[Exception]] = (),
             threads: int | None = None) -> list[WorkerResult]:
    """Run trials on the (existing) study until it holds ``trials`` counted trials or ``timeout``
    seconds passed, in ``jobs`` processes (this one and ``jobs - 1`` new ones), each running
    ``study.optimize`` on the shared storage.

    Args:
        study: the study (``StudySpec.create`` made it).
        objective: ``trial -> value``; with ``jobs > 1`` it is pickled into each new process
            (module-level functions and classes only), where it may build what it needs on its first call.
        trials: the study's total (``study.optimize`` stops at it in every process).
        jobs: processes; with several, each gets ``threads`` torch threads (default: a share).
        timeout: seconds after which no process starts another trial.
        catch: exceptions that fail a trial without ending the search.

    Returns:
        One WorkerResult per process, this one's first.
    """
    if jobs == 1:
        return [_work(study, objective, trials, timeout, tuple(catch), 0, None)]
    import multiprocessing
    import queue as queues

    import torch

    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools or locks
    threads = threads or max(1, torch.get_num_threads() // jobs)
    queue = ctx.Queue()
    procs = {i: ctx.Process(target=_worker_main, args=(study, objective, trials, timeout, tuple(catch), i, threads,
                                                        queue), name=f"optiloop-tune-{i}") for i in range(1, jobs)}
    for p in procs.values():
        p.start()
    results: dict[int, WorkerResult] = {}
    own = torch.get_num_threads()
    try:
        # This process is worker 0: one interpreter and one torch import fewer to wait for.
        results[0] = _work(study, objective, trials, timeout, tuple(catch), 0, threads)
        while len(results) < jobs:
            try:
                r = queue.get(timeout=1.0)
                results[r.worker] = r
            except queues.Empty:  # see whether a process died without a word (killed)
                for i, p in procs.items():
                    if i not in results and not p.is_alive() and p.exitcode is not None:
                        results[i] = WorkerResult(i, (), f"process {i} ended with exit code {p.exitcode}")
    finally:
        torch.set_num_threads(own)
        for p in procs.values():
            p.join(timeout=30)
        for p in procs.values():
            if p.is_alive():  # only after a Ctrl-C that the workers did not hear
                p.terminate()
                p.join()
    return [results[i] for i in range(jobs)]


def _work(study: StudySpec, objective: Callable[[Any], float], total: int, timeout: float | None,
          catch: tuple[type[Exception], ...], worker: int, threads: int | None) -> WorkerResult:
    if threads:
        import torch

        torch.set_num_threads(threads)
    s = study.open(worker)
    fail_dead_trials(s)
    if counted(s) >= total:
        return WorkerResult(worker)
    mine: list[int] = []

    def note(st: Any, trial: Any) -> None:
        mine.append(trial.number)

    s.optimize(_Guarded(objective, total), timeout=timeout, catch=(_Surplus, *catch),
               callbacks=[note, _Budget(total)], gc_after_trial=False, show_progress_bar=False)
    return WorkerResult(worker, tuple(mine))


def _worker_main(study: StudySpec, objective: Callable[[Any], float], total: int,
                 timeout: float | None, catch: tuple[type[Exception], ...], worker: int, threads: int,
                 queue: Any) -> None:
    """A worker process: its trials, then one result on the queue (an error as its one line)."""
    try:
        result = _work(study, objective, total, timeout, catch, worker, threads)
    except KeyboardInterrupt:
        result = WorkerResult(worker, (), "interrupted")
    except OptiloopError as e:
        result = WorkerResult(worker, (), str(e))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it as one line
        result = WorkerResult(worker, (), f"{type(e).__name__}: {_first_line(e)}")
    queue.put(result)
    sys.stdout.flush()
