"""Fusion heads: two encoded sequences in, one fused vector out.

Every head has the interface of :class:`FusionHead`::

  fused, aux = head(speech [B, T, Ds], speech_mask [B, T], text [B, L, Dt],
                    text_mask [B, L], deterministic=...)

``fused [B, F]`` feeds the classifier; ``aux`` holds the head's internals under
``fusion/...`` names that the analysis knows how to draw:

* ``fusion/<a>_to_<b>_attention [B, Tq, Tk]``: an attention map (drawn as a heatmap),
* ``fusion/speech_gate``, ``fusion/text_gate [B, F]``: gates (box plots per class),
* ``fusion/modality_weights [B, 2]``: speech and text weights (box plots per class).

An absent modality (an all-zero mask; :func:`~fusion_jax.models.layers.presence`) is an
input every head takes: gates, weights and late fusion's mixture renormalise over the
modalities present, attention over an empty sequence receives nothing (never a NaN),
and with ``absent_embedding`` (``model.absent_embedding``) the pooled vector of an
absent modality is a learned one, as concatenation-style heads need.

A new head is a subclass here (or in your own module) plus one record in
:mod:`fusion_jax.models.registry`. A head that fuses inside the encoders
(``owns_encoders``, MBT) receives the raw features; a head that combines decisions
(``produces_logits``, late fusion) returns logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from fusion_jax.errors import ConfigError
from fusion_jax.models.layers import (Dropout, EncoderLayer, Linear, MultiHeadAttention,
                                      encoder_flops, gelu, layer_norm, masked_mean, presence,
                                      sinusoidal_positions)
from fusion_jax.schema import at_least, knob


# ------------------------------------------------------------------ the heads' knobs
# Each head beyond the original's reads a few knobs of its own from ``config.model``; they
# are declared once, here, with their default and check. ModelConfig is built from them
# (models/model.py), so the config, its validation, the run fingerprint (which ignores
# knobs a variant does not read) and the head itself all read this one table.
@dataclasses.dataclass(frozen=True)
class MulTKnobs:
  mult_layers: int = knob(2, at_least(1), "at least 1", "MulT: crossmodal blocks per direction")


@dataclasses.dataclass(frozen=True)
class BottleneckKnobs:
  bottleneck_tokens: int = knob(4, at_least(0), "0 or more",
                                "MBT: shared bottleneck tokens (0 = independent encoders)")
  fusion_layer: int = knob(1, at_least(0), "0 or more",
                           "MBT: the first encoder layer that fuses (>= layers: none)")


@dataclasses.dataclass(frozen=True)
class TensorKnobs:
  tensor_dim: int = knob(32, at_least(1), "at least 1",
                         "tensor / low-rank fusion: each modality's vector width")


@dataclasses.dataclass(frozen=True)
class LowRankKnobs(TensorKnobs):
  rank: int = knob(4, at_least(1), "at least 1", "low-rank fusion: rank of the fusion weight")


@dataclasses.dataclass(frozen=True)
class HeadKnobs(MulTKnobs, BottleneckKnobs, LowRankKnobs):
  """Every built-in head's knobs (the head-specific part of ``config.model``)."""


HEAD_KNOBS = tuple(f.name for f in dataclasses.fields(HeadKnobs))


def _default(knobs, name):
  return {f.name: f.default for f in dataclasses.fields(knobs)}[name]


class FusionProjection(nn.Module):
  """Linear → GELU → Dropout → LayerNorm (the original's ``fusion_proj``)."""
  features: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic):
    x = gelu(Linear(self.features, self.dtype, name="dense")(x))
    x = Dropout(self.dropout)(x, deterministic=deterministic)
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
  absent_embedding: bool = False
  # A head that runs the encoders itself (fusion inside them) gets the raw inputs and
  # returns the blocks' aux entries too; a head that produces logits skips the classifier.
  owns_encoders: ClassVar[bool] = False
  produces_logits: ClassVar[bool] = False
  # Its own knobs (a dataclass of ModelConfig fields the head reads under their names),
  # and any other ModelConfig field it reads: head field → ModelConfig field.
  KNOBS: ClassVar[Optional[type]] = None
  CONFIG: ClassVar[dict] = {}

  @classmethod
  def knob_names(cls) -> tuple:
    """The :data:`HEAD_KNOBS` this head reads (a run of it depends on them, not on others)."""
    return tuple(f.name for f in dataclasses.fields(cls.KNOBS)) if cls.KNOBS else ()

  @classmethod
  def from_config(cls, config, num_classes: int, name: str = "fusion_head") -> "FusionHead":
    """The head for a :class:`~fusion_jax.models.ModelConfig` (and K, if it has a field
    ``num_classes``)."""
    extra = {field: getattr(config, source) for field, source in cls.CONFIG.items()}
    extra.update({name: getattr(config, name) for name in cls.knob_names()})
    if "num_classes" in {f.name for f in dataclasses.fields(cls)}:
      extra["num_classes"] = num_classes
    return cls(config.f_hidden, config.heads, config.dropout, config.compute_dtype,
               absent_embedding=config.absent_embedding, name=name, **extra)

  def absent(self, vec, mask, name: str):
    """``vec [B, D]`` (a modality's pooled vector), with a learned vector ``name [D]`` in
    the rows where that modality is absent (``mask [B, T]`` all zero), if
    ``absent_embedding``; else unchanged (an absent modality pools to zeros)."""
    if not self.absent_embedding:
      return vec
    emb = self.param(name, nn.initializers.normal(0.02), (vec.shape[-1],), jnp.float32)
    return jnp.where(presence(mask)[:, None] > 0, vec, emb.astype(vec.dtype))

  def absent_pair(self, s, speech_mask, t, text_mask):
    """:meth:`absent` for both modalities' vectors (``speech_absent``, ``text_absent``)."""
    return (self.absent(s, speech_mask, "speech_absent"),
            self.absent(t, text_mask, "text_absent"))

  def fuse_attended(self, s_vec, speech_mask, t_vec, text_mask, s_w, t_w, deterministic):
    """The two-way attention heads' ending: absent vectors for missing modalities, the
    concatenation projected (``fusion_proj``), the attention maps among the internals."""
    s_vec, t_vec = self.absent_pair(s_vec, speech_mask, t_vec, text_mask)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        jnp.concatenate([s_vec, t_vec], axis=-1), deterministic=deterministic)
    return fused, {"fusion/speech_to_text_attention": s_w,
                   "fusion/text_to_speech_attention": t_w,
                   "fusion/speech_vector": s_vec, "fusion/text_vector": t_vec}

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
    return self.fuse_attended(s_vec, speech_mask, t_vec, text_mask, s_w, t_w, deterministic)

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
    s, t = self.absent_pair(s, speech_mask, t, text_mask)
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
  """Sigmoid gates per modality: ``FP(g_s ⊙ ŝ + g_t ⊙ t̂)``; with one modality absent,
  ``FP(2 g ⊙ x̂)`` of the other."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    g_s = _Gate(self.features, self.dtype, name="speech_gate")(s)
    g_t = _Gate(self.features, self.dtype, name="text_gate")(t)
    # an absent modality's gated term is left out and the present one's scaled by 2, so
    # the sum keeps its two-term size (with both present: exactly the original's sum)
    p_s, p_t = presence(speech_mask)[:, None], presence(text_mask)[:, None]
    scale = 2.0 / jnp.maximum(p_s + p_t, 1.0)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        (p_s * g_s * s + p_t * g_t * t) * scale, deterministic=deterministic)
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
  """One shared scorer; softmax over the modalities present: ``FP(w_s ŝ + w_t t̂)``."""

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = pooled_projections(self.features, self.dtype, speech, speech_mask, text, text_mask)
    scorer = _Scorer(self.features, self.dtype, name="attention")
    present = jnp.stack([presence(speech_mask), presence(text_mask)], axis=-1) > 0
    scores = jnp.concatenate([scorer(s), scorer(t)], axis=-1)
    # softmax over the modalities present (both absent: both, on their empty vectors)
    w = jax.nn.softmax(jnp.where(present | ~present.any(-1, keepdims=True), scores,
                                 -jnp.inf), axis=-1)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        w[:, 0:1] * s + w[:, 1:2] * t, deterministic=deterministic)
    return fused, {"fusion/modality_weights": w}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    f = config.f_hidden
    return 2 * (speech_dim + text_dim) * f + 2 * 2 * f * (f // 2) + 2 * f * f


# ====================================================================== beyond the original
# Every head below has parameter counts near the original's heads at the default config
# (BUILD_NOTES.md, "Fusion workbench"); each states its source.


class _CrossModalLayer(nn.Module):
  """MulT's crossmodal block (pre-LN): ``Z += CrossAttn(LN(Z), LN(Y)); Z += FFN(LN(Z))``."""
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, z_mask, y, y_mask, *, deterministic):
    e = z.shape[-1]
    drop = lambda v: Dropout(self.dropout)(v, deterministic=deterministic)
    q, kv = layer_norm("norm_query")(z), layer_norm("norm_key")(y)
    att, weights = MultiHeadAttention(self.num_heads, self.dropout, self.dtype,
                                      name="attn")(q, kv, y_mask, deterministic=deterministic)
    z = z + drop(att)
    h = gelu(Linear(4 * e, self.dtype, name="ff1")(layer_norm("norm_ff")(z)))
    z = z + drop(Linear(e, self.dtype, name="ff2")(drop(h)))
    return z * z_mask[..., None].astype(z.dtype), weights


class MulTFusion(FusionHead):
  """MulT (Tsai et al., ACL 2019): directional crossmodal transformers.

  Each modality is projected to ``width`` (``features // 2``; MulT's temporal
  convolution with kernel 1) with sinusoidal positions. Speech attends to text
  through ``layers`` crossmodal blocks (text → speech), and text to speech (speech →
  text); each stream then passes one self-attention layer, is masked-mean pooled
  (MulT takes the last step, which depends on padding here), and the two are
  concatenated and projected: ``fused [B, features]``. ``aux``: the last blocks'
  attention maps ``fusion/speech_to_text_attention [B, T, L]`` and
  ``fusion/text_to_speech_attention [B, L, T]``.
  """
  KNOBS: ClassVar[type] = MulTKnobs
  mult_layers: int = _default(MulTKnobs, "mult_layers")

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    width = self.features // 2
    if self.mult_layers < 1 or width % self.num_heads:
      raise ConfigError(f"MulT needs model.mult_layers >= 1 (got {self.mult_layers}) and its width "
                       f"model.f_hidden / 2 = {width} divisible by model.heads = "
                       f"{self.num_heads} (--config.model.f_hidden, --config.model.heads)")
    embed = lambda x, m, name: (Linear(width, self.dtype, name=name)(x) + sinusoidal_positions(
        x.shape[1], width).astype(self.dtype)) * m[..., None].astype(self.dtype)
    s, t = embed(speech, speech_mask, "speech_proj"), embed(text, text_mask, "text_proj")
    zs, zt = s, t
    for i in range(self.mult_layers):
      zs, s_w = _CrossModalLayer(self.num_heads, self.dropout, self.dtype,
                                 name=f"text_to_speech_{i}")(zs, speech_mask, t, text_mask,
                                                             deterministic=deterministic)
      zt, t_w = _CrossModalLayer(self.num_heads, self.dropout, self.dtype,
                                 name=f"speech_to_text_{i}")(zt, text_mask, s, speech_mask,
                                                             deterministic=deterministic)
    layer = lambda name: EncoderLayer(self.num_heads, 4 * width, self.dropout, self.dtype,
                                      name=name)
    zs = layer("speech_self")(zs, speech_mask, deterministic=deterministic)
    zt = layer("text_self")(zt, text_mask, deterministic=deterministic)
    s_vec, t_vec = masked_mean(zs, speech_mask), masked_mean(zt, text_mask)
    return self.fuse_attended(s_vec, speech_mask, t_vec, text_mask, s_w, t_w, deterministic)

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    d, (s, t) = config.f_hidden // 2, (speech_len, text_len)
    cross = lambda q, k: 2 * q * d * d * 2 + 2 * k * d * d * 2 + 4 * q * k * d + 16 * q * d * d
    self_attn = lambda n: 8 * n * d * d + 4 * n * n * d + 16 * n * d * d
    return (2 * (s * speech_dim + t * text_dim) * d
            + config.mult_layers * (cross(s, t) + cross(t, s)) + self_attn(s) + self_attn(t)
            + 2 * 2 * d * config.f_hidden)


class BottleneckFusion(FusionHead):
  """MBT, attention bottlenecks (Nagrani et al., NeurIPS 2021; scenic ``projects/mbt``).

  Owns both encoders: layers below ``fusion_layer`` run per modality, as the
  temporal and contextual blocks do; from ``fusion_layer`` on, each modality's layer
  runs on its tokens plus ``bottleneck_tokens`` shared tokens, and the shared tokens
  become the mean of the modalities' updates — all cross-modal exchange passes through
  them. With no bottleneck tokens or ``fusion_layer >= layers`` it is exactly two
  independent encoders (tested). Pooled speech, pooled text and the mean of the final
  shared tokens are concatenated and projected: ``fused [B, features]``. ``aux`` has the blocks' entries
  (``temporal/sequence`` …) and ``fusion/{speech,text}_to_bottleneck_attention
  [B, T, n]`` of the last layer. Widths must match (``model.model_dim`` > 0, or equal
  feature dims).
  """
  owns_encoders: ClassVar[bool] = True
  layers: int = 2
  hidden: int = 256             # feed-forward width 4 · hidden, as the blocks
  model_dim: int = 0
  positional_encoding: bool = False
  bottleneck_tokens: int = _default(BottleneckKnobs, "bottleneck_tokens")
  fusion_layer: int = _default(BottleneckKnobs, "fusion_layer")
  KNOBS: ClassVar[type] = BottleneckKnobs
  CONFIG: ClassVar[dict] = {k: k for k in ("layers", "hidden", "model_dim",
                                           "positional_encoding")}

  def _embed(self, x, name):
    if self.model_dim:
      x = Linear(self.model_dim, self.dtype, name=f"{name}_input_proj")(x)
    if self.positional_encoding:
      x = x + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)
    return x

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    xs, xt = self._embed(speech, "speech"), self._embed(text, "text")
    n = self.bottleneck_tokens if self.fusion_layer < self.layers else 0
    if n and xs.shape[-1] != xt.shape[-1]:
      raise ConfigError(f"bottleneck fusion needs equal widths, got speech {xs.shape[-1]} and "
                       f"text {xt.shape[-1]}: set model.model_dim")
    if n:
      shared = self.param("bottleneck", nn.initializers.normal(0.02), (1, n, xs.shape[-1]),
                          jnp.float32)
      shared = jnp.broadcast_to(shared, (xs.shape[0], n, xs.shape[-1])).astype(xs.dtype)
    aux = {}
    for i in range(self.layers):
      layer = lambda m: EncoderLayer(self.num_heads, 4 * self.hidden, self.dropout, self.dtype,
                                     name=f"{m}_layer_{i}")
      if i < self.fusion_layer or not n:
        xs = layer("speech")(xs, speech_mask, deterministic=deterministic)
        xt = layer("text")(xt, text_mask, deterministic=deterministic)
        continue
      updates = []
      for m, x, mask in (("speech", xs, speech_mask), ("text", xt, text_mask)):
        length = x.shape[1]
        full = jnp.concatenate([mask, jnp.ones((mask.shape[0], n), mask.dtype)], axis=1)
        y, w = layer(m)(jnp.concatenate([x, shared], axis=1), full,
                        deterministic=deterministic, return_weights=True)
        updates.append(y[:, length:])
        aux[f"fusion/{m}_to_bottleneck_attention"] = w[:, :length, length:]
        if m == "speech":
          xs = y[:, :length]
        else:
          xt = y[:, :length]
      # the mean of the present modalities' updates (an absent one wrote nothing)
      p_s, p_t = presence(speech_mask)[:, None, None], presence(text_mask)[:, None, None]
      both = jnp.maximum(p_s + p_t, 1.0)
      shared = jnp.where(p_s + p_t > 0, (p_s * updates[0] + p_t * updates[1]) / both,
                         (updates[0] + updates[1]) / 2)
    drop = Dropout(self.dropout)
    xs = drop(xs, deterministic=deterministic) * speech_mask[..., None].astype(xs.dtype)
    xt = drop(xt, deterministic=deterministic) * text_mask[..., None].astype(xt.dtype)
    aux.update({"temporal/sequence": xs, "temporal/pooled": masked_mean(xs, speech_mask),
                "contextual/sequence": xt, "contextual/pooled": masked_mean(xt, text_mask)})
    pooled = list(self.absent_pair(aux["temporal/pooled"], speech_mask,
                                   aux["contextual/pooled"], text_mask))
    if n:   # the shared tokens after the last layer carry what both modalities wrote
      aux["fusion/bottleneck"] = jnp.mean(shared.astype(jnp.float32), axis=1)
      pooled.append(aux["fusion/bottleneck"])
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        jnp.concatenate(pooled, axis=-1), deterministic=deterministic)
    return fused, aux

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    n = config.bottleneck_tokens if config.fusion_layer < config.layers else 0
    fused_layers = max(config.layers - config.fusion_layer, 0) if n else 0
    one = dataclasses.replace(config, layers=1, model_dim=0)
    total = 0.0
    for length, d_in in ((speech_len, speech_dim), (text_len, text_dim)):
      d = config.model_dim or d_in
      total += 2.0 * length * d_in * d if config.model_dim else 0.0
      total += (config.layers - fused_layers) * encoder_flops(one, length, d)[0]
      total += fused_layers * encoder_flops(one, length + n, d)[0]
    return total + 2 * (3 if n else 2) * (config.model_dim or speech_dim) * config.f_hidden


class TensorFusion(FusionHead):
  """Tensor Fusion (Zadeh et al., EMNLP 2017): ``vec([s; 1] ⊗ [t; 1])``, then a projection.

  The pooled blocks are first projected to ``tensor_dim`` (TFN's modality subnetworks;
  the outer product of two 768-d vectors would need 300 M weights), so the tensor is
  ``[B, (k+1)²]``; ``fused = FP(tensor) [B, features]``. ``aux``:
  ``fusion/speech_vector``, ``fusion/text_vector [B, k]``, ``fusion/tensor``.
  """
  tensor_dim: int = _default(TensorKnobs, "tensor_dim")
  KNOBS: ClassVar[type] = TensorKnobs

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = pooled_projections(self.tensor_dim, self.dtype, speech, speech_mask, text,
                              text_mask)
    s, t = self.absent_pair(s.astype(jnp.float32), speech_mask, t.astype(jnp.float32),
                            text_mask)
    one = jnp.ones((s.shape[0], 1), jnp.float32)
    tensor = jnp.einsum("bi,bj->bij", jnp.concatenate([s, one], -1),
                        jnp.concatenate([t, one], -1)).reshape(s.shape[0], -1)
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        tensor, deterministic=deterministic)
    return fused, {"fusion/speech_vector": s, "fusion/text_vector": t, "fusion/tensor": tensor}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    k = config.tensor_dim
    return 2 * (speech_dim + text_dim) * k + 2 * (k + 1) ** 2 * config.f_hidden + \
        2 * config.f_hidden


class LowRankFusion(FusionHead):
  """Low-rank Multimodal Fusion (Liu et al., ACL 2018).

  Tensor fusion with a weight of CP rank ``rank``, computed without the tensor:
  ``h = Σ_r (W_s^r [s; 1]) ⊙ (W_t^r [t; 1]) + b`` (``W^r`` of shape ``[k+1, features]``,
  ``s, t`` projected to ``tensor_dim`` as in :class:`TensorFusion`); ``fused = FP(h)``.
  With ``rank >= tensor_dim + 1`` it can express every tensor-fusion weight (tested
  against the tensor form). ``aux``: the vectors and ``fusion/product [B, features]``.
  """
  tensor_dim: int = _default(LowRankKnobs, "tensor_dim")
  rank: int = _default(LowRankKnobs, "rank")
  KNOBS: ClassVar[type] = LowRankKnobs

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s, t = pooled_projections(self.tensor_dim, self.dtype, speech, speech_mask, text,
                              text_mask)
    s, t = self.absent_pair(s, speech_mask, t, text_mask)
    k1 = self.tensor_dim + 1
    # LMF's initialisation: Xavier-normal factors, a zero bias.
    init = nn.initializers.xavier_normal(in_axis=1, out_axis=2, batch_axis=(0,))
    factors = {m: self.param(f"{m}_factors", init, (self.rank, k1, self.features), jnp.float32)
               for m in ("speech", "text")}
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    ext = lambda v: jnp.concatenate([v.astype(jnp.float32), jnp.ones((v.shape[0], 1))], -1)
    ps = jnp.einsum("bi,rif->brf", ext(s), factors["speech"])
    pt = jnp.einsum("bi,rif->brf", ext(t), factors["text"])
    product = jnp.sum(ps * pt, axis=1) + bias
    fused = FusionProjection(self.features, self.dropout, self.dtype, name="fusion_proj")(
        product, deterministic=deterministic)
    return fused, {"fusion/speech_vector": s, "fusion/text_vector": t,
                   "fusion/product": product}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    k1, f = config.tensor_dim + 1, config.f_hidden
    return 2 * (speech_dim + text_dim) * (k1 - 1) + 2 * 2 * config.rank * k1 * f + 2 * f * f


class LateFusion(FusionHead):
  """Late fusion: a learned combination of two unimodal classifiers' outputs.

  Each pooled block goes through the original's unimodal classifier (Linear → ReLU →
  Dropout → Linear to K classes); ``logits = w_s · logits_s + w_t · logits_t`` with
  ``w = softmax(mix)`` learned (initially equal; renormalised over the modalities
  present, so an absent one leaves the other's decision). The baseline every fusion method
  must beat: it only combines decisions. Returns logits ``[B, K]`` (the classifier of
  the other heads is not used); ``aux``: ``fusion/modality_weights [B, 2]``,
  ``fusion/speech_logits``, ``fusion/text_logits``; its "fused" vector is the logits.
  """
  produces_logits: ClassVar[bool] = True
  num_classes: int = 7
  hidden: int = 256
  CONFIG: ClassVar[dict] = {"hidden": "classifier_hidden"}

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    def classifier(x, m):
      h = nn.relu(Linear(self.hidden, self.dtype, name=f"{m}_dense1")(x))
      h = Dropout(self.dropout)(h, deterministic=deterministic)
      return Linear(self.num_classes, self.dtype, name=f"{m}_dense2")(h).astype(jnp.float32)
    ls = classifier(masked_mean(speech, speech_mask), "speech")
    lt = classifier(masked_mean(text, text_mask), "text")
    mix = jax.nn.softmax(self.param("mix", nn.initializers.zeros, (2,), jnp.float32))
    # renormalised over the modalities present (both absent: the learned mixture)
    present = jnp.stack([presence(speech_mask), presence(text_mask)], axis=-1)
    w = mix * jnp.where(present.sum(-1, keepdims=True) > 0, present, 1.0)
    w = w / jnp.sum(w, axis=-1, keepdims=True)
    logits = w[:, 0:1] * ls + w[:, 1:2] * lt
    return logits, {"fusion/modality_weights": w,
                    "fusion/speech_logits": ls, "fusion/text_logits": lt}

  @classmethod
  def flops(cls, config, speech_len, text_len, speech_dim, text_dim):
    h = config.classifier_hidden
    return 2 * (speech_dim + text_dim) * h   # (K-wide output layers omitted, as everywhere)
