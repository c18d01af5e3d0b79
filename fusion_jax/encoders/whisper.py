"""The Whisper encoder (and tiny.en's decoder, for transcripts) in JAX, from a Hugging Face
snapshot (``model_type: whisper``, every size from tiny to large-v3) or a CTranslate2
``model.bin`` (no ctranslate2, no torch, no transformers)::

  enc = WhisperEncoder.from_pretrained("openai/whisper-large-v3")   # a folder or cached id
  enc = WhisperEncoder.from_ctranslate2(model_dir)                  # faster-whisper's format
  states = enc.encode([samples_16k])     # [[ceil(frames / 2), D]] at 50 frames/s

Input features follow Whisper's own front end (:func:`whisper_log_mel`): 80 (128 for
large-v3, the snapshot's ``num_mel_bins``) Slaney mel bands of a centred 25 ms / 10 ms STFT,
log10, clipped to 8 below the maximum, scaled ``(x + 4) / 4``; every clip is zero-padded to
30 s as in training (frozen use: the window Whisper was trained with), and the output is
cropped to the clip's frames.

Both formats become the same flat parameter dict (CTranslate2's names, ``encoder/...``):
:func:`hf_to_ctranslate2` maps a Hugging Face state dict onto it (q, k, v side by side, k
without a bias), so one forward pass serves both.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax import io_utils
from fusion_jax.data.errors import DataError
from fusion_jax.encoders import weights as hf_weights, hub
from fusion_jax.errors import ConfigError

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 400, 160, 80
CHUNK_SAMPLES = 30 * SAMPLE_RATE          # 3000 mel frames, 1500 encoder frames

# CTranslate2 DataType enum → NumPy.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2(path) -> dict:
  """Variables of a CTranslate2 ``model.bin`` (format version ≥ 5) as NumPy arrays."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DataError(path, f"cannot read ({e})") from None
  pos = 0

  def take(fmt):
    nonlocal pos
    size = struct.calcsize(fmt)
    if pos + size > len(data):
      raise DataError(path, "truncated CTranslate2 model", field=f"byte {pos}")
    out = struct.unpack_from(fmt, data, pos)
    pos += size
    return out

  def string():
    nonlocal pos
    (n,) = take("<H")
    s = data[pos:pos + n].decode("utf-8").rstrip("\x00")
    pos += n
    return s

  (version,) = take("<I")
  if version < 5:
    raise DataError(path, f"CTranslate2 format version {version} is not supported (need >= 5)",
                    field="binary_version")
  spec = string()
  take("<I")   # spec revision
  (count,) = take("<I")
  out = {"__spec__": spec}
  for _ in range(count):
    name = string()
    (rank,) = take("<B")
    dims = take(f"<{rank}I") if rank else ()
    (dtype,) = take("<B")
    (nbytes,) = take("<I")
    if dtype not in _CT2_DTYPES:
      raise DataError(path, f"unsupported data type id {dtype}", field=name)
    if pos + nbytes > len(data):
      raise DataError(path, "truncated CTranslate2 model", field=name)
    arr = np.frombuffer(data, _CT2_DTYPES[dtype], nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize,
                        pos)
    pos += nbytes
    out[name] = arr.reshape(dims).copy()
  return out


def write_ctranslate2(path, variables: dict, spec: str = "WhisperSpec") -> None:
  """Writes variables in CTranslate2's ``model.bin`` layout (version 6; tests, small models)."""
  codes = {np.dtype(v): k for k, v in _CT2_DTYPES.items()}

  def string(s):
    b = s.encode("utf-8") + b"\x00"
    return struct.pack("<H", len(b)) + b

  chunks = [struct.pack("<I", 6), string(spec), struct.pack("<I", 3),
            struct.pack("<I", len(variables))]
  for name, value in variables.items():
    arr = np.array(value, order="C")   # (ascontiguousarray would make scalars 1-d)
    chunks += [string(name), struct.pack("<B", arr.ndim),
               struct.pack(f"<{arr.ndim}I", *arr.shape) if arr.ndim else b"",
               struct.pack("<B", codes[arr.dtype]), struct.pack("<I", arr.nbytes), arr.tobytes()]
  chunks.append(struct.pack("<I", 0))   # no aliases
  with io_utils.atomic_open(path, "wb") as f:
    f.write(b"".join(chunks))


def slaney_mel_filters(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS):
  """librosa's default (Slaney scale, area-normalised) mel filters, ``[n_fft//2+1, n_mels]``."""
  def hz_to_mel(f):
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27),
                    lin)

  def mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (m - 15.0)),
                    (200.0 / 3) * m)

  freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
  fdiff = np.diff(edges)
  ramps = edges[:, None] - freqs[None, :]
  lower = -ramps[:-2] / fdiff[:-1, None]
  upper = ramps[2:] / fdiff[1:, None]
  weights = np.maximum(0, np.minimum(lower, upper))
  weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]
  return weights.T


def whisper_log_mel(samples: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
  """Whisper's log-mel input of one clip padded to 30 s: ``[n_mels, 3000]`` float32."""
  x = np.zeros(CHUNK_SAMPLES, np.float64)
  n = min(len(samples), CHUNK_SAMPLES)
  x[:n] = samples[:n]
  padded = np.pad(x, N_FFT // 2, mode="reflect")
  frames = 1 + (len(padded) - N_FFT) // HOP
  idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
  power = np.abs(np.fft.rfft(padded[idx] * window, axis=-1)) ** 2
  mel = power[:-1] @ slaney_mel_filters(n_mels=n_mels)   # drop the last frame, as Whisper
  log_spec = np.log10(np.maximum(mel, 1e-10))
  log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
  return ((log_spec + 4.0) / 4.0).T.astype(np.float32)


def output_frames(num_samples: int) -> int:
  """Encoder frames that cover a clip (50 per second, at least 1, at most 1500)."""
  mel_frames = min(num_samples, CHUNK_SAMPLES) // HOP
  return int(min(max(1, -(-mel_frames // 2)), CHUNK_SAMPLES // HOP // 2))


def reference_forward(weights: dict, mel: np.ndarray) -> np.ndarray:
  """NumPy float64 encoder forward pass of CTranslate2 weights: ``[80, F] → [F/2, D]``."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  w = lambda n: np.asarray(weights["encoder/" + n], np.float64)
  gelu = lambda y: 0.5 * y * (1 + erf(y / np.sqrt(2)))

  def conv(x, n, stride):   # x [C, T], weight [O, C, 3], padding 1
    k = w(n + "/weight")
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (x.shape[1] - 1) // stride + 1
    cols = np.stack([xp[:, j + stride * np.arange(t_out)] for j in range(3)], -1)  # [C, T, 3]
    return np.einsum("ctk,ock->ot", cols, k) + w(n + "/bias")[:, None]

  def ln(x, n):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * w(n + "/gamma") + w(n + "/beta")

  x = gelu(conv(np.asarray(mel, np.float64), "conv1", 1))
  x = gelu(conv(x, "conv2", 2)).T
  x = x + w("position_encodings/encodings")[:x.shape[0]]
  heads = int(weights["encoder/num_heads"]) if "encoder/num_heads" in weights else 6
  layer = 0
  while f"encoder/layer_{layer}/ffn/linear_0/weight" in weights:
    p = f"layer_{layer}/"
    h = ln(x, p + "self_attention/layer_norm")
    qkv = h @ w(p + "self_attention/linear_0/weight").T + w(p + "self_attention/linear_0/bias")
    t, d = x.shape
    q, k, v = (a.reshape(t, heads, d // heads).transpose(1, 0, 2) for a in np.split(qkv, 3, -1))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d // heads)
    s = np.exp(s - s.max(-1, keepdims=True))
    ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, d)
    x = x + ctx @ w(p + "self_attention/linear_1/weight").T + w(p + "self_attention/linear_1/bias")
    h = ln(x, p + "ffn/layer_norm")
    h = gelu(h @ w(p + "ffn/linear_0/weight").T + w(p + "ffn/linear_0/bias"))
    x = x + h @ w(p + "ffn/linear_1/weight").T + w(p + "ffn/linear_1/bias")
    layer += 1
  return ln(x, "layer_norm")


def _float_weights(weights: dict, part: str, required: str) -> dict:
  """``part``'s float arrays (``part/name`` → ``name``), float32; ``required`` must be one."""
  out = {k[len(part) + 1:]: np.asarray(v, np.float32) for k, v in weights.items()
         if k.startswith(part + "/") and np.asarray(v).dtype.kind == "f"}
  if required not in out:
    raise ValueError(f"no Whisper {part} weights ({part}/{required}) in this model")
  return out


def hf_to_ctranslate2(sd: dict, config: dict, source: str) -> dict:
  """A Hugging Face Whisper state dict's encoder as CTranslate2 variables (``encoder/...``),
  float32, shapes checked against ``config.json``.

  Raises:
    DataError: a tensor is missing or has another shape than the config says.
  """
  pre = hf_weights.find_prefix(sd, "encoder.conv1.weight", source, "Whisper")
  d, n_mels = int(config["d_model"]), int(config["num_mel_bins"])
  ffn, positions = int(config["encoder_ffn_dim"]), int(config.get("max_source_positions", 1500))

  def get(name, shape):
    key = pre + name
    if key not in sd:
      raise DataError(source, f"no tensor {key!r} in the weights", field=key,
                      hint="give the snapshot's full weights (model.safetensors)")
    arr = np.asarray(sd[key], np.float32)
    if arr.shape != tuple(shape):
      raise DataError(source, f"tensor {key!r} has shape {list(arr.shape)} where config.json "
                      f"gives {list(shape)}", field=key)
    return arr

  out = {"encoder/num_heads": np.int32(config["encoder_attention_heads"]),
         "encoder/conv1/weight": get("encoder.conv1.weight", (d, n_mels, 3)),
         "encoder/conv1/bias": get("encoder.conv1.bias", (d,)),
         "encoder/conv2/weight": get("encoder.conv2.weight", (d, d, 3)),
         "encoder/conv2/bias": get("encoder.conv2.bias", (d,)),
         "encoder/position_encodings/encodings": get("encoder.embed_positions.weight",
                                                     (positions, d)),
         "encoder/layer_norm/gamma": get("encoder.layer_norm.weight", (d,)),
         "encoder/layer_norm/beta": get("encoder.layer_norm.bias", (d,))}
  for i in range(int(config["encoder_layers"])):
    h, c = f"encoder.layers.{i}.", f"encoder/layer_{i}/"
    norms = (("self_attn_layer_norm", "self_attention/layer_norm"),
             ("final_layer_norm", "ffn/layer_norm"))
    for hf, ct in norms:
      out[c + ct + "/gamma"] = get(h + hf + ".weight", (d,))
      out[c + ct + "/beta"] = get(h + hf + ".bias", (d,))
    attn = h + "self_attn."
    out[c + "self_attention/linear_0/weight"] = np.concatenate(
        [get(attn + f"{x}_proj.weight", (d, d)) for x in "qkv"])
    out[c + "self_attention/linear_0/bias"] = np.concatenate(
        [get(attn + "q_proj.bias", (d,)), np.zeros(d, np.float32), get(attn + "v_proj.bias", (d,))])
    out[c + "self_attention/linear_1/weight"] = get(attn + "out_proj.weight", (d, d))
    out[c + "self_attention/linear_1/bias"] = get(attn + "out_proj.bias", (d,))
    out[c + "ffn/linear_0/weight"] = get(h + "fc1.weight", (ffn, d))
    out[c + "ffn/linear_0/bias"] = get(h + "fc1.bias", (ffn,))
    out[c + "ffn/linear_1/weight"] = get(h + "fc2.weight", (d, ffn))
    out[c + "ffn/linear_1/bias"] = get(h + "fc2.bias", (d,))
  return out


class WhisperEncoder:
  """Jitted Whisper encoder over batches of 30 s windows.

  Args:
    weights: CTranslate2 variable names → arrays (``encoder/...``).
  """

  def __init__(self, weights: dict):
    enc = _float_weights(weights, "encoder", "conv1/weight")
    self.num_heads = int(weights.get("encoder/num_heads", 6))
    self.num_layers = sum(1 for k in enc if k.endswith("ffn/linear_0/weight"))
    self.dim = int(enc["conv1/weight"].shape[0])
    self.n_mels = int(enc["conv1/weight"].shape[1])
    self.snapshot = None   # set by from_pretrained
    self.params = jax.device_put(enc)
    self._forward = jax.jit(self._apply, static_argnums=2)

  @classmethod
  def from_ctranslate2(cls, model_dir) -> "WhisperEncoder":
    path = os.path.join(os.fspath(model_dir), "model.bin")
    if not os.path.exists(path):
      raise DataError(path, "file not found", hint="point --speech_model_dir at a CTranslate2 "
                      "Whisper folder (model.bin)")
    weights = read_ctranslate2(path)
    if weights["__spec__"] != "WhisperSpec":
      raise DataError(path, f"expected a WhisperSpec model, got {weights['__spec__']!r}")
    return cls(weights)

  @classmethod
  def from_pretrained(cls, model: str, fmt: Optional[str] = None) -> "WhisperEncoder":
    """From a Hugging Face Whisper snapshot: a folder or a Hub id in the local cache
    (:func:`fusion_jax.encoders.hub.resolve`); ``WhisperModel`` or
    ``WhisperForConditionalGeneration`` weights (the decoder's are not read).

    Raises:
      ConfigError: the snapshot is not a Whisper model, or its front end is not 16 kHz /
        its ``num_mel_bins``.
      DataError: missing files, or a tensor that disagrees with ``config.json``.
    """
    snapshot = model if isinstance(model, hub.Snapshot) else hub.resolve(model)
    raw = snapshot.config()
    if raw.get("model_type") != "whisper":
      raise ConfigError(f"{snapshot.path}: model_type {raw.get('model_type')!r}, not a Whisper "
                        "snapshot")
    if snapshot.has("preprocessor_config.json"):
      pre = hub.read_json(snapshot.file("preprocessor_config.json"))
      for field, want in (("sampling_rate", SAMPLE_RATE), ("feature_size", raw["num_mel_bins"]),
                          ("n_fft", N_FFT), ("hop_length", HOP)):
        if field in pre and pre[field] != want:
          raise ConfigError(f"{snapshot.file('preprocessor_config.json')}: {field} "
                            f"{pre[field]}; fusion_jax's Whisper front end takes {want}")
    weights = hf_to_ctranslate2(hub.load_state_dict(snapshot, fmt), raw, snapshot.path)
    enc = cls(weights)
    enc.snapshot = snapshot
    return enc

  def _apply(self, p, mel, all_layers: bool = False):
    """mel ``[B, 80, 3000]`` → ``[B, 1500, D]``; with ``all_layers`` ``[B, 1500, N + 1, D]``:
    the input embeddings, layers 1 … N-1 (residual stream) and the final normed output,
    as Hugging Face's ``output_hidden_states``."""
    gelu = lambda y: jax.nn.gelu(y, approximate=False)

    def conv(x, n, stride):
      y = jax.lax.conv_general_dilated(x, p[n + "/weight"], (stride,), [(1, 1)],
                                       dimension_numbers=("NCH", "OIH", "NCH"))
      return y + p[n + "/bias"][None, :, None]

    def ln(x, n):
      mu = x.mean(-1, keepdims=True)
      var = jnp.square(x - mu).mean(-1, keepdims=True)
      return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p[n + "/gamma"] + p[n + "/beta"]

    x = gelu(conv(mel, "conv1", 1))
    x = gelu(conv(x, "conv2", 2)).transpose(0, 2, 1)
    x = x + p["position_encodings/encodings"][:x.shape[1]]
    b, t, d = x.shape
    nh = self.num_heads
    hidden = [x]
    for i in range(self.num_layers):
      q = f"layer_{i}/"
      h = ln(x, q + "self_attention/layer_norm")
      qkv = h @ p[q + "self_attention/linear_0/weight"].T + p[q + "self_attention/linear_0/bias"]
      qh, kh, vh = (a.reshape(b, t, nh, d // nh) for a in jnp.split(qkv, 3, -1))
      s = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / np.sqrt(d // nh)
      ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), vh).reshape(b, t, d)
      x = (x + ctx @ p[q + "self_attention/linear_1/weight"].T
           + p[q + "self_attention/linear_1/bias"])
      h = ln(x, q + "ffn/layer_norm")
      h = gelu(h @ p[q + "ffn/linear_0/weight"].T + p[q + "ffn/linear_0/bias"])
      x = x + h @ p[q + "ffn/linear_1/weight"].T + p[q + "ffn/linear_1/bias"]
      hidden.append(x)
    out = ln(x, "layer_norm")
    return jnp.stack(hidden[:-1] + [out], axis=2) if all_layers else out

  def states(self, mels: np.ndarray, all_layers: bool = False) -> np.ndarray:
    """``[B, 80, 3000]`` → float32 ``[B, 1500, D]`` (``[B, 1500, N + 1, D]`` with
    ``all_layers``)."""
    return np.asarray(self._forward(self.params, mels, all_layers))

  def encode(self, clips: Sequence[np.ndarray], all_layers: bool = False) -> list:
    """Encoder states of 16 kHz clips (≤ 30 s), cropped to each clip: ``[F_i, D]``, or
    ``[F_i, N + 1, D]`` with ``all_layers``."""
    mels = np.stack([whisper_log_mel(c, self.n_mels) for c in clips])
    states = self.states(mels, all_layers)
    return [states[i, :output_frames(len(c))].copy() for i, c in enumerate(clips)]


# ------------------------------------------------------------------ the decoder: transcripts
EOT, SOT, NO_TIMESTAMPS = 50256, 50257, 50362   # Whisper's English-only special tokens


def _bytes_to_unicode() -> dict:
  """GPT-2's reversible byte ↔ printable-character table (Whisper's BPE is byte-level)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


class WhisperTokens:
  """Token ids → text (``vocabulary.txt``: one byte-level BPE token per line, id = line)."""

  def __init__(self, vocabulary: Sequence[str]):
    self.vocabulary = list(vocabulary)
    self._byte_of = {c: b for b, c in _bytes_to_unicode().items()}

  @classmethod
  def from_dir(cls, model_dir) -> "WhisperTokens":
    path = os.path.join(os.fspath(model_dir), "vocabulary.txt")
    try:
      with open(path, encoding="utf-8") as f:
        return cls(f.read().split("\n"))
    except OSError as e:
      raise DataError(path, f"cannot read the vocabulary ({e})") from None

  def decode(self, ids: Sequence[int]) -> str:
    raw = bytearray()
    for i in ids:
      if i < EOT:   # text tokens only
        raw += bytes(self._byte_of.get(c, 32) for c in self.vocabulary[i])
    return raw.decode("utf-8", errors="replace").strip()


def suppressed_tokens(model_dir, vocab_size: int) -> tuple:
  """(suppressed at every step, suppressed at the first step) from ``config.json``, plus
  every special token but end-of-text (no timestamps, no task tokens)."""
  path = os.path.join(os.fspath(model_dir), "config.json")
  cfg = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      cfg = json.load(f)
  always = set(cfg.get("suppress_ids", [])) | set(range(EOT + 1, vocab_size))
  return tuple(sorted(always)), tuple(sorted(cfg.get("suppress_ids_begin", [220, EOT])))


def reference_decoder_logits(weights: dict, states: np.ndarray, tokens: Sequence[int]):
  """NumPy float64 decoder forward pass: encoder states ``[F, D]`` and tokens ``[T]`` →
  next-token logits ``[T, V]`` (causal; the check of :class:`WhisperModel`)."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  w = lambda n: np.asarray(weights["decoder/" + n], np.float64)
  gelu = lambda y: 0.5 * y * (1 + erf(y / np.sqrt(2)))
  heads = int(weights.get("decoder/num_heads", 6))

  def ln(x, n):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w(
        n + "/gamma") + w(n + "/beta")

  def attend(q, k, v, causal):
    t, d = q.shape
    split = lambda a: a.reshape(a.shape[0], heads, d // heads).transpose(1, 0, 2)
    s = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(d // heads)
    if causal:
      s = np.where(np.tril(np.ones((t, k.shape[0]), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return ((s / s.sum(-1, keepdims=True)) @ split(v)).transpose(1, 0, 2).reshape(t, d)

  tokens = np.asarray(tokens)
  x = w("embeddings/weight")[tokens] + w("position_encodings/encodings")[:len(tokens)]
  enc = np.asarray(states, np.float64)
  layer = 0
  while f"decoder/layer_{layer}/ffn/linear_0/weight" in weights:
    p = f"layer_{layer}/"
    lin = lambda h, n: h @ w(p + n + "/weight").T + w(p + n + "/bias")
    h = ln(x, p + "self_attention/layer_norm")
    q, k, v = np.split(lin(h, "self_attention/linear_0"), 3, -1)
    x = x + lin(attend(q, k, v, True), "self_attention/linear_1")
    h = ln(x, p + "attention/layer_norm")
    k, v = np.split(lin(enc, "attention/linear_1"), 2, -1)
    x = x + lin(attend(lin(h, "attention/linear_0"), k, v, False), "attention/linear_2")
    h = ln(x, p + "ffn/layer_norm")
    x = x + lin(gelu(lin(h, "ffn/linear_0")), "ffn/linear_1")
    layer += 1
  return ln(x, "layer_norm") @ w("embeddings/weight").T


class WhisperModel:
  """Whisper tiny.en encoder + greedy decoder (transcripts for audio-only corpora).

  ::

    model = WhisperModel.from_ctranslate2(model_dir)
    model.transcribe([samples_16k, ...])    # ["Kids are talking by the door.", ...]

  Decoding is greedy from ``<|startoftranscript|><|notimestamps|>``, with the model's
  own suppressed tokens (``config.json``), up to ``max_tokens`` tokens; the decoder
  recomputes its (short) prefix each step in one jitted function of fixed shape.
  """

  def __init__(self, weights: dict, model_dir=None, max_tokens: int = 96):
    self.encoder = WhisperEncoder(weights)
    dec = _float_weights(weights, "decoder", "embeddings/weight")
    self.num_heads = int(weights.get("decoder/num_heads", 6))
    self.num_layers = sum(1 for k in dec if k.endswith("ffn/linear_0/weight"))
    self.vocab_size = int(dec["embeddings/weight"].shape[0])
    self.max_tokens = max_tokens
    self.params = jax.device_put(dec)
    self.tokens = WhisperTokens.from_dir(model_dir) if model_dir else None
    always, begin = suppressed_tokens(model_dir, self.vocab_size) if model_dir else (
        tuple(range(EOT + 1, self.vocab_size)), (220, EOT))
    mask = np.zeros((2, self.vocab_size), np.float32)
    mask[0, list(always)] = mask[1, list(always)] = -np.inf
    mask[1, list(begin)] = -np.inf
    self._suppress = jax.device_put(mask)   # row 0: every step; row 1: the first step
    self._cross = jax.jit(self._cross_kv)
    self._step = jax.jit(self._next_logits)

  @classmethod
  def from_ctranslate2(cls, model_dir, max_tokens: int = 96) -> "WhisperModel":
    path = os.path.join(os.fspath(model_dir), "model.bin")
    if not os.path.exists(path):
      raise DataError(path, "file not found", hint="a CTranslate2 Whisper folder (model.bin, "
                      "vocabulary.txt)")
    return cls(read_ctranslate2(path), model_dir, max_tokens)

  def _cross_kv(self, p, states):
    """Each layer's cross-attention keys and values of the encoder states ``[B, F, D]``."""
    out = []
    for i in range(self.num_layers):
      q = f"layer_{i}/attention/"
      kv = states @ p[q + "linear_1/weight"].T + p[q + "linear_1/bias"]
      out.append(tuple(jnp.split(kv, 2, -1)))
    return out

  def _next_logits(self, p, cross, tokens, length):
    """tokens ``[B, S]`` (prefix, right-padded), length: the prefix length → logits at
    position ``length - 1``: ``[B, V]``."""
    b, s = tokens.shape
    d = p["embeddings/weight"].shape[1]
    nh, dh = self.num_heads, d // self.num_heads

    def ln(x, n):
      mu = x.mean(-1, keepdims=True)
      var = jnp.square(x - mu).mean(-1, keepdims=True)
      return (x - mu) * jax.lax.rsqrt(var + 1e-5) * p[n + "/gamma"] + p[n + "/beta"]

    def attend(q, k, v, mask):
      heads = lambda a: a.reshape(a.shape[0], a.shape[1], nh, dh)
      logits = jnp.einsum("bqhd,bkhd->bhqk", heads(q), heads(k)) / np.sqrt(dh)
      if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), heads(v)).reshape(
          q.shape[0], q.shape[1], d)

    lin = lambda h, n: h @ p[n + "/weight"].T + p[n + "/bias"]
    causal = jnp.tril(jnp.ones((s, s), bool))[None, None]
    x = p["embeddings/weight"][tokens] + p["position_encodings/encodings"][:s]
    for i in range(self.num_layers):
      q = f"layer_{i}/"
      h = ln(x, q + "self_attention/layer_norm")
      qs, ks, vs = jnp.split(lin(h, q + "self_attention/linear_0"), 3, -1)
      x = x + lin(attend(qs, ks, vs, causal), q + "self_attention/linear_1")
      h = ln(x, q + "attention/layer_norm")
      k, v = cross[i]
      x = x + lin(attend(lin(h, q + "attention/linear_0"), k, v, None),
                  q + "attention/linear_2")
      h = ln(x, q + "ffn/layer_norm")
      x = x + lin(jax.nn.gelu(lin(h, q + "ffn/linear_0"), approximate=False), q + "ffn/linear_1")
    last = jax.lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)
    return ln(last, "layer_norm") @ p["embeddings/weight"].T

  def decode(self, states: np.ndarray) -> list:
    """Greedy token ids (without the start tokens and end-of-text) of encoder states
    ``[B, 1500, D]``."""
    b = states.shape[0]
    start = [SOT, NO_TIMESTAMPS]
    s = len(start) + self.max_tokens
    tokens = np.full((b, s), EOT, np.int32)
    tokens[:, :len(start)] = start
    cross = self._cross(self.params, jnp.asarray(states))
    done = np.zeros(b, bool)
    for t in range(len(start), s):
      logits = np.asarray(self._step(self.params, cross, jnp.asarray(tokens), jnp.int32(t)))
      logits = logits + np.asarray(self._suppress[1 if t == len(start) else 0])
      nxt = logits.argmax(-1)
      nxt[done] = EOT
      tokens[:, t] = nxt
      done |= nxt == EOT
      if done.all():
        break
    out = []
    for row in tokens[:, len(start):]:
      ids = row.tolist()
      out.append(ids[:ids.index(EOT)] if EOT in ids else ids)
    return out

  def transcribe(self, clips: Sequence[np.ndarray], batch_size: int = 4) -> list:
    """Transcripts of 16 kHz clips (≤ 30 s)."""
    if self.tokens is None:
      raise ValueError("no vocabulary: build the model with from_ctranslate2(model_dir)")
    texts = []
    for i in range(0, len(clips), batch_size):
      batch = clips[i:i + batch_size]
      states = self.encoder.states(np.stack([whisper_log_mel(c) for c in batch]))
      texts += [self.tokens.decode(ids) for ids in self.decode(states)]
    return texts

