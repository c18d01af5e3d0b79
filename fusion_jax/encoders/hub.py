"""Local Hugging Face snapshots: find one, read its config, its weights and their digest.

Nothing here touches the network. A model is either a folder (``config.json`` and weights:
``model.safetensors``, ``pytorch_model.bin``, or either sharded with its
``*.index.json``) or a Hub id (``facebook/wav2vec2-base``, optionally ``@revision``)
looked up in the local cache the way ``huggingface_hub`` lays it out::

  $HF_HUB_CACHE (or $HF_HOME/hub, or ~/.cache/huggingface/hub)
    models--facebook--wav2vec2-base/refs/main          → the revision
    models--facebook--wav2vec2-base/snapshots/<rev>/   → the snapshot folder

``.safetensors`` files are read by the ``safetensors`` package; ``.bin`` files by
:mod:`fusion_jax.data.torch_pickle`, which refuses any pickle that is not tensor data, so a
crafted checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Optional

import numpy as np

from fusion_jax import io_utils
from fusion_jax.data import torch_pickle
from fusion_jax.errors import DataError, MissingDependency

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """A model folder on disk.

  Attributes:
    path: the folder.
    name: the Hub id it was resolved from, else the folder's name.
    revision: the cache's commit hash, else ``None`` (a plain folder).
  """
  path: str
  name: str
  revision: Optional[str] = None

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def has(self, name: str) -> bool:
    return os.path.isfile(self.file(name))

  def config(self) -> dict:
    """``config.json`` as a dict."""
    return read_json(self.file("config.json"), "point the model flag at a Hugging Face "
                     "snapshot folder (config.json + weights)")

  def weight_files(self, fmt: Optional[str] = None) -> list:
    """The weight files, shards in order: safetensors preferred to ``.bin`` (``fmt``:
    ``"safetensors"`` or ``"bin"`` only)."""
    forms = {"safetensors": ("model.safetensors", "model.safetensors.index.json"),
             "bin": ("pytorch_model.bin", "pytorch_model.bin.index.json")}
    for single, index in [forms[fmt]] if fmt else forms.values():
      if self.has(single):
        return [self.file(single)]
      if self.has(index):
        weight_map = read_json(self.file(index)).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
          raise DataError(self.file(index), "no weight_map", field="weight_map")
        files = [self.file(f) for f in dict.fromkeys(weight_map.values())]
        for f in files:
          if not os.path.isfile(f):
            raise DataError(f, "shard named in the index is missing",
                            hint="the download was interrupted: fetch the snapshot again")
        return files
    raise DataError(self.path, f"no weights: none of {', '.join(WEIGHT_FILES)}",
                    hint="download the full snapshot, weights included")


def read_json(path: str, hint: Optional[str] = None) -> dict:
  if not os.path.isfile(path):
    raise DataError(path, "file not found", hint=hint)
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(path, f"not readable JSON ({e})") from None
  if not isinstance(out, dict):
    raise DataError(path, "not a JSON object")
  return out


def cache_dirs() -> list:
  """Where Hub snapshots are looked up, in order."""
  dirs = []
  if os.environ.get("HF_HUB_CACHE"):
    dirs.append(os.environ["HF_HUB_CACHE"])
  if os.environ.get("HF_HOME"):
    dirs.append(os.path.join(os.environ["HF_HOME"], "hub"))
  dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub"))
  return list(dict.fromkeys(dirs))


_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w.-]+)?$|^[\w.-]+(@[\w.-]+)?$")


def resolve(model: str) -> Snapshot:
  """A folder, or a Hub id (``org/name[@revision]``) found in the local cache.

  Raises:
    MissingDependency: neither a folder nor in any cache; names the places searched and
      the command that fetches it on a connected machine.
  """
  model = os.fspath(model)
  if os.path.isdir(model):
    return Snapshot(os.path.abspath(model), os.path.basename(os.path.normpath(model)))
  if not _ID.match(model):
    raise MissingDependency(f"{model}: no such folder (a model is a snapshot folder or a "
                            "Hugging Face id such as facebook/wav2vec2-base)")
  repo, _, revision = model.partition("@")
  searched = []
  for cache in cache_dirs():
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    searched.append(root)
    rev = revision or "main"
    ref = os.path.join(root, "refs", rev)
    if os.path.isfile(ref):
      with open(ref, encoding="utf-8") as f:
        rev = f.read().strip()
    folder = os.path.join(root, "snapshots", rev)
    if os.path.isdir(folder):
      return Snapshot(folder, repo, rev)
  raise MissingDependency(
      f"model {model!r} is not in the local Hugging Face cache (searched "
      f"{', '.join(searched)}); fusion_jax never downloads: on a connected machine run "
      f"`hf download {repo}{' --revision ' + revision if revision else ''}` (or "
      f"`huggingface-cli download {repo}`) and copy the cache, or pass the snapshot folder")


def load_state_dict(snapshot: Snapshot, fmt: Optional[str] = None) -> dict:
  """Every tensor of the snapshot's weights, by its Hugging Face name, as NumPy arrays
  (``fmt``: read only ``"safetensors"`` or only ``"bin"`` files)."""
  out: dict = {}
  for path in snapshot.weight_files(fmt):
    if path.endswith(".safetensors"):
      out.update(read_safetensors(path))
    else:
      sd = torch_pickle.load_torch_file(path)
      if not isinstance(sd, dict) or not all(isinstance(v, np.ndarray) for v in sd.values()):
        raise DataError(path, "not a state dict (name → tensor)",
                        hint="give the weights file transformers' save_pretrained writes")
      out.update(sd)
  return out


def read_safetensors(path) -> dict:
  """Every tensor of one ``.safetensors`` file as NumPy arrays (BF16 as ``ml_dtypes``).

  Raises:
    DataError: the file is missing, truncated or malformed.
  """
  from safetensors import SafetensorError, safe_open  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(path, "file not found")
  try:
    with safe_open(path, framework="numpy") as f:
      return {k: f.get_tensor(k) for k in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise DataError(path, f"unreadable safetensors file ({e})",
                    hint="the download was interrupted or the file is damaged: fetch it again"
                    ) from None


def write_safetensors(path, tensors: dict, metadata: Optional[dict] = None) -> None:
  """Writes NumPy arrays as one ``.safetensors`` file, atomically."""
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              {str(k): str(v) for k, v in (metadata or {}).items()} or None)
  with io_utils.atomic_open(os.fspath(path), "wb") as f:
    f.write(blob)


# SHA-256 of a snapshot's weights → the folder it was last seen in (this process): how a model
# that fine-tunes a snapshot's layers finds them (fusion_jax.models.encoders).
_SEEN: dict = {}


def remember(digest: str, path: str) -> None:
  """Records that the weights with SHA-256 ``digest`` are in folder ``path``."""
  _SEEN[digest] = path


def seen(digest: str) -> Optional[str]:
  """The folder :func:`remember` recorded for ``digest``, else ``None``."""
  return _SEEN.get(digest)


def weights_digest(snapshot: Snapshot) -> str:
  """SHA-256 over the weight files' bytes, in order (what a run records of its encoder)."""
  h = hashlib.sha256()
  for path in snapshot.weight_files():
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 24), b""):
        h.update(block)
  return h.hexdigest()


def fold_weight_norm(sd: dict, name: str, dim: int = 2) -> np.ndarray:
  """The weight of a ``weight_norm(module, dim=dim)`` under any of its three saved forms:
  ``name`` itself, ``name_g``/``name_v`` (old torch), or
  ``parametrizations.<leaf>.original0/1`` (torch ≥ 2.1)."""
  if name in sd:
    return np.asarray(sd[name], np.float32)
  stem, _, leaf = name.rpartition(".")
  for g_key, v_key in ((f"{name}_g", f"{name}_v"),
                       (f"{stem}.parametrizations.{leaf}.original0",
                        f"{stem}.parametrizations.{leaf}.original1")):
    if g_key in sd and v_key in sd:
      g = np.asarray(sd[g_key], np.float64)
      v = np.asarray(sd[v_key], np.float64)
      axes = tuple(a for a in range(v.ndim) if a != dim)
      return (g * v / np.sqrt((v ** 2).sum(axis=axes, keepdims=True))).astype(np.float32)
  raise KeyError(name)
