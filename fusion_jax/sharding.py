"""Data parallelism with ``jax.sharding``: one code path for 1 or N devices.

A 1-D ``Mesh`` over a ``data`` axis; batches are split along their first
axis, parameters and optimizer state are replicated. ``jit`` inserts the
gradient all-reduce. Multi-host: call :func:`maybe_initialize_distributed`
before anything else touches JAX.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fusion_jax.errors import ConfigError


_DISTRIBUTED = []   # [True] once jax.distributed.initialize() was called here


def maybe_initialize_distributed(enabled: bool) -> None:
  """``jax.distributed.initialize()`` for multi-host runs (env-configured)."""
  if enabled:
    jax.distributed.initialize()
    _DISTRIBUTED.append(True)


def maybe_shutdown_distributed() -> None:
  """``jax.distributed.shutdown()`` (its barrier: no host leaves while another still needs
  the coordination service) if :func:`maybe_initialize_distributed` started it."""
  if _DISTRIBUTED:
    _DISTRIBUTED.clear()
    jax.distributed.shutdown()


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A ``data`` mesh over the first ``num_devices`` devices (all when None or 0)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ConfigError(f"asked for {num_devices} devices, only {len(devices)} visible "
                       f"({devices[0].platform})")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), ("data",))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f"{what} {batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a host batch on the mesh, split along the batch axis."""
  return jax.device_put(batch, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_rows(array, mesh: Mesh, axis: int = 0):
  """Places an index array on the mesh, split along ``axis`` (its batch axis)."""
  spec = [None] * np.ndim(array)
  spec[axis] = "data"
  return jax.device_put(array, NamedSharding(mesh, P(*spec)))
