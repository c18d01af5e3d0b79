"""Run records: where a run lives, what it remembers, and loading it back in either format.

A *run* is one variant × seed. Layout under a model directory::

  model_dir/{variant}/seed_{seed}/best/{epoch}/      orbax: state + meta (best validation)
  model_dir/{variant}/seed_{seed}/latest/{epoch}/    orbax: state + meta (for resuming)
  model_dir/best_{variant}_model.pt                   the original's PyTorch checkpoint

The host-side memory of a run is one :class:`RunState` — epochs done, per-epoch
history, the best checkpoint's summary (:class:`Best`), the plateau schedule —
with a JSON round trip; it is stored in every checkpoint's metadata.
:func:`load_run` / :func:`load_runs` give a trained model back as a :class:`Run`
whether it was trained here (orbax) or by the original (``.pt``, converted).
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import socket
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fusion_jax import checkpoint, configs, io_utils, metrics, optim as optim_lib, sharding, steps
from fusion_jax.errors import ConfigError, DataError
from fusion_jax.models import convert, heads, registry
from fusion_jax.models import model as model_lib

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_uar", "val_macro_f1",
                "learning_rate", "epoch_seconds", "samples_per_second")
BEST_METRICS = (*metrics.SELECTION_METRICS, "loss")
META_FORMAT = 2


# ------------------------------------------------------------------ layout
def run_dir(model_dir: str, variant: str, seed: int) -> str:
  return os.path.join(model_dir, variant, f"seed_{seed}")


def torch_checkpoint_path(model_dir: str, variant: str) -> str:
  return os.path.join(model_dir, f"best_{variant}_model.pt")


def available_seeds(model_dir: str, variant: str) -> list:
  """Seeds with a ``best`` checkpoint (``seed_N`` folders; other names ignored)."""
  found = (re.fullmatch(r"seed_(\d+)", os.path.basename(os.path.dirname(d)))
           for d in glob.glob(os.path.join(model_dir, variant, "seed_*", "best")))
  return sorted(int(m.group(1)) for m in found if m)


def available_variants(model_dir: str) -> list:
  """Registered variants with an orbax run or an original ``best_{variant}_model.pt``."""
  return [v for v in registry.names()
          if os.path.isdir(os.path.join(model_dir, v))
          or os.path.exists(torch_checkpoint_path(model_dir, v))]


def fingerprint(config) -> dict:
  """The parts of the config a resumed run must share with the interrupted one (compared
  without the head knobs its variant does not read)."""
  metric = configs.selection_metric(config)   # (absent when accuracy: earlier runs resume)
  # validation in fewer buckets than training changes its sums by float rounding (absent
  # when it uses them all, as every run did before eval.num_buckets: those runs resume)
  eval_buckets = configs.eval_buckets(config)
  return json.loads(json.dumps(dict(
      model=dict(config.model), optim=dict(config.optim), batch_size=config.train.batch_size,
      num_buckets=config.data.num_buckets,
      **({} if metric == "accuracy" else {"selection_metric": metric}),
      **({} if eval_buckets >= config.data.num_buckets else {"eval_buckets": eval_buckets}))))


def _unused_knobs(variant: str) -> set:
  """Head knobs (:data:`fusion_jax.models.heads.HEAD_KNOBS`) that ``variant``'s model does
  not read."""
  head = registry.get(variant).head if variant in registry.names() else None
  return set(heads.HEAD_KNOBS) - set(head.knob_names() if head is not None else ())


def _comparable(flat: dict, variant: str) -> dict:
  """A flattened identity without what does not make another run: where the data lives
  (moved files with the same content hash are the same data) and head knobs the variant
  does not read (``--config.model.tensor_dim`` does not change a gated run)."""
  unused = {f"fingerprint.model.{k}" for k in _unused_knobs(variant)}
  return {k: v for k, v in flat.items() if ".files." not in f".{k}" and k not in unused}


def comparable_fingerprint(fp: dict, variant: str) -> dict:
  """``fp`` (a :func:`fingerprint`) as compared between runs of ``variant``."""
  return _comparable(_flatten({"fingerprint": fp}), variant)


# ------------------------------------------------------------------ identity and lock
class RunMismatch(DataError):
  """A directory holds another run (other config or other data) than the one asked for."""


class RunInUse(DataError):
  """Another live process holds the directory's lock."""


def data_identity(split) -> dict:
  """What a run was trained on: the files (path, size) and a hash of the arrays themselves.

  The hash covers every utterance's features and the labels, so a standardised or
  subset split (recipes) has an identity too, and a changed file cannot pass as the old one.
  """
  h = hashlib.blake2b(digest_size=16)
  for seqs in (split.speech, split.text):
    for x in seqs:
      a = np.asarray(x)
      h.update(f"{a.shape}{a.dtype.str}".encode())
      h.update(a.tobytes())
  h.update(np.asarray(split.labels, np.int64).tobytes())
  files = {}
  for m, path in sorted(split.sources.items()):
    if path and os.path.isfile(path):
      files[m] = dict(path=os.path.abspath(path), bytes=os.path.getsize(path))
  return dict(utterances=len(split), files=files, content=h.hexdigest())


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def check_identity(directory: str, identity: dict) -> None:
  """Records ``identity`` in ``directory/run.json``, or checks it against the one recorded.

  Raises:
    RunMismatch: the directory holds another run; the message names what differs.
  """
  path = os.path.join(directory, "run.json")
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        recorded = json.load(f)["identity"]
    except (ValueError, KeyError, OSError) as e:
      raise RunMismatch(path, f"unreadable run record ({e})",
                        hint="delete the run directory to start it over") from None
    want = json.loads(json.dumps(identity))
    a, b = (_comparable(_flatten(x), str(want.get("variant"))) for x in (recorded, want))
    if a != b:
      diff = [f"{k}: {a.get(k, '-')!s:.40} → {b.get(k, '-')!s:.40}" for k in sorted(set(a) | set(b))
              if a.get(k) != b.get(k)]
      raise RunMismatch(directory, "holds another run than this one: " + "; ".join(diff[:6])
                        + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else ""),
                        hint="use another --model_dir, or delete this run's directory to "
                        "train it anew")
    return
  if not sharding.is_primary():   # (process 0 records it; every process checks it)
    return
  os.makedirs(directory, exist_ok=True)
  io_utils.write_json(path, dict(identity=identity, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                                 host=socket.gethostname(), pid=os.getpid()))


class RunLock:
  """An exclusive lock on a directory for one process (``flock`` on ``DIR/.lock``, or
  ``DIR/<name>`` to lock one set of outputs in it).

  The kernel releases it when the holder exits or is killed, so no stale lock
  survives a crash; the file names the holder (pid, host, start) for the message.
  In a multi-process run, process 0 holds it for the whole job (the other processes are
  the same command, not competitors; flock does not reach across hosts anyway).

  Raises (on enter):
    RunInUse: another live process holds it.
  """

  def __init__(self, directory: str, what: str = "run", name: str = ".lock"):
    self.directory, self.what, self.name = directory, what, name
    self._file = None

  def __enter__(self):
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise DataError(self.directory, "is a file, not a directory",
                      hint="give a directory for checkpoints and reports")
    if not sharding.is_primary():
      return self
    os.makedirs(self.directory, exist_ok=True)
    f = open(os.path.join(self.directory, self.name), "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise RunInUse(self.directory, f"in use by {holder} (another process is writing this "
                     f"{self.what})", hint="wait for it to finish, or use another directory") \
          from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
    return False


# ------------------------------------------------------------------ the run's memory
@dataclasses.dataclass
class Best:
  """What the best checkpoint (highest validation ``train.selection_metric`` so far) holds:
  its epoch, validation accuracy, confusion matrix and metrics, and ``score``, the value of
  the selection metric (= ``val_acc`` when selecting on accuracy)."""
  epoch: int = 0
  val_acc: float = -math.inf
  confusion: Optional[np.ndarray] = None   # [K, K] validation confusion matrix
  metrics: dict = dataclasses.field(default_factory=dict)
  score: float = -math.inf

  def to_json(self) -> dict:
    finite = lambda x: x if math.isfinite(x) else None
    return dict(epoch=self.epoch, val_acc=finite(self.val_acc), score=finite(self.score),
                confusion=None if self.confusion is None else np.asarray(self.confusion).tolist(),
                metrics=dict(self.metrics))

  @classmethod
  def from_json(cls, d: dict) -> "Best":
    num = lambda x: -math.inf if x is None else float(x)
    return cls(epoch=int(d["epoch"]), val_acc=num(d["val_acc"]),
               confusion=None if d["confusion"] is None else np.asarray(d["confusion"],
                                                                         np.int64),
               metrics=dict(d["metrics"]),
               score=num(d.get("score", d["val_acc"])))   # (runs that selected on accuracy)


@dataclasses.dataclass
class RunState:
  """The host-side state of one run: epochs done, history, best checkpoint, plateau."""
  variant: str
  seed: int
  epoch: int
  history: dict
  best: Best
  plateau: optim_lib.Plateau

  @classmethod
  def new(cls, variant: str, seed: int, plateau: optim_lib.Plateau) -> "RunState":
    return cls(variant, int(seed), 0, {k: [] for k in HISTORY_KEYS}, Best(), plateau)

  @property
  def final_val_acc(self) -> float:
    return self.history["val_acc"][-1] if self.history["val_acc"] else 0.0

  def record(self, row: dict, val_stats: dict, metric: str = "accuracy") -> bool:
    """Appends one epoch (``row`` has every :data:`HISTORY_KEYS`); True if it is the best by
    the validation ``metric`` (a key of ``val_stats``: accuracy, uar, macro_f1, weighted_f1)."""
    for key in HISTORY_KEYS:
      self.history[key].append(row[key])
    self.epoch += 1
    score = float(val_stats[metric])
    improved = score > self.best.score
    if improved:
      best_metrics = {m: val_stats[m] for m in BEST_METRICS}
      if "blend" in val_stats:   # a floor's blend (models/floor.py), chosen on validation
        best_metrics["floor_blend"] = [list(r) for r in val_stats["blend"]]
        best_metrics["floor_scores"] = dict(val_stats.get("pattern_scores", {}))
      self.best = Best(self.epoch, row["val_acc"], np.asarray(val_stats["confusion"]),
                       best_metrics, score)
    return improved

  def epoch_record(self, e: int) -> dict:
    """Epoch ``e`` (1-based) as a JSON-lines record."""
    return dict(variant=self.variant, seed=self.seed, epoch=e,
                **{k: self.history[k][e - 1] for k in HISTORY_KEYS})

  def to_json(self) -> dict:
    return dict(variant=self.variant, seed=self.seed, epoch=self.epoch,
                history={k: list(self.history[k]) for k in HISTORY_KEYS},
                best=self.best.to_json(), plateau=self.plateau.to_json())

  @classmethod
  def from_json(cls, d: dict, plateau: optim_lib.Plateau) -> "RunState":
    plateau.load_json(d["plateau"])
    return cls(d["variant"], int(d["seed"]), int(d["epoch"]),
               {k: list(d["history"][k]) for k in HISTORY_KEYS}, Best.from_json(d["best"]),
               plateau)

  @classmethod
  def from_meta(cls, meta: dict, plateau: Optional[optim_lib.Plateau] = None) -> "RunState":
    """From a checkpoint's metadata (also the flat layout of fusion_jax ≤ 0.1 runs)."""
    plateau = plateau or optim_lib.Plateau(lr=0.0)
    if "run" in meta:
      return cls.from_json(meta["run"], plateau)
    best = dict(epoch=meta["best_epoch"], val_acc=meta["best_val_acc"],
                confusion=meta["best_confusion"], metrics=meta["best_metrics"])
    return cls.from_json(dict(variant=meta["variant"], seed=meta["seed"], epoch=meta["epoch"],
                              history=meta["history"], best=best, plateau=meta["plateau"]),
                         plateau)


@dataclasses.dataclass(frozen=True)
class Ranking:
  """Variants best first on validation, and what decided any tie (``None``: no tie)."""
  order: list
  tie_break: Optional[str] = None


def rank_variants(scores: dict, losses: Optional[dict] = None, *,
                  metric: str = "the selection metric") -> Ranking:
  """The one ranking rule of every binary and report: the higher mean validation
  ``metric`` (``scores[v]``: one value per run), then, on a tie, the lower mean validation
  loss (``losses[v]``; runs without one count as worst), then the registry's order.
  Means are compared rounded to 9 decimals, so runs that tie in counts tie here."""
  losses = losses or {}
  mean = lambda xs: float(np.nanmean(xs)) if len(xs) and not np.all(np.isnan(xs)) else math.nan
  def key(v):
    s, l = mean(np.asarray(scores[v], float)), mean(np.asarray(losses.get(v, []), float))
    position = registry.names().index(v) if v in registry.names() else len(registry.names())
    return (-round(s, 9) if math.isfinite(s) else math.inf,
            round(l, 9) if math.isfinite(l) else math.inf, position, v)
  order = sorted(scores, key=key)
  notes = []
  for a, b in zip(order, order[1:]):
    ka, kb = key(a), key(b)
    if ka[0] != kb[0] or not math.isfinite(ka[0]):
      continue
    how = (f"lower validation loss ({ka[1]:.4f} vs {kb[1]:.4f})" if ka[1] != kb[1]
           else "the registry's order")
    notes.append(f"{a} and {b} tie on validation {metric} ({-ka[0]:.4f}); {how} puts {a} first")
  return Ranking(order, "; ".join(notes) or None)


def run_losses(states: Sequence["RunState"]) -> list:
  """Each run's validation loss at its best checkpoint (NaN where not recorded)."""
  return [float(s.best.metrics.get("loss", math.nan)) if s is not None else math.nan
          for s in states]


def checkpoint_meta(run: RunState, config, class_names: Sequence[str], shapes,
                    inputs: Optional[dict] = None) -> dict:
  """The metadata saved beside a checkpoint's state.

  ``inputs``: how the training features were made (the split's ``preprocessing``:
  extractors, standardisation, token limit), for prediction on new recordings.
  """
  return dict(format=META_FORMAT, variant=run.variant, seed=run.seed,
              class_names=list(class_names), run=run.to_json(), inputs=inputs or {},
              fingerprint=fingerprint(config), config=json.loads(config.to_json_best_effort()),
              shapes=dict(speech_buckets=list(shapes.speech_buckets),
                          text_length=shapes.text_length,
                          text_buckets=list(shapes.text_buckets)))


# ------------------------------------------------------------------ loading trained runs
@dataclasses.dataclass
class Run:
  """A trained model ready to use: a variant × seed (or an original ``.pt`` checkpoint).

  Attributes:
    variant, seed: which run (seed ``"torch"`` for an original checkpoint).
    params: Flax parameters.
    model_config: the :class:`~fusion_jax.models.ModelConfig` it was trained with.
    val_acc: the validation accuracy of its best checkpoint.
    source: the directory or file it came from.
    class_names: the classes it predicts, if recorded.
    state: its :class:`RunState` (orbax runs).
  """
  variant: str
  seed: str
  params: dict
  model_config: model_lib.ModelConfig
  val_acc: float
  source: str
  class_names: Optional[list] = None
  state: Optional[RunState] = None
  opt_state: Optional[object] = None          # optax state of the best checkpoint
  learning_rate: Optional[float] = None       # the rate in force at the best checkpoint
  inputs: dict = dataclasses.field(default_factory=dict)   # how its features were made
  selection_metric: str = "accuracy"   # what chose its best checkpoint (and ranks variants)
  val_score: Optional[float] = None    # that metric's validation value (None: = val_acc)

  def __post_init__(self):
    if self.val_score is None:
      self.val_score = self.val_acc


def _abstract_state(model_cfg, variant: str, num_classes: int, optim_cfg):
  model = model_lib.build_model(model_cfg, variant, num_classes)
  optimizer = optim_lib.make_optimizer(optim_cfg, finetune=model.config.finetunes,
                                       frozen=model_lib.has_floor(model.config, variant))
  params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
  return steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          opt_state=jax.eval_shape(optimizer.init, params),
                          learning_rate=jax.ShapeDtypeStruct((), jnp.float32))


def best_meta(model_dir: str, variant: str, seed: int) -> Optional[dict]:
  """The metadata of a run's best checkpoint (history, config, classes), without its arrays;
  None if it has none."""
  ckpts = checkpoint.RunCheckpoints(run_dir(model_dir, variant, seed))
  try:
    return ckpts.restore_meta("best")
  finally:
    ckpts.close()


def load_run(model_dir: str, variant: str, seed: int) -> Run:
  """The best checkpoint of an orbax run, with the model config it was trained with."""
  directory = run_dir(model_dir, variant, seed)
  ckpts = checkpoint.RunCheckpoints(directory)
  try:
    meta = ckpts.restore_meta("best")
    if meta is None:
      raise FileNotFoundError(f"no best checkpoint in {directory}; train this variant first "
                              "(experiments/train.py --variants ...)")
    model_cfg = model_lib.ModelConfig.from_config(meta["config"]["model"])
    abstract = _abstract_state(model_cfg, variant, len(meta["class_names"]),
                               ml_collections.ConfigDict(meta["config"]["optim"]))
    state, meta = ckpts.restore("best", abstract)
  finally:
    ckpts.close()
  run = RunState.from_meta(meta)
  return Run(variant, str(seed), state.params, model_cfg, float(run.best.val_acc), directory,
             list(meta["class_names"]), run, state.opt_state, float(state.learning_rate),
             meta.get("inputs", {}),
             selection_metric=configs.selection_metric(meta["config"]),
             val_score=float(run.best.score))


def load_runs(model_dir: str, variants: Sequence[str], seeds: Optional[Sequence[int]],
              num_classes: int, base_model_config: Optional[model_lib.ModelConfig] = None,
              log: Callable[[str], None] = print,
              class_names: Optional[Sequence[str]] = None) -> list:
  """Best checkpoints of every variant × seed; an original ``.pt`` is converted.

  Args:
    base_model_config: what an original checkpoint's weights cannot tell (heads,
      dropout, dtype); its dims are inferred from the weights.

  Raises:
    FileNotFoundError: naming what is missing and what exists.
    ValueError: a checkpoint for another number of classes.
  """
  runs = []
  for v in variants:
    pt = torch_checkpoint_path(model_dir, v)
    have = available_seeds(model_dir, v)
    if not have and os.path.exists(pt):
      ckpt = convert.load_torch_checkpoint(pt, base_config=base_model_config, variant=v)
      if ckpt["num_classes"] != num_classes:
        raise ConfigError(f"{pt} has {ckpt['num_classes']} classes but the class list has "
                         f"{num_classes}")
      if class_names is not None and ckpt.get("class_names") is not None and list(
          ckpt["class_names"]) != list(class_names):
        raise ConfigError(f"{pt} was trained on the classes {list(ckpt['class_names'])} but "
                         f"the class list (from --csv_path) is {list(class_names)}")
      log(f"[{v}] converted the original PyTorch checkpoint {pt} (epoch "
          f"{ckpt.get('epoch')}, val acc {ckpt.get('val_acc')})")
      runs.append(Run(v, "torch", ckpt["params"], ckpt["model_config"],
                      float(ckpt.get("val_acc", float("nan"))), pt, ckpt.get("class_names")))
      continue
    wanted = list(seeds) if seeds is not None else have
    missing = [s for s in wanted if s not in have]
    if not have or missing:
      raise FileNotFoundError(
          f"no best checkpoint for {v} seed(s) {missing or wanted} in {model_dir} "
          f"(found seeds {have}; variants present: {available_variants(model_dir)}); "
          "train them first or pass --variants/--seeds")
    for s in wanted:
      run = load_run(model_dir, v, s)
      check_classes(run, num_classes, class_names)
      runs.append(run)
  return runs


def check_classes(run: Run, num_classes: int, class_names: Optional[Sequence[str]]) -> None:
  """Raises ``ValueError`` when a run predicts other classes (or in another order)."""
  if run.class_names is None:
    if num_classes != len(class_names or []) and class_names is not None:
      raise ConfigError(f"{run.source} has another number of classes than {class_names}")
    return
  if len(run.class_names) != num_classes or (
      class_names is not None and list(run.class_names) != list(class_names)):
    raise ConfigError(f"{run.source} was trained on the classes {run.class_names} but the "
                     f"class list (from --csv_path) is {list(class_names or [])}: labels would "
                     "be misnamed; give the training CSV of this run")


def check_dims(runs: Sequence[Run], split) -> None:
  """Raises ``ValueError`` naming the feature file whose dim a checkpoint cannot take."""
  dims = {"speech": split.speech[0].shape[1], "text": split.text[0].shape[1]}
  for run in runs:
    want = {"speech": run.model_config.speech_dim, "text": run.model_config.text_dim}
    for m in registry.get(run.variant).modalities:
      if dims[m] != want[m]:
        raise ConfigError(
            f"{split.sources.get(m) or split.name}: {m} features are {dims[m]}-d but "
            f"{run.source} was trained on {want[m]}-d {m} features")
