"""Fusion heads: two encoded sequences in, one fused vector out.

Every head has the interface of :class:`FusionHead`::

  fused, aux = head(speech [B, T, Ds], speech_mask [B, T], text [B, L, Dt],
                    text_mask [B, L], deterministic=...)

``fused [B, F]`` feeds the classifier; ``aux`` holds the head's internals under
``fusion/...`` names that the analysis knows how to draw:

* ``fusion/<a>_to_<b>_attention [B, Tq, Tk]``: an attention map (drawn as a heatmap),
* ``fusion/speech_gate``, ``fusion/text_gate [B, F]``: gates (box plots per class),
* ``fusion/modality_weights [B, 2]``: speech and text weights (box plots per class).

A new head is a subclass here (or in your own module) plus one record in
:mod:`fusion_jax.models.registry`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fusion_jax.models.layers import Linear, MultiHeadAttention, gelu, layer_norm, masked_mean


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


def pooled_projections(features, dtype, speech, speech_mask, text, text_mask):
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

  @classmethod
  def from_config(cls, config, name: str = "fusion_head") -> "FusionHead":
    """The head for a :class:`~fusion_jax.models.ModelConfig` (heads with more knobs override)."""
    return cls(config.f_hidden, config.heads, config.dropout, config.compute_dtype, name=name)

  @classmethod
  def flops(cls, config, speech_len: int, text_len: int, speech_dim: int,
            text_dim: int) -> float:
    """Useful forward FLOPs of the head for one utterance (matmuls; for the benchmark)."""
    raise NotImplementedError(f"{cls.__name__} does not state its FLOPs")


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

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    f = config.f_hidden
    proj = 2 * (speech_len * speech_dim + text_len * text_dim) * f
    attention = 8 * f * f * (speech_len + text_len) + 8 * speech_len * text_len * f
    return proj + attention + 2 * 2 * f * f


class ConcatenationFusion(FusionHead):
  """Pool, project each modality to F/2, concatenate, project."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = pooled_projections(self.features // 2, self.dtype, speech, speech_mask, text,
                              text_mask)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        jnp.concatenate([s, t], axis=-1), deterministic=deterministic)
    return fused, {}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    f = config.f_hidden
    return 2 * (speech_dim + text_dim) * (f // 2) + 2 * f * f


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
    s, t = pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    g_s = _Gate(self.features, self.dtype, name="speech_gate")(s)
    g_t = _Gate(self.features, self.dtype, name="text_gate")(t)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        g_s * s + g_t * t, deterministic=deterministic)
    return fused, {"fusion/speech_gate": g_s, "fusion/text_gate": g_t}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    f = config.f_hidden
    return 2 * (speech_dim + text_dim) * f + 8 * f * f + 2 * f * f


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
    s, t = pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    scorer = _Scorer(self.features, self.dtype, name="attention")
    w = jax.nn.softmax(jnp.concatenate([scorer(s), scorer(t)], axis=-1), axis=-1)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        w[:, 0:1] * s + w[:, 1:2] * t, deterministic=deterministic)
    return fused, {"fusion/modality_weights": w}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    f = config.f_hidden
    return 2 * (speech_dim + text_dim) * f + 2 * 2 * f * (f // 2) + 2 * f * f
