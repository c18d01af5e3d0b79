"""The compile ledger: every (step, input shapes) pair compiled ahead of time exactly once.

A :class:`CompileLedger` keeps each executable with its compile time; training,
evaluation, prediction and the benchmark share one ledger, so a new shape can never
recompile silently and compile time is reported apart from step time.

Every executable costs the process host memory and memory mappings (XLA's CPU backend
maps each one's code and data: ≈ 24 mappings for a tiny step, hundreds for a large one),
and JAX's own caches keep it alive as long as the ledger does. A long recipe or a
notebook that trains model after model therefore releases what it is done with
(:meth:`CompileLedger.forget`), and before every compile
the ledger checks :func:`process_resources`: near the mapping limit
(``vm.max_map_count``) or out of memory, it releases the other models' executables and
says so in one line, instead of letting LLVM abort the process ("Unable to allocate
section memory").
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend  # noqa: F401  (live_executables)

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


def _trim_heap() -> None:
  """Returns freed heap pages to the system (glibc ``malloc_trim``): without it the
  resident size of a long recipe creeps up by what dropped executables left behind
  (measured: 1.66 GB instead of 0.65 GB after four folds of six tiny variants)."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):   # not glibc
    pass


def _read(path: str) -> Optional[bytes]:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def live_executables() -> int:
  """How many compiled XLA executables the default backend holds alive."""
  try:
    return len(jax.extend.backend.get_backend().live_executables())
  except Exception:  # pylint: disable=broad-except   (a backend without the query)
    return -1


@dataclasses.dataclass(frozen=True)
class Resources:
  """What the process holds, read from ``/proc`` (Linux; other systems: every field None).

  Attributes:
    mappings: memory mappings of the process (lines of ``/proc/self/maps``).
    max_mappings: the kernel's limit on them (``/proc/sys/vm/max_map_count``).
    rss_bytes: resident memory (``VmRSS``).
    available_bytes: memory the system can still give (``MemAvailable``).
  """
  mappings: Optional[int] = None
  max_mappings: Optional[int] = None
  rss_bytes: Optional[int] = None
  available_bytes: Optional[int] = None

  def describe(self) -> str:
    """``"9,923 of 65,530 mappings, 1.50 GB resident, 18.2 GB available"`` (what is known)."""
    parts = []
    if self.mappings is not None:
      parts.append(f"{self.mappings:,} of {self.max_mappings:,} mappings"
                   if self.max_mappings else f"{self.mappings:,} mappings")
    if self.rss_bytes is not None:
      parts.append(f"{self.rss_bytes / 1e9:.2f} GB resident")
    if self.available_bytes is not None:
      parts.append(f"{self.available_bytes / 1e9:.1f} GB available")
    return ", ".join(parts) or "no /proc to read"


def _kib(text: Optional[bytes], field: bytes) -> Optional[int]:
  for line in (text or b"").splitlines():
    if line.startswith(field):
      return int(line.split()[1]) * 1024
  return None


def process_resources() -> Resources:
  """The process' mappings and memory now (see :class:`Resources`); ~1 ms to read."""
  maps = _read("/proc/self/maps")
  limit = _read("/proc/sys/vm/max_map_count")
  return Resources(
      mappings=None if maps is None else maps.count(b"\n"),
      max_mappings=int(limit) if limit and limit.strip().isdigit() else None,
      rss_bytes=_kib(_read("/proc/self/status"), b"VmRSS:"),
      available_bytes=_kib(_read("/proc/meminfo"), b"MemAvailable:"))


@dataclasses.dataclass(frozen=True)
class Limits:
  """When the ledger releases other models' executables before compiling (see module doc).

  Attributes:
    mapping_fraction: release when mappings exceed this fraction of ``vm.max_map_count``.
    min_available_bytes: release when the system has less memory than this available.
  """
  mapping_fraction: float = 0.75
  min_available_bytes: int = 1 << 30

  def exceeded(self, r: Resources) -> Optional[str]:
    """Why ``r`` is near a limit (one phrase), or None."""
    if r.mappings is not None and r.max_mappings and \
        r.mappings > self.mapping_fraction * r.max_mappings:
      return (f"{r.mappings:,} memory mappings, near the limit of {r.max_mappings:,} "
              "(vm.max_map_count)")
    if r.available_bytes is not None and r.available_bytes < self.min_available_bytes:
      return f"{r.available_bytes / 1e9:.2f} GB of memory available"
    return None


class CompileLedger:
  """Input shapes → compiled executable, compiled once (``jit(...).lower().compile()``).

  Calling ``ledger(step_fn, *args)`` compiles on the first call with these shapes
  and runs the executable. :attr:`entries` lists what was compiled, with seconds.

  Args:
    log: where the one line goes when the ledger had to release executables.
    limits: when it does (:class:`Limits`); None: never.
    resources: reads the process' resources (tests give a fake).
  """

  def __init__(self, log: Optional[Callable[[str], None]] = None,
               limits: Optional[Limits] = Limits(),
               resources: Callable[[], Resources] = process_resources):
    self._entries: dict = {}
    self._lock = threading.Lock()
    self.seconds = 0.0
    self.log, self.limits, self.resources = log, limits, resources
    self.released = 0   # executables released by the guard, in all

  def _guard(self, owner: tuple) -> None:
    """Before a compile: near a limit, drops every other owner's executables (and JAX's
    caches, which hold them) and logs one line. Compiles of ``owner`` go on either way."""
    if self.limits is None:
      return
    why = self.limits.exceeded(self.resources())
    if why is None:
      return
    with self._lock:
      others = [k for k in self._entries if k[0] != owner]
      for key in others:
        del self._entries[key]
    if not others:   # one model alone this large: nothing to release, nothing to repeat
      return
    jax.clear_caches()
    self.released += len(others)
    if self.log is not None:
      self.log(f"warning: the process holds {why}: released {len(others)} compiled steps of "
               f"other models before compiling (now {self.resources().describe()}); they "
               "compile again if used")

  def _key(self, step: StepFn, args) -> tuple:
    return (step.owner, step.name, _signature(args))

  def compile(self, step: StepFn, *args) -> Compiled:
    key = self._key(step, args)
    entry = self._entries.get(key)
    if entry is None:
      self._guard(step.owner)
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

  def forget(self, owner: Optional[tuple] = None) -> int:
    """Drops every executable of ``owner`` (a model done with; None: of every model) and
    JAX's own caches of traced and compiled functions, which would keep them alive (the
    other entries stay). Returns how many entries were dropped."""
    with self._lock:
      keys = [k for k in self._entries if owner is None or k[0] == owner]
      for key in keys:
        del self._entries[key]
    jax.clear_caches()
    _trim_heap()
    return len(keys)

  def entries(self, owner: Optional[tuple] = None, step: Optional[str] = None) -> list:
    return [e for e in self._entries.values()
            if (owner is None or e.owner == owner) and (step is None or e.step == step)]

  def __len__(self) -> int:
    return len(self._entries)


