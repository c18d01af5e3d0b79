"""The pure steps, and :class:`Steps` that jits them for one model.

The three steps are module-level pure functions of arrays::

  train_step(state, metrics, batch, dropout_key, *, model, optimizer, label_smoothing,
             loss, microbatches) -> (state, metrics)
  eval_step(params, batch, *, model, label_smoothing, microbatches) -> {loss_sum, confusion}
  predict_step(params, batch, *, model, aux_keys) -> (logits, {aux_key: array})

:class:`Steps` binds their static parts (model, optimizer, smoothing) with
``functools.partial`` and jits them, as the Flax examples do; the compile ledger
(:mod:`fusion_jax.ledger`) compiles them once per shape, and the optimizer, schedule and
loss they use are in :mod:`fusion_jax.optim`.

Batches (see :mod:`fusion_jax.data.batching`) are dicts: ``speech [B, T, Ds]``,
``speech_mask [B, T]``, ``text [B, L, Dt]``, ``text_mask [B, L]``, ``label [B]``,
``example_mask [B]`` (0 = padding row), ``index [B]``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp

from fusion_jax import dropout
from fusion_jax.errors import ConfigError
from fusion_jax.models import floor, layers, registry
from fusion_jax.models import model as model_lib
from fusion_jax.optim import Loss, smoothed_cross_entropy


# ------------------------------------------------------------------ state
@flax.struct.dataclass
class TrainState:
  """Everything a step changes. The optimizer and model are bound to the step, not carried."""
  step: jax.Array
  params: Any
  opt_state: Any
  learning_rate: jax.Array


def zero_metrics() -> dict:
  """The training accumulator: summed loss, correct predictions and examples."""
  return dict(loss_sum=jnp.zeros((), jnp.float32), correct=jnp.zeros((), jnp.float32),
              count=jnp.zeros((), jnp.float32))


def init_state(model, optimizer, rng, learning_rate: float) -> TrainState:
  params = model_lib.init_params(model, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    learning_rate=jnp.asarray(learning_rate, jnp.float32))


# ------------------------------------------------------------------ pure steps
def _forward(model, params, batch, train, key=None):
  rngs = {"dropout": key} if train else None
  return model.apply({"params": params}, batch["speech"], batch["speech_mask"],
                     batch["text"], batch["text_mask"], train=train, rngs=rngs)


# The key stream of modality dropout: fold_in(step key, this), apart from dropout's.
_MODALITY_STREAM = 0x6D6F64


def drop_modalities(batch: dict, key, rate: float) -> dict:
  """Modality dropout: in about ``rate`` of the utterances speech is made absent (its
  mask zeroed) and in another ``rate`` text, never both, and only where both are there
  (``rate`` <= 0.5). One draw per row of the whole batch: the same rows for any
  microbatching."""
  u = jax.random.uniform(key, (batch["speech_mask"].shape[0], 2))
  both = (layers.presence(batch["speech_mask"]) * layers.presence(batch["text_mask"])) > 0
  drop = both & (u[:, 0] < 2.0 * rate)
  drop_speech = drop & (u[:, 1] < 0.5)
  drop_text = drop & ~drop_speech
  out = dict(batch)
  out["speech_mask"] = batch["speech_mask"] * (~drop_speech)[:, None].astype(
      batch["speech_mask"].dtype)
  out["text_mask"] = batch["text_mask"] * (~drop_text)[:, None].astype(
      batch["text_mask"].dtype)
  return out


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


def _losses(loss: Loss, logits, aux, part, denominator):
  """The training objective of one (part of a) batch: the loss of the fusion head's own
  logits (not the floor's blend, which is set on validation), plus, with unimodal heads,
  ``loss.unimodal_weight`` times each head's loss over the rows with its modality."""
  main = aux.get("fusion/logits", logits)
  mean, per_example = loss(main, part["label"], part["example_mask"], denominator)
  if loss.unimodal_weight and "unimodal/speech_logits" in aux:
    for m in ("speech", "text"):
      rows = part["example_mask"] * layers.presence(part[f"{m}_mask"])
      mean = mean + loss.unimodal_weight * loss(aux[f"unimodal/{m}_logits"], part["label"],
                                                rows, denominator)[0]
  return mean, (per_example, main)


def train_step(state: TrainState, metrics: dict, batch: dict, dropout_key, *, model,
               optimizer, label_smoothing: float, loss: Optional[Loss] = None,
               microbatches: int = 1, modality_dropout: float = 0.0):
  """One optimisation step; ``metrics`` accumulates masked loss, correct and count sums.

  Dropout's key is ``fold_in(dropout_key, state.step)``: a function of the run and
  the step only, so an interrupted run replays exactly. ``loss`` (default: plain
  cross-entropy with ``label_smoothing``) may weight classes or be focal; the
  accumulated ``loss_sum`` sums the per-example loss (focal-scaled, never class-weighted).

  ``microbatches`` k > 1 (dividing B) computes the gradient over k strided parts of the
  batch (rows ``j, j + k, ...``) one after another and adds them (gradient accumulation:
  the step's activation memory / k). Each part draws the whole batch's dropout masks for
  its rows (:func:`~fusion_jax.dropout.batch_rows`) and the mean's denominator is
  the whole batch's, so the step equals the one-pass step up to float rounding.

  ``modality_dropout`` > 0 (fusion variants): :func:`drop_modalities` on the whole batch
  first, keyed by the step as dropout is.
  """
  key = jax.random.fold_in(dropout_key, state.step)
  loss = loss or Loss(label_smoothing)
  if modality_dropout > 0 and registry.get(model.variant).is_fusion:
    batch = drop_modalities(batch, jax.random.fold_in(key, _MODALITY_STREAM), modality_dropout)
  weights = batch["example_mask"]
  rows = weights.shape[0]
  if rows % microbatches:
    raise ConfigError(f"{microbatches} microbatches do not divide a batch of {rows} rows")
  # the whole batch's, never a part's: the parts' gradients add up to the mean's
  denominator = loss.denominator(batch["label"], weights)

  def loss_fn(params, part, stride, offset):
    with dropout.batch_rows(stride, offset):
      logits, aux = _forward(model, params, part, True, key)
    return _losses(loss, logits, aux, part, denominator)

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
                     microbatches: int = 1, modality_dropout: float = 0.0):
  """:func:`train_step` for S runs at once (seeds of one variant), as one program.

  ``state``, ``metrics``, ``idx [S, B]`` and ``dropout_keys [S]`` are stacked on a
  leading axis; ``data`` (one bucket on the device) is shared.
  """
  one = lambda st, m, i, k: train_step(st, m, gather(data, i), k, model=model,
                                       optimizer=optimizer, label_smoothing=label_smoothing,
                                       loss=loss, microbatches=microbatches,
                                       modality_dropout=modality_dropout)
  return jax.vmap(one)(state, metrics, idx, dropout_keys)


def eval_group_step(params, data: dict, idx, *, model, label_smoothing: float,
                    microbatches: int = 1) -> dict:
  """:func:`eval_step` of S stacked parameter sets on one shared batch (rows ``idx [B]``)."""
  batch = gather(data, idx)
  return jax.vmap(lambda p: eval_step(p, batch, model=model, label_smoothing=label_smoothing,
                                      microbatches=microbatches))(params)


_FLOOR_AUX = ("fusion/logits", "unimodal/speech_logits", "unimodal/text_logits")


def _without(batch: dict, modality: str) -> dict:
  """``batch`` with ``modality`` made absent in every row (its mask zeroed)."""
  mask = batch[f"{modality}_mask"]
  # zeroed through the data (example_mask is never negative), not a constant: XLA would
  # constant-fold the whole attention of a constant mask, seconds of compiling per bucket
  never = (batch["example_mask"] < -1.0)[:, None].astype(mask.dtype)
  return dict(batch, **{f"{modality}_mask": mask * never})


def eval_step(params, batch: dict, *, model, label_smoothing: float,
              microbatches: int = 1) -> dict:
  """Additive statistics of one batch: summed loss and the ``[K, K]`` confusion matrix;
  for a model with a floor (:mod:`fusion_jax.models.floor`) also, per pattern P,
  ``blend_confusion/P [C_P, K, K]`` and ``blend_loss_sum/P [C_P]`` of each candidate
  blend: on the batch as it is for "both", with speech (text) made absent for
  "no_speech" ("no_text").

  ``microbatches`` k > 1: the logits are computed over k strided parts of the batch one
  after another (activation memory / k; same numbers, rows never interact)."""
  def forward(part):
    logits, aux = _forward(model, params, part, False)
    return logits, {k: aux[k] for k in _FLOOR_AUX if k in aux}

  def run(b):
    if microbatches == 1:
      return forward(b)
    return merge_rows(jax.lax.map(forward, split_rows(b, microbatches)))
  logits, aux = run(batch)
  weights = batch["example_mask"]
  k = logits.shape[-1]
  onehot_true = jax.nn.one_hot(batch["label"], k) * weights[:, None]
  confusion = lambda z: onehot_true.T @ jax.nn.one_hot(jnp.argmax(z, -1), k)
  loss_sum = lambda z: jnp.sum(smoothed_cross_entropy(z, batch["label"], label_smoothing)
                               * weights)
  out = dict(loss_sum=loss_sum(logits), confusion=confusion(logits))
  if len(aux) != len(_FLOOR_AUX):
    return out
  for row, pattern in enumerate(floor.PATTERNS):
    b = batch if pattern == "both" else _without(batch, pattern[len("no_"):])
    if pattern != "both":   # the same rows with one modality absent
      aux = run(b)[1]
    present = layers.presence(b["speech_mask"]), layers.presence(b["text_mask"])
    # candidate c: the run's blends with this pattern's row replaced by c (rows that lack
    # a modality in the data itself keep their own pattern's row)
    per_row = jax.vmap(lambda c: floor.effective_weights(
        params["floor_blend"].at[row].set(c), *present))(
            jnp.asarray(floor.CANDIDATES[pattern]))                        # [C, B, 3]
    z = floor.blend_logits(per_row, *(aux[key] for key in _FLOOR_AUX))     # [C, B, K]
    out[f"blend_confusion/{pattern}"] = jax.vmap(confusion)(z)
    out[f"blend_loss_sum/{pattern}"] = jax.vmap(loss_sum)(z)
  return out


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
    modality_dropout: :func:`train_step`'s (``optim.modality_dropout``).
  """

  def __init__(self, model, optimizer, label_smoothing: float, owner: tuple,
               loss: Optional[Loss] = None, microbatch_frames: int = 0, devices: int = 1,
               modality_dropout: float = 0.0):
    self.model, self.optimizer, self.label_smoothing = model, optimizer, label_smoothing
    self.owner = owner
    self.traces = 0
    self.microbatch_frames, self.devices = microbatch_frames, devices
    loss = loss or Loss(label_smoothing)
    bound = dict(model=model, optimizer=optimizer, label_smoothing=label_smoothing, loss=loss,
                 modality_dropout=float(modality_dropout))

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
      inputs = model_lib.dummy_inputs(self.model.config)
      shapes = jax.eval_shape(lambda: self.model.init_with_output(
          {"params": jax.random.key(0)}, *inputs)[0])
      self._aux_keys = tuple(sorted(shapes[1]))
    return self._aux_keys


