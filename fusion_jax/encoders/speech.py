"""wav2vec2, HuBERT, WavLM and data2vec-audio in Flax Linen, read from Hugging Face snapshots.

One module family covers the four (they share the convolutional feature encoder, the
feature projection and the transformer), with every architectural choice read from the
snapshot's ``config.json``:

================  ===================================================================
``feat_extract_norm``     ``"group"``: GroupNorm on the first conv (base, base-960h,
                          HuBERT/WavLM base); ``"layer"``: LayerNorm after every conv
                          (large-lv60, XLS-R, HuBERT/WavLM large; always for data2vec)
``do_stable_layer_norm``  pre-LN layers and a final LayerNorm (large-lv60, XLS-R, *-large)
                          instead of post-LN layers after an input LayerNorm
``feat_proj_layer_norm``  HuBERT: LayerNorm before the feature projection (or not)
``conv_pos_batch_norm``   HuBERT: BatchNorm before the positional conv, else weight norm
                          (transformers' padded batches are not padding-invariant with it,
                          nor for data2vec-audio's conv stack; here they are)
WavLM                     gated relative position bias (``num_buckets``,
                          ``max_bucket_distance``), computed in layer 0 and gated per layer
data2vec-audio            ``num_conv_pos_embeddings`` positional conv layers of
                          ``conv_pos_kernel_size``, each with a LayerNorm
================  ===================================================================

Shapes: ``waveform [B, S]`` float32 at 16 kHz and ``mask [B, S]`` (1 = real sample) →
hidden states ``[B, T, N + 1, H]`` (the transformer's input, then each layer's output;
for pre-LN models the last one after the final LayerNorm, i.e. ``last_hidden_state``) and
the frame mask ``[B, T]``. ``T`` is the convolutional stack's output length (49 frames per
second for the usual strides).

**Padding never changes the result.** transformers' base-style models take no attention
mask (their first GroupNorm and their attention would see the padding), so a batch padded to
its longest clip gives other states than each clip alone. Here the GroupNorm's statistics are
taken over each clip's real frames and attention never looks at padding, so a padded batch
equals every clip run alone — and so equals transformers run on the unpadded clip — for every
architecture (tested on the fixtures).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax.encoders import hub, weights
from fusion_jax.errors import ConfigError

SPEECH_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
TEXT_TYPES = ("bert", "roberta", "xlm-roberta")
_ACTS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
         "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
         "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
         "relu": jax.nn.relu, "silu": jax.nn.silu, "swish": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
  """The architecture, as ``config.json`` states it (defaults: wav2vec2-base's)."""
  model_type: str = "wav2vec2"
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-5
  conv_dim: tuple = (512,) * 7
  conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  feat_extract_norm: str = "group"
  feat_extract_activation: str = "gelu"
  do_stable_layer_norm: bool = False
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  conv_pos_kernel_size: int = 19       # data2vec-audio
  conv_pos_batch_norm: bool = False    # HuBERT
  feat_proj_layer_norm: bool = True    # HuBERT
  num_buckets: int = 320               # WavLM
  max_bucket_distance: int = 800       # WavLM

  @classmethod
  def from_dict(cls, raw: dict, source: str) -> "SpeechConfig":
    """Reads ``config.json``; an unsupported architecture or option stops with one line."""
    kind = raw.get("model_type")
    if kind in TEXT_TYPES:
      raise ConfigError(f"{source}: a {kind} model is a text encoder; give it as the text "
                        "model (--text_model), not the speech model")
    if kind == "whisper":
      raise ConfigError(f"{source}: a Whisper snapshot: read it with "
                        "fusion_jax.encoders.whisper.WhisperEncoder (--speech_extractor hf "
                        "takes either)")
    if kind not in SPEECH_TYPES:
      raise ConfigError(f"{source}: model_type {kind!r} is not supported as a speech "
                        f"encoder; supported: {', '.join(SPEECH_TYPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
    if kind == "data2vec-audio":
      kw["feat_extract_norm"] = "layer"
      kw.setdefault("num_conv_pos_embeddings", 5)
    cfg = cls(**kw)
    problems = []
    if cfg.feat_extract_norm not in ("group", "layer"):
      problems.append(f"feat_extract_norm {cfg.feat_extract_norm!r} (supported: group, layer)")
    for field in ("hidden_act", "feat_extract_activation"):
      if getattr(cfg, field) not in _ACTS:
        problems.append(f"{field} {getattr(cfg, field)!r} (supported: {', '.join(_ACTS)})")
    if raw.get("add_adapter"):
      problems.append("add_adapter true (the CTC adapter is not implemented)")
    if raw.get("adapter_attn_dim") is not None:
      problems.append("adapter_attn_dim (attention adapters are not implemented)")
    if not len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride):
      problems.append("conv_dim, conv_kernel and conv_stride of different lengths")
    if cfg.hidden_size % cfg.num_attention_heads:
      problems.append("hidden_size not a multiple of num_attention_heads")
    if problems:
      raise ConfigError(f"{source}: unsupported {kind} option: {'; '.join(problems)}")
    return cfg

  @property
  def wavlm(self) -> bool:
    return self.model_type == "wavlm"


def frame_lengths(cfg: SpeechConfig, samples):
  """Frames the convolutional stack makes of ``samples`` (int or int array)."""
  n = samples
  for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
    n = (n - k) // s + 1
  return n


def _layer_norm(eps: float, name: str, affine: bool = True):
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, use_scale=affine, use_bias=affine,
                      name=name)


class MaskedGroupNorm(nn.Module):
  """GroupNorm with one group per channel, statistics over each clip's real frames only:
  ``x [B, T, C]``, ``mask [B, T]`` → ``[B, T, C]``."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x, mask):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    # The sums over time are matrix products with the mask: XLA's CPU reductions over a
    # non-minor axis are ≈ 50× slower here (274 ms vs 5 ms for a 4-s clip's [12799, 512]).
    m = mask.astype(x.dtype)
    n = jnp.maximum(m.sum(axis=1), 1.0)[:, None]
    mean = jnp.einsum("bt,btc->bc", m, x) / n
    d = x - mean[:, None]
    var = jnp.einsum("bt,btc->bc", m, d * d) / n
    return d * jax.lax.rsqrt(var + self.eps)[:, None] * scale + bias


class StridedConv(nn.Module):
  """A 'VALID' strided conv over time as one matrix product of its patches: ``[B, S, C_in]``
  → ``[B, (S - k) // s + 1, C_out]``. Params as ``nn.Conv``'s (``kernel [k, C_in, C_out]``).

  The k strided slices side by side, times ``kernel`` flattened to ``[k·C_in, C_out]``. Used
  for convs with one input channel (wav2vec2's first), where it is ≈ 6× faster than XLA's
  CPU convolution (1.7 vs 10.6 ms for 4 s of audio); with 512 channels XLA's is faster."""
  features: int
  kernel: int
  stride: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel, self.stride
    c_in = x.shape[-1]
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, c_in, self.features))
    t = (x.shape[1] - k) // s + 1
    patches = jnp.concatenate([x[:, j:j + (t - 1) * s + 1:s] for j in range(k)], axis=-1)
    y = patches @ w.reshape(k * c_in, self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class ConvLayer(nn.Module):
  """``conv_layers.<i>``: conv, then LayerNorm (``norm="layer"``), per-channel masked
  GroupNorm (``"group"``) or nothing, then the activation. ``x [B, S, C_in]`` → ``[B, T, C]``."""
  cfg: SpeechConfig
  index: int
  norm: Optional[str]

  @nn.compact
  def __call__(self, x, mask):
    cfg, i = self.cfg, self.index
    if x.shape[-1] == 1:
      x = StridedConv(cfg.conv_dim[i], cfg.conv_kernel[i], cfg.conv_stride[i], cfg.conv_bias,
                      name="conv")(x)
    else:
      x = nn.Conv(cfg.conv_dim[i], (cfg.conv_kernel[i],), strides=(cfg.conv_stride[i],),
                  padding="VALID", use_bias=cfg.conv_bias, name="conv")(x)
    if self.norm == "layer":
      x = _layer_norm(1e-5, "layer_norm")(x)
    elif self.norm == "group":
      x = MaskedGroupNorm(name="layer_norm")(x, mask)
    return _ACTS[cfg.feat_extract_activation](x)


class FeatureEncoder(nn.Module):
  """The convolutional stack: ``waveform [B, S]``, ``lengths [B]`` (real samples) →
  ``[B, T, C]`` and the frame lengths ``[B]``."""
  cfg: SpeechConfig

  @nn.compact
  def __call__(self, waveform, lengths):
    cfg = self.cfg
    x = waveform[..., None]
    for i in range(len(cfg.conv_dim)):
      lengths = (lengths - cfg.conv_kernel[i]) // cfg.conv_stride[i] + 1
      norm = "layer" if cfg.feat_extract_norm == "layer" else "group" if i == 0 else None
      out_len = (x.shape[1] - cfg.conv_kernel[i]) // cfg.conv_stride[i] + 1
      mask = jnp.arange(out_len)[None] < lengths[:, None]
      x = ConvLayer(cfg, i, norm, name=f"conv_layers_{i}")(x, mask)
    return x, lengths


class FeatureProjection(nn.Module):
  """``feature_projection``: (LayerNorm,) Dense to the hidden size. ``[B, T, C]`` → ``[B, T, H]``."""
  cfg: SpeechConfig

  @nn.compact
  def __call__(self, x):
    if self.cfg.feat_proj_layer_norm or self.cfg.model_type != "hubert":
      x = _layer_norm(self.cfg.layer_norm_eps, "layer_norm")(x)
    return nn.Dense(self.cfg.hidden_size, name="projection")(x)


def _same_conv(x, cfg: SpeechConfig, k: int, name: str):
  """A grouped conv over time that keeps the length (transformers' ``SamePad``)."""
  y = nn.Conv(cfg.hidden_size, (k,), padding=[(k // 2, k // 2)],
              feature_group_count=cfg.num_conv_pos_embedding_groups, name=name)(x)
  return y[:, :-1] if k % 2 == 0 else y


class PositionalConv(nn.Module):
  """``pos_conv_embed``: grouped conv over time (weight-normed, or after a BatchNorm for
  HuBERT's ``conv_pos_batch_norm``), or data2vec-audio's stack of conv + LayerNorm layers.
  ``[B, T, H]`` → ``[B, T, H]``."""
  cfg: SpeechConfig

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.cfg
    act = _ACTS[cfg.feat_extract_activation]
    if cfg.model_type == "data2vec-audio":
      for i in range(cfg.num_conv_pos_embeddings):
        if i:   # padding stays zero for the next conv, as it is for the first
          x = jnp.where(mask[..., None], x, 0.0)
        x = act(_PosLayer(cfg, name=f"layers_{i}")(x))
      return x
    if cfg.conv_pos_batch_norm:
      x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, use_fast_variance=False,
                       name="batch_norm")(x)
      # padding stays zero, as the conv's own padding is (transformers lets the BatchNorm's
      # shift into padded frames, so its padded batches differ from each clip alone)
      x = jnp.where(mask[..., None], x, 0.0)
    return act(_same_conv(x, cfg, cfg.num_conv_pos_embeddings, "conv"))


class _PosLayer(nn.Module):
  """data2vec-audio's ``pos_conv_embed.layers.<i>``: conv, unscaled LayerNorm."""
  cfg: SpeechConfig

  @nn.compact
  def __call__(self, x):
    x = _same_conv(x, self.cfg, self.cfg.conv_pos_kernel_size, "conv")
    return _layer_norm(1e-5, "layer_norm", affine=False)(x)


def relative_buckets(length, num_buckets: int, max_distance: int, xp=np):
  """WavLM's bucket of each (query, key) offset, ``[T, T]`` int (as transformers, in float32).
  ``xp=jnp`` for a traced or symbolic ``length`` (an export with any clip length)."""
  rel = xp.arange(length)[None, :] - xp.arange(length)[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(xp.int32) * half
  rel = xp.abs(rel)
  max_exact = half // 2
  large = xp.log(xp.maximum(rel, 1).astype(xp.float32) / xp.float32(max_exact))
  large = large / xp.float32(math.log(max_distance / max_exact)) * xp.float32(half - max_exact)
  large = xp.minimum((xp.float32(max_exact) + large).astype(xp.int32), half - 1)
  return out + xp.where(rel < max_exact, rel, large)


class SelfAttention(nn.Module):
  """``attention``: ``x [B, T, H]``, key bias ``[B, 1, 1, T]`` → ``[B, T, H]``.

  WavLM (``cfg.wavlm``): layer 0 (``rel_bias``) owns the bucketed relative position bias
  ``[heads, T, T]``, which every layer gates by its input (``gru_rel_pos_*``) and adds to
  the scores; the ungated bias is handed on as the second output.
  """
  cfg: SpeechConfig
  rel_bias: bool = False

  @nn.compact
  def __call__(self, x, key_bias, position_bias=None):
    cfg = self.cfg
    b, t, h = x.shape
    nh = cfg.num_attention_heads
    hd = h // nh
    split = lambda y: y.reshape(b, t, nh, hd)
    q = split(nn.Dense(h, name="q_proj")(x)) * (hd ** -0.5)
    k = split(nn.Dense(h, name="k_proj")(x))
    v = split(nn.Dense(h, name="v_proj")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + key_bias
    if cfg.wavlm:
      if position_bias is None:
        buckets = relative_buckets(t, cfg.num_buckets, cfg.max_bucket_distance)
        table = nn.Embed(cfg.num_buckets, nh, name="rel_attn_embed")(jnp.asarray(buckets))
        position_bias = jnp.transpose(table, (2, 0, 1))           # [heads, T, T]
      gate = nn.Dense(8, name="gru_rel_pos_linear")(split(x))      # [B, T, heads, 8]
      gate = jax.nn.sigmoid(gate.reshape(b, t, nh, 2, 4).sum(-1))  # [B, T, heads, 2]
      const = self.param("gru_rel_pos_const", nn.initializers.ones, (1, nh, 1, 1))
      a = jnp.transpose(gate[..., 0:1], (0, 2, 1, 3))               # [B, heads, T, 1]
      g = jnp.transpose(gate[..., 1:2], (0, 2, 1, 3))
      scores = scores + (a * (g * const - 1.0) + 2.0) * position_bias[None]
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return nn.Dense(h, name="out_proj")(ctx.reshape(b, t, h)), position_bias


class FeedForward(nn.Module):
  cfg: SpeechConfig

  @nn.compact
  def __call__(self, x):
    y = _ACTS[self.cfg.hidden_act](nn.Dense(self.cfg.intermediate_size,
                                            name="intermediate_dense")(x))
    return nn.Dense(self.cfg.hidden_size, name="output_dense")(y)


class EncoderLayer(nn.Module):
  """``encoder.layers.<i>``: post-LN, or pre-LN with ``do_stable_layer_norm``. ``dropout``
  (fine-tuning only, as transformers' ``hidden_dropout``) on the attention and feed-forward
  outputs when not ``deterministic``."""
  cfg: SpeechConfig
  rel_bias: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, key_bias, position_bias=None, deterministic: bool = True):
    cfg = self.cfg
    attn = SelfAttention(cfg, self.rel_bias, name="attention")
    norm1 = _layer_norm(cfg.layer_norm_eps, "layer_norm")
    norm2 = _layer_norm(cfg.layer_norm_eps, "final_layer_norm")
    ff = FeedForward(cfg, name="feed_forward")
    drop = lambda y: (nn.Dropout(self.dropout)(y, deterministic=deterministic)
                      if self.dropout else y)
    if cfg.do_stable_layer_norm:
      a, position_bias = attn(norm1(x), key_bias, position_bias)
      x = x + drop(a)
      return x + drop(ff(norm2(x))), position_bias
    a, position_bias = attn(x, key_bias, position_bias)
    x = norm1(x + drop(a))
    return norm2(x + drop(ff(x))), position_bias


class Encoder(nn.Module):
  """``encoder``: ``x [B, T, H]``, ``mask [B, T]`` → the N + 1 hidden states ``[B, T, N+1, H]``
  (or only the last, ``[B, T, H]``, without ``all_layers``)."""
  cfg: SpeechConfig
  all_layers: bool = True

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.cfg
    x = jnp.where(mask[..., None], x, 0.0)
    key_bias = jnp.where(mask, 0.0, jnp.finfo(x.dtype).min)[:, None, None, :]
    x = x + PositionalConv(cfg, name="pos_conv_embed")(x, mask)
    final_norm = _layer_norm(cfg.layer_norm_eps, "layer_norm")
    if not cfg.do_stable_layer_norm:
      x = final_norm(x)
    states, position_bias = [x], None
    for i in range(cfg.num_hidden_layers):
      x, position_bias = EncoderLayer(cfg, rel_bias=(cfg.wavlm and i == 0),
                                      name=f"layers_{i}")(x, key_bias, position_bias)
      states.append(x)
    if cfg.do_stable_layer_norm:
      states[-1] = final_norm(x)
    return jnp.stack(states, axis=2) if self.all_layers else states[-1]


class SpeechModel(nn.Module):
  """The whole encoder: ``waveform [B, S]``, ``lengths [B]`` (real samples per clip) →
  ``(states, frame_lengths)``: states ``[B, T, N + 1, H]`` (``[B, T, H]``, the last, without
  ``all_layers``), frame lengths ``[B]``. Frames past a clip's length are padding."""
  cfg: SpeechConfig
  all_layers: bool = True

  @nn.compact
  def __call__(self, waveform, lengths):
    x, frames = FeatureEncoder(self.cfg, name="feature_extractor")(waveform, lengths)
    x = FeatureProjection(self.cfg, name="feature_projection")(x)
    mask = jnp.arange(x.shape[1])[None] < frames[:, None]
    return Encoder(self.cfg, self.all_layers, name="encoder")(x, mask), frames


def load_params(cfg: SpeechConfig, sd: dict, source: str) -> dict:
  """Flax variables of :class:`SpeechModel` from a Hugging Face state dict (any task head's
  prefix; weight norm in any of its saved forms).

  Raises:
    DataError: a tensor is missing or disagrees with ``config.json``.
  """
  prefix = weights.find_prefix(sd, "feature_projection.projection.weight", source,
                               f"{cfg.model_type} (speech)")
  model = SpeechModel(cfg)
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 800)),
                            jnp.array([800]))

  def special(name, sd):
    if name.endswith("pos_conv_embed.conv.weight"):
      try:
        return hub.fold_weight_norm(sd, name)
      except KeyError:
        return None
    return None

  return weights.to_flax(template, sd, prefix, source, special)


def _bucket(n: int) -> int:
  """Padded length of an ``n``-sample clip: eight lengths per octave (≤ 12.5 % padding), so a
  corpus compiles a handful of shapes."""
  quantum = max(1 << max(int(n).bit_length() - 4, 0), 400)
  return -(-n // quantum) * quantum


class SpeechEncoder:
  """Hidden states of a Hugging Face wav2vec2 / HuBERT / WavLM / data2vec-audio snapshot.

  Clips are normalised as the snapshot's ``preprocessor_config.json`` says (zero mean, unit
  variance per clip with ``do_normalize``), sorted by length, padded to a few bucket
  lengths and run jitted in batches; padding never changes a clip's states (module doc).

    enc = SpeechEncoder.from_pretrained("facebook/wav2vec2-base-960h")   # or a folder
    states = enc.encode([clip_16k, ...])             # [[T_i, H], ...]
    every = enc.encode(clips, all_layers=True)      # [[T_i, N + 1, H], ...]
  """
  sample_rate = 16000

  def __init__(self, cfg: SpeechConfig, params: dict, snapshot, normalize: bool = True,
               batch_seconds: Optional[float] = None):
    """``batch_seconds``: audio per jitted call; by default one clip per call on CPU (batching
    only costs there: 27 s vs 18 s for 48 clips, wav2vec2-base on 2 cores, BUILD_NOTES) and
    160 s on an accelerator."""
    if batch_seconds is None:
      batch_seconds = 0.0 if jax.default_backend() == "cpu" else 160.0
    self.cfg, self.params, self.snapshot = cfg, jax.device_put(params), snapshot
    self.normalize, self.batch_samples = normalize, int(batch_seconds * self.sample_rate)
    self._apply = {a: jax.jit(SpeechModel(cfg, a).apply) for a in (False, True)}

  @classmethod
  def from_pretrained(cls, model: str, fmt: Optional[str] = None, **kw) -> "SpeechEncoder":
    """From a snapshot folder or a Hub id in the local cache (:func:`hub.resolve`)."""
    snapshot = model if isinstance(model, hub.Snapshot) else hub.resolve(model)
    cfg = SpeechConfig.from_dict(snapshot.config(), snapshot.path)
    pre = {}
    if snapshot.has("preprocessor_config.json"):
      pre = hub.read_json(snapshot.file("preprocessor_config.json"))
    rate = pre.get("sampling_rate", cls.sample_rate)
    if rate != cls.sample_rate:
      raise ConfigError(f"{snapshot.file('preprocessor_config.json')}: sampling_rate {rate}; "
                        f"fusion_jax's speech encoders take {cls.sample_rate} Hz audio")
    params = load_params(cfg, hub.load_state_dict(snapshot, fmt), snapshot.path)
    return cls(cfg, params, snapshot, normalize=bool(pre.get("do_normalize", True)), **kw)

  @property
  def dim(self) -> int:
    return self.cfg.hidden_size

  @property
  def num_layers(self) -> int:
    return self.cfg.num_hidden_layers

  def prepare(self, clip: np.ndarray) -> np.ndarray:
    """The model's input for one clip: float32, normalised if the snapshot says so."""
    x = np.asarray(clip, np.float32)
    if self.normalize:
      x = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
    return x

  def encode(self, clips, all_layers: bool = False, sample_rate: int = 16000) -> list:
    """States of each clip: ``[T_i, H]`` float32 (``[T_i, N + 1, H]`` with ``all_layers``).

    Raises:
      ConfigError: the clips are not at 16 kHz, or a clip is shorter than one frame.
    """
    if sample_rate != self.sample_rate:
      raise ConfigError(f"clips at {sample_rate} Hz; {self.snapshot.name} takes "
                        f"{self.sample_rate} Hz (fusion_jax.features.audio.read_audio "
                        "resamples)")
    inputs = [self.prepare(c) for c in clips]
    shortest = self.cfg.conv_kernel[0] + sum(self.cfg.conv_stride[1:]) * 8
    for i, x in enumerate(inputs):
      if frame_lengths(self.cfg, x.size) < 1:
        raise ConfigError(f"clip {i} has {x.size} samples, fewer than the model's first "
                          f"frame needs (about {shortest})")
    out: list = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda i: inputs[i].size)
    start = 0
    while start < len(order):
      length = _bucket(inputs[order[start]].size)
      rows = [r for r in order[start:] if _bucket(inputs[r].size) == length]
      rows = rows[:max(1, self.batch_samples // length)]
      start += len(rows)
      batch = np.zeros((_pow2(len(rows)), length), np.float32)
      lengths = np.zeros(batch.shape[0], np.int32)
      lengths[:] = length
      for j, r in enumerate(rows):
        batch[j, :inputs[r].size] = inputs[r]
        lengths[j] = inputs[r].size
      states, frames = self._apply[all_layers](self.params, batch, lengths)
      states, frames = np.asarray(states), np.asarray(frames)
      for j, r in enumerate(rows):
        out[r] = states[j, :frames[j]].copy()
    return out


def _pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()
