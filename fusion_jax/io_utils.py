"""Atomic writes: a reader sees the old file (or set of files) or the new one, never half."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from fusion_jax.errors import DataError


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


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def commit_set(directory, staged: dict, manifest_name: str, manifest: dict) -> None:
  """Moves complete files into ``directory`` as one set, its manifest written last.

  ``staged``: ``{name: path}`` of finished files on the same filesystem (e.g. in a
  :func:`tempfile.mkdtemp` under ``directory``). The old manifest is removed first, then
  every file replaced (each atomically), then ``manifest`` (plus ``files``: each name's
  SHA-256 and size) is written. The previous set stays until the new one is complete; a
  process killed midway leaves no manifest, so :func:`verify_set` refuses the mix. Callers
  hold a lock against concurrent writers (``runs.RunLock``).
  """
  directory = os.path.abspath(os.fspath(directory))
  files = {name: dict(sha256=sha256_file(src), bytes=os.path.getsize(src))
           for name, src in staged.items()}
  target = os.path.join(directory, manifest_name)
  if os.path.lexists(target):
    os.unlink(target)
  for name, src in staged.items():
    os.chmod(src, 0o666 & ~_umask())
    os.replace(src, os.path.join(directory, name))
  write_json(target, dict(manifest, files=files))


def verify_set(directory, manifest_name: str) -> dict:
  """The manifest of a set written by :func:`commit_set`, after checking that every file it
  names is there with its SHA-256. Raises DataError naming the file that does not match."""
  target = os.path.join(os.fspath(directory), manifest_name)
  hint = "the write that made it was interrupted or another program changed it: write it again"
  if not os.path.exists(target):
    raise DataError(target, "missing: the files beside it are not a complete set", hint=hint)
  with open(target, encoding="utf-8") as f:
    manifest = json.load(f)
  for name, want in manifest.get("files", {}).items():
    path = os.path.join(os.fspath(directory), name)
    if not os.path.exists(path) or sha256_file(path) != want["sha256"]:
      raise DataError(path, f"does not match {manifest_name} (another write's file)", hint=hint)
  return manifest


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
