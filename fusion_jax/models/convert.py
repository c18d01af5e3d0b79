"""The original's PyTorch checkpoints → Flax params, through the safe ``.pt`` reader.

``best_{variant}_model.pt`` holds ``{'epoch', 'model_state_dict',
'optimizer_state_dict', 'val_acc', 'confusion_matrix', 'class_names',
'fusion_type'}``. :func:`load_torch_checkpoint` reads it without torch, infers
the variant and sizes from the weights, and returns Flax params that give the
same logits (see ``tests/parity_test.py``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax
import numpy as np

from fusion_jax.data.errors import DataError
from fusion_jax.data.torch_pickle import load_torch_file
from fusion_jax.models.model import ModelConfig, build_model, init_params

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
      raise ValueError(f"state_dict key {key!r} belongs to no module of the original model")
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
      raise ValueError(f"state_dict key {key!r}: unexpected parameter {leaf!r}")
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
  raise ValueError("no temporal or contextual block in this state_dict")


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
  raise ValueError("no classifier output layer in this state_dict")


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
    raise ValueError(f"{source} does not fit the model: " + "; ".join(problems[:10]) +
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
