"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
  """Like ``open(path, mode)``, but the file appears only when the block succeeds."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path) + "-")
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path, text: str) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path, obj) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_to_jsonable)
    f.write("\n")


def _to_jsonable(obj):
  import numpy as np  # pylint: disable=import-outside-toplevel
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"{type(obj).__name__} is not JSON serializable")
