"""Flags and start-up shared by the binaries in ``experiments/`` (absl + ml_collections).

One config tree describes a run; flags are either ``--config.<field>=value``
overrides or documented *aliases* of config fields (the original's ``--epochs``,
``--batch_size`` and path flags, ``--variants``, ``--num_devices`` ...). An alias
given on the command line sets its field; an alias left out changes nothing, so
an explicit ``--config.…`` override is never replaced by a flag's default. Giving
both an alias and the override of the same field with different values is an error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Optional

from absl import app, flags
from ml_collections import config_flags

from fusion_jax.errors import UserError, one_line

FLAGS = flags.FLAGS
REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "configs")
_ALIASES: dict = {}   # flag name -> config fields it sets
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}


def alias(name: str, fields, kind=str, help_text: str = "", module_name=None) -> None:
  """Defines ``--name`` as an alias of config field(s), e.g. ``alias("epochs", "train.epochs",
  int, "Training epochs")``. Its default is None: unset means "what the config says"."""
  fields = (fields,) if isinstance(fields, str) else tuple(fields)
  target = ", ".join(f"--config.{f}" for f in fields)
  _DEFINE[kind](name, None, f"{help_text} Alias of {target} (default: the config's value).",
                module_name=module_name)
  _ALIASES[name] = fields


def define_common_flags(default_config: str = "default.py") -> None:
  """``--config``, ``--variants``, ``--seeds``, devices, compilation cache, ``--module_import``."""
  config_flags.DEFINE_config_file(
      "config", os.path.join(REPO_CONFIGS, default_config),
      "ml_collections config file; override fields with --config.<field>=value, e.g. "
      "--config.model.dtype=bfloat16 (configs/default.py = the original's hyperparameters, "
      "configs/tiny.py = tests, configs/demo.py = the README demo).", lock_config=True)
  from fusion_jax.models import registry  # pylint: disable=import-outside-toplevel
  here = __name__
  alias("variants", "train.variants", str, "Comma-separated variants, or 'fusion' (every "
        "fusion head), 'original' (the original's four heads), 'all' (with the unimodal "
        f"baselines). Registered: {registry.describe()}.", module_name=here)
  alias("seeds", "train.seeds", str, "Comma-separated seeds, e.g. 0,1,2. Each seed is a "
        "separate run; reports give mean ± std and paired tests.", module_name=here)
  alias("num_devices", "runtime.num_devices", int, "Devices for data parallelism (0 = all "
        "visible). The batch size must be divisible by it.", module_name=here)
  alias("distributed", "runtime.distributed", bool, "Multi-process training: every process "
        "runs the same command, calls jax.distributed.initialize(), and one mesh spans all "
        "processes' devices (data parallel). Without the next three flags, the cluster's "
        "environment says where (SLURM, Open MPI, ...).", module_name=here)
  alias("coordinator_address", "runtime.coordinator_address", str, "With --distributed: "
        "HOST:PORT where process 0 serves the coordinator (every process gives the same).",
        module_name=here)
  alias("num_processes", "runtime.num_processes", int, "With --distributed: how many "
        "processes take part.", module_name=here)
  alias("process_id", "runtime.process_id", int, "With --distributed: this process's index, "
        "0 .. num_processes-1 (process 0 writes the reports).", module_name=here)
  alias("compilation_cache_dir", "runtime.compilation_cache_dir", str, "Persistent XLA "
        "compilation cache ('' to disable): reruns skip compiling.", module_name=here)
  alias("microbatch_frames", "runtime.microbatch_frames", int, "Compute each batch in "
        "equal parts of at most this many frames (rows x (speech frames + text tokens)) per "
        "device, adding their gradients: less memory, the same result up to float rounding. "
        "-1 = auto (4096 on CPU, whole batches on GPU/TPU), 0 = whole batches.",
        module_name=here)
  flags.DEFINE_multi_string("module_import", [], "Python module(s) to import first, e.g. one "
                            "that registers a fusion head with "
                            "fusion_jax.models.register_variant.", module_name=here)


def define_fold_flags(module_name=None) -> None:
  """``--fold``, ``--num_folds``, ``--val_speakers``: one fold of a recipe's
  speaker-independent cross-validation (``config.data``; train.py and evaluate.py)."""
  alias("fold", "data.fold", int, "Train (evaluate) on one fold of a speaker-independent "
        "cross-validation: the training features and CSV (--train_speech_features, "
        "--train_text_features, --csv_path, e.g. a recipe's WORK_DIR/features files) hold a "
        "whole corpus with a speaker column, and the fold's speakers are split as the "
        "recipes split them (folds of sorted speakers in contiguous blocks, validation from "
        "the next block, standardised with the training speakers' statistics). train.py "
        "never reads the fold's test speakers; evaluate.py tests on them. -1: the splits as "
        "given.", module_name=module_name)
  alias("num_folds", "data.num_folds", int, "With --fold: how many folds.",
        module_name=module_name)
  alias("val_speakers", "data.val_speakers", int, "With --fold: validation speakers per "
        "fold.", module_name=module_name)


def fold_of(config, corpus):
  """``(train, val, test)`` of ``config.data.fold`` of ``corpus`` (a Split), logged."""
  from fusion_jax import recipes, sharding  # pylint: disable=import-outside-toplevel
  d = config.data
  parts = recipes.fold_splits(corpus, d.fold, d.num_folds, d.val_speakers)
  if sharding.is_primary():   # (one line per job, not per process)
    print(f"Fold {d.fold} of {d.num_folds} of {corpus.sources.get('csv') or corpus.name}: "
          + "; ".join(f"{p.name} {len(p)} ({', '.join(sorted(set(p.groups)))})"
                      for p in parts), flush=True)
  return parts


def parse_flags(argv):
  """absl's flag parsing, with the config file's own errors (missing file, unknown
  ``--config.<field>``, wrong type) as one ``error:`` line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{' '.join(str(e).split())} (see --help)")
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    detail = " ".join(str(e).split())
    if "Configuration is not available" in detail or isinstance(e, OSError):
      fail(f"--config: cannot load the config file ({detail[:200]})")
    fail(f"--config: {detail[:300]} (check the --config.<field> names against "
         "configs/default.py)")


def main(fn) -> None:
  """``absl.app.run(fn)`` with :func:`parse_flags` (what every binary calls).

  When ``fn`` returns, the process ends at once (output flushed, every file the binary
  wrote already closed): the interpreter's own shutdown — JAX dropping its compiled
  programs, the garbage collector over every array — took 3–8 s after a demo training
  run and minutes after a long recipe (BUILD_NOTES), for nothing.
  """

  def run_and_exit(argv):
    code = run_at_boundary(fn, argv)
    sharding = sys.modules.get("fusion_jax.sharding")
    if sharding is not None:   # (multi-host: the hosts leave together, as JAX's exit would)
      sharding.maybe_shutdown_distributed()
    exit_now(0 if code is None else int(code))

  app.run(run_and_exit, flags_parser=parse_flags)


def exit_now(code: int) -> None:
  """Flushes output and logging, then ends the process without the interpreter's shutdown
  (no later output: nothing a library's background thread does can print after it)."""
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  os._exit(code)


def overrides() -> dict:
  """``{field: value}`` of every ``--config.<field>=`` given on the command line."""
  return dict(config_flags.get_override_values(FLAGS["config"]))


def given(flag: str) -> bool:
  return flag in FLAGS and FLAGS[flag].present > 0


def explicit(field: str) -> bool:
  """Whether ``field`` was set on the command line (its override or one of its aliases)."""
  return field in overrides() or any(given(f) and field in fs for f, fs in _ALIASES.items())


def _get(config, field: str):
  node = config
  for part in field.split("."):
    node = node[part]
  return node


def _set(config, field: str, value) -> None:
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def _closed_loop_noise(exc_type, exc, tb) -> bool:
  """The checkpoint library's background threads, finishing reads after a failed restore,
  post to an event loop it has closed; Python reports each as an unraisable exception."""
  return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def _quiet_unraisablehook(unraisable):
  if not _closed_loop_noise(unraisable.exc_type, unraisable.exc_value, None):
    sys.__unraisablehook__(unraisable)


def config_from_flags():
  """The ``--config`` tree with every alias given on the command line applied.

  Also imports ``--module_import`` modules (before variants are parsed).
  """
  sys.unraisablehook = _quiet_unraisablehook
  for module in FLAGS.module_import:
    try:
      importlib.import_module(module)
    except ImportError as e:
      fail(f"--module_import={module}: {e}")
  try:
    config = FLAGS.config
    list(config.keys())   # a config file that failed to load raises here, not above
    explicit_overrides = overrides()
  except (OSError, AttributeError, KeyError) as e:
    fail(f"--config: cannot load the config ({' '.join(str(e).split())[:240]})")
  for name, fields in _ALIASES.items():
    if not given(name):
      continue
    value = FLAGS[name].value
    for field in fields:
      if field in explicit_overrides and explicit_overrides[field] != value:
        fail(f"--{name}={value} and --config.{field}={explicit_overrides[field]} disagree; "
             "give one of them")
      try:
        _set(config, field, value)
      except (TypeError, KeyError) as e:
        fail(f"--{name}={value}: cannot set config.{field} ({e})")
  return config


def setup_jax(config, multi_process: bool = False):
  """Distributed init, compilation cache, device log. Returns the device mesh.

  ``multi_process``: the binary runs on several processes (train.py); every other one
  refuses ``--distributed`` (each process would write the same reports).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  from fusion_jax import sharding  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  runtime = config.runtime
  if runtime.distributed and not multi_process:
    fail(f"--distributed: only train.py runs on several processes; run "
         f"{os.path.basename(sys.argv[0])} in one (it reads the checkpoints of a "
         "multi-process run like any other)")
  sharding.maybe_initialize_distributed(runtime)
  if runtime.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(runtime.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if runtime.num_devices < 0:
    fail(f"--num_devices={runtime.num_devices}: give 0 (all devices) or a positive count")
  mesh = sharding.make_mesh(runtime.num_devices or None)
  devs = mesh.devices.ravel()
  print(f"JAX {jax.__version__} on {len(devs)} {devs[0].platform} device(s): "
        f"{', '.join(str(d.device_kind) for d in devs[:4])}{' ...' if len(devs) > 4 else ''}",
        flush=True)
  return mesh


def data_path(config, field: str, default_name: Optional[str] = None) -> Optional[str]:
  """``config.paths.<field>``, else ``data_dir/default_name`` when ``--data_dir`` is set."""
  value = config.paths[field]
  if value:
    return value
  if config.paths.data_dir and default_name:
    return os.path.join(config.paths.data_dir, default_name)
  return None


def existing(path: Optional[str]) -> Optional[str]:
  """``path`` if it names an existing file, else None (optional inputs)."""
  return path if path and os.path.exists(path) else None


def optional_path(config, field: str, default_name: Optional[str] = None) -> Optional[str]:
  """An optional input: ``--<field>`` must exist when given (a typo is an error, not a
  silently missing input); the ``--data_dir`` default is used only if it exists."""
  given = config.paths[field]
  if given:
    if not os.path.exists(given):
      fail(f"--{field}={given}: no such file (it is optional: leave it out to go without)")
    return given
  return existing(data_path(config, field, default_name))


def require(hint: str = "or give --data_dir", **flag_values) -> None:
  """Fails with one line listing every ``--flag`` whose value is empty."""
  missing = [f"--{name}" for name, value in flag_values.items() if not value]
  if missing:
    fail(f"missing {', '.join(missing)} ({hint})")


# What a user can fix, printed as one line with no traceback: the library's own UserError
# (bad data, a bad setting, a missing optional package, a diverging run), the operating
# system's refusals (a missing file or folder, no permission, a full disk) and memory.
# Every other exception is a bug and keeps its traceback.
USER_ERRORS = (UserError, OSError, MemoryError)


def run_at_boundary(fn, argv):
  """Runs a binary's ``fn(argv)``: the one place that turns a user's error into one line."""
  try:
    return fn(argv)
  except MemoryError:
    fail("out of memory: lower --config.train.batch_size or set --microbatch_frames")
  except USER_ERRORS as e:
    fail(one_line(e))
  except KeyboardInterrupt:
    interrupted()


def fail(message: str, code: int = 2) -> None:
  """Exits with a one-line error (no traceback) for problems the user can fix."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  exit_now(code)


def interrupted() -> None:
  fail("interrupted; rerun the same command to resume from the last checkpoint (the "
       "result is the same as an uninterrupted run)", code=130)
