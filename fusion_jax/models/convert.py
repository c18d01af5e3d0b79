"""The original's PyTorch checkpoints ↔ Flax params, without torch, both ways.

``best_{variant}_model.pt`` holds ``{'epoch', 'model_state_dict',
'optimizer_state_dict', 'val_acc', 'confusion_matrix', 'class_names',
'fusion_type'}``. :func:`load_torch_checkpoint` reads it with the safe reader,
infers the variant and sizes from the weights, and returns Flax params that give
the same logits (``tests/models_test.py``); :func:`save_torch_checkpoint` writes
one from Flax params (and Adam's state) that the original's PyTorch code loads
with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Optional, Sequence

import jax
import numpy as np

from fusion_jax.errors import ConfigError, DataError
from fusion_jax.data.torch_pickle import NumpyArray, load_torch_file, save_torch_file
from fusion_jax.models import registry
from fusion_jax.models.model import ModelConfig, build_model, init_params
import optax

_ENCODER = re.compile(
    r"^(?:(temporal_model|contextual_model)\.transformer\.layers|"
    r"(temporal_modeller|contextual_modeller)\.layers)\.(\d+)\.(.+)$")
_FUSION_RENAMES = {
    "s_to_t_attn": "speech_to_text_attn", "t_to_s_attn": "text_to_speech_attn",
    "ln_s": "ln_speech", "ln_t": "ln_text", "fusion_proj.0": "fusion_proj/dense",
    "fusion_proj.3": "fusion_proj/norm", "speech_gate.0": "speech_gate/dense1",
    "speech_gate.2": "speech_gate/dense2", "text_gate.0": "text_gate/dense1",
    "text_gate.2": "text_gate/dense2", "attention.0": "attention/dense1",
    "attention.2": "attention/dense2", "speech_proj": "speech_proj", "text_proj": "text_proj",
}
_CLASSIFIER = {"classifier.classifier.0": "classifier_dense1",
               "classifier.classifier.1": "classifier_norm",
               "classifier.classifier.4": "classifier_dense2",
               "classifier.0": "dense1", "classifier.3": "dense2"}


def _module_path(module: str) -> Optional[tuple]:
  m = _ENCODER.match(module)
  if m:
    block = "temporal_block" if "temporal" in (m.group(1) or m.group(2)) else "contextual_block"
    rest = m.group(4).replace("self_attn.out_proj", "self_attn/out")
    return (block, f"layer_{m.group(3)}", *rest.split("/"))
  if module.startswith("fusion."):
    sub = module[len("fusion."):]
    for torch_name, flax_name in _FUSION_RENAMES.items():
      if sub == torch_name or sub.startswith(torch_name + "."):
        tail = sub[len(torch_name):].lstrip(".").replace("out_proj", "out")
        return ("fusion_head", *flax_name.split("/"), *([tail] if tail else []))
    return None
  return (_CLASSIFIER[module],) if module in _CLASSIFIER else None


def _assign(tree: dict, path: tuple, value: np.ndarray):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = np.asarray(value, np.float32)


def convert_torch_state_dict(state_dict: dict) -> dict:
  """Maps a PyTorch ``state_dict`` (arrays) to a Flax ``params`` tree.

  Linear ``weight [out, in]`` → ``kernel [in, out]``; packed attention
  ``in_proj_weight [3E, E]`` → ``query``/``key``/``value`` kernels;
  LayerNorm ``weight`` → ``scale``.

  Raises:
    ValueError: a key that belongs to no known module.
  """
  params: dict = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    module, _, leaf = key.rpartition(".")
    path = _module_path(module)
    if path is None:
      raise ConfigError(f"state_dict key {key!r} belongs to no module of the original model")
    if leaf in ("in_proj_weight", "in_proj_bias"):
      for name, part in zip(("query", "key", "value"), np.split(value, 3, axis=0)):
        _assign(params, path + (name, "kernel" if leaf.endswith("weight") else "bias"),
                part.T if part.ndim == 2 else part)
    elif leaf == "weight":
      _assign(params, path + (("kernel",) if value.ndim == 2 else ("scale",)),
              value.T if value.ndim == 2 else value)
    elif leaf == "bias":
      _assign(params, path + ("bias",), value)
    else:
      raise ConfigError(f"state_dict key {key!r}: unexpected parameter {leaf!r}")
  return params


def infer_variant(state_dict: dict) -> str:
  keys = list(state_dict)
  has = lambda s: any(k.startswith(s) for k in keys)
  if has("fusion.s_to_t_attn"):
    return "cross_attention"
  if has("fusion.speech_gate"):
    return "gated"
  if has("fusion.attention"):
    return "weighted"
  if has("fusion."):
    return "concatenation"
  if has("temporal_model") or has("temporal_modeller"):
    return "speech_only"
  if has("contextual_model") or has("contextual_modeller"):
    return "text_only"
  raise ConfigError("no temporal or contextual block in this state_dict")


def infer_model_config(state_dict: dict, base: Optional[ModelConfig] = None) -> ModelConfig:
  """Reads dims from weight shapes; heads, dropout and dtype come from ``base``."""
  base = base or ModelConfig()
  sd = state_dict
  find = lambda pattern: next((np.asarray(v) for k, v in sd.items() if re.search(pattern, k)),
                              None)
  layers = {int(m.group(3)) for k in sd for m in [_ENCODER.match(k.rpartition(".")[0])] if m}
  s_in = find(r"^temporal_model.*layers\.0\.self_attn\.in_proj_weight$|"
              r"^temporal_modeller\.layers\.0\.self_attn\.in_proj_weight$")
  t_in = find(r"^contextual_model.*layers\.0\.self_attn\.in_proj_weight$|"
              r"^contextual_modeller\.layers\.0\.self_attn\.in_proj_weight$")
  lin1 = find(r"layers\.0\.linear1\.weight$")
  changes = dict(layers=len(layers))
  if s_in is not None:
    changes["speech_dim"] = s_in.shape[1]
  if t_in is not None:
    changes["text_dim"] = t_in.shape[1]
  if lin1 is not None:
    changes["hidden"] = lin1.shape[0] // 4
  fp = find(r"^fusion\.fusion_proj\.0\.weight$")
  if fp is not None:
    changes["f_hidden"] = fp.shape[0]
  cls1 = find(r"^classifier\.(classifier\.)?0\.weight$")
  if cls1 is not None:
    changes["classifier_hidden"] = cls1.shape[0]
  return dataclasses.replace(base, **changes)


def _num_classes(state_dict) -> int:
  for key in ("classifier.classifier.4.weight", "classifier.3.weight"):
    if key in state_dict:
      return int(np.asarray(state_dict[key]).shape[0])
  raise ConfigError("no classifier output layer in this state_dict")


def check_params_match(params: dict, expected, source: str = "state_dict") -> None:
  """Raises ``ValueError`` listing missing, unexpected and mis-shaped parameters."""
  got = {jax.tree_util.keystr(p): v.shape
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: shape {got[k]} but the model expects {want[k]}"
               for k in sorted(set(got) & set(want)) if tuple(got[k]) != want[k]]
  if problems:
    raise ConfigError(f"{source} does not fit the model: " + "; ".join(problems[:10]) +
                     (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))


def load_torch_checkpoint(path, base_config: Optional[ModelConfig] = None,
                          variant: Optional[str] = None) -> dict:
  """Reads an original ``best_{variant}_model.pt`` without torch.

  Args:
    path: the checkpoint (or a bare ``state_dict`` file).
    base_config: supplies what weights cannot tell (heads, dropout, dtype);
      dims are inferred from the weights.
    variant: overrides the variant inferred from the file.

  Returns:
    dict with ``params`` (Flax), ``model_config``, ``variant``, ``num_classes``
    and, when stored, ``class_names``, ``epoch``, ``val_acc``,
    ``confusion_matrix``.

  Raises:
    DataError: unreadable or unsafe file, or weights that fit no variant.
  """
  obj = load_torch_file(path)
  if not isinstance(obj, dict):
    raise DataError(path, f"expected a dict, got {type(obj).__name__}")
  state_dict = obj.get("model_state_dict", obj)
  if not all(isinstance(v, np.ndarray) for v in state_dict.values()):
    raise DataError(path, "no model_state_dict of tensors", field="model_state_dict")
  try:
    variant = variant or obj.get("fusion_type") or infer_variant(state_dict)
    config = infer_model_config(state_dict, base_config)
    num_classes = _num_classes(state_dict)
    params = convert_torch_state_dict(state_dict)
    model = build_model(config, variant, num_classes)
    expected = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    check_params_match(params, expected, source=f"model_state_dict of {variant}")
  except ValueError as e:
    raise DataError(path, str(e), field="model_state_dict") from None
  out = dict(params=jax.tree_util.tree_map(np.asarray, params), model_config=config,
             variant=variant, num_classes=num_classes)
  for key in ("class_names", "epoch", "val_acc", "confusion_matrix"):
    if key in obj:
      out[key] = obj[key]
  return out


# ------------------------------------------------------------------ Flax → the original
# The original's modules in registration order (= state_dict and optimizer order).
_TORCH_HEAD_MODULES = {
    "cross_attention": ("speech_proj", "text_proj", "s_to_t_attn", "t_to_s_attn", "ln_s",
                        "ln_t", "fusion_proj.0", "fusion_proj.3"),
    "concatenation": ("speech_proj", "text_proj", "fusion_proj.0", "fusion_proj.3"),
    "gated": ("speech_proj", "text_proj", "speech_gate.0", "speech_gate.2", "text_gate.0",
              "text_gate.2", "fusion_proj.0", "fusion_proj.3"),
    "weighted": ("speech_proj", "text_proj", "attention.0", "attention.2", "fusion_proj.0",
                 "fusion_proj.3"),
}
_ENCODER_LEAVES = ("self_attn.in_proj_weight", "self_attn.in_proj_bias",
                   "self_attn.out_proj.weight", "self_attn.out_proj.bias", "linear1.weight",
                   "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight",
                   "norm1.bias", "norm2.weight", "norm2.bias")
_ATTENTION_LEAVES = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")


def torch_keys(variant: str, num_layers: int) -> list:
  """The original's ``state_dict`` keys of ``variant``, in its parameter order."""
  spec = registry.get(variant)
  if not spec.original:
    raise ConfigError(f"variant {variant!r} is not part of the original pipeline, which has "
                     "no module for it")
  keys = []
  for block, m in (("temporal_model", "speech"), ("contextual_model", "text")):
    if spec.reads(m):
      keys += [f"{block}.transformer.layers.{i}.{leaf}" for i in range(num_layers)
               for leaf in _ENCODER_LEAVES]
  if not spec.is_fusion:
    return keys + ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight",
                   "classifier.3.bias"]
  for module in _TORCH_HEAD_MODULES[variant]:
    leaves = _ATTENTION_LEAVES if module.endswith("_attn") else ("weight", "bias")
    keys += [f"fusion.{module}.{leaf}" for leaf in leaves]
  return keys + [f"classifier.classifier.{i}.{leaf}" for i in (0, 1, 4)
                 for leaf in ("weight", "bias")]


def _node(tree, path, key):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      raise KeyError(f"{key}: no parameter {'/'.join(path)}")
    tree = tree[p]
  return tree


def to_torch_state_dict(params, variant: str) -> collections.OrderedDict:
  """Flax params (or any tree shaped like them, e.g. Adam's moments) → the original's
  ``state_dict`` (``kernel [in, out]`` → ``weight [out, in]``; q/k/v → packed ``in_proj``).

  Raises:
    ValueError: the params hold something the original has no place for (an input
      projection, another head) or lack something it needs.
  """
  params = jax.tree_util.tree_map(np.asarray, params)
  block = params.get("temporal_block") or params.get("contextual_block") or {}
  layers = len([k for k in block if k.startswith("layer_")])
  out, used = collections.OrderedDict(), set()
  for key in torch_keys(variant, layers):
    module, _, leaf = key.rpartition(".")
    if leaf in ("in_proj_weight", "in_proj_bias"):
      path = _module_path(module)
      kind = "kernel" if leaf.endswith("weight") else "bias"
      parts = [_node(params, path + (n, kind), key) for n in ("query", "key", "value")]
      out[key] = np.concatenate([p.T if p.ndim == 2 else p for p in parts], axis=0)
      used |= {path + (n, kind) for n in ("query", "key", "value")}
      continue
    path = _module_path(module)
    node = _node(params, path, key)
    name = "bias" if leaf == "bias" else ("kernel" if "kernel" in node else "scale")
    value = node[name]
    out[key] = value.T if name == "kernel" else value
    used.add(path + (name,))
  have = {tuple(getattr(k, "key", k) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  extra = sorted("/".join(p) for p in have - used)
  if extra:
    raise ConfigError(f"the original {variant} model has no place for parameter(s) "
                     f"{extra[:4]}{' ...' if len(extra) > 4 else ''} (not in the original: an "
                     "input projection, model.model_dim > 0; unimodal heads and the floor, "
                     "model.unimodal_heads; absent-modality vectors, model.absent_embedding)")
  return out


def _adam_moments(opt_state):
  for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)):
    if isinstance(s, optax.ScaleByAdamState):
      return s
  raise ConfigError("the optimizer state holds no Adam moments")


def save_torch_checkpoint(params, variant: str, path, *, epoch: int, val_acc: float,
                          class_names: Sequence[str], confusion_matrix=None, opt_state=None,
                          learning_rate: Optional[float] = None, optim_config=None,
                          confusion_as_numpy: bool = False) -> None:
  """Writes the original's ``best_{variant}_model.pt`` (atomically, without torch).

  The dict has exactly the original's keys: ``epoch``, ``model_state_dict`` (its
  module names and layouts), ``optimizer_state_dict`` (torch's Adam form: per
  parameter ``step``, ``exp_avg``, ``exp_avg_sq``, and one param group; empty
  ``state`` when ``opt_state`` is None), ``val_acc``, ``confusion_matrix``,
  ``class_names`` and ``fusion_type``.

  Args:
    params: Flax params of ``variant`` (an original variant, no input projection).
    opt_state: the run's optax state (``optim.make_optimizer``), optional.
    learning_rate, optim_config: the param group's ``lr`` and Adam settings
      (``config.optim``: ``b1``, ``b2``, ``eps``, ``weight_decay``).
    confusion_as_numpy: store the confusion matrix as a NumPy array, as the original
      does. Off by default: torch ≥ 2.6 refuses NumPy globals under
      ``torch.load(weights_only=True)`` (its default), so it is an int64 tensor.
  """
  state_dict = to_torch_state_dict(params, variant)
  state = {}
  if opt_state is not None:
    adam = _adam_moments(opt_state)
    mu, nu = to_torch_state_dict(adam.mu, variant), to_torch_state_dict(adam.nu, variant)
    step = np.asarray(float(np.asarray(adam.count)), np.float32)
    state = {i: {"step": step, "exp_avg": mu[k], "exp_avg_sq": nu[k]}
             for i, k in enumerate(state_dict)}
  o = optim_config
  group = {"lr": float(learning_rate if learning_rate is not None else
                       (o.learning_rate if o is not None else 1e-4)),
           "betas": (float(o.b1), float(o.b2)) if o is not None else (0.9, 0.999),
           "eps": float(o.eps) if o is not None else 1e-8,
           "weight_decay": float(o.weight_decay) if o is not None else 0.0,
           "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
           "differentiable": False, "fused": None, "decoupled_weight_decay": False,
           "params": list(range(len(state_dict)))}
  k = len(class_names)
  cm = np.zeros((k, k), np.int64) if confusion_matrix is None else np.asarray(
      confusion_matrix, np.int64)
  save_torch_file({
      "epoch": int(epoch),
      "model_state_dict": state_dict,
      "optimizer_state_dict": {"state": state, "param_groups": [group]},
      "val_acc": float(val_acc),
      "confusion_matrix": NumpyArray(cm) if confusion_as_numpy else cm,
      "class_names": [str(c) for c in class_names],
      "fusion_type": variant,
  }, path)
