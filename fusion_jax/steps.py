"""Pure steps and the compile ledger.

The three steps are module-level pure functions of arrays::

  train_step(state, metrics, batch, dropout_key, *, model, optimizer, label_smoothing,
             loss, microbatches) -> (state, metrics)
  eval_step(params, batch, *, model, label_smoothing, microbatches) -> {loss_sum, confusion}
  predict_step(params, batch, *, model, aux_keys) -> (logits, {aux_key: array})

:class:`Steps` binds their static parts (model, optimizer, smoothing) with
``functools.partial`` and jits them, as the Flax examples do. A
:class:`CompileLedger` compiles each (step, input shapes) pair ahead of time
exactly once and keeps the executable with its compile time; training,
evaluation, prediction and the benchmark share one ledger, so a new shape can
never recompile silently and compile time is reported apart from step time.

Batches (see :mod:`fusion_jax.data.batching`) are dicts: ``speech [B, T, Ds]``,
``speech_mask [B, T]``, ``text [B, L, Dt]``, ``text_mask [B, L]``, ``label [B]``,
``example_mask [B]`` (0 = padding row), ``index [B]``.

Optimisation is the original's: Adam with L2 weight decay added to the gradient
(``torch.optim.Adam(weight_decay=...)``), cross-entropy with label smoothing,
``ReduceLROnPlateau(mode="max")`` (:class:`Plateau`, host side).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import functools
import math
import os
import threading
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusion_jax import metrics as metrics_lib
from fusion_jax.errors import ConfigError


# ------------------------------------------------------------------ state and optimisation
@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The optimizer and model are bound to the step, not carried."""
  step: jax.Array
  params: Any
  opt_state: Any
  learning_rate: jax.Array


def make_optimizer(optim_cfg, finetune: bool = False) -> optax.GradientTransformation:
  """torch.optim.Adam with ``weight_decay``: L2 added to the gradient, then Adam.

  The learning rate is applied in the step from ``TrainState.learning_rate``,
  so the plateau schedule can change it without touching the optimizer state.
  With ``finetune``, pretrained layers (``models.encoders.SCOPE``) get their own rate,
  ``finetune_learning_rate`` (scaled by the plateau schedule like the rest), reached
  by a linear warm-up over ``finetune_warmup_steps`` (``optax.multi_transform``).
  """
  adam = lambda: optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                             optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2,
                                                 eps=optim_cfg.eps))
  if not finetune:
    return adam()
  ratio = optim_cfg.get("finetune_learning_rate", 5e-5) / optim_cfg.learning_rate
  warmup = max(int(optim_cfg.get("finetune_warmup_steps", 0)), 0)
  ramp = lambda n: ratio * (jnp.minimum((n + 1.0) / warmup, 1.0) if warmup else 1.0)
  from fusion_jax.models import encoders  # pylint: disable=import-outside-toplevel
  labels = lambda params: {k: "finetune" if k == encoders.SCOPE else "model" for k in params}
  return optax.multi_transform(
      {"model": adam(), "finetune": optax.chain(adam(), optax.scale_by_schedule(ramp))},
      labels)


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

  @classmethod
  def from_config(cls, optim_cfg) -> "Plateau":
    return cls(lr=optim_cfg.learning_rate, factor=optim_cfg.plateau_factor,
               patience=optim_cfg.plateau_patience, threshold=optim_cfg.plateau_threshold)

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


def smoothed_cross_entropy(logits, labels, smoothing: float = 0.1):
  """Per-example ``torch.nn.CrossEntropyLoss(label_smoothing=...)``: ``[B, K], [B] → [B]``."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class Loss:
  """The training loss: cross-entropy with label smoothing, optionally class-weighted
  (``weights [K]``, normalised by the batch's summed weight as
  ``torch.nn.CrossEntropyLoss(weight=...)``) and focal (each example's loss times
  ``(1 - p_true)^gamma``)."""
  label_smoothing: float = 0.1
  class_weights: Optional[tuple] = None
  focal_gamma: float = 0.0

  @classmethod
  def from_config(cls, optim_cfg) -> "Loss":
    values = optim_cfg.get("class_weight_values", "")
    if optim_cfg.get("class_weights", "none") != "none" and not values:
      raise ConfigError(f"optim.class_weights={optim_cfg.class_weights!r} is resolved from the "
                       "training labels: build the Experiment with train=... "
                       "(experiment.Experiment.create)")
    return cls(float(optim_cfg.label_smoothing),
               tuple(float(x) for x in values.split(",")) if values else None,
               float(optim_cfg.get("focal_gamma", 0.0)))

  def per_example(self, logits, labels):
    """``[B, K], [B] → [B]``: each example's loss (focal-scaled if ``focal_gamma``)."""
    per_example = smoothed_cross_entropy(logits, labels, self.label_smoothing)
    if self.focal_gamma:
      p_true = jnp.take_along_axis(jax.nn.softmax(logits.astype(jnp.float32)),
                                   labels[:, None], axis=-1)[:, 0]
      per_example = per_example * jnp.power(1.0 - p_true, self.focal_gamma)
    return per_example

  def weights(self, labels, example_mask):
    """``[B]``: each example's weight in the mean (0 for padding rows)."""
    if self.class_weights is None:
      return example_mask
    return example_mask * jnp.asarray(self.class_weights, jnp.float32)[labels]

  def denominator(self, labels, example_mask):
    """The mean's denominator: the batch's summed weight."""
    return jnp.maximum(jnp.sum(self.weights(labels, example_mask)), 1e-12)

  def __call__(self, logits, labels, example_mask, denominator=None):
    """``(mean loss, per-example loss [B])`` over the real rows (``example_mask`` 1).
    ``denominator``: a whole batch's (:meth:`denominator`) when these rows are a part of it."""
    per_example = self.per_example(logits, labels)
    if denominator is None:
      denominator = self.denominator(labels, example_mask)
    return jnp.sum(per_example * self.weights(labels, example_mask)) / denominator, per_example


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
  """``n / (K n_k)`` per class (scikit-learn's "balanced"); a class absent from
  ``labels`` gets weight 0 (it has no loss term anyway)."""
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
  return np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)


def zero_metrics() -> dict:
  """The training accumulator: summed loss, correct predictions and examples."""
  return dict(loss_sum=jnp.zeros((), jnp.float32), correct=jnp.zeros((), jnp.float32),
              count=jnp.zeros((), jnp.float32))


def init_state(model, optimizer, rng, learning_rate: float) -> TrainState:
  from fusion_jax.models import model as model_lib  # pylint: disable=import-outside-toplevel
  params = model_lib.init_params(model, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    learning_rate=jnp.asarray(learning_rate, jnp.float32))


# ------------------------------------------------------------------ pure steps
def _forward(model, params, batch, train, key=None):
  rngs = {"dropout": key} if train else None
  return model.apply({"params": params}, batch["speech"], batch["speech_mask"],
                     batch["text"], batch["text_mask"], train=train, rngs=rngs)


def split_rows(tree, parts: int):
  """``[B, ...] → [parts, B / parts, ...]``: part ``j`` holds rows ``j, j + parts, ...``
  (strided, so each part keeps the batch axis' sharding over devices)."""
  return jax.tree_util.tree_map(
      lambda x: jnp.moveaxis(x.reshape((x.shape[0] // parts, parts) + x.shape[1:]), 1, 0),
      tree)


def merge_rows(tree):
  """The inverse of :func:`split_rows`: ``[parts, B / parts, ...] → [B, ...]``."""
  return jax.tree_util.tree_map(
      lambda x: jnp.moveaxis(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


# Frames per microbatch on CPU (runtime.microbatch_frames = -1): at 768-d a part this size
# trains as fast as the whole batch of 32 and needs a third of its memory (BUILD_NOTES,
# Performance); accelerators compute the whole batch at once.
CPU_MICROBATCH_FRAMES = 4096


def microbatch_budget(frames: int) -> int:
  """``runtime.microbatch_frames`` resolved: -1 (auto) is :data:`CPU_MICROBATCH_FRAMES` on
  CPU and 0 (whole batches) on GPU/TPU."""
  if frames >= 0:
    return frames
  return CPU_MICROBATCH_FRAMES if jax.default_backend() == "cpu" else 0


def num_microbatches(batch_size: int, frames: int, budget: int, multiple: int = 1) -> int:
  """How many microbatches a training batch of ``batch_size`` rows of ``frames`` frames
  (speech + text, padded) is computed in: the fewest that divide the batch into equal
  parts of at most ``budget`` frames per device (rows x frames; ``multiple`` devices
  share each part's rows). ``budget`` 0: one (the whole batch at once)."""
  if budget <= 0 or batch_size % multiple:
    return 1
  per_device = batch_size // multiple
  for k in range(1, per_device + 1):
    if per_device % k == 0 and (per_device // k) * frames <= budget:
      return k
  return per_device


def train_step(state: TrainState, metrics: dict, batch: dict, dropout_key, *, model,
               optimizer, label_smoothing: float, loss: Optional[Loss] = None,
               microbatches: int = 1):
  """One optimisation step; ``metrics`` accumulates masked loss, correct and count sums.

  Dropout's key is ``fold_in(dropout_key, state.step)``: a function of the run and
  the step only, so an interrupted run replays exactly. ``loss`` (default: plain
  cross-entropy with ``label_smoothing``) may weight classes or be focal; the
  accumulated ``loss_sum`` sums the per-example loss (focal-scaled, never class-weighted).

  ``microbatches`` k > 1 (dividing B) computes the gradient over k strided parts of the
  batch (rows ``j, j + k, ...``) one after another and adds them (gradient accumulation:
  the step's activation memory / k). Each part draws the whole batch's dropout masks for
  its rows (:func:`~fusion_jax.models.layers.batch_rows`) and the mean's denominator is
  the whole batch's, so the step equals the one-pass step up to float rounding.
  """
  key = jax.random.fold_in(dropout_key, state.step)
  loss = loss or Loss(label_smoothing)
  weights = batch["example_mask"]
  rows = weights.shape[0]
  if rows % microbatches:
    raise ConfigError(f"{microbatches} microbatches do not divide a batch of {rows} rows")
  # the whole batch's, never a part's: the parts' gradients add up to the mean's
  denominator = loss.denominator(batch["label"], weights)

  def loss_fn(params, part, stride, offset):
    from fusion_jax.models import layers  # pylint: disable=import-outside-toplevel
    with layers.batch_rows(stride, offset):
      logits, _ = _forward(model, params, part, True, key)
    mean, per_example = loss(logits, part["label"], part["example_mask"], denominator)
    return mean, (per_example, logits)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (_, (per_example, logits)), grads = grad_fn(state.params, batch, 1, 0)
  else:
    parts = split_rows(batch, microbatches)  # row m * k + j of the batch: row m of part j

    def accumulate(acc, part_j):
      part, j = part_j
      (_, aux), g = grad_fn(state.params, part, microbatches, j)
      return jax.tree_util.tree_map(jnp.add, acc, g), aux

    zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    grads, (per_example, logits) = jax.lax.scan(
        accumulate, zeros, (parts, jnp.arange(microbatches)))
    per_example, logits = merge_rows((per_example, logits))
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = jax.tree_util.tree_map(lambda p, u: p - state.learning_rate * u, state.params,
                                  updates)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  metrics = dict(loss_sum=metrics["loss_sum"] + jnp.sum(per_example * weights),
                 correct=metrics["correct"] + jnp.sum(correct * weights),
                 count=metrics["count"] + jnp.sum(weights))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def gather(data: dict, idx) -> dict:
  """The batch of rows ``idx [B]`` (-1 = a padding row) of one bucket's device arrays.

  ``data`` holds ``speech [N, T, Ds]``, ``speech_mask [N, T]``, ``text [N, L, Dt]``,
  ``text_mask [N, L]``, ``label [N]`` already on the device; a padding row repeats
  row 0 with its masks and example weight zeroed (rows never interact, so the
  real rows' results are those of a zero-filled padding row).
  """
  valid = (idx >= 0).astype(jnp.float32)
  batch = {k: jnp.take(v, jnp.maximum(idx, 0), axis=0) for k, v in data.items()}
  batch["speech_mask"] = batch["speech_mask"] * valid[:, None]
  batch["text_mask"] = batch["text_mask"] * valid[:, None]
  batch["example_mask"] = valid
  return batch


def train_group_step(state: TrainState, metrics: dict, data: dict, idx, dropout_keys, *,
                     model, optimizer, label_smoothing: float, loss: Optional[Loss] = None,
                     microbatches: int = 1):
  """:func:`train_step` for S runs at once (seeds of one variant), as one program.

  ``state``, ``metrics``, ``idx [S, B]`` and ``dropout_keys [S]`` are stacked on a
  leading axis; ``data`` (one bucket on the device) is shared.
  """
  one = lambda st, m, i, k: train_step(st, m, gather(data, i), k, model=model,
                                       optimizer=optimizer, label_smoothing=label_smoothing,
                                       loss=loss, microbatches=microbatches)
  return jax.vmap(one)(state, metrics, idx, dropout_keys)


def eval_group_step(params, data: dict, idx, *, model, label_smoothing: float,
                    microbatches: int = 1) -> dict:
  """:func:`eval_step` of S stacked parameter sets on one shared batch (rows ``idx [B]``)."""
  batch = gather(data, idx)
  return jax.vmap(lambda p: eval_step(p, batch, model=model, label_smoothing=label_smoothing,
                                      microbatches=microbatches))(params)


def eval_step(params, batch: dict, *, model, label_smoothing: float,
              microbatches: int = 1) -> dict:
  """Additive statistics of one batch: summed loss and the ``[K, K]`` confusion matrix.

  ``microbatches`` k > 1: the logits are computed over k strided parts of the batch one
  after another (activation memory / k; same numbers, rows never interact)."""
  if microbatches == 1:
    logits, _ = _forward(model, params, batch, False)
  else:
    logits = merge_rows(jax.lax.map(lambda part: _forward(model, params, part, False)[0],
                                    split_rows(batch, microbatches)))
  weights = batch["example_mask"]
  k = logits.shape[-1]
  pred = jnp.argmax(logits, -1)
  onehot_true = jax.nn.one_hot(batch["label"], k) * weights[:, None]
  confusion = onehot_true.T @ jax.nn.one_hot(pred, k)
  loss = smoothed_cross_entropy(logits, batch["label"], label_smoothing)
  return dict(loss_sum=jnp.sum(loss * weights), confusion=confusion)


def predict_step(params, batch: dict, *, model, aux_keys: Sequence[str] = ()):
  """Logits ``[B, K]`` and the ``aux`` entries matching ``aux_keys`` (names or
  ``fnmatch`` patterns such as ``"fusion/*_gate"``; absent ones are skipped)."""
  logits, aux = _forward(model, params, batch, False)
  return logits, {k: v for k, v in aux.items()
                  if any(fnmatch.fnmatchcase(k, pattern) for pattern in aux_keys)}


# ------------------------------------------------------------------ jitted, bound
@dataclasses.dataclass(frozen=True)
class StepFn:
  """A jitted step with its static parts bound; ``owner`` names the model it belongs to."""
  name: str
  owner: tuple
  fn: Callable


class Steps:
  """The jitted steps of one model (``train`` donates its state and metrics).

  Args:
    model: an :class:`~fusion_jax.models.EmotionRecognizer`.
    optimizer: from :func:`make_optimizer` (used by ``train`` only).
    label_smoothing: as ``torch.nn.CrossEntropyLoss(label_smoothing=...)``.
    owner: a hashable identity of (model, optimizer, smoothing) for the ledger.
    loss: the training loss (default: plain cross-entropy with ``label_smoothing``).
    microbatch_frames: training and evaluation compute each batch in the fewest equal
      parts of at most this many frames (rows x (speech frames + text tokens)) per device,
      training adding their gradients (:func:`train_step`); 0: the whole batch at once.
      Only memory and speed depend on it, not the result (up to float rounding).
    devices: how many devices share a batch's rows (the mesh's data axis).
  """

  def __init__(self, model, optimizer, label_smoothing: float, owner: tuple,
               loss: Optional[Loss] = None, microbatch_frames: int = 0, devices: int = 1):
    self.model, self.optimizer, self.label_smoothing = model, optimizer, label_smoothing
    self.owner = owner
    self.traces = 0
    self.microbatch_frames, self.devices = microbatch_frames, devices
    loss = loss or Loss(label_smoothing)
    bound = dict(model=model, optimizer=optimizer, label_smoothing=label_smoothing, loss=loss)

    parts = lambda rows, arrays: self.microbatches(rows, arrays["speech"].shape[1],
                                                   arrays["text"].shape[1])

    def train(state, metrics, batch, dropout_key):
      return train_step(state, metrics, batch, dropout_key, **bound,
                        microbatches=parts(batch["speech"].shape[0], batch))

    def train_group(state, metrics, data, idx, dropout_keys):
      return train_group_step(state, metrics, data, idx, dropout_keys, **bound,
                              microbatches=parts(idx.shape[-1], data))

    def evaluate(params, batch):
      return eval_step(params, batch, model=model, label_smoothing=label_smoothing,
                       microbatches=parts(batch["speech"].shape[0], batch))

    def evaluate_group(params, data, idx):
      return eval_group_step(params, data, idx, model=model, label_smoothing=label_smoothing,
                             microbatches=parts(idx.shape[-1], data))

    self.train = StepFn("train", owner, jax.jit(functools.partial(self._count, train),
                                                donate_argnums=(0, 1)))
    self.eval = StepFn("eval", owner, jax.jit(evaluate))
    self.train_group = StepFn("train_group", owner, jax.jit(
        functools.partial(self._count, train_group), donate_argnums=(0, 1)))
    self.eval_group = StepFn("eval_group", owner, jax.jit(evaluate_group))
    self._predict: dict = {}

  def microbatches(self, rows: int, speech_frames: int, text_tokens: int) -> int:
    """The microbatches a training batch of these (padded) shapes is computed in
    (:func:`num_microbatches` with this model's ``microbatch_frames`` budget)."""
    return num_microbatches(rows, speech_frames + text_tokens, self.microbatch_frames,
                            self.devices)

  def _count(self, fn, *args, **kwargs):
    self.traces += 1  # runs only while tracing
    return fn(*args, **kwargs)

  def predict(self, aux_keys: Sequence[str] = ()) -> StepFn:
    keys = tuple(sorted(aux_keys))
    if keys not in self._predict:
      self._predict[keys] = StepFn(f"predict{list(keys) if keys else ''}", self.owner,
                                   jax.jit(functools.partial(predict_step, model=self.model,
                                                             aux_keys=keys)))
    return self._predict[keys]

  def init_state(self, rng, learning_rate: float) -> TrainState:
    return init_state(self.model, self.optimizer, rng, learning_rate)

  def aux_keys(self) -> tuple:
    """The names of the model's ``aux`` outputs (traced once, nothing is computed)."""
    if not hasattr(self, "_aux_keys"):
      from fusion_jax.models import model as model_lib  # pylint: disable=import-outside-toplevel
      inputs = model_lib.dummy_inputs(self.model.config)
      shapes = jax.eval_shape(lambda: self.model.init_with_output(
          {"params": jax.random.key(0)}, *inputs)[0])
      self._aux_keys = tuple(sorted(shapes[1]))
    return self._aux_keys


# ------------------------------------------------------------------ compile ledger
def _signature(tree) -> tuple:
  return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass
class Compiled:
  """One ledger entry: an AOT-compiled step for one set of input shapes."""
  step: str
  owner: tuple
  inputs: tuple           # (shape, dtype) of every input leaf
  batch_shapes: dict      # the batch argument's leaf shapes, e.g. {"speech": (32, 184, 768)}
  executable: Any
  seconds: float

  def flops(self) -> float:
    """XLA's cost analysis of the executable (FLOPs per call, padding included)."""
    cost = self.executable.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


class CompileLedger:
  """Input shapes → compiled executable, compiled once (``jit(...).lower().compile()``).

  Calling ``ledger(step_fn, *args)`` compiles on the first call with these shapes
  and runs the executable. :attr:`entries` lists what was compiled, with seconds.
  """

  def __init__(self):
    self._entries: dict = {}
    self._lock = threading.Lock()
    self.seconds = 0.0

  def _key(self, step: StepFn, args) -> tuple:
    return (step.owner, step.name, _signature(args))

  def compile(self, step: StepFn, *args) -> Compiled:
    key = self._key(step, args)
    entry = self._entries.get(key)
    if entry is None:
      t0 = time.perf_counter()
      executable = step.fn.lower(*args).compile()
      seconds = time.perf_counter() - t0
      batch = next((a for a in args if isinstance(a, dict) and "speech" in a), {})
      entry = Compiled(step.name, step.owner, key[2],
                       {k: tuple(v.shape) for k, v in batch.items()}, executable, seconds)
      # (for the group steps, "batch_shapes" are the bucket's device arrays: [N, T, D])
      with self._lock:
        if key not in self._entries:
          self._entries[key] = entry
          self.seconds += seconds
        entry = self._entries[key]
    return entry

  def __call__(self, step: StepFn, *args):
    return self.compile(step, *args).executable(*args)

  def precompile(self, calls: Sequence[tuple]) -> float:
    """Compiles ``[(step_fn, args), ...]`` concurrently; returns wall seconds.

    XLA compiles one executable on one core; a run needs 2 × buckets of them, so
    compiling them in threads up front uses every core instead of one at a time.
    """
    todo = [(s, a) for s, a in calls if self._key(s, a) not in self._entries]
    if not todo:
      return 0.0
    t0 = time.perf_counter()
    workers = max(1, min(len(todo), os.cpu_count() or 1))
    if jax.config.jax_compilation_cache_dir:
      # JAX 0.10.2 crashed (segmentation fault) here once when one thread wrote an
      # executable to the persistent cache while another compiled: with the cache on,
      # compile one at a time (the cache makes every later run skip compiling anyway).
      workers = 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(lambda call: self.compile(call[0], *call[1]), todo))
    return time.perf_counter() - t0

  def forget(self, owner: tuple) -> None:
    """Drops every executable of ``owner`` (a model done with) and JAX's own caches of
    traced and compiled functions (which would keep them alive; the other entries stay)."""
    with self._lock:
      for key in [k for k in self._entries if k[0] == owner]:
        del self._entries[key]
    jax.clear_caches()

  def entries(self, owner: Optional[tuple] = None, step: Optional[str] = None) -> list:
    return [e for e in self._entries.values()
            if (owner is None or e.owner == owner) and (step is None or e.step == step)]

  def __len__(self) -> int:
    return len(self._entries)


# ------------------------------------------------------------------ passes over a split
def evaluate_batches(ledger: CompileLedger, steps: Steps, params,
                     batches: Iterable[dict], num_examples: int) -> dict:
  """Loss and confusion matrix over already-placed batches (one host sync at the end)."""
  return summarise_eval(jax.device_get([ledger(steps.eval, params, b) for b in batches]),
                        num_examples)


def summarise_eval(stats: Sequence[dict], num_examples: int) -> dict:
  """Loss, confusion matrix and summary metrics from per-batch ``eval_step`` outputs."""
  confusion = np.rint(sum(s["confusion"] for s in stats)).astype(np.int64)
  loss = float(sum(s["loss_sum"] for s in stats)) / max(num_examples, 1)
  return dict(loss=loss, confusion=confusion, **metrics_lib.summary(confusion))


def predict_batches(ledger: CompileLedger, steps: Steps, params, batches: Iterable[tuple],
                    num_examples: int, num_classes: int, aux_keys: Sequence[str] = ()):
  """Softmax probabilities ``[N, K]`` and requested ``aux`` arrays, in split order.

  ``batches`` yields ``(placed_batch, index)`` with ``index [B]`` the split rows
  (-1 for padding rows). An ``aux`` entry with time axes (attention maps, sequences)
  is zero-padded to the longest bucket's length: row ``i`` is valid up to its own
  lengths.
  """
  probs = np.zeros((num_examples, num_classes), np.float32)
  parts: dict = {}
  fn = steps.predict(aux_keys)
  for batch, index in batches:
    logits, aux = jax.device_get(ledger(fn, params, batch))
    rows = index >= 0
    idx = index[rows]
    probs[idx] = jax.nn.softmax(logits[rows], axis=-1)
    for k, v in aux.items():
      parts.setdefault(k, []).append((idx, np.asarray(v[rows], np.float32)))
  aux_out = {}
  for k, pieces in parts.items():
    shape = tuple(max(v.shape[d] for _, v in pieces) for d in range(1, pieces[0][1].ndim))
    out = aux_out[k] = np.zeros((num_examples,) + shape, np.float32)
    for idx, v in pieces:
      out[(idx,) + tuple(slice(0, n) for n in v.shape[1:])] = v
  return probs, aux_out
