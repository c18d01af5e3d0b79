"""Read and write PyTorch ``torch.save`` files without importing torch.

A ``torch.save`` file is a zip archive: ``<prefix>/data.pkl`` is a pickle whose
tensors point, through pickle "persistent ids", at raw little-endian storages
``<prefix>/data/<key>``. :func:`load_torch_file` rebuilds tensors as NumPy
arrays through a *restricted* unpickler: it resolves only the globals that
tensor data needs (``torch._utils._rebuild_tensor_v2``, storage classes,
``collections.OrderedDict``, and the NumPy globals of a pickled ndarray) and
refuses every other global *before* anything runs, so a crafted file cannot
execute code.

:func:`save_torch_file` writes the same format (readable by ``torch.load``)
from NumPy arrays, so demo data and converted files match the original
pipeline's on-disk layout byte for byte in structure.
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from fusion_jax import io_utils
from fusion_jax.errors import DataError

# Storage class name -> NumPy dtype. UntypedStorage holds bytes.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
_DTYPE_TO_STORAGE = {v: k for k, v in _STORAGE_DTYPES.items() if k != "UntypedStorage"}

# torch.<dtype> globals (appear with _rebuild_tensor_v3 / UntypedStorage).
_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64,
    "double": np.float64, "float16": np.float16, "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "long": np.int64,
    "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


class UnsafePickleError(DataError):
  """A pickle referenced a global that is not tensor data. Nothing was run."""


class _Refused(pickle.UnpicklingError):
  """A pickle asked for something tensor data never needs (mapped to UnsafePickleError)."""


class _StorageType:
  """What the unpickler hands back for a storage class global: immutable, and a new
  one per ``find_class`` call, so no pickle can change how another file is decoded."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", _STORAGE_DTYPES[name])

  def __setattr__(self, key, value):
    raise _Refused("storage classes are read-only")


class _Storage:
  """A storage's bytes, viewed as a flat array of its dtype (``handed_out``: the first
  tensor that covers all of it took the array itself, so later ones copy)."""

  def __init__(self, array: np.ndarray, untyped: bool):
    self.array = array
    self.untyped = untyped
    self.handed_out = False


def _codecs_encode(obj, encoding="utf-8"):
  # NumPy arrays pickled with protocol 2 carry their bytes as latin1 text.
  if not isinstance(obj, str) or encoding != "latin1":
    raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 text")
  return codecs.encode(obj, encoding)


class _NdarrayClass:
  """Stands for ``numpy.ndarray``: usable only as ``_reconstruct``'s first argument, so a
  pickle cannot call ``ndarray(shape)`` and allocate what it likes."""


_NDARRAY = _NdarrayClass()


def _numpy_reconstruct(cls, shape, dtype_code):
  # NumPy pickles every array as _reconstruct(ndarray, (0,), b"b") + BUILD(its state);
  # the state's data must then match its shape, which NumPy checks before allocating.
  if cls is not _NDARRAY or tuple(shape) != (0,):
    raise _Refused("numpy _reconstruct is allowed only as NumPy pickles arrays "
                   "(ndarray, shape (0,))")
  return np._core.multiarray._reconstruct(np.ndarray, (0,), dtype_code)  # pylint: disable=protected-access


def _numpy_scalar(dtype, data=None):
  if not isinstance(dtype, np.dtype) or dtype.itemsize > 64 or dtype.hasobject:
    raise _Refused("numpy scalar of an unexpected dtype")
  return np._core.multiarray.scalar(dtype, data)  # pylint: disable=protected-access


def _rebuild_tensor(storage: _Storage, storage_offset, size, stride,
                    dtype=None) -> np.ndarray:
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("tensor without a storage")
  flat = storage.array
  if dtype is not None and storage.untyped:
    flat = flat.view(np.dtype(dtype))
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  if len(size) != len(stride) or storage_offset < 0:
    raise pickle.UnpicklingError("tensor size/stride mismatch")
  if any(s == 0 for s in size):
    return np.zeros(size, dtype=flat.dtype)
  last = storage_offset + sum((n - 1) * st for n, st in zip(size, stride))
  if last >= flat.size or any(st < 0 for st in stride):
    raise pickle.UnpicklingError(
        f"tensor of size {size} reaches element {last} of a storage of {flat.size}")
  numel = int(np.prod(size, dtype=object))
  if numel > flat.size - storage_offset:   # e.g. zero strides claiming a huge tensor
    raise _Refused(
        f"tensor of size {size} ({numel} elements) claims more elements than its storage "
        f"holds ({flat.size}); re-save it with tensor.contiguous()")
  contiguous = tuple(int(np.prod(size[i + 1:], dtype=np.int64)) for i in range(len(size)))
  if (not storage.handed_out and storage_offset == 0 and numel == flat.size
      and all(n == 1 or st == c for n, st, c in zip(size, stride, contiguous))):
    # The whole storage, in order (what torch.save of a plain tensor writes): the
    # freshly read array is the tensor, no second copy of a file's largest part.
    storage.handed_out = True
    return flat.reshape(size)
  view = np.lib.stride_tricks.as_strided(
      flat[storage_offset:], shape=size,
      strides=tuple(st * flat.dtype.itemsize for st in stride), writeable=False)
  return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _rebuild_tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks, unused
  return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs_encode,
}
_STORAGE_GLOBALS = {("torch", n): n for n in _STORAGE_DTYPES}
_STORAGE_GLOBALS[("torch.storage", "UntypedStorage")] = "UntypedStorage"
for _name, _dt in _TORCH_DTYPES.items():
  _ALLOWED_GLOBALS[("torch", _name)] = np.dtype(_dt)


def _check_build(target, state) -> None:
  """BUILD (``__setstate__``) is what NumPy arrays and dtypes, and torch's state-dict
  ``OrderedDict`` (its ``_metadata``), need; on anything else — a resolved global above
  all, which would change how later files decode — it is refused."""
  # (NumPy keeps its builtin dtypes immutable: their __setstate__ changes nothing.)
  if isinstance(target, (np.ndarray, np.dtype)) and isinstance(state, tuple):
    return
  if type(target) is collections.OrderedDict and isinstance(state, dict) and all(  # pylint: disable=unidiomatic-typecheck
      isinstance(k, str) and not k.startswith("__") for k in state):
    return
  raise _Refused(f"BUILD (set state) on a {type(target).__name__} is not tensor data")


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Resolves only tensor-data globals; reads storages from the archive.

  The pure-Python unpickler, so that BUILD can be checked (:func:`_check_build`);
  ``data.pkl`` holds only the structure (tensor bytes are separate records), so speed
  does not matter here.
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str,
               path: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive = archive
    self._prefix = prefix
    self._path = path
    self._byteorder = byteorder
    self._storages: dict[str, _Storage] = {}

  def _load_build(self):
    _check_build(self.stack[-2], self.stack[-1])
    pickle._Unpickler.load_build(self)  # pylint: disable=protected-access

  dispatch[pickle.BUILD[0]] = _load_build

  def find_class(self, module, name):
    if (module, name) in _STORAGE_GLOBALS:
      return _StorageType(_STORAGE_GLOBALS[(module, name)])   # fresh per use
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          self._path,
          f"refused to load global '{module}.{name}': only tensor data "
          "(torch._utils._rebuild_tensor_v2, torch storages, collections.OrderedDict, "
          "NumPy arrays) may appear in a feature or checkpoint file; nothing was executed",
          field=f"{module}.{name}",
          hint="if you trust this file, re-save its tensors with torch.save of plain "
          "tensors or convert it with experiments/convert_features.py") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError("persistent id without a storage class")
    key = str(key)
    if key not in self._storages:
      record = f"{self._prefix}data/{key}"
      try:
        info = self._archive.getinfo(record)
      except KeyError:
        raise pickle.UnpicklingError(f"missing storage record {record}") from None
      dtype = storage_type.dtype
      if self._byteorder == "big":
        dtype = dtype.newbyteorder(">")
      expected = int(numel) * dtype.itemsize
      # Checked before reading: torch never compresses records, and the size a record
      # claims must be the size its tensor needs (no decompression bombs, no huge claims).
      if info.compress_type != zipfile.ZIP_STORED:
        raise _Refused(f"storage {record} is compressed; torch.save never compresses "
                     "tensor data")
      if info.file_size != expected:
        raise pickle.UnpicklingError(
            f"storage {record} holds {info.file_size} bytes, expected {expected}")
      array = _read_stored(self._path, info, dtype, int(numel))
      if self._byteorder == "big":
        array = array.astype(dtype.newbyteorder("<"))
      self._storages[key] = _Storage(array, storage_type.name == "UntypedStorage")
    return self._storages[key]


def _read_stored(path: str, info: zipfile.ZipInfo, dtype: np.dtype, numel: int) -> np.ndarray:
  """An uncompressed record's bytes read straight into a new array, CRC checked.

  (``ZipFile.read`` would read in chunks, join them and copy them once more into an
  array: 3× slower on a 2.4 GB feature file, twice its memory.)
  """
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
      raise zipfile.BadZipFile(f"bad local header of {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    raw = np.fromfile(f, dtype=np.uint8, count=numel * dtype.itemsize)
  if raw.size != numel * dtype.itemsize:
    raise pickle.UnpicklingError(f"storage {info.filename} holds {raw.size} bytes, "
                                 f"expected {numel * dtype.itemsize}")
  if zlib.crc32(raw) != info.CRC:
    raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
  return raw.view(dtype)


def load_torch_file(path) -> Any:
  """Loads a ``torch.save`` file without torch. Tensors come back as ndarrays.

  Args:
    path: a file written by ``torch.save`` (zip format, torch >= 1.6).

  Returns:
    The saved object, with every tensor replaced by a NumPy array of the same
    shape and dtype (bfloat16 as ``ml_dtypes.bfloat16``).

  Raises:
    UnsafePickleError: the pickle references a global that is not tensor data.
    DataError: the file is missing, truncated, corrupt or not a torch.save file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(path, "file not found")
  if os.path.isdir(path):
    raise DataError(path, "is a directory, not a torch.save file")
  try:
    with open(path, "rb") as f:
      head = f.read(4)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
      raise DataError(path, "written in torch's legacy (pre-1.6, non-zip) format",
                      hint="re-save it with torch >= 1.6 without "
                      "_use_new_zipfile_serialization=False: torch.save(torch.load(f), f)")
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
      if not pkl:
        raise DataError(path, "not a torch.save archive: no data.pkl record",
                        hint="files from torch < 1.6 or with "
                        "_use_new_zipfile_serialization=False must be re-saved")
      prefix = pkl[0][: -len("data.pkl")]
      if archive.getinfo(pkl[0]).compress_type != zipfile.ZIP_STORED:
        raise DataError(path, "data.pkl is compressed; torch.save never compresses it",
                        field="data.pkl", hint="this is not a file torch wrote")
      byteorder = "little"
      if f"{prefix}byteorder" in names:
        byteorder = archive.read(f"{prefix}byteorder").decode().strip()
      data = archive.read(pkl[0])
      unpickler = _RestrictedUnpickler(data, archive, prefix, path, byteorder)
      return unpickler.load()
  except DataError:
    raise
  except _Refused as e:
    raise UnsafePickleError(path, f"refused: {e}; nothing was executed", field="data.pkl",
                            hint="feature and checkpoint files hold tensors, dicts, lists and "
                            "NumPy arrays only") from None
  except MemoryError:
    raise DataError(path, "not enough memory to load it",
                    hint="is it really a feature file? its tensors claim more than fits") from None
  except zipfile.BadZipFile as e:
    raise DataError(path, f"truncated or corrupt archive ({e})",
                    hint="re-copy or re-create the file") from None
  except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, KeyError,
          RecursionError, OverflowError,
          AttributeError, IndexError, OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"truncated or corrupt torch.save data ({type(e).__name__}: {e})",
                    hint="re-copy or re-create the file") from None


# ------------------------------------------------------------------ writer
_PROTO2 = b"\x80\x02"


class NumpyArray:
  """Marks an array to be written as a pickled NumPy array, not a torch tensor.

  The original stores its confusion matrix this way; ``torch.load`` gives back a
  ``numpy.ndarray``.
  """

  def __init__(self, array):
    self.array = np.ascontiguousarray(array)


class _PickleWriter:
  """A minimal protocol-2 pickler that emits torch's tensor encoding."""

  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[bytes] = []

  def dump(self, obj) -> bytes:
    self.out.write(_PROTO2)
    self._save(obj)
    self.out.write(b".")
    return self.out.getvalue()

  def _global(self, module: str, name: str):
    self.out.write(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

  def _save(self, obj):
    w = self.out.write
    if isinstance(obj, np.ndarray):
      self._tensor(obj)
    elif isinstance(obj, NumpyArray):
      self._numpy(obj.array)
    elif obj is None:
      w(b"N")
    elif isinstance(obj, (bool, np.bool_)):
      w(b"\x88" if obj else b"\x89")
    elif isinstance(obj, (int, np.integer)):
      obj = int(obj)
      if -(2**31) <= obj < 2**31:
        w(b"J" + struct.pack("<i", obj))
      else:
        raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
        w(b"\x8a" + bytes([len(raw)]) + raw)
    elif isinstance(obj, (float, np.floating)):
      w(b"G" + struct.pack(">d", float(obj)))
    elif isinstance(obj, str):
      raw = obj.encode("utf-8", "surrogatepass")
      w(b"X" + struct.pack("<I", len(raw)) + raw)
    elif isinstance(obj, tuple):
      if not obj:
        w(b")")
        return
      w(b"(")
      for item in obj:
        self._save(item)
      w(b"t")
    elif isinstance(obj, list):
      w(b"]")
      if obj:
        w(b"(")
        for item in obj:
          self._save(item)
        w(b"e")
    elif isinstance(obj, dict):
      if isinstance(obj, collections.OrderedDict):
        self._global("collections", "OrderedDict")
        w(b")R")
      else:
        w(b"}")
      if obj:
        w(b"(")
        for k, v in obj.items():
          self._save(k)
          self._save(v)
        w(b"u")
    else:
      raise TypeError(f"cannot write {type(obj).__name__} to a torch.save file")

  def _numpy(self, array: np.ndarray):
    """``numpy.ndarray.__reduce__`` as pickle protocol 2 writes it (torch.save's protocol)."""
    w = self.out.write
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    self._global("numpy._core.multiarray", "_reconstruct")
    w(b"(")
    self._global("numpy", "ndarray")
    self._save((0,))
    self._latin1(b"b")
    w(b"tR(")   # _reconstruct(ndarray, (0,), b"b"), then its state
    self._save(1)
    self._save(tuple(int(n) for n in array.shape))
    self._global("numpy", "dtype")
    self._save((array.dtype.str[1:], False, True))
    w(b"R")
    self._save((3, "|" if array.dtype.itemsize == 1 else "<", None, None, None, -1, -1, 0))
    w(b"b")     # BUILD the dtype
    self._save(False)
    self._latin1(array.tobytes())
    w(b"tb")    # BUILD the array

  def _latin1(self, raw: bytes):
    """Bytes in protocol 2: ``_codecs.encode(text, "latin1")``."""
    self._global("_codecs", "encode")
    self.out.write(b"(")
    self._save(raw.decode("latin1"))
    self._save("latin1")
    self.out.write(b"tR")

  def _tensor(self, array: np.ndarray):
    array = np.asarray(array, order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    storage_name = _DTYPE_TO_STORAGE.get(np.dtype(array.dtype))
    if storage_name is None:
      raise TypeError(f"no torch storage for dtype {array.dtype}")
    key = str(len(self.storages))
    self.storages.append(array.tobytes())
    w = self.out.write
    self._global("torch._utils", "_rebuild_tensor_v2")
    w(b"(")  # args of _rebuild_tensor_v2
    w(b"(")  # persistent id
    self._save("storage")
    self._global("torch", storage_name)
    self._save(key)
    self._save("cpu")
    self._save(int(array.size))
    w(b"t")
    w(b"Q")  # BINPERSID
    self._save(0)
    self._save(tuple(int(s) for s in array.shape))
    itemsize = array.dtype.itemsize
    self._save(tuple(int(s) // itemsize for s in array.strides) if array.size else
               tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)))
    self._save(False)
    self._global("collections", "OrderedDict")
    w(b")R")
    w(b"t")
    w(b"R")


def _aligned_zipinfo(name: str, offset: int, align: int = 64) -> zipfile.ZipInfo:
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  header = 30 + len(name.encode())
  pad = (-(offset + header + 4)) % align
  # Extra field 'FB' (as torch's own writer does) pads the data to `align` bytes.
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
  return info


def save_torch_file(obj, path, archive_name: str = "archive") -> None:
  """Writes ``obj`` in ``torch.save``'s zip format without torch.

  ``obj`` may nest dicts, lists, tuples, str, int, float, bool, None and NumPy
  arrays; arrays become torch tensors. The file appears atomically: a crash
  leaves either the old file or the new one, never half of one.
  """
  writer = _PickleWriter()
  pickled = writer.dump(obj)
  with io_utils.atomic_open(path, "wb") as f, zipfile.ZipFile(
      f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
    records = [(f"{archive_name}/data.pkl", pickled),
               (f"{archive_name}/byteorder", b"little")]
    records += [(f"{archive_name}/data/{i}", raw) for i, raw in enumerate(writer.storages)]
    records.append((f"{archive_name}/version", b"3\n"))
    for name, raw in records:
      archive.writestr(_aligned_zipinfo(name, f.tell()), raw)
