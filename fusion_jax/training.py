"""Training: resumable runs of the jitted steps, and the original's reports.

* :func:`train_run` trains one variant with one seed on in-memory
  :class:`~fusion_jax.data.Split` objects and returns a :class:`RunResult`;
* :func:`train_and_evaluate` trains every variant × seed of the experiment and
  writes the original's plots and reports (what ``experiments/train.py`` calls).

A run is resumable and reproducible: the batch order is a function of
``(seed, epoch)``, dropout of ``(seed, variant, step)``; ``best`` is saved
before ``latest``, so a kill between them replays the epoch and reaches the same
best. Differences from the original, on purpose: losses are means over samples,
not over batches; the first epoch always saves a best checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence

import jax

from fusion_jax import checkpoint, configs, html_report, io_utils, loop, reports, runs, sharding
from fusion_jax import hooks as hooks_lib
from fusion_jax import ledger as ledger_lib
from fusion_jax import optim as optim_lib
from fusion_jax.data import batching
from fusion_jax.errors import ConfigError, DataError
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.loop import Hook
from fusion_jax.models import convert, registry


@dataclasses.dataclass
class RunResult:
  """One trained run: its :class:`~fusion_jax.runs.RunState` and what training cost."""
  state: runs.RunState
  param_count: int
  checkpoint_dir: str
  compile_seconds: float = 0.0
  train_seconds: float = 0.0
  resumed_from_epoch: int = 0

  @property
  def variant(self) -> str:
    return self.state.variant

  @property
  def seed(self) -> int:
    return self.state.seed

  @property
  def history(self) -> dict:
    return self.state.history

  @property
  def best(self) -> runs.Best:
    return self.state.best


def run_key(seed: int, variant: str) -> jax.Array:
  """The run's root key: a function of the seed and the variant's registered id only."""
  return jax.random.fold_in(jax.random.key(seed), registry.get(variant).id)


def check_data_dims(exp: Experiment, *splits: Split) -> None:
  """Raises DataError when a split's feature dims are not the experiment's model dims."""
  want = {"speech": exp.config.model.speech_dim, "text": exp.config.model.text_dim}
  for split in splits:
    for m in ("speech", "text"):
      got = int(getattr(split, m)[0].shape[1])
      if got != want[m]:
        raise DataError(split.sources.get(m) or split.name, f"{m} features are {got}-d but "
                        f"the model expects {want[m]}-d", field="x",
                        hint="build the Experiment with this data (Experiment.create(..., "
                        "train=...)) so dims come from it")


def train_run(exp: Experiment, variant: str, seed: int, train: Split, val: Split, *,
              after_epoch: Optional[Callable[[int], None]] = None,
              hooks: Sequence[Hook] = ()) -> RunResult:
  """Trains one variant with one seed; resumes from ``exp.model_dir`` when possible.

  The run directory is locked for the duration (a second process on the same run
  stops with one line), and its identity — config fingerprint, classes, and the
  training and validation data (files and a content hash) — is recorded before
  anything is saved and checked before anything is reused: a different run in
  the same directory is an error naming what differs, never a mix.

  Args:
    exp: the experiment (config, classes, mesh, model_dir, results_dir, log).
    variant: a registered variant (:func:`fusion_jax.models.variant_names`).
    seed: fixes initialisation, batch order and dropout.
    train, val: the splits (see :func:`fusion_jax.data.load_split`).
    after_epoch: called with the epoch number after its checkpoints are saved
      (tests use it to interrupt a run).
    hooks: more :class:`~fusion_jax.loop.Hook` objects, called after the standard ones
      (checkpoints, metrics lines, console).

  Returns:
    The run's state (history, best) and costs. Checkpoints are in
    ``exp.model_dir/{variant}/seed_{seed}/{best,latest}``; epochs are appended to
    ``exp.results_dir/metrics.jsonl``.
  """
  return train_runs(exp, variant, [seed], train, val, after_epoch=after_epoch, hooks=hooks)[0]


def parallel_seeds(config) -> bool:
  """``config.train.parallel_seeds``; unset: True on accelerators, False on CPU, where three
  seeds as one vmapped program measured slower than one after another (BUILD_NOTES)."""
  value = config.train.parallel_seeds
  return jax.default_backend() != "cpu" if value is None else bool(value)


def train_runs(exp: Experiment, variant: str, seeds: Sequence[int], train: Split, val: Split,
               *, after_epoch: Optional[Callable[[int], None]] = None,
               hooks: Sequence[Hook] = (),
               finish: Optional[Callable[[Callable[[], None]], None]] = None) -> list:
  """Trains the seeds of one variant as one program (see :func:`train_run` for one seed).

  Parameters, optimizer state and plateau rate are stacked on a leading axis and the
  step is ``vmap``ped over it; each seed keeps its own initialisation, dropout, rows,
  best checkpoint, history and resume, and gives the result it gives alone (tested).
  With ``config.train.parallel_seeds`` False (the default on CPU: :func:`parallel_seeds`)
  they train one after another instead. Seeds whose checkpoints stand at different
  epochs resume in separate groups.

  ``finish(job)``, when given, runs each run's closing ``job`` (its last checkpoints
  written, the run unlocked) later, e.g. in a thread while the next variant trains
  (:func:`train_and_evaluate`); without it the job runs before returning.
  """
  check_data_dims(exp, train, val)
  seeds = [int(s) for s in seeds]
  if len(seeds) > 1 and not parallel_seeds(exp.config):
    return [r for s in seeds for r in train_runs(exp, variant, [s], train, val,
                                                 after_epoch=after_epoch, hooks=hooks,
                                                 finish=finish)]
  fingerprint = runs.fingerprint(exp.config)
  stack = contextlib.ExitStack()   # the runs' locks and checkpoint writers, closed by the job
  try:
    members = []
    for seed in seeds:
      identity = dict(variant=variant, seed=seed, fingerprint=fingerprint,
                      class_names=list(exp.class_names), train=exp.data_identity(train),
                      val=exp.data_identity(val))
      directory = runs.run_dir(exp.model_dir, variant, seed)
      stack.enter_context(runs.RunLock(directory))
      ckpts = checkpoint.RunCheckpoints(directory)
      stack.callback(ckpts.close)   # (waits for the queued saves; raises a failed one)
      if not os.path.exists(os.path.join(directory, "run.json")):
        _check_unrecorded(ckpts, directory, fingerprint, variant)
      runs.check_identity(directory, identity)
      members.append(ckpts)
    extra = list(hooks) + ([hooks_lib.AfterEpoch(after_epoch, members)] if after_epoch else [])
    results = _train(exp, variant, seeds, train, val, members, fingerprint, extra)
  except BaseException:
    stack.close()   # (what was queued is still written)
    raise
  if finish is None:
    stack.close()
  else:
    finish(stack.close)
  return results


def _check_unrecorded(ckpts, directory, fingerprint, variant) -> None:
  """Checkpoints without a run record (written before records existed): same config only."""
  for kind in ("latest", "best"):
    if ckpts.latest_step(kind) is not None:
      meta = ckpts.restore_meta(kind)
      same = lambda f: runs.comparable_fingerprint(f, variant)
      if same(meta.get("fingerprint") or {}) != same(fingerprint):
        raise runs.RunMismatch(directory, f"holds a run with a different config "
                               f"({meta.get('fingerprint')} vs {fingerprint})",
                               hint="use another --model_dir or delete it")
      return


def _resume(exp, ckpts, state, run, fingerprint):
  """The newest intact ``latest`` checkpoint (falling back to an older one), or a fresh start
  when none is intact or the best checkpoint is damaged (replay gives the same result)."""
  abstract = checkpoint.abstract_like(state)
  if ckpts.latest_step("best") is not None:
    try:
      ckpts.restore("best", abstract)
    except checkpoint.CorruptCheckpoint as e:
      exp.log(f"warning: {e}; training this run again from the first epoch (same result)")
      ckpts.remove("best")
      ckpts.remove("latest")
  for step in ckpts.steps("latest"):
    try:
      meta = ckpts.restore_meta("latest", step)
      if (runs.comparable_fingerprint(meta.get("fingerprint") or {}, run.variant)
          != runs.comparable_fingerprint(fingerprint, run.variant)):
        raise runs.RunMismatch(ckpts.path("latest", step), "was saved with another config",
                               hint="use another --model_dir or delete it")
      saved, meta = ckpts.restore("latest", abstract, step)
      return saved, runs.RunState.from_meta(meta, run.plateau)
    except checkpoint.CorruptCheckpoint as e:
      exp.log(f"warning: {e}; removed it, trying an older checkpoint")
      ckpts.remove("latest", step)   # else replaying this epoch could never save it again
  return state, run


def _train(exp, variant, seeds, train, val, ckpts_list, fingerprint, extra_hooks) -> list:
  """Resumes each run, then trains the runs in one group per resume epoch
  (:func:`fusion_jax.loop.train_group`) with the standard hooks, then ``extra_hooks``."""
  cfg = exp.config
  shapes = exp.training_shapes(train, val)
  steps = exp.steps(variant)
  resumed = []
  for seed, ckpts in zip(seeds, ckpts_list):
    root = run_key(seed, variant)
    state = steps.init_state(jax.random.fold_in(root, 0), cfg.optim.learning_rate)
    state, run = _resume(exp, ckpts, state, runs.RunState.new(
        variant, seed, optim_lib.Plateau.from_config(cfg.optim)), fingerprint)
    resumed.append((seed, ckpts, jax.device_get(state), run, jax.random.fold_in(root, 1)))
  starts = sorted({r[3].epoch for r in resumed})
  if len(starts) > 1:
    exp.log(f"[{variant}] seeds resume from different epochs {starts}: training them in "
            "groups")
  if starts[-1] > cfg.train.epochs:   # cannot rewind: the best may come from a later epoch
    raise runs.RunMismatch(ckpts_list[0].directory, f"has trained {starts[-1]} epochs, more "
                           f"than the {cfg.train.epochs} asked for", hint="use another "
                           "--model_dir for a shorter run, or --epochs >= the epochs done")
  jsonl = _metrics_log(exp)
  meta = lambda run: runs.checkpoint_meta(run, cfg, exp.class_names, shapes, train.preprocessing)
  results = {}
  for start in starts:
    members = [r for r in resumed if r[3].epoch == start]
    group = loop.Group.start(exp, variant, [m[0] for m in members], [m[3] for m in members],
                             [m[2] for m in members], [m[4] for m in members], shapes)
    ckpts = [m[1] for m in members]
    standard = [hooks_lib.Checkpoints(ckpts, meta, cfg.train.checkpoint_every_seconds,
                                      background=_off_main_thread())]
    if sharding.is_primary():   # (one metrics log and event file, not one per process)
      standard += [hooks_lib.MetricsLog(jsonl)] if jsonl else []
      standard += ([hooks_lib.TensorBoard(os.path.join(exp.results_dir, "tensorboard"))]
                   if exp.results_dir and cfg.train.tensorboard else [])
    standard += [hooks_lib.Console(exp.log, len(train), exp.ledger)]
    loop.train_group(exp, group, train, val, standard + list(extra_hooks))
    # (the last epoch's checkpoints are on disk when the caller closes ckpts_list)
    share = len(members)   # a group's time, split evenly between its seeds (sums stay true)
    for (seed, c, *_), run in zip(members, group.runs):
      results[seed] = RunResult(state=run, param_count=group.param_count,
                                checkpoint_dir=c.directory,
                                compile_seconds=group.compile_seconds / share,
                                train_seconds=group.seconds / share, resumed_from_epoch=start)
  return [results[s] for s in seeds]


def _off_main_thread() -> bool:
  """Whether checkpoint writes and a run's closing work may run in a thread: not on
  several hosts, where orbax synchronises them (collectives in the main thread only)."""
  return jax.process_count() == 1


def _raise_failed(futures: Sequence[concurrent.futures.Future], done_only: bool = False) -> None:
  """Raises the first error of ``futures`` (waiting for each unless ``done_only``)."""
  for f in futures:
    if not done_only or f.done():
      f.result()


class ClosingWork:
  """A variant's closing work (its last checkpoints written, its runs unlocked, the
  original's .pt exported), run in one thread, in order, while the next variant compiles
  and trains; on several hosts, at once in the main thread (:func:`_off_main_thread`).
  A failure there is raised before the next variant starts (when it is known by then) or
  else before the report set is committed (:meth:`raise_failed`)."""

  def __init__(self, pool: concurrent.futures.ThreadPoolExecutor):
    self.pool, self.pending = pool, []

  def __call__(self, job: Callable[[], None], needs_earlier: bool = False) -> None:
    """Queues ``job``; ``needs_earlier``: skipped (raising their error) when an earlier
    job failed. Closing a run never is: its lock and queued saves must be let go."""
    if not _off_main_thread():
      job()
      return
    before = list(self.pending)

    def run():
      if needs_earlier:
        _raise_failed(before)
      job()
    self.pending.append(self.pool.submit(run))

  def raise_failed(self, done_only: bool = False) -> None:
    _raise_failed(self.pending, done_only)

  def log_other_failures(self, error: BaseException, log: Callable[[str], None]) -> None:
    """Names every failed job but the one whose ``error`` is being raised."""
    for other in {f.exception() for f in self.pending} - {None, error}:
      log(f"warning: closing a finished variant failed too: {other}")


def _metrics_log(exp: Experiment) -> Optional[io_utils.JsonLines]:
  if not exp.results_dir:
    return None
  return io_utils.JsonLines(os.path.join(exp.results_dir, "metrics.jsonl"), log=exp.log)


# ------------------------------------------------------------------ many runs
def train_and_evaluate(exp: Experiment, train: Split, val: Split, *,
                       variants: Optional[Sequence[str]] = None,
                       seeds: Optional[Sequence[int]] = None) -> dict:
  """Trains every variant × seed and writes the original's plots and reports.

  Writes, under ``exp.results_dir``: ``plots/{variant}_training_curves.png``,
  ``plots/{variant}_confusion_matrix.png``, ``plots/fusion_variants_comparison.png``,
  ``fusion_variants_comparison.txt``, ``metrics.jsonl`` (one line per epoch
  and run), ``summary.json`` and ``config.json``.

  Args:
    variants, seeds: default ``exp.variants`` / ``exp.seeds`` (from the config).

  Returns:
    The summary dict (also in ``summary.json``).
  """
  log, results_dir = exp.log, exp.results_dir
  if not results_dir:
    raise ConfigError("train_and_evaluate writes reports: give the experiment a results_dir "
                     "(--results_dir)")
  variants = list(dict.fromkeys(variants or exp.variants))
  seeds = list(dict.fromkeys(int(s) for s in (seeds if seeds is not None else exp.seeds)))
  with runs.RunLock(results_dir, "training report"):
    shapes = exp.training_shapes(train, val)
    pad = batching.padding_fraction(train, shapes, exp.config.train.batch_size)
    _log_plan(exp, train, val, variants, seeds, shapes, pad)
    with concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="fusion_jax_finish") as pool:
      finish = ClosingWork(pool)
      try:
        results = {}
        for v in variants:
          finish.raise_failed(done_only=True)
          results[v] = train_runs(exp, v, seeds, train, val, finish=finish)
          released = exp.forget(v)   # its programs are done with: the next variant's own
          log(f"[{v}] released {released} compiled steps; the process holds "
              f"{ledger_lib.process_resources().describe()}")
          if exp.config.train.export_torch:
            finish(functools.partial(export_torch, exp, v, seeds), needs_earlier=True)
        summary = reports.summarize(results, exp.class_names, shapes, pad,
                                    configs.selection_metric(exp.config))
        # The report set appears together, once every run has finished (and its files
        # are written), and replaces the previous training report as a whole: plots of
        # variants this run did not train and their metrics lines go, so the folder never
        # shows two runs at once. Several processes: process 0 writes it.
        if sharding.is_primary():
          with io_utils.replaced_dir(os.path.join(results_dir, "plots")) as plots_dir, \
              io_utils.staged_files(results_dir) as out:
            reports.write_training_reports(plots_dir, out, exp, results, summary)
            finish.raise_failed()
          html_report.write(results_dir)
        else:
          finish.raise_failed()
      except BaseException as e:   # (the queued jobs still run; say which of them failed)
        finish.log_other_failures(e, log)
        raise
    if sharding.is_primary():
      jsonl = _metrics_log(exp)
      kept = {(v, s) for v in variants for s in seeds}
      jsonl.replace(lambda r: (r.get("variant"), r.get("seed")) not in kept, [])
    sharding.sync("fusion_jax: training report written")   # (no process ends before it)
  log(reports.training_console_summary(summary))
  log(f"All results saved to: {results_dir} (report.html gathers them)\n"
      f"All models saved to: {exp.model_dir}")
  return summary


def _log_plan(exp: Experiment, train: Split, val: Split, variants, seeds, shapes, pad) -> None:
  exp.log(f"Train {len(train)} / validation {len(val)} utterances, {exp.num_classes} classes: "
          f"{list(exp.class_names)}{train.describe_absent()}{val.describe_absent()}")
  exp.log(f"Variants {variants}, seeds {seeds}; "
          f"{'text' if shapes.text_buckets else 'speech'} padding {pad['buckets']:.1%} with "
          f"{shapes.num_buckets} buckets (vs {pad['global_max']:.1%} padding to the "
          "longest utterance)")


def export_torch(exp: Experiment, variant: str, seeds: Sequence[int]) -> Optional[str]:
  """Writes ``exp.model_dir/best_{variant}_model.pt`` from a run's best checkpoint.

  The seed is ``config.train.export_torch_seed`` (-1: the first of ``seeds``). A
  variant the original has no module for, or a model with an input projection, is
  skipped with one line saying why. Returns the path written, or None.
  """
  want = exp.config.train.export_torch_seed
  seed = seeds[0] if want < 0 else want
  path = runs.torch_checkpoint_path(exp.model_dir, variant)
  try:
    run = runs.load_run(exp.model_dir, variant, seed)   # (every process: orbax syncs them)
    if not sharding.is_primary():
      return None
    convert.save_torch_checkpoint(
        run.params, variant, path, epoch=run.state.best.epoch, val_acc=run.val_acc,
        class_names=run.class_names, confusion_matrix=run.state.best.confusion,
        opt_state=run.opt_state, learning_rate=run.learning_rate, optim_config=exp.config.optim)
  except (ValueError, FileNotFoundError) as e:
    exp.log(f"[{variant}] no {os.path.basename(path)}: {e}")
    return None
  exp.log(f"[{variant} seed {seed}] wrote the original's checkpoint {path}")
  return path
