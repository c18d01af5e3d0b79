"""Building blocks with PyTorch's semantics: Linear, multi-head attention, encoder layer.

Masks are ``[B, T]`` with 1 for a real frame and 0 for padding. Attention
logits of padded keys are filled with ``finfo(float32).min`` (never ``-inf``),
and masked means clamp their count at 1, so a fully padded row yields zeros,
not NaN.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from fusion_jax.dropout import Dropout, DropoutSeed, batch_row_index, hash_dropout
from fusion_jax.errors import ConfigError

Dtype = Any
LN_EPS = 1e-5  # torch.nn.LayerNorm's default (Flax's is 1e-6)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked mean over time: ``sum_t m_t x_t / max(sum_t m_t, 1)``.

  Args:
    x: ``[B, T, D]``.
    mask: ``[B, T]``, 1 = real, 0 = padding.

  Returns:
    ``[B, D]`` in float32.
  """
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(x.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def presence(mask: jax.Array) -> jax.Array:
  """``[B, T] → [B]`` float32: 1 where the utterance has this modality (any real frame), 0
  where it is absent (an all-zero mask: the modality is missing, or was dropped)."""
  return (jnp.sum(mask.astype(jnp.float32), axis=1) > 0).astype(jnp.float32)


def gelu(x):
  """Exact (erf) GELU, as ``torch.nn.GELU()`` (Flax's default is the tanh approximation)."""
  return nn.gelu(x, approximate=False)


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class Linear(nn.Module):
  """``torch.nn.Linear``: ``y = x W^T + b``, stored as ``kernel [in, out]``, ``bias [out]``.

  Initialised like torch (uniform in ±1/sqrt(fan_in)), unless ``kernel_bound``
  / ``zero_bias`` say otherwise (attention projections). Parameters stay
  float32; the product runs in ``dtype``.
  """
  features: int
  dtype: Dtype = jnp.float32
  kernel_bound: float = 0.0
  zero_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    bound = 1.0 / math.sqrt(fan_in)
    kernel = self.param("kernel", _uniform(self.kernel_bound or bound),
                        (fan_in, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros if self.zero_bias else _uniform(bound),
                      (self.features,), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


def layer_norm(name: str):
  """``torch.nn.LayerNorm`` (eps 1e-5), computed in float32."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def _attention_weights(q, k, valid):
  """Softmax attention ``[B, H, Tq, Tk]`` (float32) of ``q [B, Tq, H, dh]`` over ``k``."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * (1.0 / math.sqrt(q.shape[-1])), k,
                      preferred_element_type=jnp.float32)
  return jax.nn.softmax(jnp.where(valid, logits, jnp.finfo(jnp.float32).min), axis=-1)


CPU_RECOMPUTE_ABOVE = 64 * 2 ** 20
ACCELERATOR_RECOMPUTE_ABOVE = 2 ** 30


class MultiHeadAttention(nn.Module):
  """``torch.nn.MultiheadAttention`` (batch first) with a key padding mask.

  Returns the output ``[B, Tq, E]`` and the head-averaged attention weights
  ``[B, Tq, Tk]`` (before dropout), as torch's ``need_weights=True`` does.
  """
  num_heads: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  # Training with weights [B, H, Tq, Tk] of at least this many float32 bytes: one head at a
  # time, recomputed in the backward pass (smaller tensors are faster kept whole). None =
  # by backend: 64 MiB on CPU (host memory, measured no slower), 1 GiB on GPU/TPU, where
  # heads one after another would leave the device idle and memory is rarely short.
  recompute_above: Optional[int] = None

  @nn.compact
  def __call__(self, query, key_value, key_mask, *, deterministic: bool):
    e = query.shape[-1]
    if e % self.num_heads:
      raise ConfigError(f"width {e} is not divisible by {self.num_heads} heads")
    dh = e // self.num_heads
    xavier = math.sqrt(6.0 / (e + 3 * e))  # torch: xavier_uniform on the packed [3E, E]
    proj = lambda name: Linear(e, self.dtype, kernel_bound=xavier, zero_bias=True, name=name)
    b, tq, tk = query.shape[0], query.shape[1], key_value.shape[1]
    q = proj("query")(query).reshape(b, tq, self.num_heads, dh)
    k = proj("key")(key_value).reshape(b, tk, self.num_heads, dh)
    v = proj("value")(key_value).reshape(b, tk, self.num_heads, dh)
    valid = key_mask[:, None, None, :] > 0
    train = not deterministic and self.dropout > 0.0
    # Same key as a ``Dropout`` submodule here would draw (checkpoints' masks unchanged).
    seed = DropoutSeed(name="Dropout_0")() if train else None

    def attend(q, k, v, seed, index):
      weights = _attention_weights(q, k, valid)
      dropped = hash_dropout(weights, seed, self.dropout, index) if train else weights
      return jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(self.dtype), v)

    limit = self.recompute_above
    if limit is None:
      on_cpu = jax.default_backend() == "cpu"
      limit = CPU_RECOMPUTE_ABOVE if on_cpu else ACCELERATOR_RECOMPUTE_ABOVE
    if not train or 4 * b * self.num_heads * tq * tk < limit:
      mixed = attend(q, k, v, seed, None)
    else:
      # One head at a time, recomputed in the backward pass: the [B, Tq, Tk] weights
      # and masks of one head live at once instead of [B, H, Tq, Tk] several times
      # over; same values, same masks (BUILD_NOTES, Performance).
      hq, hk, hv = (jnp.moveaxis(a, 2, 0)[:, :, :, None] for a in (q, k, v))
      base = (batch_row_index((b, 1, 1, 1)) * jnp.uint32(self.num_heads * tq * tk)
              + jax.lax.iota(jnp.uint32, tq)[None, None, :, None] * jnp.uint32(tk)
              + jax.lax.iota(jnp.uint32, tk)[None, None, None, :])
      one = jax.checkpoint(lambda a: attend(a[0], a[1], a[2], seed,
                                            base + a[3] * jnp.uint32(tq * tk)))
      heads = jax.lax.map(one, (hq, hk, hv, jnp.arange(self.num_heads, dtype=jnp.uint32)))
      mixed = jnp.moveaxis(heads[:, :, :, 0], 0, 2)
    # a query with no key at all (an absent modality) receives nothing, not a mean of pads
    mixed = mixed * jnp.any(valid, axis=-1)[..., None].astype(mixed.dtype)
    out = Linear(e, self.dtype, zero_bias=True, name="out")(mixed.reshape(b, tq, e))
    return out, jnp.mean(_attention_weights(q, k, valid), axis=1)


class EncoderLayer(nn.Module):
  """``torch.nn.TransformerEncoderLayer`` (post-LN, GELU, batch first).

  ``[B, T, E]``, mask ``[B, T]`` → ``[B, T, E]`` (and, with ``return_weights``, the
  head-averaged self-attention weights ``[B, T, T]``).
  """
  num_heads: int
  ff_dim: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool, return_weights: bool = False):
    e = x.shape[-1]
    drop = lambda y: Dropout(self.dropout)(y, deterministic=deterministic)
    attn, weights = MultiHeadAttention(self.num_heads, self.dropout, self.dtype,
                                       name="self_attn")(x, x, mask, deterministic=deterministic)
    x = layer_norm("norm1")(x + drop(attn))
    h = gelu(Linear(self.ff_dim, self.dtype, name="linear1")(x))
    h = Linear(e, self.dtype, name="linear2")(drop(h))
    out = layer_norm("norm2")(x + drop(h))
    return (out, weights) if return_weights else out


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
  """``[length, dim]`` sine/cosine positions (Vaswani et al.)."""
  pos = jnp.arange(length, dtype=jnp.float32)[:, None]
  i = jnp.arange(0, dim, 2, dtype=jnp.float32)
  angle = pos / jnp.power(10000.0, i / dim)
  pe = jnp.zeros((length, dim), jnp.float32)
  pe = pe.at[:, 0::2].set(jnp.sin(angle))
  return pe.at[:, 1::2].set(jnp.cos(angle[:, : dim // 2]))


class SequenceEncoder(nn.Module):
  """The temporal (speech) or contextual (text) block.

  ``[B, T, D_in]`` and mask ``[B, T]`` → ``[B, T, D]`` (``D = model_dim`` if
  set, else ``D_in``), padded positions set to 0. As the original: a stack of
  post-LN encoder layers, then dropout on the whole sequence.
  """
  num_layers: int
  num_heads: int
  ff_dim: int
  dropout: float
  model_dim: int = 0
  positional_encoding: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    if self.model_dim:
      x = Linear(self.model_dim, self.dtype, name="input_proj")(x)
    if self.positional_encoding:
      x = x + sinusoidal_positions(x.shape[1], x.shape[2]).astype(x.dtype)
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.ff_dim, self.dropout, self.dtype,
                       name=f"layer_{i}")(x, mask, deterministic=deterministic)
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    return x * mask[..., None].astype(x.dtype)


def encoder_flops(config, length: int, input_dim: int) -> tuple:
  """Useful forward FLOPs of one :class:`SequenceEncoder` block (``config``: a
  :class:`~fusion_jax.models.ModelConfig`) over ``length`` frames, and its output width."""
  d = config.model_dim or input_dim
  flops = 2.0 * length * input_dim * d if config.model_dim else 0.0
  per_layer = (2 * length * 4 * d * d + 2 * 2 * length * length * d
               + 2 * 2 * length * d * 4 * config.hidden)
  return flops + config.layers * per_layer, d
