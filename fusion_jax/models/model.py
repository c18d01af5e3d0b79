"""The four fusion heads, the classifier, unimodal baselines and the full model.

Every variant is called the same way::

  logits, aux = model.apply(params, speech, speech_mask, text, text_mask, train=False)

with ``speech [B, T, Ds]``, ``speech_mask [B, T]``, ``text [B, L, Dt]``,
``text_mask [B, L]``; ``logits [B, K]`` float32. ``aux`` is a flat dict:

* ``temporal/sequence [B, T, D]``, ``temporal/pooled [B, D]`` (speech block),
* ``contextual/sequence [B, L, D]``, ``contextual/pooled [B, D]`` (text block),
* ``fusion/fused [B, F]`` (the classifier's input, fusion variants),
* head internals: ``fusion/speech_to_text_attention [B, T, L]`` and
  ``fusion/text_to_speech_attention [B, L, T]`` (cross_attention),
  ``fusion/speech_gate``, ``fusion/text_gate [B, F]`` (gated),
  ``fusion/modality_weights [B, 2]`` (weighted: speech, text).

A unimodal baseline (``speech_only``, ``text_only``) has only its own block's
entries. Unused entries cost nothing under ``jit`` (dead code is removed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fusion_jax.models.layers import (Linear, MultiHeadAttention, SequenceEncoder, gelu,
                                      layer_norm, masked_mean)

FUSION_VARIANTS = ("cross_attention", "concatenation", "gated", "weighted")
UNIMODAL_VARIANTS = ("speech_only", "text_only")
VARIANTS = FUSION_VARIANTS + UNIMODAL_VARIANTS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Model hyperparameters (``config.model``), frozen at build time."""
  speech_dim: int = 768
  text_dim: int = 768
  hidden: int = 256
  layers: int = 2
  heads: int = 8
  f_hidden: int = 512
  classifier_hidden: int = 256
  dropout: float = 0.4
  model_dim: int = 0
  positional_encoding: bool = False
  dtype: str = "float32"

  @classmethod
  def from_config(cls, cfg) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in fields})

  @property
  def compute_dtype(self):
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
    return jnp.dtype(self.dtype)


class FusionProjection(nn.Module):
  """Linear → GELU → Dropout → LayerNorm (the original's ``fusion_proj``)."""
  features: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic):
    x = gelu(Linear(self.features, self.dtype, name="dense")(x))
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    return layer_norm("norm")(x)


def _pooled_projections(features, dtype, speech, speech_mask, text, text_mask):
  """Masked-mean each modality and project it (``speech_proj``/``text_proj`` of the caller)."""
  s = Linear(features, dtype, name="speech_proj")(masked_mean(speech, speech_mask))
  t = Linear(features, dtype, name="text_proj")(masked_mean(text, text_mask))
  return s, t


class FusionHead(nn.Module):
  """The interface of every fusion head (so the registry's entries are interchangeable).

  ``__call__(speech [B, T, Ds], speech_mask [B, T], text [B, L, Dt], text_mask [B, L], *,
  deterministic) -> (fused [B, features], aux dict)``.
  """
  features: int
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32


class CrossAttentionFusion(FusionHead):
  """Bidirectional cross-attention: speech attends to text and text to speech."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s = Linear(self.features, self.dtype, name="speech_proj")(speech)
    t = Linear(self.features, self.dtype, name="text_proj")(text)
    mha = lambda name: MultiHeadAttention(self.num_heads, self.dropout, self.dtype, name=name)
    s_att, s_w = mha("speech_to_text_attn")(s, t, text_mask, deterministic=deterministic)
    t_att, t_w = mha("text_to_speech_attn")(t, s, speech_mask, deterministic=deterministic)
    s_vec = masked_mean(layer_norm("ln_speech")(s_att + s), speech_mask)
    t_vec = masked_mean(layer_norm("ln_text")(t_att + t), text_mask)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        jnp.concatenate([s_vec, t_vec], axis=-1), deterministic=deterministic)
    return fused, {"fusion/speech_to_text_attention": s_w,
                   "fusion/text_to_speech_attention": t_w,
                   "fusion/speech_vector": s_vec, "fusion/text_vector": t_vec}


class ConcatenationFusion(FusionHead):
  """Pool, project each modality to F/2, concatenate, project."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = _pooled_projections(self.features // 2, self.dtype, speech, speech_mask, text,
                               text_mask)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        jnp.concatenate([s, t], axis=-1), deterministic=deterministic)
    return fused, {}


class _Gate(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(Linear(self.features, self.dtype, name="dense1")(x))
    return jax.nn.sigmoid(Linear(self.features, self.dtype, name="dense2")(h).astype(
        jnp.float32))


class GatedFusion(FusionHead):
  """Sigmoid gates per modality: ``FP(g_s ⊙ ŝ + g_t ⊙ t̂)``."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = _pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    g_s = _Gate(self.features, self.dtype, name="speech_gate")(s)
    g_t = _Gate(self.features, self.dtype, name="text_gate")(t)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        g_s * s + g_t * t, deterministic=deterministic)
    return fused, {"fusion/speech_gate": g_s, "fusion/text_gate": g_t}


class _Scorer(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(Linear(self.features // 2, self.dtype, name="dense1")(x))
    return Linear(1, self.dtype, name="dense2")(h).astype(jnp.float32)


class WeightedFusion(FusionHead):
  """One shared scorer; softmax over the two modalities: ``FP(w_s ŝ + w_t t̂)``."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = _pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    scorer = _Scorer(self.features, self.dtype, name="attention")
    w = jax.nn.softmax(jnp.concatenate([scorer(s), scorer(t)], axis=-1), axis=-1)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        w[:, 0:1] * s + w[:, 1:2] * t, deterministic=deterministic)
    return fused, {"fusion/modality_weights": w}


FUSION_HEADS = {
    "cross_attention": CrossAttentionFusion,
    "concatenation": ConcatenationFusion,
    "gated": GatedFusion,
    "weighted": WeightedFusion,
}


def get_fusion_head(name: str):
  """The fusion head class registered under ``name``."""
  try:
    return FUSION_HEADS[name]
  except KeyError:
    raise ValueError(f"unknown fusion head {name!r}; valid: {sorted(FUSION_HEADS)}") from None


def check_variant(name: str) -> str:
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; valid: {list(VARIANTS)}")
  return name


def parse_variants(spec: str) -> list:
  """``"all"``, ``"fusion"`` or a comma list → variant names (validated, in order)."""
  spec = spec.strip()
  if spec == "all":
    return list(VARIANTS)
  if spec in ("fusion", ""):
    return list(FUSION_VARIANTS)
  return [check_variant(v.strip()) for v in spec.split(",") if v.strip()]


class EmotionRecognizer(nn.Module):
  """Temporal block + contextual block + fusion head + classifier, or a unimodal baseline.

  Attributes:
    config: the model hyperparameters.
    variant: one of :data:`VARIANTS`.
    num_classes: K.
  """
  config: ModelConfig
  variant: str
  num_classes: int

  def _encoder(self, name):
    c = self.config
    return SequenceEncoder(c.layers, c.heads, 4 * c.hidden, c.dropout, c.model_dim,
                           c.positional_encoding, c.compute_dtype, name=name)

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, train: bool = False):
    c, dtype, det = self.config, self.config.compute_dtype, not train
    check_variant(self.variant)
    aux = {}
    if self.variant != "text_only":
      s_seq = self._encoder("temporal_block")(speech, speech_mask, deterministic=det)
      aux["temporal/sequence"] = s_seq
      aux["temporal/pooled"] = masked_mean(s_seq, speech_mask)
    if self.variant != "speech_only":
      t_seq = self._encoder("contextual_block")(text, text_mask, deterministic=det)
      aux["contextual/sequence"] = t_seq
      aux["contextual/pooled"] = masked_mean(t_seq, text_mask)

    if self.variant in UNIMODAL_VARIANTS:
      pooled = aux["temporal/pooled" if self.variant == "speech_only" else "contextual/pooled"]
      h = nn.relu(Linear(c.classifier_hidden, dtype, name="dense1")(pooled))
      h = nn.Dropout(c.dropout)(h, deterministic=det)
      logits = Linear(self.num_classes, dtype, name="dense2")(h)
      return logits.astype(jnp.float32), aux

    head = get_fusion_head(self.variant)(c.f_hidden, c.heads, c.dropout, dtype,
                                         name="fusion_head")
    fused, head_aux = head(s_seq, speech_mask, t_seq, text_mask, deterministic=det)
    aux.update(head_aux)
    aux["fusion/fused"] = fused
    h = Linear(c.classifier_hidden, dtype, name="classifier_dense1")(fused)
    h = gelu(layer_norm("classifier_norm")(h))
    h = nn.Dropout(c.dropout)(h, deterministic=det)
    logits = Linear(self.num_classes, dtype, name="classifier_dense2")(h)
    return logits.astype(jnp.float32), aux


def build_model(config, variant: str, num_classes: int) -> EmotionRecognizer:
  """``config``: a :class:`ModelConfig` or the ``config.model`` ConfigDict."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_config(config)
  return EmotionRecognizer(config, check_variant(variant), int(num_classes))


def dummy_inputs(config: ModelConfig, batch: int = 2, speech_len: int = 8, text_len: int = 4):
  """Zero inputs of the right dims, for ``init`` and ``eval_shape``."""
  return (jnp.zeros((batch, speech_len, config.speech_dim), jnp.float32),
          jnp.ones((batch, speech_len), jnp.float32),
          jnp.zeros((batch, text_len, config.text_dim), jnp.float32),
          jnp.ones((batch, text_len), jnp.float32))


def init_params(model: EmotionRecognizer, rng: jax.Array):
  """Initial parameters (float32). Shapes do not depend on sequence lengths."""
  return model.init({"params": rng}, *dummy_inputs(model.config), train=False)["params"]


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
