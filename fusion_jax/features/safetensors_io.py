"""Reading and writing ``.safetensors`` with NumPy only (no torch, no safetensors package).

The format: an 8-byte little-endian header size, a JSON header mapping each
tensor name to ``{"dtype", "shape", "data_offsets"}``, then the raw bytes.
Nothing in it is executable, so reading untrusted files is safe.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from fusion_jax import io_utils
from fusion_jax.data.errors import DataError

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_NAMES = {np.dtype(v).str: k for k, v in _DTYPES.items()}


def load_safetensors(path) -> dict:
  """All tensors of a ``.safetensors`` file as NumPy arrays (BF16 → float32).

  Raises:
    DataError: a truncated or malformed file, naming the tensor at fault.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DataError(path, f"cannot read ({e})") from None
  if len(data) < 8:
    raise DataError(path, "truncated: no header size")
  (n,) = struct.unpack("<Q", data[:8])
  if 8 + n > len(data):
    raise DataError(path, f"truncated: header of {n} bytes past the end of the file")
  try:
    header = json.loads(data[8:8 + n])
  except ValueError as e:
    raise DataError(path, f"header is not JSON ({e})") from None
  body = memoryview(data)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
    if end > len(body) or start > end:
      raise DataError(path, f"tensor data [{start}, {end}) past the end of the file",
                      field=name)
    raw = body[start:end]
    if dtype == "BF16":
      arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _DTYPES:
      arr = np.frombuffer(raw, _DTYPES[dtype])
    else:
      raise DataError(path, f"unsupported dtype {dtype}", field=name)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
      raise DataError(path, f"{arr.size} values for shape {shape}", field=name)
    out[name] = arr.reshape(shape).copy()
  return out


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> None:
  """Writes NumPy arrays as ``.safetensors`` (atomically)."""
  header, chunks, offset = {}, [], 0
  for name, value in tensors.items():
    arr = np.ascontiguousarray(value)
    key = _NAMES.get(arr.dtype.newbyteorder("<").str if arr.dtype.byteorder == ">" else
                     arr.dtype.str)
    if key is None:
      raise ValueError(f"tensor {name!r}: dtype {arr.dtype} has no safetensors name")
    raw = arr.astype(_DTYPES[key]).tobytes()
    header[name] = {"dtype": key, "shape": list(arr.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  with io_utils.atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for c in chunks:
      f.write(c)
