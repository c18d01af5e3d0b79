"""Training: one jitted step per variant, the original's optimisation, resumable runs.

Library entry points:

* :func:`train_variant` trains one variant with one seed on in-memory
  :class:`~fusion_jax.data.Split` objects and returns its history;
* :func:`train_and_evaluate` trains several variants × seeds and writes the
  original's plots and reports (what ``experiments/train.py`` calls).

Optimisation is the original's: Adam (lr 1e-4) with L2 weight decay added to
the gradient (``torch.optim.Adam(weight_decay=...)``), cross-entropy with
label smoothing 0.1, ``ReduceLROnPlateau(mode="max", factor=0.5, patience=3)``
on validation accuracy. Differences, on purpose: losses are means over
samples, not over batches; the order of batches and dropout are functions of
the seed, so a run is reproducible and can be resumed exactly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusion_jax import checkpoint, io_utils, metrics, sharding
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.models import model as model_lib

Log = Callable[[str], None]


def default_log(msg: str) -> None:
  print(msg, flush=True)


# ------------------------------------------------------------------ state
@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The optimizer and model are closed over, not carried."""
  step: jax.Array
  params: Any
  opt_state: Any
  learning_rate: jax.Array


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """torch.optim.Adam with ``weight_decay``: L2 added to the gradient, then Adam.

  The learning rate is applied in the step from ``TrainState.learning_rate``,
  so the plateau schedule can change it without touching the optimizer state.
  """
  return optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                     optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))


@dataclasses.dataclass
class Plateau:
  """``torch.optim.lr_scheduler.ReduceLROnPlateau`` in mode "max", threshold "rel".

  ``step(metric)`` after each epoch: an epoch is an improvement when
  ``metric > best * (1 + threshold)``; after more than ``patience`` epochs
  without one, the rate is multiplied by ``factor`` and the count restarts.
  """
  lr: float
  factor: float = 0.5
  patience: int = 3
  threshold: float = 1e-4
  min_lr: float = 0.0
  best: float = -math.inf
  num_bad_epochs: int = 0

  def step(self, metric: float) -> float:
    if metric > self.best * (1 + self.threshold):
      self.best, self.num_bad_epochs = metric, 0
    else:
      self.num_bad_epochs += 1
    if self.num_bad_epochs > self.patience:
      new_lr = max(self.lr * self.factor, self.min_lr)
      if self.lr - new_lr > 1e-8:
        self.lr = new_lr
      self.num_bad_epochs = 0
    return self.lr

  def to_json(self) -> dict:
    return dict(lr=self.lr, best=self.best if math.isfinite(self.best) else None,
                num_bad_epochs=self.num_bad_epochs)

  def load_json(self, d: dict) -> None:
    self.lr = d["lr"]
    self.best = -math.inf if d["best"] is None else d["best"]
    self.num_bad_epochs = d["num_bad_epochs"]


# ------------------------------------------------------------------ steps
def smoothed_cross_entropy(logits, labels, smoothing: float = 0.1):
  """Per-example ``torch.nn.CrossEntropyLoss(label_smoothing=...)``: ``[B, K], [B] → [B]``."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _zeros_acc():
  return dict(loss_sum=jnp.zeros((), jnp.float32), correct=jnp.zeros((), jnp.float32),
              count=jnp.zeros((), jnp.float32))


class Trainer:
  """Jitted train and eval steps for one model, compiled once per batch shape.

  Steps are compiled ahead of time (``jit(...).lower(...).compile()``) and
  kept per input shape, so :attr:`compile_count` is exactly the number of
  distinct shapes seen, and compile time is measured apart from step time.

  Args:
    model: an :class:`~fusion_jax.models.EmotionRecognizer`.
    optimizer: from :func:`make_optimizer`; None for evaluation only.
    label_smoothing: as ``torch.nn.CrossEntropyLoss(label_smoothing=...)``.
    mesh: a ``data`` mesh (see :mod:`fusion_jax.sharding`); None = one device.
  """

  def __init__(self, model, optimizer=None, label_smoothing: float = 0.1, mesh=None):
    self.model = model
    self.optimizer = optimizer
    self.num_classes = model.num_classes
    self.label_smoothing = label_smoothing
    self.mesh = mesh or sharding.make_mesh(1)
    self._compiled: dict = {}
    self.compile_seconds = 0.0
    self.trace_count = 0
    self._train = jax.jit(self._train_step, donate_argnums=(0, 1))
    self._eval = jax.jit(self._eval_step)
    self._predict_fns: dict = {}

  # -- pure functions
  def _forward(self, params, batch, train, key=None):
    rngs = {"dropout": key} if train else None
    return self.model.apply({"params": params}, batch["speech"], batch["speech_mask"],
                            batch["text"], batch["text_mask"], train=train, rngs=rngs)

  def _losses(self, logits, labels):
    return smoothed_cross_entropy(logits, labels, self.label_smoothing)

  def _train_step(self, state: TrainState, acc, batch, base_key):
    self.trace_count += 1  # runs only while tracing
    key = jax.random.fold_in(base_key, state.step)
    weights = batch["example_mask"]

    def loss_fn(params):
      logits, _ = self._forward(params, batch, True, key)
      per_example = self._losses(logits, batch["label"])
      return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0), (
          per_example, logits)

    (_, (per_example, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = jax.tree_util.tree_map(lambda p, u: p - state.learning_rate * u, state.params,
                                    updates)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    acc = dict(loss_sum=acc["loss_sum"] + jnp.sum(per_example * weights),
               correct=acc["correct"] + jnp.sum(correct * weights),
               count=acc["count"] + jnp.sum(weights))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), acc

  def _eval_step(self, params, batch):
    logits, _ = self._forward(params, batch, False)
    weights = batch["example_mask"]
    pred = jnp.argmax(logits, -1)
    onehot_true = jax.nn.one_hot(batch["label"], self.num_classes) * weights[:, None]
    confusion = onehot_true.T @ jax.nn.one_hot(pred, self.num_classes)
    return dict(loss_sum=jnp.sum(self._losses(logits, batch["label"]) * weights),
                confusion=confusion)

  def _predict_step(self, params, batch, aux_keys=()):
    logits, aux = self._forward(params, batch, False)
    return logits, {k: aux[k] for k in aux_keys if k in aux}

  # -- host-side drivers
  def _compiled_fn(self, kind: str, fn, *args, static=()):
    sig = (kind, static, tuple((tuple(x.shape), str(x.dtype))
                               for x in jax.tree_util.tree_leaves(args[-2 if kind == "train"
                                                                       else -1])))
    if sig not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[sig] = fn.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t0
    return self._compiled[sig]

  def precompile(self, state, acc, base_key, shapes: batching.BatchShapes, batch_size: int,
                 eval_batch_size: int, template: Split) -> float:
    """Compiles the train and eval steps of every bucket concurrently; returns wall seconds.

    XLA compiles one executable on one core; a run needs 2 × buckets of them, so
    compiling them in threads up front uses every core instead of one at a time.
    """
    jobs = []
    for length in shapes.speech_buckets:
      train_b = sharding.shard_batch(batching.make_batch(
          template, [], length, shapes.text_length, batch_size), self.mesh)
      eval_b = sharding.shard_batch(batching.make_batch(
          template, [], length, shapes.text_length, eval_batch_size), self.mesh)
      jobs.append(("train", self._train, (state, acc, train_b, base_key)))
      jobs.append(("eval", self._eval, (state.params, eval_b)))
    before, t0 = self.compile_seconds, time.perf_counter()
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(lambda job: self._compiled_fn(job[0], job[1], *job[2]), jobs))
    wall = time.perf_counter() - t0
    self.compile_seconds = before + wall
    return wall

  @property
  def compile_count(self) -> int:
    return len(self._compiled)

  def init_state(self, rng, learning_rate: float) -> TrainState:
    if self.optimizer is None:
      raise ValueError("this Trainer was built without an optimizer (evaluation only)")
    params = model_lib.init_params(self.model, rng)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=self.optimizer.init(params),
                       learning_rate=jnp.asarray(learning_rate, jnp.float32))
    return sharding.replicate(state, self.mesh)

  def train_step(self, state, acc, batch, base_key):
    batch = sharding.shard_batch(batch, self.mesh)
    return self._compiled_fn("train", self._train, state, acc, batch, base_key)(
        state, acc, batch, base_key)

  def eval_step(self, params, batch):
    batch = sharding.shard_batch(batch, self.mesh)
    return self._compiled_fn("eval", self._eval, params, batch)(params, batch)

  def predict_step(self, params, batch, aux_keys: Sequence[str] = ()):
    """Logits ``[B, K]`` and the requested ``aux`` entries for one batch."""
    batch = sharding.shard_batch(batch, self.mesh)
    keys = tuple(sorted(aux_keys))
    if keys not in self._predict_fns:
      self._predict_fns[keys] = jax.jit(functools.partial(self._predict_step, aux_keys=keys))
    return self._compiled_fn("predict", self._predict_fns[keys], params, batch,
                             static=keys)(params, batch)

  def evaluate(self, params, split: Split, shapes: batching.BatchShapes,
               batch_size: int, cache: Optional[dict] = None) -> dict:
    """Loss and confusion matrix over a split (every utterance once, none dropped).

    ``cache`` (a dict owned by the caller) keeps the split's batches on device
    between calls, e.g. the validation set across epochs.
    """
    key = (id(split), batch_size)
    if cache is not None and key in cache:
      batches = cache[key]
    else:
      batches = [sharding.shard_batch(b, self.mesh) for b in batching.iterate_batches(
          split, shapes, batch_size, shuffle=False)]
      if cache is not None:
        cache[key] = batches
    stats = [self.eval_step(params, b) for b in batches]
    stats = jax.device_get(stats)
    confusion = np.rint(sum(s["confusion"] for s in stats)).astype(np.int64)
    loss = float(sum(s["loss_sum"] for s in stats)) / max(len(split), 1)
    return dict(loss=loss, confusion=confusion, **metrics.summary(confusion))


# ------------------------------------------------------------------ one run
@dataclasses.dataclass
class RunResult:
  """One variant × seed: per-epoch history and what the best checkpoint holds."""
  variant: str
  seed: int
  history: dict
  best_val_acc: float
  best_epoch: int
  best_confusion: np.ndarray
  best_metrics: dict
  param_count: int
  checkpoint_dir: str
  compile_seconds: float = 0.0
  train_seconds: float = 0.0
  resumed_from_epoch: int = 0

  @property
  def final_val_acc(self) -> float:
    return self.history["val_acc"][-1] if self.history["val_acc"] else 0.0


HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_uar", "val_macro_f1",
                "learning_rate", "epoch_seconds", "samples_per_second")


def make_trainer(config, variant: str, num_classes: int, mesh=None) -> Trainer:
  model = model_lib.build_model(config.model, variant, num_classes)
  return Trainer(model, make_optimizer(config.optim), config.optim.label_smoothing, mesh)


def plan_shapes(config, train: Split, *others: Split) -> batching.BatchShapes:
  """Batch shapes for ``train`` (and every other split that will be batched)."""
  return batching.plan_shapes([train, *others], config.data.num_buckets,
                              config.data.bucket_multiple, batch_size=config.train.batch_size)


def run_dir(model_dir: str, variant: str, seed: int) -> str:
  return os.path.join(model_dir, variant, f"seed_{seed}")


def _fingerprint(config) -> dict:
  """The parts of the config a resumed run must share with the interrupted one."""
  return dict(model=dict(config.model), optim=dict(config.optim),
              batch_size=config.train.batch_size, num_buckets=config.data.num_buckets)


def run_key(seed: int, variant: str) -> jax.Array:
  """The run's root key: a function of the seed and the variant only."""
  return jax.random.fold_in(jax.random.key(seed), model_lib.VARIANTS.index(variant))


def train_variant(config, variant: str, seed: int, train: Split, val: Split,
                  class_names: Sequence[str], model_dir: str, *,
                  shapes: Optional[batching.BatchShapes] = None, mesh=None,
                  log: Log = default_log, metrics_path: Optional[str] = None,
                  after_epoch: Optional[Callable[[int], None]] = None,
                  trainer: Optional[Trainer] = None) -> RunResult:
  """Trains one variant with one seed; resumes from ``model_dir`` when possible.

  Args:
    config: the full ConfigDict (``model``, ``optim``, ``train``, ``data``, ``eval``).
    variant: one of :data:`fusion_jax.models.VARIANTS`.
    seed: fixes initialisation, batch order and dropout.
    train, val: the splits (see :func:`fusion_jax.data.load_split`).
    class_names: K names; labels are in ``[0, K)``.
    model_dir: checkpoints go to ``model_dir/{variant}/seed_{seed}/{best,latest}``.
    shapes: batch shapes (default: planned from ``train`` and ``val``).
    mesh: device mesh for data parallelism (default: one device).
    log: where progress lines go.
    metrics_path: a JSON-lines file rewritten with this run's epochs.
    after_epoch: called with the epoch number after its checkpoints are saved
      (tests use it to interrupt a run).
    trainer: a :class:`Trainer` for this variant to reuse (its compiled steps
      serve every seed); built from the config when None.

  Returns:
    The run's history and best-checkpoint summary.
  """
  model_lib.check_variant(variant)
  k = len(class_names)
  mesh = mesh or sharding.make_mesh(1)
  bs, eval_bs = config.train.batch_size, config.eval.batch_size
  sharding.check_batch_size(bs, mesh, "train.batch_size")
  sharding.check_batch_size(eval_bs, mesh, "eval.batch_size")
  shapes = shapes or plan_shapes(config, train, val)
  trainer = trainer or make_trainer(config, variant, k, mesh)
  root = run_key(seed, variant)
  state = trainer.init_state(jax.random.fold_in(root, 0), config.optim.learning_rate)
  dropout_key = jax.random.fold_in(root, 1)
  plateau = Plateau(lr=config.optim.learning_rate, factor=config.optim.plateau_factor,
                    patience=config.optim.plateau_patience,
                    threshold=config.optim.plateau_threshold)
  history = {key: [] for key in HISTORY_KEYS}
  best = dict(val_acc=-math.inf, epoch=0, confusion=np.zeros((k, k), np.int64), metrics={})
  fingerprint = json.loads(json.dumps(_fingerprint(config)))
  directory = run_dir(model_dir, variant, seed)
  ckpts = checkpoint.RunCheckpoints(directory)
  start_epoch = 0
  restored = ckpts.restore("latest", checkpoint.abstract_like(state))
  if restored is not None:
    saved_state, meta = restored
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(
          f"{directory} holds a run with a different config "
          f"({meta.get('fingerprint')} vs {fingerprint}); use another --model_dir or delete it")
    state = sharding.replicate(saved_state, mesh)
    history = {key: list(meta["history"][key]) for key in HISTORY_KEYS}
    plateau.load_json(meta["plateau"])
    best = dict(val_acc=meta["best_val_acc"], epoch=meta["best_epoch"],
                confusion=np.asarray(meta["best_confusion"], np.int64),
                metrics=meta["best_metrics"])
    start_epoch = meta["epoch"]
  epochs = config.train.epochs
  n_params = model_lib.count_params(state.params)
  log(f"[{variant} seed {seed}] {n_params:,} parameters; speech buckets "
      f"{list(shapes.speech_buckets)}, text length {shapes.text_length}; "
      + (f"resuming after epoch {start_epoch}/{epochs}" if start_epoch else
         f"training {epochs} epochs on {len(train)} utterances"))
  if metrics_path:
    _rewrite_jsonl(metrics_path, variant, seed, history)

  val_cache: dict = {}
  if start_epoch < epochs:
    compile_s = trainer.precompile(state, sharding.replicate(_zeros_acc(), mesh), dropout_key,
                                   shapes, bs, eval_bs, train)
    if compile_s > 0.05:
      log(f"[{variant} seed {seed}] compiled {trainer.compile_count} step shapes in "
          f"{compile_s:.1f}s")
  last_save = time.perf_counter()
  t_run, compile_at_start = time.perf_counter(), trainer.compile_seconds
  progress_every = config.train.get("progress_every", 0)
  for epoch in range(start_epoch, epochs):
    t0 = time.perf_counter()
    compile_before = trainer.compile_seconds
    acc = sharding.replicate(_zeros_acc(), mesh)
    plan = batching.batch_indices(train, shapes, bs, shuffle=True, seed=seed, epoch=epoch)
    every = progress_every or max(1, len(plan) // 10)
    for i, (b, rows) in enumerate(plan):
      batch = batching.make_batch(train, rows, shapes.speech_buckets[b], shapes.text_length, bs)
      state, acc = trainer.train_step(state, acc, batch, dropout_key)
      if len(plan) >= 20 and (i + 1) % every == 0 and i + 1 < len(plan) and sys.stdout.isatty():
        print(f"\r  epoch {epoch + 1}: step {i + 1}/{len(plan)}", end="", flush=True)
    train_stats = jax.device_get(acc)  # the one host sync of the epoch
    val_stats = trainer.evaluate(state.params, val, shapes, eval_bs, cache=val_cache)
    seconds = time.perf_counter() - t0
    compile_s = trainer.compile_seconds - compile_before
    train_loss = float(train_stats["loss_sum"]) / max(float(train_stats["count"]), 1)
    if not math.isfinite(train_loss):
      raise FloatingPointError(f"[{variant} seed {seed}] training loss became {train_loss} in "
                               f"epoch {epoch + 1}; lower optim.learning_rate")
    lr_used = plateau.lr
    row = dict(train_loss=train_loss,
               train_acc=float(train_stats["correct"]) / max(float(train_stats["count"]), 1),
               val_loss=val_stats["loss"], val_acc=val_stats["accuracy"],
               val_uar=val_stats["uar"], val_macro_f1=val_stats["macro_f1"],
               learning_rate=lr_used, epoch_seconds=seconds,
               samples_per_second=len(train) / max(seconds - compile_s, 1e-9))
    for key in HISTORY_KEYS:
      history[key].append(row[key])
    improved = row["val_acc"] > best["val_acc"]
    if improved:
      best = dict(val_acc=row["val_acc"], epoch=epoch + 1, confusion=val_stats["confusion"],
                  metrics={m: val_stats[m] for m in ("accuracy", "uar", "macro_f1",
                                                     "weighted_f1", "loss")})
    new_lr = plateau.step(row["val_acc"])
    state = state.replace(learning_rate=jnp.asarray(new_lr, jnp.float32))
    meta = dict(epoch=epoch + 1, variant=variant, seed=seed, class_names=list(class_names),
                val_acc=row["val_acc"], history=history, plateau=plateau.to_json(),
                best_val_acc=best["val_acc"], best_epoch=best["epoch"],
                best_confusion=np.asarray(best["confusion"]).tolist(),
                best_metrics=best["metrics"], fingerprint=fingerprint,
                config=json.loads(config.to_json_best_effort()), shapes=dict(
                    speech_buckets=list(shapes.speech_buckets),
                    text_length=shapes.text_length))
    # Best first: after a kill, the rerun replays from "latest" (batch order and
    # dropout are functions of seed and step), reaching the same best again.
    # A replayed improvement older than the best on disk is superseded: skip it.
    if improved and epoch + 1 > (ckpts.latest_step("best") or 0):
      ckpts.save("best", epoch + 1, state, dict(meta, confusion_matrix=meta["best_confusion"]))
    if (epoch + 1 == epochs or time.perf_counter() - last_save >= config.train.get(
        "checkpoint_every_seconds", 0.0)):
      ckpts.save("latest", epoch + 1, state, meta)
      last_save = time.perf_counter()
    if metrics_path:
      _append_jsonl(metrics_path, dict(variant=variant, seed=seed, epoch=epoch + 1, **row))
    note = " *best*" if improved else ""
    if new_lr < lr_used:
      note += f" lr→{new_lr:.2e}"
    compile_note = f", compile {compile_s:.1f}s" if compile_s > 0.05 else ""
    if sys.stdout.isatty():
      print("\r", end="")
    log(f"[{variant} seed {seed}] epoch {epoch + 1:02d}/{epochs} | train loss "
        f"{row['train_loss']:.4f} acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} "
        f"acc {row['val_acc']:.4f} uar {row['val_uar']:.4f} | lr {lr_used:.2e} | "
        f"{seconds:.1f}s{compile_note}, {row['samples_per_second']:.0f} samples/s{note}")
    if after_epoch is not None:
      after_epoch(epoch + 1)
  ckpts.close()
  if start_epoch >= epochs:
    log(f"[{variant} seed {seed}] already trained ({epochs} epochs); reusing checkpoints")
  return RunResult(variant=variant, seed=seed, history=history, best_val_acc=best["val_acc"],
                   best_epoch=best["epoch"], best_confusion=np.asarray(best["confusion"]),
                   best_metrics=best["metrics"], param_count=n_params,
                   checkpoint_dir=directory,
                   compile_seconds=trainer.compile_seconds - compile_at_start,
                   train_seconds=time.perf_counter() - t_run, resumed_from_epoch=start_epoch)


def _rewrite_jsonl(path, variant, seed, history):
  """Keeps other runs' lines and this run's restored epochs (no duplicates on resume)."""
  lines = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if not line.strip():
          continue
        rec = json.loads(line)
        if not (rec.get("variant") == variant and rec.get("seed") == seed):
          lines.append(line.rstrip("\n"))
  for e in range(len(history["val_acc"])):
    lines.append(json.dumps(dict(variant=variant, seed=seed, epoch=e + 1,
                                 **{k: history[k][e] for k in HISTORY_KEYS})))
  io_utils.write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def _append_jsonl(path, record):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


def restore_best(model_dir: str, variant: str, seed: int, num_classes: int, config=None):
  """Best checkpoint of a run: ``(params, meta)``; meta holds the resolved config.

  The model config is read from the checkpoint itself unless ``config`` is given.
  """
  directory = run_dir(model_dir, variant, seed)
  ckpts = checkpoint.RunCheckpoints(directory)
  try:
    meta = ckpts.restore_meta("best")
    if meta is None:
      raise FileNotFoundError(f"no best checkpoint in {directory}; train this variant first "
                              "(experiments/train.py --variants ...)")
    model_cfg = config.model if config is not None else meta["config"]["model"]
    model = model_lib.build_model(model_cfg, variant, num_classes)
    optimizer = make_optimizer(_optim_from(meta, config))
    params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0)))
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          opt_state=jax.eval_shape(optimizer.init, params),
                          learning_rate=jax.ShapeDtypeStruct((), jnp.float32))
    state, meta = ckpts.restore("best", abstract)
  finally:
    ckpts.close()
  return state.params, meta


def _optim_from(meta, config):
  import ml_collections  # pylint: disable=import-outside-toplevel
  return config.optim if config is not None else ml_collections.ConfigDict(
      meta["config"]["optim"])


# ------------------------------------------------------------------ many runs
def train_and_evaluate(config, train: Split, val: Split, class_names: Sequence[str],
                       model_dir: str, results_dir: str, *,
                       variants: Optional[Sequence[str]] = None,
                       seeds: Optional[Sequence[int]] = None, mesh=None,
                       log: Log = default_log) -> dict:
  """Trains every variant × seed and writes the original's plots and reports.

  Writes, under ``results_dir``: ``plots/{variant}_training_curves.png``,
  ``plots/{variant}_confusion_matrix.png``, ``plots/fusion_variants_comparison.png``,
  ``fusion_variants_comparison.txt``, ``metrics.jsonl`` (one line per epoch
  and run), ``summary.json`` and ``config.json``.

  Returns:
    The summary dict (also in ``summary.json``).
  """
  from fusion_jax import plots, reports  # pylint: disable=import-outside-toplevel
  variants = list(variants or model_lib.parse_variants(config.train.variants))
  seeds = list(seeds if seeds is not None else parse_seeds(config.train.seeds))
  os.makedirs(os.path.join(results_dir, "plots"), exist_ok=True)
  io_utils.write_json(os.path.join(results_dir, "config.json"),
                      json.loads(config.to_json_best_effort()))
  shapes = plan_shapes(config, train, val)
  pad = batching.padding_fraction(train, shapes, config.train.batch_size)
  log(f"Train {len(train)} / validation {len(val)} utterances, {len(class_names)} classes: "
      f"{list(class_names)}")
  log(f"Variants {variants}, seeds {seeds}; speech padding {pad['buckets']:.1%} with "
      f"{len(shapes.speech_buckets)} buckets (vs {pad['global_max']:.1%} padding to the "
      "longest utterance)")
  results: dict = {}
  metrics_path = os.path.join(results_dir, "metrics.jsonl")
  for variant in variants:
    trainer = make_trainer(config, variant, len(class_names), mesh)  # compiled once, all seeds
    results[variant] = [
        train_variant(config, variant, seed, train, val, class_names, model_dir, shapes=shapes,
                      mesh=mesh, log=log, metrics_path=metrics_path, trainer=trainer)
        for seed in seeds]
    rs = results[variant]
    plots.training_curves({r.seed: r.history for r in rs}, variant,
                          os.path.join(results_dir, "plots", f"{variant}_training_curves.png"))
    plots.confusion_matrix(
        sum(r.best_confusion for r in rs), class_names,
        f"Confusion Matrix - {variant.upper()}" + (" Fusion" if variant in
                                                    model_lib.FUSION_VARIANTS else "")
        + (f" (validation, {len(rs)} seeds)" if len(rs) > 1 else " (validation)"),
        os.path.join(results_dir, "plots", f"{variant}_confusion_matrix.png"))
  plots.variants_comparison({v: rs[0].history for v, rs in results.items()},
                            os.path.join(results_dir, "plots", "fusion_variants_comparison.png"))
  io_utils.write_text(os.path.join(results_dir, "fusion_variants_comparison.txt"),
                      reports.training_comparison(results, class_names))
  summary = _summary(results, class_names, config, shapes, pad)
  io_utils.write_json(os.path.join(results_dir, "summary.json"), summary)
  log("\n" + "=" * 80 + "\nSUMMARY OF ALL VARIANTS (ranked by validation accuracy)\n" + "=" * 80)
  for rank, v in enumerate(summary["ranking"], 1):
    s = summary["variants"][v]
    spread = f" ± {s['best_val_acc_std']:.4f}" if len(seeds) > 1 else ""
    log(f"{rank}. {v.upper():<20} - Best Val Acc: {s['best_val_acc_mean']:.4f}{spread}")
  log("=" * 80)
  log(f"All results saved to: {results_dir}\nAll models saved to: {model_dir}")
  return summary


def parse_seeds(spec) -> list:
  """``"0,1,2"`` or ``3`` (= seeds 0..2) or a list → list of ints."""
  if isinstance(spec, (list, tuple)):
    return [int(s) for s in spec]
  if isinstance(spec, int):
    return list(range(spec))
  try:
    return [int(s) for s in str(spec).split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"seeds must be comma-separated integers, got {spec!r}") from None


def _summary(results, class_names, config, shapes, pad) -> dict:
  variants = {}
  for v, rs in results.items():
    accs = [r.best_val_acc for r in rs]
    mean, std = metrics.mean_std(accs)
    lo, hi = metrics.bootstrap_ci(accs)
    variants[v] = dict(
        best_val_acc_mean=mean, best_val_acc_std=std, best_val_acc_ci95=[lo, hi],
        param_count=rs[0].param_count,
        seeds={str(r.seed): dict(
            best_val_acc=r.best_val_acc, best_epoch=r.best_epoch,
            final_val_acc=r.final_val_acc, best_metrics=r.best_metrics,
            checkpoint_dir=r.checkpoint_dir, compile_seconds=r.compile_seconds,
            train_seconds=r.train_seconds, resumed_from_epoch=r.resumed_from_epoch,
            best_confusion=np.asarray(r.best_confusion).tolist()) for r in rs})
  ranking = sorted(variants, key=lambda v: -variants[v]["best_val_acc_mean"])
  scores = {v: [r.best_val_acc for r in rs] for v, rs in results.items()}
  return dict(class_names=list(class_names), ranking=ranking, variants=variants,
              comparisons=metrics.paired_comparisons(scores),
              shapes=dict(speech_buckets=list(shapes.speech_buckets),
                          text_length=shapes.text_length),
              padding_fraction=pad, selected_on="validation")
