"""Models that ship with fusion_jax: trained runs packed into one small folder.

A packed model is ``model.json`` (variant, classes, and per member its model config, how
its features were made — extractor fingerprint, pooling, standardisation — and its
validation scores) and ``params.npz`` (every member's parameters in float16, keys
``{member}/{flax/param/path}``; read with ``allow_pickle=False``). Loading gives
:class:`fusion_jax.runs.Run` objects in float32, what :class:`fusion_jax.predict.Predictor`
takes::

  from fusion_jax import predict
  p = predict.Predictor.from_model("ravdess")     # the shipped RAVDESS ensemble
  p.predict_files(["my_clip.wav"], transcribe=True)

:data:`SHIPPED` names the models in the package (``fusion_jax/pretrained_models/NAME``);
``scripts/build_shipped_model.sh`` rebuilds them from the corpora.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np
from flax import traverse_util

from fusion_jax import io_utils, runs
from fusion_jax.data.errors import DataError
from fusion_jax.models import model as model_lib

FORMAT = 1
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained_models")
SHIPPED = ("ravdess",)


def model_dir(name: str) -> str:
  """A shipped model's folder, or ``name`` itself when it is a packed model's folder."""
  if os.path.isfile(os.path.join(os.fspath(name), "model.json")):
    return os.fspath(name)
  if name in SHIPPED and os.path.isfile(os.path.join(ROOT, name, "model.json")):
    return os.path.join(ROOT, name)
  raise DataError(str(name), "no such model" + (
      " (it ships with fusion_jax but its files are missing: reinstall, or rebuild it with "
      "scripts/build_shipped_model.sh)" if name in SHIPPED else ""),
      field="--model", hint=f"shipped models: {', '.join(SHIPPED)}; or a folder holding a "
      "packed model's model.json, or --run with a trained model directory")


def pack(members: Sequence[runs.Run], out_dir: str, card: Optional[dict] = None) -> dict:
  """Writes ``members`` (one variant, one class list) as a packed model into ``out_dir``
  (both files as one set). ``card``: what to say about it (data, licence, figures).
  Returns the ``model.json`` dict."""
  if not members:
    raise ValueError("nothing to pack")
  variant, names = members[0].variant, list(members[0].class_names or [])
  arrays, described = {}, []
  sources = [os.path.abspath(m.source) for m in members]
  # (where each member was trained, relative to their common folder: no local paths)
  common = os.path.dirname(os.path.commonpath(sources)) if len(sources) > 0 else ""
  for i, m in enumerate(members):
    if m.variant != variant or list(m.class_names or []) != names:
      raise ValueError(f"{m.source}: a packed model has one variant and one class list")
    flat = traverse_util.flatten_dict(m.params, sep="/")
    for key, value in flat.items():
      value = np.asarray(value)
      if value.dtype.kind == "f":
        with np.errstate(over="ignore"):   # (checked just below)
          value = value.astype(np.float16)
        if not np.isfinite(value).all():
          raise ValueError(f"{m.source}: parameter {key} does not fit float16 (|x| > 65504 "
                           "or not finite); a packed model keeps float16")
      arrays[f"{i}/{key}"] = value
    described.append(dict(
        model_config=dataclasses.asdict(m.model_config),
        inputs=m.inputs, val_acc=float(m.val_acc), val_score=float(m.val_score),
        selection_metric=m.selection_metric, seed=str(m.seed),
        source=os.path.relpath(m.source, common) if common else m.source))
  spec = dict(format=FORMAT, variant=variant, class_names=names, members=described,
              card=card or {})
  os.makedirs(out_dir, exist_ok=True)
  with io_utils.staged_files(out_dir) as tmp:
    np.savez_compressed(os.path.join(tmp, "params.npz"), **arrays)
    # (the two files are replaced one after the other: the checksum tells a pair apart)
    spec["params_sha256"] = io_utils.sha256_file(os.path.join(tmp, "params.npz"))
    io_utils.write_json(os.path.join(tmp, "model.json"), spec)
  return spec


def describe(name: str) -> dict:
  """A packed model's ``model.json``."""
  with open(os.path.join(model_dir(name), "model.json"), encoding="utf-8") as f:
    spec = json.load(f)
  path = os.path.join(model_dir(name), "model.json")
  if not isinstance(spec.get("members"), list) or not all(
      isinstance(m, dict) and "model_config" in m for m in spec["members"]):
    raise DataError(path, "not a packed model (an --export folder's model.json?)",
                    field="members", hint="--model takes a shipped name or a folder written "
                    "by fusion_jax.pretrained.pack; predict with an export through jax.export")
  if spec.get("format") != FORMAT:
    raise DataError(path, f"format {spec.get('format')!r}, this fusion_jax reads {FORMAT}",
                    field="format")
  return spec


def load(name: str) -> list:
  """The members of a packed model (shipped name or folder) as float32
  :class:`fusion_jax.runs.Run` objects."""
  directory = model_dir(name)
  spec = describe(name)
  npz = os.path.join(directory, "params.npz")
  if not os.path.isfile(npz):
    raise DataError(npz, "missing: a packed model is model.json + params.npz")
  if spec.get("params_sha256") and io_utils.sha256_file(npz) != spec["params_sha256"]:
    raise DataError(npz, "does not match model.json (params_sha256): the pair was not "
                    "written together", hint="repack it, or reinstall fusion_jax")
  with np.load(npz, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  out = []
  for i, m in enumerate(spec["members"]):
    prefix = f"{i}/"
    flat = {k[len(prefix):]: (v.astype(np.float32) if v.dtype.kind == "f" else v)
            for k, v in arrays.items() if k.startswith(prefix)}
    params = traverse_util.unflatten_dict(flat, sep="/")
    out.append(runs.Run(spec["variant"], m["seed"], params,
                        model_lib.ModelConfig.from_config(m["model_config"]), m["val_acc"],
                        os.path.join(directory, f"member {i} ({m['source']})"),
                        list(spec["class_names"]), inputs=m["inputs"],
                        selection_metric=m["selection_metric"], val_score=m["val_score"]))
  return out
