"""A BERT encoder in Flax Linen that loads Hugging Face ``BertModel`` safetensors (no torch).

Used for all-MiniLM-L6-v2 token states (384-d) as text features::

  enc = BertFeatureEncoder.from_directory(minilm_dir)     # config.json, model.safetensors,
  states = enc.encode(["I am so happy!"])                 # tokenizer.json → [[L_i, 384]]

:func:`reference_forward` is an independent NumPy float64 forward pass of the
same weights (in the checkpoint's own ``[out, in]`` layout), the yardstick the
tests hold the Flax module to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

from fusion_jax.data.errors import DataError
from fusion_jax.features import safetensors_io
from fusion_jax.features.tokenizer import WordPieceTokenizer


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

  @classmethod
  def from_json(cls, path) -> "BertConfig":
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
      raise DataError(path, f"hidden_act {act!r} is not supported (only exact 'gelu')",
                      field="hidden_act")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


def _make_module(cfg: BertConfig):
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, bias):
      b, t, h = x.shape
      nh = cfg.num_attention_heads
      split = lambda y: y.reshape(b, t, nh, h // nh)
      q = split(nn.Dense(h, name="query")(x))
      k = split(nn.Dense(h, name="key")(x))
      v = split(nn.Dense(h, name="value")(x))
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(h // nh) + bias
      ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, h)
      x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(
          x + nn.Dense(h, name="attention_out")(ctx))
      y = nn.Dense(cfg.intermediate_size, name="intermediate")(x)
      y = nn.Dense(h, name="output")(jax.nn.gelu(y, approximate=False))
      return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + y)

  class Bert(nn.Module):
    """ids ``[B, L]`` int, mask ``[B, L]`` (1 = real token) → states ``[B, L, H]``."""

    @nn.compact
    def __call__(self, ids, mask):
      length = ids.shape[1]
      x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(ids)
           + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                      name="position_embeddings")(jnp.arange(length))[None]
           + nn.Embed(cfg.type_vocab_size, cfg.hidden_size,
                      name="token_type_embeddings")(jnp.zeros_like(ids)))
      x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
      bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
      for i in range(cfg.num_hidden_layers):
        x = Layer(name=f"layer_{i}")(x, bias)
      return x

  return Bert()


def params_from_state_dict(sd: dict, cfg: BertConfig) -> dict:
  """Maps Hugging Face ``BertModel`` tensor names to the Flax module's params."""
  prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""

  def get(name):
    key = prefix + name
    if key not in sd:
      raise KeyError(f"missing tensor {key!r}")
    return np.asarray(sd[key], np.float32)

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
  prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""
  w = lambda n: np.asarray(sd[prefix + n], np.float64)
  lin = lambda x, n: x @ w(n + ".weight").T + w(n + ".bias")

  def ln(x, n):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.layer_norm_eps) * w(n + ".weight") + w(n + ".bias")

  b, t = ids.shape
  x = (w("embeddings.word_embeddings.weight")[ids]
       + w("embeddings.position_embeddings.weight")[np.arange(t)][None]
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
    tokenizer: its WordPiece tokenizer.
    name: for fingerprints and messages.
  """

  def __init__(self, cfg: BertConfig, state_dict: dict, tokenizer: WordPieceTokenizer,
               name: str = "bert"):
    import jax  # pylint: disable=import-outside-toplevel
    self.cfg, self.tokenizer, self.name = cfg, tokenizer, name
    self.module = _make_module(cfg)
    self.params = jax.device_put(params_from_state_dict(state_dict, cfg))
    self._apply = jax.jit(self.module.apply)

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
    sd = safetensors_io.load_safetensors(os.path.join(directory, "model.safetensors"))
    tok = WordPieceTokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    return cls(cfg, sd, tok, name or os.path.basename(os.path.normpath(directory)))

  @property
  def dim(self) -> int:
    return self.cfg.hidden_size

  def states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``ids, mask [B, L]`` → float32 ``[B, L, H]`` (padding rows are garbage)."""
    return np.asarray(self._apply(self.params, ids, mask))

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> list:
    """Token states of each line, ``[L_i, H]`` float32, ``[CLS]`` and ``[SEP]`` included."""
    encoded = self.tokenizer.encode_batch(texts)
    out: list = [None] * len(texts)
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for s in range(0, len(order), batch_size):
      rows = order[s:s + batch_size]
      length = min(_bucket(max(len(encoded[r]) for r in rows)),
                   self.cfg.max_position_embeddings)
      ids = np.zeros((batch_size, length), np.int32)
      mask = np.zeros((batch_size, length), np.int32)
      for j, r in enumerate(rows):
        ids[j, :len(encoded[r])] = encoded[r]
        mask[j, :len(encoded[r])] = 1
      states = self.states(ids, mask)
      for j, r in enumerate(rows):
        out[r] = states[j, :len(encoded[r])].copy()
    return out
