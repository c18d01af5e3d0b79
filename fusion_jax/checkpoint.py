"""Orbax checkpoints behind a few calls: ``save``, ``restore``, ``restore_meta``, ``steps``.

Each run (variant × seed) has two managers: ``best`` (saved when the validation
metric that selects checkpoints, ``train.selection_metric`` — accuracy by default —
strictly improves; one kept) and ``latest`` (for resuming; the two newest kept, so a
damaged newest one leaves an intact older one to resume from).
Orbax writes into a temporary directory and renames it when complete, so a
killed process never leaves a partial checkpoint. Every save records a checksum
of the saved arrays in the metadata, and every restore verifies it: a flipped
byte is an error naming the checkpoint, never a silently different model.

``save(..., background=True)`` (what training uses) queues the save on one writer thread
per run, in order, so the next epoch computes while the last one's checkpoint is hashed
and written; every other call (and ``wait``/``close``) first waits for the queue, so what
it reads is what was saved, and a failed save is raised there.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from fusion_jax import sharding
from fusion_jax.errors import DataError

KEEP = {"best": 1, "latest": 2}


class CorruptCheckpoint(DataError):
  """A checkpoint that cannot be read back as it was saved."""


def tree_checksum(tree) -> str:
  """BLAKE2b of every leaf's shape, dtype and bytes, in tree order (host copies)."""
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree_util.tree_leaves(jax.device_get(tree)):
    a = np.asarray(leaf)
    h.update(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


class RunCheckpoints:
  """``best`` and ``latest`` checkpoints of one training run, in ``directory``."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._managers = {kind: self._manager(kind) for kind in KEEP}
    self._writer: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._pending: list = []

  def _manager(self, kind: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(os.path.join(self.directory, kind), options=ocp.
                                 CheckpointManagerOptions(max_to_keep=KEEP[kind], create=True,
                                                          enable_async_checkpointing=False))

  def path(self, kind: str, step: int) -> str:
    return os.path.join(self.directory, kind, str(step))

  def latest_step(self, kind: str) -> Optional[int]:
    self.wait()
    return self._managers[kind].latest_step()

  def steps(self, kind: str) -> list:
    """Saved steps, newest first."""
    self.wait()
    return sorted(self._managers[kind].all_steps(), reverse=True)

  def save(self, kind: str, step: int, state: Any, meta: dict, *,
           background: bool = False) -> bool:
    """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON, + the state's checksum).

    Skips a step that exists already (returns False). ``background``: queued behind this
    run's earlier saves and written by its writer thread (returns True at once; a step
    that exists is skipped there, a failure is raised by the next :meth:`wait` or any
    other call); ``state`` must not be donated or changed afterwards (training hands
    over its own slice of the stacked state).
    """
    if background:
      if self._writer is None:
        self._writer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"checkpoint-{os.path.basename(self.directory)}")
      self._pending.append(self._writer.submit(self._save, kind, step, state,
                                               copy.deepcopy(meta)))
      return True
    self.wait()
    return self._save(kind, step, state, meta)

  def wait(self) -> None:
    """Returns when every queued save is on disk; raises the first one's error."""
    pending, self._pending = self._pending, []
    errors = [f.exception() for f in pending]
    for e in errors:
      if e is not None:
        raise e

  def _save(self, kind: str, step: int, state: Any, meta: dict) -> bool:
    mgr = self._managers[kind]
    if step in mgr.all_steps():
      return False
    meta = dict(meta, checksum=tree_checksum(state))
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)))
    mgr.wait_until_finished()
    return True

  def restore_meta(self, kind: str, step: Optional[int] = None) -> Optional[dict]:
    """The metadata of ``step`` (default: the newest), or None if there is none."""
    self.wait()
    step = self.latest_step(kind) if step is None else step
    if step is None:
      return None
    try:
      meta = self._managers[kind].restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except  (orbax, tensorstore, JSON, OS)
      raise self._corrupt(kind, step, f"its metadata is unreadable ({_short(e)})") from None
    if not isinstance(meta, dict):
      raise self._corrupt(kind, step, "its metadata is not a JSON object")
    return meta

  def restore(self, kind: str, abstract_state: Any, step: Optional[int] = None):
    """``(state, meta)`` of ``step`` (default: the newest), checksum verified; None if none.

    Raises:
      CorruptCheckpoint: unreadable, or its arrays differ from what was saved.
    """
    self.wait()
    step = self.latest_step(kind) if step is None else step
    if step is None:
      return None
    meta = self.restore_meta(kind, step)
    try:
      out = self._managers[kind].restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(placed(abstract_state)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(kind, step, f"its arrays are unreadable ({_short(e)})") from None
    state = out["state"]
    if "checksum" in meta and tree_checksum(state) != meta["checksum"]:
      raise self._corrupt(kind, step, "its arrays differ from those saved (checksum "
                          "mismatch: damaged on disk)")
    return state, meta

  def remove(self, kind: str, step: Optional[int] = None) -> None:
    """Deletes one ``kind`` checkpoint, or all of them (damaged ones that training will
    redo: a step that exists is never saved again)."""
    self.wait()
    self._managers[kind].close()
    if sharding.is_primary():   # (several processes: the first deletes, as orbax writes)
      shutil.rmtree(os.path.join(self.directory, kind) if step is None else self.path(kind, step),
                    ignore_errors=True)
    self._managers[kind] = self._manager(kind)

  def _corrupt(self, kind, step, problem) -> CorruptCheckpoint:
    return CorruptCheckpoint(self.path(kind, step), f"checkpoint is damaged: {problem}",
                             hint="delete it (training resumes from an older one or restarts; "
                             "the result is the same) or restore it from a backup")

  def close(self):
    """Finishes the queued saves (also when training stops on an error or Ctrl-C: what
    was queued is written), then closes the managers."""
    try:
      self.wait()
    finally:
      if self._writer is not None:
        self._writer.shutdown(wait=True)
        self._writer = None
      for mgr in self._managers.values():
        mgr.close()


def _short(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:160]}{'…' if len(text) > 160 else ''}"


def placed(abstract_state):
  """``abstract_state`` with a sharding on every leaf: one that has none (``jax.eval_shape``
  output) goes to this process's first device. Without one, orbax restores onto the devices
  it was saved from, and a checkpoint saved on 4 devices (or by several processes) failed
  to load on a machine with fewer."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def place(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
    return leaf
  return jax.tree_util.tree_map(place, abstract_state)


def abstract_like(tree):
  """Shape/dtype (and sharding) structs of ``tree``, to restore into."""
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
