"""Hyper-parameter and grid sweeps on Optuna, whose trials are ordinary training runs.

A *search space* is an ml_collections file (``configs/sweeps/*.py``) whose ``get_config()``
returns::

    metric: ""            # summary.json field per variant; "" = best_val_score_mean
    direction: "maximize"
    params:               # config sections -> field -> distribution
      optim: {learning_rate: {type: "float", low: 1e-4, high: 3e-3, log: True}}
      model: {dropout: {type: "float", low: 0.1, high: 0.5},
              f_hidden: {type: "int", low: 64, high: 256, step: 64}}
      train: {variants: {type: "categorical", choices: ["gated", "weighted"]}}

A trial is ``experiments/train.py`` run as a subprocess with ``--config.<field>=<value>``
for each sampled field, its models and results under ``STUDY/trials/<key>/`` where
``<key>`` is a digest of the sampled values: the same values are the same run, so a trial
retried after its worker died resumes from that run's checkpoints. The objective is read
from the run's ``summary.json`` — a *validation* figure (mean over seeds; train.py never
reads a test split) — so the sampler never sees test data. After the sweep the best trial
alone is evaluated on test (:func:`evaluate_best`).

Storage: Optuna's journal file in the study folder by default (several worker processes on
one machine or a shared file system), or any Optuna RDB URL (``sqlite:///…``,
``postgresql://…``) for many machines. Dead workers: with an RDB, Optuna's heartbeat and
``RetryFailedTrialCallback``; with the journal (which has no heartbeat in Optuna 4.6), each
running trial's worker touches ``STUDY/heartbeats/<number>`` every few seconds and any
worker that finds one stale marks that trial failed and enqueues a retry with its values.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from fusion_jax import io_utils
from fusion_jax.errors import ConfigError, MissingDependency, UserError

STUDY_NAME = "fusion_jax"
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0      # a journal trial whose heartbeat is older is a dead worker's
MAX_RETRIES = 2
TYPES = ("float", "int", "categorical")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "experiments", "train.py")
EVALUATE = os.path.join(REPO, "experiments", "evaluate.py")


def optuna():
  """The ``optuna`` module, or a one-line :class:`MissingDependency`."""
  try:
    import optuna as o  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingDependency("sweeps need Optuna: pip install optuna==4.6.0 (or bash "
                            "scripts/setup.sh --features)") from e
  o.logging.set_verbosity(o.logging.WARNING)
  return o


# ------------------------------------------------------------------ the search space
def load_space(path: str) -> dict:
  """Reads a search-space file into ``{metric, direction, params: {field: spec}}``,
  checking every entry; a bad one is a one-line :class:`ConfigError` naming it."""
  if not os.path.isfile(path):
    raise ConfigError(f"--sweep {path}: no such file (search spaces live in configs/sweeps/)")
  spec = importlib.util.spec_from_file_location("fusion_jax_sweep_space", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--sweep {path}: defines no get_config()")
  raw = module.get_config()
  raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
  direction = raw.get("direction", "maximize")
  if direction not in ("maximize", "minimize"):
    raise ConfigError(f"--sweep {path}: direction {direction!r} is not 'maximize' or "
                      "'minimize'")
  params = _flatten(raw.get("params") or {})
  if not params:
    raise ConfigError(f"--sweep {path}: params is empty (give config fields to search)")
  out = {}
  for field, p in params.items():
    where = f"--sweep {path}: params['{field}']"
    p = dict(p)
    kind = p.get("type")
    if kind not in TYPES:
      raise ConfigError(f"{where}: type {kind!r} is not one of {', '.join(TYPES)}")
    if kind == "categorical":
      if not p.get("choices"):
        raise ConfigError(f"{where}: a categorical needs a non-empty choices list")
      p["choices"] = list(p["choices"])
    else:
      if "low" not in p or "high" not in p or not p["low"] <= p["high"]:
        raise ConfigError(f"{where}: needs low <= high")
      if p.get("log") and p["low"] <= 0:
        raise ConfigError(f"{where}: log=True needs low > 0")
      if p.get("log") and p.get("step"):
        raise ConfigError(f"{where}: give log=True or a step, not both")
    unknown = set(p) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
      raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    out[field] = p
  return dict(metric=raw.get("metric", "") or "", direction=direction, params=out)


def _flatten(node: dict, prefix: str = "") -> dict:
  """``{"optim": {"learning_rate": {type: …}}}`` (or dotted keys) → ``{"optim.learning_rate":
  {type: …}}``: a dict with a ``type`` key is one parameter."""
  out = {}
  for k, v in dict(node).items():
    v = v.to_dict() if hasattr(v, "to_dict") else v
    if not isinstance(v, dict):
      raise ConfigError(f"--sweep: params entry {prefix}{k} is {v!r}, not a dict with a type")
    if "type" in v:
      out[prefix + k] = v
    else:
      out.update(_flatten(v, f"{prefix}{k}."))
  return out


def fingerprint(space: dict) -> str:
  """A digest of the search space (what a study folder is tied to)."""
  return hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:16]


def grid(space: dict) -> dict:
  """``{field: choices}`` of a grid search: every entry must be categorical."""
  bad = [f for f, p in space["params"].items() if p["type"] != "categorical"]
  if bad:
    raise ConfigError(f"--grid needs categorical params only; {', '.join(bad)} are ranges "
                      "(give them choices, or drop --grid)")
  return {f: p["choices"] for f, p in space["params"].items()}


def trial_key(values: dict) -> str:
  """The run a set of sampled values maps to (same values, same folder)."""
  return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def override_flags(values: dict) -> list:
  """``--config.<field>=<value>`` for train.py (floats in full precision)."""
  return [f"--config.{f}={v!r}" if isinstance(v, float) else f"--config.{f}={v}"
          for f, v in sorted(values.items())]


# ------------------------------------------------------------------ the study
def heartbeat_interval(stale_seconds: float) -> float:
  """How often a running trial beats: every 5 s, or a third of a shorter timeout."""
  return min(HEARTBEAT_SECONDS, stale_seconds / 3)


def open_study(study_dir: str, space: dict, *, storage_url: str = "", use_grid: bool = False,
               seed: Optional[int] = None, stale_seconds: float = STALE_SECONDS,
               folds: Sequence[int] = ()):
  """Creates or loads the study in ``study_dir`` (or at ``storage_url``), refusing a
  folder made for another search space. ``stale_seconds``: an RDB study's grace period
  (journal studies: :func:`reap_dead_trials`). Returns the ``optuna.Study``."""
  o = optuna()
  os.makedirs(study_dir, exist_ok=True)
  if storage_url:
    import warnings  # pylint: disable=import-outside-toplevel
    warnings.filterwarnings("ignore", category=o.exceptions.ExperimentalWarning)
    storage = o.storages.RDBStorage(
        storage_url, heartbeat_interval=max(1, int(heartbeat_interval(stale_seconds))),
        grace_period=max(1, int(stale_seconds)),
        failed_trial_callback=o.storages.RetryFailedTrialCallback(max_retry=MAX_RETRIES))
  else:
    storage = o.storages.JournalStorage(o.storages.journal.JournalFileBackend(
        os.path.join(study_dir, "journal.log")))
  study = o.create_study(study_name=STUDY_NAME, storage=storage, direction=space["direction"],
                         load_if_exists=True)
  if seed is not None:   # a continued study must not replay its first proposals
    seed += len(study.get_trials(deepcopy=False))
  # a grid's points are queued (enqueue_grid), never sampled: Optuna's GridSampler lets two
  # workers draw the same point at once (one then waits on the other's run)
  study.sampler = (o.samplers.RandomSampler(seed=seed) if use_grid
                   else o.samplers.TPESampler(seed=seed))
  if use_grid:
    grid(space)   # (categorical only)
  mine = dict(fingerprint=fingerprint(space), grid=bool(use_grid))
  if folds:   # (recorded only with folds: studies made before folds existed still match)
    mine["folds"] = [int(k) for k in folds]
  have = study.user_attrs.get("space")
  if have is None:
    study.set_user_attr("space", mine)
    study.set_user_attr("space_definition", space)
  elif have != mine:
    where = storage_url or study_dir
    said = lambda d: (d["fingerprint"] + (", grid" if d["grid"] else "")
                      + (f", folds {d['folds']}" if d.get("folds") else ""))
    raise ConfigError(f"{where}: this study was made for another search space "
                      f"({said(have)}; yours is {said(mine)}); use another --study_dir, or "
                      "the same --sweep file, --grid setting and --folds")
  return study


def enqueue_grid(study, space: dict, trials: int = 0, seed: Optional[int] = None) -> int:
  """Queues a grid study's points (``WAITING`` trials) in a seeded random order until it
  holds ``trials`` distinct points (0 or more than the grid: all of them), so each worker
  takes the next queued point and no two run the same one. Points already in the study
  (queued, run or failed) count; retries do not. Run by the one process that starts the
  workers; idempotent. Returns how many points it queued."""
  choices = grid(space)
  points = [dict(zip(choices, combo)) for combo in itertools.product(*choices.values())]
  random.Random(0 if seed is None else seed).shuffle(points)
  want = min(trials, len(points)) if trials else len(points)
  present = set()
  for t in study.get_trials(deepcopy=False):
    values = t.system_attrs.get("fixed_params") or t.params
    if values and retry_of(t) is None:
      present.add(trial_key(values))
  queued = 0
  for p in points:
    if len(present) >= want:
      break
    if trial_key(p) not in present:
      study.enqueue_trial(p, skip_if_exists=False)
      present.add(trial_key(p))
      queued += 1
  return queued


def _queued(study, trial) -> bool:
  """Whether ``trial`` was taken from the queue (a grid point or a retry), not sampled."""
  frozen = study._storage.get_trial(trial._trial_id)  # pylint: disable=protected-access
  return "fixed_params" in frozen.system_attrs or bool(frozen.params)


def _trial_values(trial, space: dict) -> dict:
  """Samples (or, for an enqueued retry, reuses) the trial's values."""
  out = {}
  for field, p in space["params"].items():
    if p["type"] == "categorical":
      out[field] = trial.suggest_categorical(field, p["choices"])
    elif p["type"] == "int":
      out[field] = trial.suggest_int(field, int(p["low"]), int(p["high"]),
                                     step=int(p.get("step", 1)), log=bool(p.get("log")))
    else:
      out[field] = trial.suggest_float(field, float(p["low"]), float(p["high"]),
                                       step=p.get("step"), log=bool(p.get("log")))
  return out


class _Heartbeat:
  """Touches ``study_dir/heartbeats/<number>`` every few seconds while a trial runs."""

  def __init__(self, study_dir: str, number: int, every: float = HEARTBEAT_SECONDS):
    self.every = every
    self.path = os.path.join(study_dir, "heartbeats", str(number))
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while True:
      with open(self.path, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {time.time()}\n")
      if self._stop.wait(self.every):
        return

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    try:
      os.remove(self.path)
    except OSError:
      pass


def reap_dead_trials(study, study_dir: str, stale_seconds: float = STALE_SECONDS) -> list:
  """Journal studies: marks failed every RUNNING trial whose heartbeat is older than
  ``stale_seconds`` (or absent that long after it started) and enqueues a retry with the
  same values, up to :data:`MAX_RETRIES` per original trial. Returns the reaped numbers.
  Several workers may call this at once: only the one whose state change lands retries."""
  o = optuna()
  now = time.time()
  reaped = []
  for t in study.get_trials(deepcopy=False, states=(o.trial.TrialState.RUNNING,)):
    beat = os.path.join(study_dir, "heartbeats", str(t.number))
    last = os.path.getmtime(beat) if os.path.exists(beat) else (
        t.datetime_start.timestamp() if t.datetime_start else now)
    if now - last < stale_seconds:
      continue
    try:
      study._storage.set_trial_state_values(  # pylint: disable=protected-access
          t._trial_id, o.trial.TrialState.FAIL)  # pylint: disable=protected-access
    except (o.exceptions.UpdateFinishedTrialError, RuntimeError):
      continue   # another worker got there first
    reaped.append(t.number)
    origin = t.user_attrs.get("retry_of", t.number)
    retries = t.user_attrs.get("retries", 0)
    if retries < MAX_RETRIES:
      study.enqueue_trial(t.params, user_attrs=dict(retry_of=origin, retries=retries + 1),
                          skip_if_exists=False)
  return reaped


def retry_of(trial) -> Optional[int]:
  """The trial a retry repeats (ours: ``user_attrs["retry_of"]``; Optuna's
  RetryFailedTrialCallback on an RDB: ``system_attrs["failed_trial"]``), or None."""
  if "retry_of" in trial.user_attrs:
    return int(trial.user_attrs["retry_of"])
  failed = trial.system_attrs.get("failed_trial")
  return None if failed is None else int(failed)


def run_dirs(study_dir: str, key: str, folds: Sequence[int] = ()) -> list:
  """A trial's run folders: ``trials/<key>``, or ``trials/<key>/fold_<k>`` per fold."""
  tdir = os.path.join(study_dir, "trials", key)
  return [tdir] if not folds else [os.path.join(tdir, f"fold_{k}") for k in folds]


def _fold_flags(folds: Sequence[int]) -> list:
  return [[f"--fold={k}"] for k in folds] or [[]]


def run_trial(study_dir: str, values: dict, base_args: Sequence[str], *,
              folds: Sequence[int] = (), python: str = sys.executable, log=print) -> list:
  """Runs train.py for one set of values — once, or once per fold of ``folds`` (``--fold
  K``: the training files hold a corpus) — and returns each run's ``summary.json``. A
  failed run raises :class:`UserError` with the last line of its log."""
  key = trial_key(values)
  tdir = os.path.join(study_dir, "trials", key)
  os.makedirs(tdir, exist_ok=True)
  io_utils.write_json(os.path.join(tdir, "values.json"), values)
  summaries = []
  for rdir, fold in zip(run_dirs(study_dir, key, folds), _fold_flags(folds)):
    os.makedirs(rdir, exist_ok=True)
    cmd = [python, TRAIN, *base_args, *override_flags(values), *fold,
           f"--model_dir={os.path.join(rdir, 'models')}",
           f"--results_dir={os.path.join(rdir, 'results')}"]
    log(f"trial {key}: {' '.join(override_flags(values) + fold)}")
    _run_logged(cmd, os.path.join(rdir, "train.log"), f"trial {key}: train.py "
                + " ".join(fold))
    with open(os.path.join(rdir, "results", "summary.json"), encoding="utf-8") as f:
      summaries.append(json.load(f))
  return summaries


def objective_value(summaries, metric: str = "") -> tuple:
  """``(value, variant)``: the best variant's validation figure (``metric``, default the
  selection metric ``best_val_score_mean``: mean over seeds) in a run's summary, or its
  mean over the runs of several folds (``summaries``: a list; a variant is chosen on its
  mean, never fold by fold)."""
  metric = metric or "best_val_score_mean"
  if not metric.startswith(("best_val", "final_val")):
    raise ConfigError(f"sweep metric {metric!r}: the objective must be a validation figure "
                      "from summary.json (best_val_*), never a test one")
  summaries = [summaries] if isinstance(summaries, dict) else list(summaries)
  scores = {}
  for summary in summaries:
    for v, s in summary["variants"].items():
      if metric not in s:
        raise ConfigError(f"sweep metric {metric!r} is not in summary.json (have: "
                          f"{', '.join(k for k in s if k.startswith('best_val'))})")
      scores.setdefault(v, []).append(float(s[metric]))
  means = {v: sum(x) / len(x) for v, x in scores.items() if len(x) == len(summaries)}
  best = max(means, key=means.get)
  return means[best], best


def work(study_dir: str, space: dict, base_args: Sequence[str], trials: int, *,
         storage_url: str = "", use_grid: bool = False, seed: Optional[int] = None,
         stale_seconds: float = STALE_SECONDS, folds: Sequence[int] = (), log=print) -> int:
  """One worker: runs trials until the study holds ``trials`` complete ones (or the grid is
  done); a running trial whose worker has not beaten for ``stale_seconds`` is retried.
  Returns the number of trials this worker finished."""
  o = optuna()
  study = open_study(study_dir, space, storage_url=storage_url, use_grid=use_grid, seed=seed,
                     stale_seconds=stale_seconds, folds=folds)
  done = 0
  states = o.trial.TrialState

  def objective(trial):
    nonlocal done
    if use_grid and not _queued(study, trial):   # another worker took the last point
      raise o.TrialPruned("no grid point left to take")   # between our look and our pop
    done += 1
    values = _trial_values(trial, space)
    key = trial_key(values)
    trial.set_user_attr("run", key)
    # (beating while it waits too: a trial waiting for another's run is alive, not dead)
    with _Heartbeat(study_dir, trial.number, heartbeat_interval(stale_seconds)):
      while any(t.user_attrs.get("run") == key and t.number != trial.number for t in
                study.get_trials(deepcopy=False, states=(states.RUNNING,))):
        time.sleep(2.0)   # the same values run in another worker: wait, then reuse its run
      summaries = run_trial(study_dir, values, base_args, folds=folds, log=log)
    value, variant = objective_value(summaries, space["metric"])
    trial.set_user_attr("variant", variant)
    if folds:   # (the chosen variant's figure in each fold: their mean is ``value``)
      metric = space["metric"] or "best_val_score_mean"
      trial.set_user_attr("fold_values", [float(s["variants"][variant][metric])
                                          for s in summaries])
    return value

  if use_grid:
    enqueue_grid(study, space, trials, seed)   # (a no-op after the sweep's creator's)
  while True:
    if storage_url:   # (Optuna checks only when optimize starts: after the slots below)
      o.storages.fail_stale_trials(study)
    else:
      reap_dead_trials(study, study_dir, stale_seconds)
    ts = study.get_trials(deepcopy=False)
    waiting = any(t.state == states.WAITING for t in ts)
    # every first attempt takes one of the ``trials`` slots, whatever its outcome; a retry
    # of a dead worker's trial (enqueued: WAITING until a worker takes it) takes none; a
    # grid's slots are its queued points
    if not waiting and (use_grid or taken_slots(ts) >= trials):
      break
    study.optimize(objective, n_trials=1, catch=(UserError,))
  return done


def taken_slots(trials) -> int:
  """How many of ``--trials`` the study's ``trials`` have taken: each first attempt (not a
  retry), whatever its outcome."""
  return sum(retry_of(t) is None for t in trials)


# ------------------------------------------------------------------ after the sweep
def write_report(study, study_dir: str, base_config: str, space: dict,
                 overrides: Optional[dict] = None) -> dict:
  """Writes ``trials.csv``, ``best_trial.json``, ``best_config.py`` (the base config with
  the sweep's ``overrides`` and the best values, usable as ``--config``) and, with two or more complete trials,
  ``optimization_history.png`` and ``param_importances.png``. Returns the best trial's
  ``{number, value, values, variant, run}`` (None when no trial completed)."""
  o = optuna()
  trials = study.get_trials(deepcopy=False)
  fields = list(space["params"])
  with io_utils.staged_files(study_dir) as tmp:
    with open(os.path.join(tmp, "trials.csv"), "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(["number", "state", "value", *fields, "variant", "run", "retry_of"])
      for t in trials:
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                    *[t.params.get(k, "") for k in fields], t.user_attrs.get("variant", ""),
                    t.user_attrs.get("run", ""), "" if retry_of(t) is None else retry_of(t)])
    complete = [t for t in trials if t.state == o.trial.TrialState.COMPLETE]
    best = None
    if complete:
      bt = study.best_trial
      best = dict(number=bt.number, value=bt.value, values=bt.params,
                  variant=bt.user_attrs.get("variant"), run=bt.user_attrs.get("run"),
                  **({"fold_values": bt.user_attrs["fold_values"]}
                     if "fold_values" in bt.user_attrs else {}),
                  direction=space["direction"], metric=space["metric"] or
                  "best_val_score_mean", trials_complete=len(complete))
      io_utils.write_json(os.path.join(tmp, "best_trial.json"), best)
      io_utils.write_text(os.path.join(tmp, "best_config.py"),
                          best_config_source(base_config, {**(overrides or {}), **bt.params},
                                             bt.number, bt.value))
    if len(complete) >= 2:
      _plots(study, tmp)
  return best


def best_config_source(base_config: str, values: dict, number: int, value: float) -> str:
  """A config file: ``base_config``'s ``get_config()`` with ``values`` set."""
  lines = [f'"""The best trial ({number}, validation {value:.4f}) of a sweep: '
           f'{os.path.basename(base_config)} with its values.\n\nUse: --config=THIS_FILE.\n"""',
           "", "import importlib.util", "", f"BASE = {os.path.abspath(base_config)!r}",
           f"VALUES = {json.dumps(values, sort_keys=True, indent=2)}", "", "",
           "def get_config():",
           "  spec = importlib.util.spec_from_file_location('sweep_base_config', BASE)",
           "  module = importlib.util.module_from_spec(spec)",
           "  spec.loader.exec_module(module)",
           "  config = module.get_config()",
           "  for field, value in VALUES.items():",
           "    *path, last = field.split('.')",
           "    node = config",
           "    for p in path:",
           "      node = node[p]",
           "    node[last] = value",
           "  return config", ""]
  return "\n".join(lines)


def _plots(study, out_dir: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  o = optuna()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # Optuna marks its matplotlib plots experimental
    for name, fn in (("optimization_history", o.visualization.matplotlib.plot_optimization_history),
                     ("param_importances", o.visualization.matplotlib.plot_param_importances)):
      try:
        ax = fn(study)
      except (ValueError, RuntimeError) as e:   # e.g. one parameter value only
        print(f"sweep: no {name}.png ({' '.join(str(e).split())[:160]})")
        continue
      ax.figure.tight_layout()
      ax.figure.savefig(os.path.join(out_dir, f"{name}.png"), dpi=110)
      plt.close(ax.figure)


def evaluate_best(study_dir: str, best: dict, base_args: Sequence[str], *,
                  folds: Sequence[int] = (), python: str = sys.executable) -> list:
  """Evaluates the best trial's run once on the test split (evaluate.py with the same data
  flags), or each fold's run on that fold's test speakers; the reports go to
  ``STUDY/trials/<run>[/fold_<k>]/results/test_results``. Returns the logs."""
  logs = []
  for rdir, fold in zip(run_dirs(study_dir, best["run"], folds), _fold_flags(folds)):
    cmd = [python, EVALUATE, *base_args, *override_flags(best["values"]), *fold,
           f"--model_dir={os.path.join(rdir, 'models')}",
           f"--results_dir={os.path.join(rdir, 'results')}"]
    logs.append(os.path.join(rdir, "evaluate.log"))
    _run_logged(cmd, logs[-1], "evaluating the best trial: evaluate.py " + " ".join(fold))
  return logs


def _run_logged(cmd: Sequence[str], log_path: str, what: str) -> None:
  """Runs ``cmd`` with its output appended to ``log_path``; a failure is a
  :class:`UserError` naming ``what``, its exit code, its last line and the log."""
  with open(log_path, "ab") as out:
    rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
  if rc:
    with open(log_path, "rb") as f:
      lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    raise UserError(f"{what} exited {rc}: {lines[-1] if lines else ''} (log: {log_path})")
