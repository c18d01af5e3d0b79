"""Feature files: the original's padded ``.pt`` dicts, per-utterance dicts, native ``.npz``.

Every reader returns :class:`ModalityFeatures`: one *unpadded* float32 array
``[T_i, D]`` per utterance. Padding is re-created at batch time in a few fixed
shapes (see :mod:`fusion_jax.data.batching`).

Layouts accepted:

* the original's ``torch.save`` dict ``{'x': [N, T, D], 'm': [N, T], 'y': [N]}``
  (``m`` = 1 for a real frame, 0 for padding);
* a per-utterance dict ``{utterance_id: tensor[T, D]}`` (``.pt`` or ``.npz``),
  aligned to a split CSV by utterance id;
* fusion_jax's native ``.npz``: ``features [sum T, D]``, ``lengths [N]``,
  ``labels [N]``, ``ids [N]`` (written by :func:`save_features`); float32, or float16 for
  stacks of hidden states (``stack [ ]`` = S: each frame is S states of ``D / S`` side by
  side, kept float16 in memory and on the device).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional, Sequence

import numpy as np

from fusion_jax import io_utils
from fusion_jax.data import torch_pickle
from fusion_jax.errors import ConfigError, DataError
import json

NATIVE_FORMAT_VERSION = 1


@dataclasses.dataclass
class ModalityFeatures:
  """One modality of one split, kept unpadded.

  Attributes:
    sequences: N float32 arrays, each ``[T_i, D]`` with ``T_i >= 1``.
    labels: ``[N]`` int64 labels, or None when the file carries none
      (per-utterance layout).
    ids: N utterance ids, or None when rows are aligned by order only.
    path: the file they came from (for error messages).
    stack: hidden states side by side in each frame (1 = one state per frame).
  """
  sequences: list
  labels: Optional[np.ndarray]
  ids: Optional[list]
  path: str
  stack: int = 1

  def __len__(self) -> int:
    return len(self.sequences)

  @property
  def dim(self) -> int:
    return int(self.sequences[0].shape[-1]) if self.sequences else 0

  @property
  def lengths(self) -> np.ndarray:
    return np.array([s.shape[0] for s in self.sequences], dtype=np.int64)

  def take(self, rows: Sequence[int]) -> "ModalityFeatures":
    rows = list(rows)
    return ModalityFeatures(
        sequences=[self.sequences[i] for i in rows],
        labels=None if self.labels is None else self.labels[rows],
        ids=None if self.ids is None else [self.ids[i] for i in rows],
        path=self.path, stack=self.stack)


def _first_row(bad: np.ndarray) -> int:
  return int(np.flatnonzero(bad)[0])


def _check_labels(path, labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise DataError(path, f"labels must be 1-D [N], got shape {labels.shape}", field="y")
  if labels.dtype.kind == "f":
    bad = labels != np.round(labels)
    if bad.any():
      r = _first_row(bad)
      raise DataError(path, f"label {labels[r]} is not an integer", field="y", row=r)
  elif labels.dtype.kind not in "iub":
    raise DataError(path, f"labels must be integers, got dtype {labels.dtype}", field="y")
  return labels.astype(np.int64)


def _check_sequences(path, sequences, expected_dim, field="x", ids=None):
  for i, seq in enumerate(sequences):
    where = dict(field=field if ids is None else f"{field}[{ids[i]!r}]", row=i)
    if seq.ndim != 2:
      raise DataError(path, f"expected a [T, D] sequence, got shape {seq.shape}", **where)
    # (0 frames: the utterance lacks this modality, an absent input; Split.absent counts)
    if expected_dim is not None and seq.shape[1] != expected_dim:
      raise DataError(path, f"feature dim is {seq.shape[1]}, the config expects {expected_dim}",
                      **where, hint="set config.model.speech_dim / text_dim to match the "
                      "features, or extract features of that size")
    if not np.isfinite(seq).all():
      raise DataError(path, "NaN or Inf in the features", **where,
                      hint="re-extract the utterance; silent or clipped audio can produce NaN")


def _from_padded(path, obj, expected_dim) -> ModalityFeatures:
  for key in ("x", "m", "y"):
    if key not in obj:
      raise DataError(path, f"missing key '{key}'; found keys {sorted(map(str, obj))}",
                      field=key, hint="expected {'x': [N,T,D], 'm': [N,T], 'y': [N]}")
  x, m, y = (np.asarray(obj[k]) for k in ("x", "m", "y"))
  if x.ndim != 3:
    raise DataError(path, f"expected [N, T, D] features, got shape {x.shape}", field="x")
  if m.shape != x.shape[:2]:
    raise DataError(path, f"mask shape {m.shape} does not match features {x.shape[:2]}",
                    field="m")
  y = _check_labels(path, y)
  if y.shape[0] != x.shape[0]:
    raise DataError(path, f"{y.shape[0]} labels for {x.shape[0]} utterances", field="y",
                    row=min(y.shape[0], x.shape[0]))
  if expected_dim is not None and x.shape[2] != expected_dim:
    raise DataError(path, f"feature dim is {x.shape[2]}, the config expects {expected_dim}",
                    field="x", hint="set config.model.speech_dim / text_dim to match the "
                    "features, or extract features of that size")
  bad = ~((m == 0) | (m == 1))
  if bad.any():
    r = int(np.argwhere(bad)[0][0])
    raise DataError(path, f"mask holds {m[bad][0].item()!r}; a mask must be 0 (padding) or 1 "
                    "(real frame)", field="m", row=r)
  real = m.astype(bool)   # (a row with no real frame lacks this modality: absent)
  x = x.astype(np.float32, copy=False)
  finite = np.isfinite(x).all(axis=2) | ~real
  if not finite.all():
    raise DataError(path, "NaN or Inf in a real frame", field="x",
                    row=_first_row(~finite.all(axis=1)),
                    hint="re-extract the utterance; silent or clipped audio can produce NaN")
  # Frames where m == 1, in order. The model has no positional encoding by
  # default and pools with the mask, so this equals the padded computation.
  sequences = [np.ascontiguousarray(x[i][real[i]]) for i in range(x.shape[0])]
  return ModalityFeatures(sequences=sequences, labels=y, ids=None, path=path)


def _from_per_utterance(path, obj, expected_dim) -> ModalityFeatures:
  ids = [str(k) for k in obj]
  sequences = []
  for i, k in enumerate(obj):
    seq = np.asarray(obj[k])
    if seq.ndim == 3 and seq.shape[0] == 1:  # [1, T, D] as many extractors save it
      seq = seq[0]
    sequences.append(np.ascontiguousarray(seq, dtype=np.float32) if seq.dtype.kind == "f"
                     else seq)
    if seq.dtype.kind != "f":
      raise DataError(path, f"features must be floats, got dtype {seq.dtype}",
                      field=f"[{k!r}]", row=i)
  _check_sequences(path, sequences, expected_dim, field="", ids=ids)
  return ModalityFeatures(sequences=sequences, labels=None, ids=ids, path=path)


def _from_native(path, npz) -> ModalityFeatures:
  for key in ("features", "lengths"):
    if key not in npz:
      raise DataError(path, f"missing array '{key}' of a fusion_jax .npz", field=key)
  feats, lengths = npz["features"], npz["lengths"].astype(np.int64)
  if lengths.ndim != 1 or (lengths < 0).any() or lengths.sum() != feats.shape[0]:
    raise DataError(path, f"lengths sum to {lengths.sum()} but features hold {feats.shape[0]}"
                    " frames", field="lengths")
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  labels = _check_labels(path, npz["labels"]) if "labels" in npz else None
  ids = [str(s) for s in npz["ids"]] if "ids" in npz else None
  for field, values in (("labels", labels), ("ids", ids)):
    if values is not None and len(values) != len(lengths):
      raise DataError(path, f"{len(values)} {field} for {len(lengths)} utterances",
                      field=field, row=min(len(values), len(lengths)),
                      hint="the file is inconsistent; re-extract or re-convert it")
  dtype = np.float16 if feats.dtype == np.float16 else np.float32
  sequences = [np.asarray(feats[offsets[i]:offsets[i + 1]], dtype)
               for i in range(len(lengths))]
  stack = int(npz["stack"]) if "stack" in npz else 1
  if stack < 1 or feats.shape[1] % stack:
    raise DataError(path, f"stack {stack} does not divide the feature width {feats.shape[1]}",
                    field="stack", hint="the file is inconsistent; re-extract it")
  return ModalityFeatures(sequences=sequences, labels=labels, ids=ids, path=path, stack=stack)


def load_features(path, *, expected_dim: Optional[int] = None) -> ModalityFeatures:
  """Reads one modality's feature file (any layout in the module docstring).

  Args:
    path: ``.pt`` (torch.save, read without torch) or ``.npz``.
    expected_dim: the config's feature dim; a mismatch is an error.

  Returns:
    The utterances, unpadded.

  Raises:
    DataError: naming the file, the field and the first bad row.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(path, "file not found")
  if os.path.isdir(path):
    raise DataError(path, "is a directory, not a feature file",
                    hint="give the .pt or .npz file itself")
  feats = _load(path, expected_dim)
  if len(feats) == 0:
    raise DataError(path, "holds no utterances", field="x" if feats.ids is None else None,
                    hint="an empty feature file is usually a failed extraction")
  return feats


def _pickled_member(path: str) -> Optional[str]:
  """The first member of an .npz that only unpickling could read (an object array)."""
  with np.load(path, allow_pickle=False) as npz:
    for k in npz.files:
      try:
        npz[k]
      except ValueError:
        return k
  return None


def _load(path: str, expected_dim: Optional[int]) -> ModalityFeatures:
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as npz:
        if "features" in npz and "lengths" in npz:
          feats = _from_native(path, npz)
        elif "x" in npz:
          feats = _from_padded(path, {k: npz[k] for k in npz.files}, expected_dim)
        else:
          feats = _from_per_utterance(path, {k: npz[k] for k in npz.files}, expected_dim)
    except DataError:
      raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
      pickled = _pickled_member(path) if "allow_pickle" in str(e) else None
      if pickled:
        raise DataError(path, "holds an object (pickled) array; fusion_jax never unpickles "
                        "data", field=pickled, hint="save numeric arrays (float or int dtypes) "
                        "with np.savez") from None
      raise DataError(path, f"truncated or corrupt .npz ({e})") from None
    _check_sequences(path, feats.sequences, expected_dim)
    return feats
  obj = torch_pickle.load_torch_file(path)
  if not isinstance(obj, dict):
    raise DataError(path, f"expected a dict, got {type(obj).__name__}")
  if "x" in obj or "m" in obj:
    return _from_padded(path, obj, expected_dim)
  return _from_per_utterance(path, obj, expected_dim)


def sidecar_path(path) -> str:
  """The JSON sidecar that feature extraction writes beside a feature file."""
  return os.path.splitext(os.fspath(path))[0] + ".json"


def read_extractor(path) -> Optional[dict]:
  """The extractor fingerprint recorded in ``path``'s sidecar, or None when there is none
  (features made elsewhere, e.g. the original's wav2vec2 / RoBERTa files)."""
  side = sidecar_path(path)
  if not os.path.isfile(side):
    return None
  try:
    with open(side, encoding="utf-8") as f:
      extractor = json.load(f).get("extractor")
  except (OSError, ValueError, AttributeError):
    return None
  return extractor if isinstance(extractor, dict) and "name" in extractor else None


def save_features(path, features: ModalityFeatures | Sequence[np.ndarray],
                  labels: Optional[np.ndarray] = None,
                  ids: Optional[Sequence[str]] = None, *, stack: Optional[int] = None,
                  dtype: str = "float32") -> None:
  """Writes fusion_jax's native ``.npz`` (compact, no padding), atomically.

  ``stack``: hidden states side by side per frame (recorded when > 1); ``dtype``:
  ``"float32"`` or ``"float16"`` (half the bytes, for stacks of hidden states).
  """
  if isinstance(features, ModalityFeatures):
    labels = features.labels if labels is None else labels
    ids = features.ids if ids is None else ids
    stack = features.stack if stack is None else stack
    if features.sequences and features.sequences[0].dtype == np.float16:
      dtype = "float16"
    features = features.sequences
  if dtype not in ("float32", "float16"):
    raise ConfigError(f"dtype must be float32 or float16, got {dtype!r}")
  sequences = [np.asarray(s, dtype) for s in features]
  arrays = dict(
      features=np.concatenate(sequences, axis=0) if sequences else np.zeros((0, 0), dtype),
      lengths=np.array([s.shape[0] for s in sequences], np.int64),
      format_version=np.array(NATIVE_FORMAT_VERSION))
  if stack and stack > 1:
    arrays["stack"] = np.array(int(stack))
  if labels is not None:
    arrays["labels"] = np.asarray(labels, np.int64)
  if ids is not None:
    arrays["ids"] = np.array([str(i) for i in ids])
  with io_utils.atomic_open(path, "wb") as f:
    np.savez(f, **arrays)


def pad(sequences: Sequence[np.ndarray], length: Optional[int] = None):
  """Pads ``[T_i, D]`` sequences to ``x [N, T, D]`` and ``m [N, T]`` (1 = real)."""
  length = max(s.shape[0] for s in sequences) if length is None else length
  dim = sequences[0].shape[1]
  x = np.zeros((len(sequences), length, dim), np.float32)
  m = np.zeros((len(sequences), length), np.float32)
  for i, s in enumerate(sequences):
    x[i, :s.shape[0]] = s
    m[i, :s.shape[0]] = 1
  return x, m


def save_original_layout(path, sequences: Sequence[np.ndarray], labels) -> None:
  """Writes the original pipeline's ``torch.save`` dict ``{'x', 'm', 'y'}`` (no torch)."""
  x, m = pad(sequences)
  torch_pickle.save_torch_file({"x": x, "m": m, "y": np.asarray(labels, np.int64)}, path)
