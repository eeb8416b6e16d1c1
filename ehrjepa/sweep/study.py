"""The Optuna study: storage, sampler and pruner, resume, and the outputs a sweep leaves in DIR.

The study lives in an RDB storage: by default SQLite in DIR/study.db (an embedded database,
nothing to start); `--storage URL` (e.g. postgresql://...) lets processes on several machines share
one study, which is Optuna's own distributed mode. `--trials N` is the study's total: a run starts
trials until COMPLETE + PRUNED + FAIL + RUNNING (another process's) reach N, so a rerun after a
kill runs only the missing ones.

A trial left RUNNING by a killed process is marked FAIL by hand on the next start when it ran on
this host and its process is gone (the trial records host and pid as it starts); one from
another host, or one killed in the milliseconds before it recorded them, is failed by Optuna's
heartbeat (`optuna.storages.fail_stale_trials`, run at each start) once it has not beaten for
GRACE_S seconds. Such an interrupted trial (killed, Ctrl-C, or stale) does not count toward
`--trials`: only a FAIL with its own reason (user attr `error`: a config the trial cannot run, a
diverged loss) counts, so a rerun ends with the trials asked for.

The sampler is seeded by --seed and by the number of trials already in the study (`sampler_seed`)
before each trial, so a resumed or extended study proposes new points instead of replaying the
first ones, and processes sharing a study with their own --seed draw apart.

Each study keeps its trials apart: the default study (`sweep`) writes DIR/trial_NNNN and its
outputs in DIR; a study with another --study-name writes them in DIR/NAME/ (`study_root`), so two
studies in one folder never share a trial folder. Optuna's own log (tracebacks of failed trials,
its warnings) goes to the study's log file, ROOT/study.log, not the terminal (`log_to_file`).

The study records what it searches (objective, task, label fraction, space, base config without
data.path); a rerun that asks for something else is an error rather than a mixed study.
"""
from __future__ import annotations

import contextlib
import os
import socket
import warnings
from pathlib import Path

import yaml

from ehrjepa.config import config_from_dict, config_to_dict
from ehrjepa.sweep.space import with_values

HEARTBEAT_S = 60
GRACE_S = 180
PLOTS = {  # file -> optuna.visualization.matplotlib function
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel_coordinates.png": "plot_parallel_coordinate",
    "intermediate_values.png": "plot_intermediate_values",
}


DEFAULT_STUDY = "sweep"
LOG_FILE = "study.log"
LOGGER = "ehrjepa.sweep"  # the sweep's own log records (a failed trial's traceback)
# drivers SQLAlchemy imports for a storage URL -> what to pip install
DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
           "pymysql": "PyMySQL", "asyncpg": "asyncpg", "pg8000": "pg8000", "oracledb": "oracledb",
           "pyodbc": "pyodbc", "mysql": "mysql-connector-python"}


class SweepError(ValueError):
    """A study that cannot be (re)started as asked; one line naming what differs."""


def storage_url(study_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(Path(study_dir) / 'study.db').resolve()}"


def study_root(study_dir: Path, name: str) -> Path:
    """Where study `name` keeps its trial folders, outputs and log: DIR for the default study,
    DIR/NAME for any other (SweepError for a name that cannot be a folder)."""
    if name == DEFAULT_STUDY:
        return Path(study_dir)
    if not name or name.startswith(".") or not all(c.isalnum() or c in "._-" for c in name):
        raise SweepError(f"--study-name {name!r}: use letters, digits, '.', '_' and '-' (it names "
                         "the study's folder in --study-dir)")
    return Path(study_dir) / name


def shown_url(url: str) -> str:
    """The storage URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not a URL at all: say it as given
        return url


def check_storage(url: str) -> None:
    """SweepError, one line naming --storage, when `url` is not a database URL SQLAlchemy can use
    here: not a URL, an unknown database kind, or a driver that is not installed (with what to
    pip install). Connects to nothing."""
    import sqlalchemy
    from sqlalchemy import exc

    try:
        sqlalchemy.create_engine(url).dispose()
    except exc.NoSuchModuleError:
        kind = url.split(":", 1)[0]
        raise SweepError(f"--storage {shown_url(url)}: unknown database kind {kind!r}; expected an "
                         "SQLAlchemy URL such as sqlite:///PATH or postgresql://USER@HOST/DB") from None
    except exc.ArgumentError:
        raise SweepError(f"--storage {shown_url(url)}: not a database URL; expected e.g. "
                         "sqlite:///PATH or postgresql://USER@HOST/DB") from None
    except ImportError as e:
        module = (getattr(e, "name", None) or "").split(".")[0]
        package = DRIVERS.get(module, module or "the database's driver")
        raise SweepError(f"--storage {shown_url(url)}: the database driver {module!r} is not "
                         f"installed: pip install {package}") from None


def log_to_file(path: Path) -> None:
    """Optuna's log (a failed trial's traceback, its warnings) and the sweep's own (LOGGER) go to
    `path`, appended, instead of the terminal, where the sweep prints one line per trial. Python
    warnings go there too inside `warnings_to_log()`."""
    import logging

    import optuna

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    for name in ("optuna", LOGGER, "py.warnings"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)  # an earlier sweep of this process (tests call main twice)
            old.close()
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
    logging.getLogger(LOGGER).propagate = False
    logging.getLogger("py.warnings").propagate = False


@contextlib.contextmanager
def warnings_to_log():
    """Python warnings (Optuna's, sklearn's, torch's) go to the study's log file meanwhile."""
    import logging

    def show(message, category, filename, lineno, file=None, line=None):
        logging.getLogger("py.warnings").warning(
            "%s", warnings.formatwarning(message, category, filename, lineno, line).rstrip())

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def sampler_seed(seed: int, n_trials: int) -> int:
    """The sampler's seed for the next trial of a study holding `n_trials` trials: a mix of both,
    so an extended study draws new points and processes with their own --seed draw apart."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**32, n_trials]).generate_state(1)[0])


def reseed(study, seed: int) -> None:
    """Seed the study's sampler from --seed and the study's state before its next trial."""
    import optuna

    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(seed, len(study.get_trials(deepcopy=False))))


def open_study(url: str, name: str, direction: str, seed: int, prune_after: int, record: dict):
    """Create or load study `name` in `url`; SweepError when an existing one searched something else."""
    import optuna
    from sqlalchemy import exc

    check_storage(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_after))
    except exc.SQLAlchemyError as e:  # no server, a bad password, a file that is not a database
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:300]
        raise SweepError(f"--storage {shown_url(url)}: cannot open the study's database: {reason}") from None
    old = study.user_attrs.get("ehrjepa")
    if old is None:
        study.set_user_attr("ehrjepa", record)
        return study
    for key in ("objective", "task", "label_fraction", "space", "base"):
        if old.get(key) != record.get(key):
            what = key
            if isinstance(old.get(key), dict) and isinstance(record.get(key), dict):
                what = f"{key} ({first_difference(old[key], record[key])})"
            raise SweepError(f"study '{name}' in {url} was started with another {what}; "
                             f"use a new --study-dir or --study-name")
    return study


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    """The first dotted key where nested dicts `a` and `b` differ."""
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                return first_difference(a[key], b[key], f"{prefix}{key}.")
            return f"{prefix}{key}: {a.get(key)!r} then, {b.get(key)!r} now"
    return "?"


def fail_dead_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials this host's processes left behind when killed, and (Optuna's
    heartbeat) those that have not beaten for GRACE_S seconds; the numbers of the first kind."""
    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host != socket.gethostname() or pid is None or pid == os.getpid() or _alive(pid):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", f"process {pid} is gone")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def counts(study) -> dict[str, int]:
    """{state name: number of trials}, e.g. {"COMPLETE": 3, "FAIL": 1}."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def counted(study) -> int:
    """The trials that count toward --trials: COMPLETE, PRUNED, RUNNING (maybe another
    process's), and FAIL with a reason of its own; not a trial that was interrupted."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        name = t.state.name
        if name in ("COMPLETE", "PRUNED", "RUNNING") or (name == "FAIL" and "error" in t.user_attrs):
            n += 1
    return n


def best_config(study, base_raw: dict, data_dir: str) -> dict | None:
    """The best trial's full config (the base with its values, data.path set), or None if none completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    raw = with_values(base_raw, study.best_trial.params)
    raw["data"]["path"] = str(data_dir)
    return config_to_dict(config_from_dict(raw, source=f"best trial {study.best_trial.number}"))


def write_outputs(study, study_dir: Path, base_raw: dict, data_dir: str, objective: str) -> list[str]:
    """best.yaml, trials.csv and the PNGs in `study_dir`, each written whole; returns notes on what was skipped."""
    study_dir = Path(study_dir)
    notes = []
    cfg = best_config(study, base_raw, data_dir)
    if cfg is None:
        notes.append("no trial completed: no best.yaml")
    else:
        best = study.best_trial
        header = (f"# best of study '{study.study_name}': trial {best.number}, {objective} {best.value:.6g}\n"
                  f"# values: {best.params}\n"
                  f"# retrain: ehrjepa train --config {study_dir / 'best.yaml'} --run-dir RUN\n")
        _write_text(study_dir / "best.yaml", header + yaml.safe_dump(cfg, sort_keys=False))
    _write_text(study_dir / "trials.csv", study.trials_dataframe().to_csv(index=False))
    notes += write_plots(study, study_dir)
    return notes


def write_plots(study, study_dir: Path) -> list[str]:
    """Optuna's matplotlib plots of the study; a plot that cannot be drawn (too few trials, no
    matplotlib) is a note, never an error: the other outputs are written first and stay."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as vis
    except Exception as e:  # noqa: BLE001 -- a broken or missing matplotlib costs the plots only
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return [f"no plots drawn ({', '.join(PLOTS)}): matplotlib cannot be used: {reason}"]

    notes = []
    for name, fn in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, importance fit warnings
                ax = getattr(vis, fn)(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 6)
            fig.tight_layout()
            tmp = study_dir / f".{name}.tmp"
            fig.savefig(tmp, dpi=100, format="png")
            os.replace(tmp, study_dir / name)
        except Exception as e:  # noqa: BLE001 -- e.g. importances need 2 complete trials
            notes.append(f"{name} not drawn: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        finally:
            plt.close("all")
    return notes


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
