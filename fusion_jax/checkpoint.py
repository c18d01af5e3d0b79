"""Orbax checkpoints behind three calls: ``save``, ``restore``, ``latest_step``.

Each run (variant × seed) has two managers: ``best`` (saved when validation
accuracy strictly improves) and ``latest`` (every epoch, for resuming). Orbax
writes into a temporary directory and renames it when complete, so a killed
process never leaves a partial checkpoint that a later restore would pick up.
Saves are synchronous.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
  """``best`` and ``latest`` checkpoints of one training run, in ``directory``."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                        enable_async_checkpointing=False)
    self._managers = {kind: ocp.CheckpointManager(os.path.join(self.directory, kind),
                                                  options=opts)
                      for kind in ("best", "latest")}

  def latest_step(self, kind: str) -> Optional[int]:
    return self._managers[kind].latest_step()

  def save(self, kind: str, step: int, state: Any, meta: dict) -> bool:
    """Saves ``state`` (a pytree of arrays) and ``meta`` (JSON). Skips an existing step."""
    mgr = self._managers[kind]
    if step in mgr.all_steps():
      return False
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)))
    mgr.wait_until_finished()
    return True

  def restore(self, kind: str, abstract_state: Any, step: Optional[int] = None):
    """Returns ``(state, meta)`` of ``step`` (default: the newest) or None if none."""
    mgr = self._managers[kind]
    step = mgr.latest_step() if step is None else step
    if step is None:
      return None
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_meta(self, kind: str, step: Optional[int] = None) -> Optional[dict]:
    mgr = self._managers[kind]
    step = mgr.latest_step() if step is None else step
    if step is None:
      return None
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self):
    for mgr in self._managers.values():
      mgr.close()


def abstract_like(tree):
  """Shape/dtype (and sharding) structs of ``tree``, to restore into."""
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)
