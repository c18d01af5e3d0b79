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


def maybe_initialize_distributed(runtime) -> None:
  """``jax.distributed.initialize()`` when ``runtime.distributed`` (a ``config.runtime``).

  ``coordinator_address``, ``num_processes`` and ``process_id`` are passed when set;
  unset, JAX reads them from the cluster's environment (SLURM, Open MPI, ...). CPU
  devices talk through gloo (JAX's CPU collectives), so several processes on one
  machine stand in for several hosts.
  """
  given = dict(coordinator_address=runtime.coordinator_address or None,
               num_processes=runtime.num_processes or None,
               process_id=None if runtime.process_id < 0 else runtime.process_id)
  if not runtime.distributed:
    extra = [f"--{k}" for k, v in given.items() if v is not None]
    if extra:
      raise ConfigError(f"{', '.join(extra)} given without --distributed")
    return
  if given["num_processes"] is not None and given["process_id"] is not None and not (
      given["process_id"] < given["num_processes"]):
    raise ConfigError(f"--process_id={given['process_id']} is not below "
                      f"--num_processes={given['num_processes']}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**given)
  _DISTRIBUTED.append(True)


def is_primary() -> bool:
  """True in the process that writes shared files (reports, the original's ``.pt``,
  identity records): process 0, or the only process."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (a no-op in one process): no process goes on before every
  process has reached ``name``."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


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
