"""Hash dropout, shared by our blocks (``models/``) and the pretrained encoders
(``encoders/``): a mask hashed from one 32-bit seed per call and each element's index
in the whole batch, so a microbatched step drops exactly what the whole batch would.

``models.layers`` builds its attention dropout from them; ``steps`` places microbatches
with :func:`batch_rows`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


# Where the rows being computed sit in the whole batch: (stride, offset) of traced uint32
# scalars, or None (the whole batch). Read while tracing, by the dropout masks below.
_ROWS: contextvars.ContextVar = contextvars.ContextVar("fusion_jax_batch_rows", default=None)


@contextlib.contextmanager
def batch_rows(stride, offset):
  """Within this context (while tracing), row ``r`` of every tensor a model drops out is
  row ``r * stride + offset`` of the whole batch, so a microbatch draws exactly the
  whole batch's dropout masks for its rows (gradient accumulation, ``steps.train_step``).
  ``stride``/``offset`` may be traced integers."""
  token = _ROWS.set((jnp.asarray(stride, jnp.uint32), jnp.asarray(offset, jnp.uint32)))
  try:
    yield
  finally:
    _ROWS.reset(token)


def batch_row_index(shape) -> jax.Array:
  """``uint32 [shape[0], 1, ...]``: each row's place in the whole batch (see
  :func:`batch_rows`; without it, the row itself)."""
  rows = jax.lax.broadcasted_iota(jnp.uint32, (shape[0],) + (1,) * (len(shape) - 1), 0)
  placed = _ROWS.get()
  return rows if placed is None else rows * placed[0] + placed[1]


def element_index(shape) -> jax.Array:
  """``uint32 shape``: each element's row-major index in the whole batch's tensor (rows
  first; the batch axis is axis 0)."""
  row_size = math.prod(shape[1:])
  within = jax.lax.iota(jnp.uint32, row_size).reshape((1,) + tuple(shape[1:]))
  return batch_row_index(shape) * jnp.uint32(row_size) + within


def hash_dropout(x: jax.Array, seed: jax.Array, rate: float, index=None) -> jax.Array:
  """Inverted dropout of ``x`` with a mask hashed from ``seed`` (uint32) and each element's
  row-major index in the whole batch (:func:`element_index`; or ``index``, uint32
  broadcastable to ``x``: a slice's place in a whole)."""
  if index is None:
    index = element_index(x.shape)
  def lowbias32(h):
    h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
    h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)
  # Two rounds keyed by the seed: with one (index·φ + seed), two seeds' masks would be
  # shifted copies of one sequence, overlapping for ~2% of call pairs at [32, 8, 400, 400].
  h = lowbias32(lowbias32(index * jnp.uint32(0x9E3779B1) + seed) ^ (seed * jnp.uint32(0x85EBCA6B)))
  keep = h >= jnp.uint32(min(int(rate * 2.0 ** 32), 2 ** 32 - 1))
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


class DropoutSeed(nn.Module):
  """The 32-bit seed a :class:`Dropout` of the same name would draw (for fused callers)."""

  @nn.compact
  def __call__(self):
    return jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)


class Dropout(nn.Module):
  """Inverted dropout whose mask is a counter-based hash, not a Threefry draw per element.

  ``flax.linen.Dropout`` draws a Threefry random number for every element; for the
  attention weights ``[B, H, T, T]`` that was ≈ 40 % of a CPU training step. Here one
  32-bit seed is drawn per call (from the ``dropout`` stream, so masks stay a function of
  the run's key and step) and each element's bits are two seed-keyed rounds of
  ``lowbias32`` over its index, integer operations that XLA fuses into the multiply
  (BUILD_NOTES, Performance).
  Kept elements are scaled by ``1 / (1 - rate)`` as in flax and torch.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return hash_dropout(x, jax.random.bits(self.make_rng("dropout"), (), jnp.uint32), self.rate)
