"""BERT, RoBERTa and XLM-R encoders in Flax Linen, loaded from Hugging Face snapshots (no torch).

One implementation: RoBERTa and XLM-R are BERTs whose position ids count real tokens from
the config's ``pad_token_id`` + 1 (``create_position_ids_from_input_ids``), with one token
type. all-MiniLM-L6-v2 (384-d) is a BERT too::

  enc = BertFeatureEncoder.from_pretrained("roberta-base")   # a folder or a cached Hub id:
  states = enc.encode(["I am so happy!"])                    # config.json, weights, tokenizer
                                                             # → [[L_i, 768]]

:func:`reference_forward` is an independent NumPy float64 forward pass of the
same weights (in the checkpoint's own ``[out, in]`` layout), the yardstick the
tests hold the Flax module to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax.encoders import hub, weights
from fusion_jax.errors import ConfigError, DataError
from fusion_jax.encoders.tokenizer import HFTokenizer, WordPieceTokenizer
from fusion_jax.dropout import Dropout

TEXT_TYPES = ("bert", "roberta", "xlm-roberta")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  model_type: str = "bert"
  pad_token_id: int = 0

  @classmethod
  def from_json(cls, path) -> "BertConfig":
    with open(path, encoding="utf-8") as f:
      return cls.from_dict(json.load(f), path)

  @classmethod
  def from_dict(cls, raw: dict, path) -> "BertConfig":
    """``config.json``; an unsupported architecture or option stops with one line."""
    kind = raw.get("model_type", "bert")
    if kind in ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"):
      raise ConfigError(f"{path}: a {kind} model is a speech encoder; give it as the speech "
                        "model (--speech_model), not the text model")
    if kind not in TEXT_TYPES:
      raise ConfigError(f"{path}: model_type {kind!r} is not supported as a text encoder; "
                        f"supported: {', '.join(TEXT_TYPES)}")
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
      raise DataError(path, f"hidden_act {act!r} is not supported (only exact 'gelu')",
                      field="hidden_act")
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise DataError(path, f"position_embedding_type {pos!r} is not supported (only "
                      "'absolute')", field="position_embedding_type")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names and v is not None})

  @property
  def position_offset(self) -> int:
    """RoBERTa's first real position id (pad id + 1); BERT counts from 0."""
    return self.pad_token_id + 1 if self.model_type != "bert" else 0


def position_ids(cfg: BertConfig, ids):
  """``[B, L]`` position ids: ``0 … L-1`` (BERT), or RoBERTa's: real tokens counted from
  ``pad_token_id + 1``, padding at ``pad_token_id``."""
  if cfg.model_type == "bert":
    return jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  real = (ids != cfg.pad_token_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + cfg.pad_token_id


class BertLayer(nn.Module):
  """One post-LN BERT layer: ``x [B, L, H]``, additive key bias ``[B, 1, 1, L]`` → ``[B, L, H]``.

  ``dropout`` (hidden and attention, as BERT's 0.1) acts only with ``deterministic=False``
  (fine-tuning, :mod:`fusion_jax.models.encoders`); extraction runs it without.
  """
  cfg: BertConfig
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    cfg = self.cfg
    drop = lambda y: Dropout(self.dropout)(y, deterministic=deterministic)
    b, t, h = x.shape
    nh = cfg.num_attention_heads
    split = lambda y: y.reshape(b, t, nh, h // nh)
    q = split(nn.Dense(h, name="query")(x))
    k = split(nn.Dense(h, name="key")(x))
    v = split(nn.Dense(h, name="value")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(h // nh) + bias
    ctx = jnp.einsum("bhqk,bkhd->bqhd", drop(jax.nn.softmax(scores, axis=-1)), v)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(
        x + drop(nn.Dense(h, name="attention_out")(ctx.reshape(b, t, h))))
    y = nn.Dense(cfg.intermediate_size, name="intermediate")(x)
    y = nn.Dense(h, name="output")(jax.nn.gelu(y, approximate=False))
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + drop(y))


def attention_bias(mask):
  """``[B, L]`` (1 = real token) → the additive key bias ``[B, 1, 1, L]`` of :class:`BertLayer`."""
  return jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)


class Bert(nn.Module):
  """ids ``[B, L]`` int, mask ``[B, L]`` (1 = real token), optional segment ids ``[B, L]``
  → states ``[B, L, H]``, or with ``all_layers`` ``[B, L, N + 1, H]`` (the embeddings'
  output, then each of the N layers')."""
  cfg: BertConfig
  all_layers: bool = False

  @nn.compact
  def __call__(self, ids, mask, token_types=None):
    cfg = self.cfg
    types = jnp.zeros_like(ids) if token_types is None else token_types
    x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                    name="position_embeddings")(position_ids(cfg, ids))
         + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(types))
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
    bias = attention_bias(mask)
    states = [x]
    for i in range(cfg.num_hidden_layers):
      x = BertLayer(cfg, name=f"layer_{i}")(x, bias)
      states.append(x)
    return jnp.stack(states, axis=2) if self.all_layers else x


def params_from_state_dict(sd: dict, cfg: BertConfig, source: str = "weights") -> dict:
  """Maps Hugging Face ``BertModel`` / ``RobertaModel`` tensor names (any task head's
  ``bert.``/``roberta.`` prefix) to the Flax module's params.

  Raises:
    DataError: a tensor is missing or its shape disagrees with ``config.json``.
  """
  prefix = weights.find_prefix(sd, "embeddings.word_embeddings.weight", source,
                               f"{cfg.model_type} (text)")
  h, f = cfg.hidden_size, cfg.intermediate_size
  expect = {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
            "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
            "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
            "encoder.layer.0.intermediate.dense.weight": (f, h)}

  def get(name):
    key = prefix + name
    if key not in sd:
      raise DataError(source, f"tensor {key!r} is missing from the weights", field=key,
                      hint="the weights do not belong to this config.json")
    value = np.asarray(sd[key], np.float32)
    if name in expect and value.shape != expect[name]:
      raise DataError(source, f"tensor {key!r} has shape {list(value.shape)} where "
                      f"config.json gives {list(expect[name])}", field=key,
                      hint="the weights do not belong to this config.json")
    return value

  dense = lambda n: {"kernel": get(n + ".weight").T, "bias": get(n + ".bias")}
  norm = lambda n: {"scale": get(n + ".weight"), "bias": get(n + ".bias")}
  p = {"word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
       "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
       "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
       "embeddings_norm": norm("embeddings.LayerNorm")}
  for i in range(cfg.num_hidden_layers):
    L = f"encoder.layer.{i}."
    p[f"layer_{i}"] = {
        "query": dense(L + "attention.self.query"), "key": dense(L + "attention.self.key"),
        "value": dense(L + "attention.self.value"),
        "attention_out": dense(L + "attention.output.dense"),
        "attention_norm": norm(L + "attention.output.LayerNorm"),
        "intermediate": dense(L + "intermediate.dense"), "output": dense(L + "output.dense"),
        "output_norm": norm(L + "output.LayerNorm")}
  return {"params": p}


def reference_forward(sd: dict, cfg: BertConfig, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """NumPy float64 forward pass of a ``BertModel`` state dict: ``[B, L, H]``."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  prefix = next((k[:-len("embeddings.word_embeddings.weight")] for k in sd
                 if k.endswith("embeddings.word_embeddings.weight")), "")
  w = lambda n: np.asarray(sd[prefix + n], np.float64)
  lin = lambda x, n: x @ w(n + ".weight").T + w(n + ".bias")

  def ln(x, n):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * w(n + ".weight") + w(n + ".bias")

  b, t = ids.shape
  x = (w("embeddings.word_embeddings.weight")[ids]
       + w("embeddings.position_embeddings.weight")[np.asarray(position_ids(cfg, ids))]
       + w("embeddings.token_type_embeddings.weight")[0][None, None])
  x = ln(x, "embeddings.LayerNorm")
  nh, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
  for i in range(cfg.num_hidden_layers):
    L = f"encoder.layer.{i}."
    heads = lambda y: y.reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
    q, k, v = (heads(lin(x, L + "attention.self." + n)) for n in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    a = s / s.sum(-1, keepdims=True)
    ctx = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, -1)
    x = ln(x + lin(ctx, L + "attention.output.dense"), L + "attention.output.LayerNorm")
    y = lin(x, L + "intermediate.dense")
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    x = ln(x + lin(y, L + "output.dense"), L + "output.LayerNorm")
  return x


def _bucket(n: int, multiple: int = 16) -> int:
  return -(-n // multiple) * multiple


class BertFeatureEncoder:
  """Token states of a BERT checkpoint, batched by length, jitted once per length bucket.

  Args:
    cfg: the architecture.
    state_dict: Hugging Face tensor names → arrays.
    tokenizer: its tokenizer (``encode``, ``encode_pair``, ``max_length``).
    name: for fingerprints and messages.
  """

  def __init__(self, cfg: BertConfig, state_dict: dict, tokenizer, name: str = "bert",
               snapshot: Optional[hub.Snapshot] = None, source: str = "weights"):
    self.cfg, self.tokenizer, self.name, self.snapshot = cfg, tokenizer, name, snapshot
    self.params = jax.device_put(params_from_state_dict(state_dict, cfg, source))
    self._apply = {all_layers: jax.jit(Bert(cfg, all_layers).apply)
                   for all_layers in (False, True)}

  @classmethod
  def from_directory(cls, directory, name: Optional[str] = None) -> "BertFeatureEncoder":
    """Loads ``config.json``, ``model.safetensors`` and ``tokenizer.json`` from a folder."""
    directory = os.fspath(directory)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
      if not os.path.exists(os.path.join(directory, f)):
        raise DataError(os.path.join(directory, f), "file not found",
                        hint="point --text_model_dir at a BERT folder (config.json, "
                        "model.safetensors, tokenizer.json)")
    cfg = BertConfig.from_json(os.path.join(directory, "config.json"))
    sd = hub.read_safetensors(os.path.join(directory, "model.safetensors"))
    tok = WordPieceTokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    return cls(cfg, sd, tok, name or os.path.basename(os.path.normpath(directory)),
               source=directory)

  @classmethod
  def from_pretrained(cls, model, fmt: Optional[str] = None) -> "BertFeatureEncoder":
    """A BERT / RoBERTa / XLM-R snapshot folder or cached Hub id (:func:`hub.resolve`):
    ``config.json``, weights in any form, the tokenizer read by the ``tokenizers`` package
    (``tokenizer.json``, else ``vocab.json`` + ``merges.txt`` or ``vocab.txt``)."""
    snapshot = model if isinstance(model, hub.Snapshot) else hub.resolve(model)
    cfg = BertConfig.from_dict(snapshot.config(), snapshot.file("config.json"))
    tok = HFTokenizer.from_snapshot(snapshot.path, cfg.model_type,
                                    cfg.max_position_embeddings - cfg.position_offset)
    return cls(cfg, hub.load_state_dict(snapshot, fmt), tok, snapshot.name, snapshot,
               snapshot.path)

  @property
  def dim(self) -> int:
    return self.cfg.hidden_size

  def states(self, ids: np.ndarray, mask: np.ndarray, token_types=None,
             all_layers: bool = False) -> np.ndarray:
    """``ids, mask [B, L]`` → float32 ``[B, L, H]`` (``[B, L, N + 1, H]`` with
    ``all_layers``; padding rows are garbage)."""
    types = np.zeros_like(ids) if token_types is None else token_types
    return np.asarray(self._apply[all_layers](self.params, ids, mask, types))

  def encode(self, texts: Sequence, batch_size: int = 64, all_layers: bool = False) -> list:
    """Token states of each line, ``[CLS]`` and ``[SEP]`` included: ``[L_i, H]`` float32, or
    ``[L_i, (N + 1) * H]`` with ``all_layers`` (embeddings, layer 1, …, layer N side by side).

    An item may be a ``(line, context)`` pair: ``[CLS] line [SEP] context [SEP]``, the
    context as segment B (:meth:`WordPieceTokenizer.encode_pair`).
    """
    encoded = [self.tokenizer.encode_pair(*t) if isinstance(t, tuple)
               else (self.tokenizer.encode(t), None) for t in texts]
    out: list = [None] * len(texts)
    order = np.argsort([len(e) for e, _ in encoded], kind="stable")
    for s in range(0, len(order), batch_size):
      rows = order[s:s + batch_size]
      length = min(_bucket(max(len(encoded[r][0]) for r in rows)),
                   self.cfg.max_position_embeddings - self.cfg.position_offset)
      ids = np.full((batch_size, length), self.cfg.pad_token_id, np.int32)
      mask = np.zeros((batch_size, length), np.int32)
      types = np.zeros((batch_size, length), np.int32)
      for j, r in enumerate(rows):
        e, t = encoded[r]
        ids[j, :len(e)] = e
        mask[j, :len(e)] = 1
        if t is not None:
          types[j, :len(t)] = t
      states = self.states(ids, mask, types, all_layers)
      for j, r in enumerate(rows):
        x = states[j, :len(encoded[r][0])]
        out[r] = x.reshape(x.shape[0], -1).copy()
    return out
