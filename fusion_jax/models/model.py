"""The full model: encoders, a fusion head (:mod:`fusion_jax.models.heads`), the classifier;
and the unimodal baselines.

Every variant is called the same way::

  logits, aux = model.apply(params, speech, speech_mask, text, text_mask, train=False)

with ``speech [B, T, Ds]``, ``speech_mask [B, T]``, ``text [B, L, Dt]``,
``text_mask [B, L]``; ``logits [B, K]`` float32. ``aux`` is a flat dict:

* ``temporal/sequence [B, T, D]``, ``temporal/pooled [B, D]`` (speech block),
* ``contextual/sequence [B, L, D]``, ``contextual/pooled [B, D]`` (text block),
* ``fusion/fused [B, F]`` (the classifier's input, fusion variants; for ``late``, which
  has no classifier, its logits ``[B, K]``),
* head internals, e.g. ``fusion/speech_to_text_attention [B, T, L]`` and
  ``fusion/text_to_speech_attention [B, L, T]`` (cross_attention, mult),
  ``fusion/speech_gate``, ``fusion/text_gate [B, F]`` (gated),
  ``fusion/modality_weights [B, 2]`` (weighted, late: speech, text),
  ``fusion/{speech,text}_to_bottleneck_attention`` (bottleneck); each head's docstring
  lists its own.

With ``unimodal_heads`` a fusion variant also has ``fusion/logits [B, K]`` (the fusion
head's own), ``unimodal/speech_logits`` and ``unimodal/text_logits [B, K]``, and
``floor/weights [B, 3]`` (the blend each utterance got); its ``logits`` are then the
floor's log-probabilities (:mod:`fusion_jax.models.floor`).

An absent modality is an all-zero mask (every head and the floor take it, see
:mod:`fusion_jax.models.heads`). A unimodal baseline (``speech_only``, ``text_only``)
has only its own block's entries. Unused entries cost nothing under ``jit`` (dead code
is removed).
Which blocks and head a variant has is read from :mod:`fusion_jax.models.registry`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fusion_jax.errors import ConfigError
from fusion_jax.models import encoders, floor, heads, registry
from fusion_jax.schema import at_least, fraction, knob, one_of, positive
from fusion_jax.models.layers import (Dropout, Linear, SequenceEncoder, encoder_flops, gelu,
                                      layer_norm, masked_mean, presence)

@dataclasses.dataclass(frozen=True)
class ModelConfig(heads.HeadKnobs):
  """Model hyperparameters (``config.model``), frozen at build time: the schema of that
  section (each field's default and check), with the heads' own knobs
  (:class:`~fusion_jax.models.heads.HeadKnobs`) inherited."""
  speech_dim: int = knob(768, positive, "positive", "speech feature width (wav2vec2-base)")
  text_dim: int = knob(768, positive, "positive", "text feature width (RoBERTa-base)")
  hidden: int = knob(256, at_least(1), "at least 1", "encoder feed-forward width / 4")
  layers: int = knob(2, at_least(1), "at least 1", "encoder layers per block")
  heads: int = knob(8, at_least(1), "at least 1", "attention heads")
  f_hidden: int = knob(512, at_least(1), "at least 1", "fusion width")
  classifier_hidden: int = knob(256, at_least(1), "at least 1",
                                "classifier (and unimodal head) hidden width")
  dropout: float = knob(0.4, fraction, "in [0, 1)", "dropout rate")
  model_dim: int = knob(0, at_least(0), "0 (off) or more",
                        ">0: project inputs to this width first (off in the original)")
  positional_encoding: bool = knob(False, doc="sinusoidal positions (off in the original)")
  dtype: str = knob("float32", one_of("float32", "bfloat16", "float16"),
                    "float32, bfloat16 or float16",
                    "compute dtype; bfloat16 keeps float32 params and loss")
  # pretrained encoders' hidden states (fusion_jax.models.encoders): S states side by side
  # per frame (set from the feature files); S > 1 is mixed with learned softmax weights,
  # unless the text encoder's top layers are fine-tuned
  speech_layers: int = knob(1, at_least(1), "at least 1", "hidden states per speech frame")
  text_layers: int = knob(1, at_least(1), "at least 1", "hidden states per text token")
  text_finetune_layers: int = knob(0, at_least(0), "0 (frozen) or more",
                                   "> 0: train the text encoder's top k layers")
  text_encoder: str = knob("", doc="which pretrained encoder (its extractor's name)")
  speech_finetune_layers: int = knob(0, at_least(0), "0 (frozen) or more",
                                     "> 0: train the speech encoder's top k layers (hf "
                                     "features of every hidden state, no pooling)")
  speech_encoder: str = knob("", doc="which pretrained speech encoder (hf@<weights sha256>)")
  # a missing modality and the floor (models/heads.py, models/floor.py); off in the original
  absent_embedding: bool = knob(False, doc="fusion heads put a learned vector in place of "
                                "an absent modality's pooled one")
  unimodal_heads: bool = knob(False, doc="fusion variants also classify each modality "
                              "alone and blend the three on validation (never worse there "
                              "than either modality's head)")
  encoder_locations: str = knob("", doc="where fine-tuned snapshots were at training, "
                                "'<sha256>=<folder>' comma-separated (a hint: the weights "
                                "are checked)")

  @classmethod
  def from_config(cls, cfg) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in fields})

  @property
  def finetunes(self) -> bool:
    """Whether a pretrained encoder's layers are trained (their own learning rate)."""
    return bool(self.text_finetune_layers or self.speech_finetune_layers)

  @property
  def compute_dtype(self):
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
    return jnp.dtype(self.dtype)


class EmotionRecognizer(nn.Module):
  """Temporal block + contextual block + fusion head + classifier, or a unimodal baseline.

  Attributes:
    config: the model hyperparameters.
    variant: a registered variant name (:func:`fusion_jax.models.registry.names`).
    num_classes: K.
  """
  config: ModelConfig
  variant: str
  num_classes: int

  def _encoder(self, name):
    c = self.config
    return SequenceEncoder(c.layers, c.heads, 4 * c.hidden, c.dropout, c.model_dim,
                           c.positional_encoding, c.compute_dtype, name=name)

  def _inputs(self, speech, speech_mask, text, text_mask, det, aux):
    """Stacks of hidden states → one state per frame (a learned mix, or fine-tuned top
    layers); plain features pass through unchanged."""
    c, dtype = self.config, self.config.compute_dtype
    spec = registry.get(self.variant)
    encoders.remember_locations(c.encoder_locations)
    if c.speech_finetune_layers and spec.reads("speech"):
      speech = encoders.FineTunedTop(c.speech_encoder, c.speech_finetune_layers,
                                     c.speech_layers, name=encoders.SPEECH_SCOPE)(
                                         speech, speech_mask, deterministic=det)
    elif c.speech_layers > 1 and spec.reads("speech"):
      speech, w = encoders.LayerMix(c.speech_layers, dtype, name="speech_layer_mix")(speech)
      aux["temporal/layer_weights"] = jnp.broadcast_to(w, (speech.shape[0], w.shape[0]))
    if c.text_finetune_layers and spec.reads("text"):
      text = encoders.FineTunedTop(c.text_encoder, c.text_finetune_layers, c.text_layers,
                                   name=encoders.SCOPE)(text, text_mask, deterministic=det)
    elif c.text_layers > 1 and spec.reads("text"):
      text, w = encoders.LayerMix(c.text_layers, dtype, name="text_layer_mix")(text)
      aux["contextual/layer_weights"] = jnp.broadcast_to(w, (text.shape[0], w.shape[0]))
    return speech.astype(jnp.float32), text.astype(jnp.float32)

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, train: bool = False):
    c, dtype, det = self.config, self.config.compute_dtype, not train
    spec = registry.get(self.variant)
    aux = {}
    speech, text = self._inputs(speech, speech_mask, text, text_mask, det, aux)
    if spec.is_fusion and spec.head.owns_encoders:   # fusion inside the encoders (MBT)
      head = spec.head.from_config(c, self.num_classes, name="fusion_head")
      fused, aux = head(speech, speech_mask, text, text_mask, deterministic=det)
      return self._floor(self._classify(fused, aux, det), aux, speech_mask, text_mask, det)
    if spec.reads("speech"):
      s_seq = self._encoder("temporal_block")(speech, speech_mask, deterministic=det)
      aux["temporal/sequence"] = s_seq
      aux["temporal/pooled"] = masked_mean(s_seq, speech_mask)
    if spec.reads("text"):
      t_seq = self._encoder("contextual_block")(text, text_mask, deterministic=det)
      aux["contextual/sequence"] = t_seq
      aux["contextual/pooled"] = masked_mean(t_seq, text_mask)

    if not spec.is_fusion:  # the original's baseline: pooled block → MLP
      return self._unimodal(aux[registry.BLOCKS[spec.blocks[0]][0]], "", det), aux

    head = spec.head.from_config(c, self.num_classes, name="fusion_head")
    fused, head_aux = head(s_seq, speech_mask, t_seq, text_mask, deterministic=det)
    aux.update(head_aux)
    if spec.head.produces_logits:   # late fusion: the head's output is the decision
      aux["fusion/fused"] = fused
      return self._floor((fused.astype(jnp.float32), aux), aux, speech_mask, text_mask, det)
    return self._floor(self._classify(fused, aux, det), aux, speech_mask, text_mask, det)

  def _unimodal(self, pooled, prefix: str, det):
    """The original's unimodal classifier (``{prefix}dense1`` → ReLU → Dropout →
    ``{prefix}dense2``) on a pooled block ``[B, D]`` → logits ``[B, K]``."""
    c, dtype = self.config, self.config.compute_dtype
    h = nn.relu(Linear(c.classifier_hidden, dtype, name=f"{prefix}dense1")(pooled))
    h = Dropout(c.dropout)(h, deterministic=det)
    return Linear(self.num_classes, dtype, name=f"{prefix}dense2")(h).astype(jnp.float32)

  def _floor(self, out, aux, speech_mask, text_mask, det):
    """With ``unimodal_heads``: the fusion logits blended with each modality's own head
    (:mod:`fusion_jax.models.floor`); the blend is set on validation, never trained."""
    if not self.config.unimodal_heads:
      return out
    fusion_logits = out[0]
    z_s = self._unimodal(aux["temporal/pooled"], "speech_head_", det)
    z_t = self._unimodal(aux["contextual/pooled"], "text_head_", det)
    blend = jax.lax.stop_gradient(self.param(
        "floor_blend", lambda _key, shape: jnp.asarray(floor.FUSION_ONLY).reshape(shape),
        floor.FUSION_ONLY.shape))
    weights = floor.effective_weights(blend, presence(speech_mask), presence(text_mask))
    aux.update({"fusion/logits": fusion_logits, "unimodal/speech_logits": z_s,
                "unimodal/text_logits": z_t, "floor/weights": weights})
    return floor.blend_logits(weights, fusion_logits, z_s, z_t), aux

  def _classify(self, fused, aux, det):
    """The original's classifier on the fused vector."""
    c, dtype = self.config, self.config.compute_dtype
    aux["fusion/fused"] = fused
    h = Linear(c.classifier_hidden, dtype, name="classifier_dense1")(fused)
    h = gelu(layer_norm("classifier_norm")(h))
    h = Dropout(c.dropout)(h, deterministic=det)
    logits = Linear(self.num_classes, dtype, name="classifier_dense2")(h)
    return logits.astype(jnp.float32), aux


def build_model(config, variant: str, num_classes: int) -> EmotionRecognizer:
  """``config``: a :class:`ModelConfig` or the ``config.model`` ConfigDict."""
  if not isinstance(config, ModelConfig):
    config = ModelConfig.from_config(config)
  return EmotionRecognizer(config, registry.get(variant).name, int(num_classes))


def has_floor(config: ModelConfig, variant: str) -> bool:
  """Whether ``variant`` under ``config`` blends with unimodal heads (a ``floor_blend``
  parameter set on validation, :mod:`fusion_jax.models.floor`)."""
  return bool(config.unimodal_heads) and registry.get(variant).is_fusion


def dummy_inputs(config: ModelConfig, batch: int = 2, speech_len: int = 8, text_len: int = 4):
  """Zero inputs of the right dims, for ``init`` and ``eval_shape``."""
  return (jnp.zeros((batch, speech_len, config.speech_dim), jnp.float32),
          jnp.ones((batch, speech_len), jnp.float32),
          jnp.zeros((batch, text_len, config.text_dim), jnp.float32),
          jnp.ones((batch, text_len), jnp.float32))


def init_params(model: EmotionRecognizer, rng: jax.Array):
  """Initial parameters (float32; a fine-tuned encoder's layers are its pretrained ones).
  Shapes do not depend on sequence lengths."""
  # one compiled program: op by op, init compiled every initializer apart (seconds and
  # ~0.1 GB of host memory more at 768-d); the same values up to the last bit of normal draws
  params = jax.jit(lambda r: model.init({"params": r}, *dummy_inputs(model.config),
                                        train=False)["params"])(rng)
  c = model.config
  if c.text_finetune_layers and encoders.SCOPE in params:
    params = encoders.load_pretrained(params, c.text_encoder, c.text_finetune_layers)
  if c.speech_finetune_layers and encoders.SPEECH_SCOPE in params:
    params = encoders.load_pretrained(params, c.speech_encoder, c.speech_finetune_layers,
                                      encoders.SPEECH_SCOPE)
  return params


def layer_weights(params) -> dict:
  """The learned layer-mix weights of a trained model: ``{"speech": [S], "text": [S]}``
  (softmax, sum to one; index 0 = the encoder's input embeddings, S - 1 = its last layer),
  only for modalities that mix stacked hidden states."""
  out = {}
  for m in ("speech", "text"):
    mix = params.get(f"{m}_layer_mix")
    if mix is not None:
      out[m] = [float(x) for x in jax.nn.softmax(jnp.asarray(mix["logits"], jnp.float32))]
  return out


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def forward_flops(config: ModelConfig, variant: str, speech_len: int, text_len: int) -> float:
  """Useful (unpadded) forward FLOPs of one utterance: matmuls and attention only."""
  spec = registry.get(variant)
  if spec.is_fusion and spec.head.owns_encoders:
    return spec.head.flops(config, speech_len, text_len,
                           config.speech_dim // config.speech_layers,
                           config.text_dim // config.text_layers)
  flops, dims = 0.0, {"speech": 0, "text": 0}
  for m, length, d_in in (("speech", speech_len, config.speech_dim // config.speech_layers),
                          ("text", text_len, config.text_dim // config.text_layers)):
    if spec.reads(m):
      f, dims[m] = encoder_flops(config, length, d_in)
      flops += f
  if spec.is_fusion:
    flops += spec.head.flops(config, speech_len, text_len, dims["speech"], dims["text"])
  return flops
