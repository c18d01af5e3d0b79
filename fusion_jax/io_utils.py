"""Atomic writes: a reader sees the old file (or set of files) or the new one, never half."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import numpy as np


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


@contextlib.contextmanager
def replaced_dir(path):
  """Yields a fresh sibling directory to fill; when the block succeeds it replaces ``path``
  as a whole (a reader sees the old set of files or the new one), else it is deleted."""
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  os.chmod(tmp, 0o777 & ~_umask())
  old = None
  if os.path.exists(path):
    old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.old-")
    os.rmdir(old)
    os.rename(path, old)
  os.rename(tmp, path)
  if old:
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_files(directory):
  """Yields a staging directory; when the block succeeds every file written there is moved
  into ``directory`` (same relative path, each replace atomic), else nothing is."""
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=directory, prefix=".staged-")
  try:
    yield tmp
    for root, _, files in os.walk(tmp):
      for name in files:
        src = os.path.join(root, name)
        dst = os.path.join(directory, os.path.relpath(src, tmp))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text: str) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path, obj) -> None:
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=False, default=_to_jsonable)
    f.write("\n")


def _to_jsonable(obj):
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class JsonLines:
  """A JSON-lines file (one record per line) that survives a torn last line.

  A process killed mid-write can leave half a line at the end; :meth:`read`
  drops it with a warning (``log``) instead of failing every later reader, and
  the next :meth:`replace` rewrites the file without it.
  """

  def __init__(self, path, log=None):
    self.path = os.fspath(path)
    self.log = log

  def read(self) -> list:
    if not os.path.exists(self.path):
      return []
    with open(self.path, encoding="utf-8") as f:
      lines = [l for l in f.read().split("\n") if l.strip()]
    records = []
    for i, line in enumerate(lines):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        if i == len(lines) - 1:   # torn by a kill mid-write: drop it
          if self.log:
            self.log(f"warning: {self.path}: dropped an incomplete last line ({e})")
          break
        raise ValueError(f"{self.path}, line {i + 1}: not JSON ({e}); delete or repair the "
                         "line") from None
    return records

  def replace(self, drop, records) -> None:
    """Rewrites the file atomically: existing records without ``drop(r)``, then ``records``."""
    kept = [r for r in self.read() if not drop(r)] + list(records)
    write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def append(self, record: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
