"""The compile ledger: every (step, input shapes) pair compiled ahead of time exactly once.

A :class:`CompileLedger` keeps each executable with its compile time; training,
evaluation, prediction and the benchmark share one ledger, so a new shape can never
recompile silently and compile time is reported apart from step time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from typing import Any, Optional, Sequence

import jax

from fusion_jax.steps import StepFn


def _signature(tree) -> tuple:
  return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass
class Compiled:
  """One ledger entry: an AOT-compiled step for one set of input shapes."""
  step: str
  owner: tuple
  inputs: tuple           # (shape, dtype) of every input leaf
  batch_shapes: dict      # the batch argument's leaf shapes, e.g. {"speech": (32, 184, 768)}
  executable: Any
  seconds: float

  def flops(self) -> float:
    """XLA's cost analysis of the executable (FLOPs per call, padding included)."""
    cost = self.executable.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


class CompileLedger:
  """Input shapes → compiled executable, compiled once (``jit(...).lower().compile()``).

  Calling ``ledger(step_fn, *args)`` compiles on the first call with these shapes
  and runs the executable. :attr:`entries` lists what was compiled, with seconds.
  """

  def __init__(self):
    self._entries: dict = {}
    self._lock = threading.Lock()
    self.seconds = 0.0

  def _key(self, step: StepFn, args) -> tuple:
    return (step.owner, step.name, _signature(args))

  def compile(self, step: StepFn, *args) -> Compiled:
    key = self._key(step, args)
    entry = self._entries.get(key)
    if entry is None:
      t0 = time.perf_counter()
      executable = step.fn.lower(*args).compile()
      seconds = time.perf_counter() - t0
      batch = next((a for a in args if isinstance(a, dict) and "speech" in a), {})
      entry = Compiled(step.name, step.owner, key[2],
                       {k: tuple(v.shape) for k, v in batch.items()}, executable, seconds)
      # (for the group steps, "batch_shapes" are the bucket's device arrays: [N, T, D])
      with self._lock:
        if key not in self._entries:
          self._entries[key] = entry
          self.seconds += seconds
        entry = self._entries[key]
    return entry

  def __call__(self, step: StepFn, *args):
    return self.compile(step, *args).executable(*args)

  def precompile(self, calls: Sequence[tuple]) -> float:
    """Compiles ``[(step_fn, args), ...]`` concurrently; returns wall seconds.

    XLA compiles one executable on one core; a run needs 2 × buckets of them, so
    compiling them in threads up front uses every core instead of one at a time.
    """
    todo = [(s, a) for s, a in calls if self._key(s, a) not in self._entries]
    if not todo:
      return 0.0
    t0 = time.perf_counter()
    workers = max(1, min(len(todo), os.cpu_count() or 1))
    if jax.config.jax_compilation_cache_dir:
      # JAX 0.10.2 crashed (segmentation fault) here once when one thread wrote an
      # executable to the persistent cache while another compiled: with the cache on,
      # compile one at a time (the cache makes every later run skip compiling anyway).
      workers = 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      list(pool.map(lambda call: self.compile(call[0], *call[1]), todo))
    return time.perf_counter() - t0

  def forget(self, owner: tuple) -> None:
    """Drops every executable of ``owner`` (a model done with) and JAX's own caches of
    traced and compiled functions (which would keep them alive; the other entries stay)."""
    with self._lock:
      for key in [k for k in self._entries if k[0] == owner]:
        del self._entries[key]
    jax.clear_caches()

  def entries(self, owner: Optional[tuple] = None, step: Optional[str] = None) -> list:
    return [e for e in self._entries.values()
            if (owner is None or e.owner == owner) and (step is None or e.step == step)]

  def __len__(self) -> int:
    return len(self._entries)


