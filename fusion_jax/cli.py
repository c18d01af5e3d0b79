"""Flags and start-up shared by the binaries in ``experiments/`` (absl + ml_collections)."""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")


def define_common_flags(default_config: str = "default.py") -> None:
  """``--config``, ``--variants``, ``--seeds``, devices and compilation cache."""
  config_flags.DEFINE_config_file(
      "config", os.path.join(REPO_CONFIGS, default_config),
      "ml_collections config file; override fields with --config.<field>=value, e.g. "
      "--config.model.dtype=bfloat16 (configs/default.py = the original's hyperparameters, "
      "configs/tiny.py = tests, configs/demo.py = the README demo).", lock_config=True)
  flags.DEFINE_string("variants", None, "Comma-separated variants: cross_attention, "
                      "concatenation, gated, weighted, speech_only, text_only; 'fusion' = the "
                      "four fusion heads; 'all' = fusion heads and both baselines. Default: "
                      "config.train.variants.")
  flags.DEFINE_string("seeds", None, "Comma-separated seeds, e.g. 0,1,2 (default: "
                      "config.train.seeds). Each seed is a separate run; reports give mean ± std.")
  flags.DEFINE_integer("num_devices", 0, "Devices for data parallelism (0 = all visible). The "
                       "batch size must be divisible by it.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
  flags.DEFINE_string("compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "fusion_jax", "xla"),
                      "Persistent XLA compilation cache ('' to disable): reruns skip compiling.")


def setup_jax():
  """Distributed init, compilation cache, device log. Returns the device mesh."""
  import jax  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  from fusion_jax import sharding  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  sharding.maybe_initialize_distributed(FLAGS.distributed)
  if FLAGS.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  mesh = sharding.make_mesh(FLAGS.num_devices or None)
  devs = mesh.devices.ravel()
  print(f"JAX {jax.__version__} on {len(devs)} {devs[0].platform} device(s): "
        f"{', '.join(str(d.device_kind) for d in devs[:4])}{' ...' if len(devs) > 4 else ''}",
        flush=True)
  return mesh


def variants_and_seeds(config):
  from fusion_jax import models, training  # pylint: disable=import-outside-toplevel
  variants = models.parse_variants(FLAGS.variants or config.train.variants)
  seeds = training.parse_seeds(FLAGS.seeds or config.train.seeds)
  return variants, seeds


def data_path(value, name: str):
  """A path flag's value, else ``DATA_DIR/name`` when ``--data_dir`` is given, else None."""
  if value:
    return value
  data_dir = FLAGS["data_dir"].value if "data_dir" in FLAGS else None
  return os.path.join(data_dir, name) if data_dir else None


def require(hint: str = "or give --data_dir", **flag_values) -> None:
  """Fails with one line listing every ``--flag`` whose value is empty."""
  missing = [f"--{name}" for name, value in flag_values.items() if not value]
  if missing:
    fail(f"missing {', '.join(missing)} ({hint})")


def fail(message: str) -> None:
  """Exits with a one-line error (no traceback) for problems the user can fix."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)
