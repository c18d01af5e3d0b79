r"""Hyper-parameter or grid sweeps on Optuna over ordinary train.py runs.

  python experiments/sweep.py --config configs/demo.py --sweep configs/sweeps/demo.py \
    --study_dir sweeps/demo --workers 2 --trials 12 --data_dir demo_run/data \
    --config.train.epochs=5

Every trial is experiments/train.py with the search space's sampled values as
--config.<field>=<value> (plus this command's --config, --config.* overrides and data
flags), its models and results in STUDY_DIR/trials/<key>/ (<key>: a digest of the values,
so a retried or repeated trial resumes or reuses that run). The objective is the run's
*validation* figure (summary.json, mean over seeds): no test data reaches the sampler.

Storage: Optuna's journal file STUDY_DIR/journal.log (several workers on one machine or a
shared file system), or --storage sqlite:///…|postgresql://… (run the same command on every
machine). A worker that dies leaves its trial to be retried (from its checkpoints) by the
others, or by rerunning this command. --grid runs every combination of a search space of
choices (a recipe's variant × seed × setting grid) spread over the workers.

Writes STUDY_DIR/trials.csv (number, state, value, parameters), best_trial.json,
best_config.py (use as --config), optimization_history.png, param_importances.png, and the
best trial's test reports (evaluate.py, once, on the test split) under its results folder.
"""

import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep", None, "Search-space file (configs/sweeps/*.py): config fields "
                    "with their ranges or choices, the metric and direction.")
flags.DEFINE_string("study_dir", None, "Folder of the study: journal, trials, report.")
flags.DEFINE_integer("trials", 8, "Trials to complete in all (--grid: at most the grid's "
                     "size; 0 = the whole grid). A first attempt that fails still counts; "
                     "a retry of a dead worker's trial does not.")
flags.DEFINE_integer("workers", 1, "Worker processes to start on this machine (each runs "
                     "one train.py at a time).")
flags.DEFINE_string("worker_devices", "", "Comma-separated accelerator ids, one per worker "
                    "(sets CUDA_VISIBLE_DEVICES for each), e.g. 0,1,2,3 with --workers 4.")
flags.DEFINE_string("storage", "", "An Optuna RDB URL (sqlite:///study.db, "
                    "postgresql://user:pw@host/db) for workers on many machines; default: "
                    "the journal file in --study_dir.")
flags.DEFINE_bool("grid", False, "Every combination of the search space's choices "
                  "(queued in a seeded random order, each worker taking the next; --trials "
                  "below the grid's size: that many points) instead of TPE sampling.")
flags.DEFINE_float("heartbeat_timeout", 30.0, "Seconds without a heartbeat after which a "
                   "running trial's worker counts as dead: its trial is marked failed and "
                   "retried with the same values (resuming its checkpoints). Raise it on a "
                   "slow shared file system.")
flags.DEFINE_string("folds", "", "Comma-separated folds, e.g. 0,1,2,3: every trial trains "
                    "one run per fold (train.py --fold K; the training files and CSV hold a "
                    "whole corpus with a speaker column, e.g. a recipe's WORK_DIR/features "
                    "files), and its objective is the mean over the folds of their "
                    "validation figures; the best trial is then tested on each fold's test "
                    "speakers. --num_folds and --val_speakers say how the folds are made.")
flags.DEFINE_integer("sampler_seed", 0, "Seed of the sampler (same seed, same proposals).")
flags.DEFINE_bool("evaluate_best", True, "After the sweep, evaluate the best trial once on "
                  "the test split (needs the test features beside the data flags' ones).")
flags.DEFINE_bool("analysis", True, "With --evaluate_best, also the separability analysis "
                  "(evaluate.py --analysis).")
flags.DEFINE_bool("worker", False, "Internal: run as one worker of a sweep started with "
                  "--workers (no report).")
for _name in ("train_speech_features", "train_text_features", "val_speech_features",
              "val_text_features", "csv_path", "val_csv_path", "data_dir",
              "test_speech_features", "test_text_features", "test_csv_path"):
  flags.DEFINE_string(_name, None, f"Passed to train.py (and, for the best trial, evaluate.py) "
                      f"as --{_name}.")
flags.DEFINE_integer("epochs", None, "Passed to train.py as --epochs.")
flags.DEFINE_integer("batch_size", None, "Passed to train.py as --batch_size.")
flags.DEFINE_integer("worker_index", 0, "Internal: this worker's number (its sampler seed).")
cli.define_common_flags()
cli.define_fold_flags()
flags.adopt_module_key_flags(cli)
_TRAIN = ("data_dir", "train_speech_features", "train_text_features", "val_speech_features",
          "val_text_features", "csv_path", "val_csv_path", "epochs", "batch_size")
_EVALUATE = ("data_dir", "csv_path", "train_speech_features", "train_text_features",
             "test_speech_features", "test_text_features", "test_csv_path")


def _forwarded(binary: str) -> list:
  """This command's --config, --config.* overrides and data flags, for train/evaluate.py."""
  args = [f"--config={config_flags.get_config_filename(FLAGS['config'])}"]
  args += [f"--config.{k}={v}" for k, v in sorted(cli.overrides().items())]
  names = [n for n in cli._ALIASES if cli.given(n)]  # pylint: disable=protected-access
  names += [n for n in (_TRAIN if binary == "train" else _EVALUATE) if cli.given(n)]
  args += [f"--{n}={FLAGS[n].value}" for n in dict.fromkeys(names)]
  return args if binary == "train" else args + [f"--{'' if FLAGS.analysis else 'no'}analysis"]


def main(argv):
  del argv
  from fusion_jax import sweeps  # pylint: disable=import-outside-toplevel
  cli.require("a sweep needs both", sweep=FLAGS.sweep, study_dir=FLAGS.study_dir)
  if FLAGS.workers < 1:
    cli.fail(f"--workers={FLAGS.workers}: give 1 or more")
  config = cli.config_from_flags()   # the base config and its overrides load (one-line errors)
  space = sweeps.load_space(FLAGS.sweep)
  swept = set(space["params"])
  for field in swept & set(cli.overrides()):
    cli.fail(f"--config.{field} is also a parameter of --sweep {FLAGS.sweep}; drop one")
  for name, fields in cli._ALIASES.items():  # pylint: disable=protected-access
    if cli.given(name) and swept & set(fields):
      cli.fail(f"--{name} sets {', '.join(sorted(swept & set(fields)))}, a parameter of "
               f"--sweep {FLAGS.sweep}; drop it")
  study_dir = os.path.abspath(FLAGS.study_dir)
  train_args = _forwarded("train")
  if FLAGS.heartbeat_timeout <= 0:
    cli.fail(f"--heartbeat_timeout={FLAGS.heartbeat_timeout}: give a positive number of seconds")
  try:
    folds = [int(k) for k in FLAGS.folds.split(",") if k.strip()]
  except ValueError:
    cli.fail(f"--folds={FLAGS.folds}: give comma-separated fold numbers, e.g. 0,1,2,3")
  if folds and cli.given("fold"):
    cli.fail("--fold and --folds: give --folds (every trial runs each of them)")
  if len(set(folds)) != len(folds):
    cli.fail(f"--folds={FLAGS.folds} names a fold twice")
  outside = [k for k in folds if not 0 <= k < config.data.num_folds]
  if outside:   # (else every trial would fail on it, one train.py at a time)
    cli.fail(f"--folds={FLAGS.folds}: fold {outside[0]} does not exist with "
             f"--num_folds={config.data.num_folds} (give 0 .. {config.data.num_folds - 1})")
  options = dict(storage_url=FLAGS.storage, use_grid=FLAGS.grid, seed=FLAGS.sampler_seed,
                 stale_seconds=FLAGS.heartbeat_timeout, folds=folds)
  if FLAGS.worker:   # each worker its own sampler seed: the same seed would propose the same
    options["seed"] = FLAGS.sampler_seed + 1000 * (FLAGS.worker_index + 1)   # values in each
    sweeps.work(study_dir, space, train_args, FLAGS.trials, **options)
    return 0
  study = sweeps.open_study(study_dir, space, **options)   # one creator, before the workers
  if FLAGS.grid:   # (the grid's points queued once, so each worker takes a distinct one)
    sweeps.enqueue_grid(study, space, FLAGS.trials, FLAGS.sampler_seed)
  if FLAGS.workers == 1:
    sweeps.work(study_dir, space, train_args, FLAGS.trials, **options)
  else:
    gpus = [d for d in FLAGS.worker_devices.split(",") if d]
    if gpus and len(gpus) != FLAGS.workers:
      cli.fail(f"--worker_devices names {len(gpus)} devices for {FLAGS.workers} workers")
    procs = []
    for i in range(FLAGS.workers):
      env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpus[i]} if gpus else {}))
      procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                     *sys.argv[1:], "--worker",
                                     f"--worker_index={i}"], env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
      print(f"sweep: worker exit codes {codes}; rerun the same command to continue the "
            "study", file=sys.stderr)
  best = sweeps.write_report(study, study_dir,
                             config_flags.get_config_filename(FLAGS["config"]), space,
                             overrides=cli.overrides())
  if best is None:
    cli.fail(f"no trial completed; see the logs under {os.path.join(study_dir, 'trials')}")
  print(f"best trial {best['number']}: {best['metric']} {best['value']:.4f} "
        f"({best['variant']}) with {best['values']}")
  print(f"report: {os.path.join(study_dir, 'trials.csv')}, best_config.py, *.png")
  if FLAGS.evaluate_best:
    logs = sweeps.evaluate_best(study_dir, best, _forwarded("evaluate"), folds=folds)
    print(f"best trial on test: {os.path.join(study_dir, 'trials', best['run'])} "
          f"(logs {', '.join(logs)})")
  return 0


if __name__ == "__main__":
  cli.main(main)
