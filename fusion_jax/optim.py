"""What training optimises: the optimizer, the plateau schedule, the loss.

Optimisation is the original's: Adam with L2 weight decay added to the gradient
(``torch.optim.Adam(weight_decay=...)``), cross-entropy with label smoothing,
``ReduceLROnPlateau(mode="max")`` (:class:`Plateau`, host side). The pure steps that use
them are in :mod:`fusion_jax.steps`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusion_jax.errors import ConfigError
from fusion_jax.models import encoders


# Parameters the optimizer leaves alone: set outside training (the floor's blend, chosen
# on validation after every epoch; models/floor.py).
FROZEN = ("floor_blend",)


def make_optimizer(optim_cfg, finetune: bool = False,
                   frozen: bool = False) -> optax.GradientTransformation:
  """torch.optim.Adam with ``weight_decay``: L2 added to the gradient, then Adam.

  The learning rate is applied in the step from ``TrainState.learning_rate``,
  so the plateau schedule can change it without touching the optimizer state.
  With ``finetune``, pretrained layers (``models.encoders.SCOPES``) get their own rate,
  ``finetune_learning_rate`` (scaled by the plateau schedule like the rest), reached
  by a linear warm-up over ``finetune_warmup_steps`` (``optax.multi_transform``).
  With ``frozen`` (a model with :data:`FROZEN` parameters), those get no update.
  """
  adam = lambda: optax.chain(optax.add_decayed_weights(optim_cfg.weight_decay),
                             optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2,
                                                 eps=optim_cfg.eps))
  if not finetune and not frozen:
    return adam()
  transforms = {"model": adam()}
  if finetune:
    ratio = optim_cfg.finetune_learning_rate / optim_cfg.learning_rate
    warmup = max(int(optim_cfg.finetune_warmup_steps), 0)
    ramp = lambda n: ratio * (jnp.minimum((n + 1.0) / warmup, 1.0) if warmup else 1.0)
    transforms["finetune"] = optax.chain(adam(), optax.scale_by_schedule(ramp))
  if frozen:
    transforms["frozen"] = optax.set_to_zero()

  def labels(params):
    return {k: "finetune" if finetune and k in encoders.SCOPES else
            "frozen" if frozen and k in FROZEN else "model" for k in params}
  return optax.multi_transform(transforms, labels)

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
  unimodal_weight: float = 0.0   # the unimodal heads' auxiliary loss (model.unimodal_heads)

  @classmethod
  def from_config(cls, optim_cfg) -> "Loss":
    values = optim_cfg.class_weight_values
    if optim_cfg.class_weights != "none" and not values:
      raise ConfigError(f"optim.class_weights={optim_cfg.class_weights!r} is resolved from the "
                       "training labels: build the Experiment with train=... "
                       "(experiment.Experiment.create)")
    return cls(float(optim_cfg.label_smoothing),
               tuple(float(x) for x in values.split(",")) if values else None,
               float(optim_cfg.focal_gamma), float(optim_cfg.unimodal_loss_weight))

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

