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
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax import checkpoint, configs, io_utils, metrics, reports, runs, sharding
from fusion_jax import steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.errors import ConfigError, DataError, Divergence
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import model as model_lib
from fusion_jax.models import registry


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


def stack_runs(trees):
  """Pytrees of S runs (states, metric sums) → one pytree with a leading ``[S]`` axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def run_of(tree, i):
  """Run ``i`` of a :func:`stack_runs` pytree."""
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def train_epoch(exp: Experiment, steps: steps_lib.Steps, state, data, split: Split,
                shapes: batching.BatchShapes, seeds: Sequence[int], epoch: int,
                dropout_keys) -> tuple:
  """One pass over ``split`` for every run of the group (stacked ``state``).

  Each seed has its own rows; all share the bucket schedule
  (:func:`fusion_jax.data.batch_indices`), so one program steps them together. The
  batches are gathered on the device from ``data`` (:class:`~fusion_jax.experiment.
  DeviceSplit`); the host only sends row indices. Returns ``(state, metric sums [S])``.
  """
  bs = exp.config.train.batch_size
  acc = sharding.replicate(stack_runs([steps_lib.zero_metrics()] * len(seeds)), exp.mesh)
  plans = [batching.batch_indices(split, shapes, bs, shuffle=True, seed=s, epoch=epoch)
           for s in seeds]
  every = exp.config.train.get("progress_every", 0) or max(1, len(plans[0]) // 10)
  show = len(plans[0]) >= 20 and sys.stdout.isatty()
  for i, steps_i in enumerate(zip(*plans)):
    b = steps_i[0][0]
    assert all(s[0] == b for s in steps_i), "seeds of a group must share the bucket schedule"
    idx = np.stack([data.indices(rows, bs) for _, rows in steps_i])
    state, acc = exp.ledger(steps.train_group, state, acc, data.data[b],
                            sharding.shard_rows(idx, exp.mesh, axis=1), dropout_keys)
    if show and (i + 1) % every == 0 and i + 1 < len(plans[0]):
      print(f"\r  epoch {epoch + 1}: step {i + 1}/{len(plans[0])}", end="", flush=True)
  if show:
    print("\r", end="")
  return state, jax.device_get(acc)  # the one host sync of the epoch


def evaluate_group(exp: Experiment, steps: steps_lib.Steps, params, data, n: int) -> list:
  """Loss, confusion matrix and summary metrics of each stacked parameter set on a split."""
  stats = jax.device_get([exp.ledger(steps.eval_group, params, data.data[b],
                                     sharding.shard_rows(idx, exp.mesh))
                          for b, idx in data.eval_batches(exp.config.eval.batch_size)])
  return [steps_lib.summarise_eval([{k: v[s] for k, v in x.items()} for x in stats], n)
          for s in range(len(jax.tree_util.tree_leaves(params)[0]))]


def _precompile(exp, steps, state, keys, train_data, val_data) -> float:
  s = len(keys)
  acc = sharding.replicate(stack_runs([steps_lib.zero_metrics()] * s), exp.mesh)
  idx = np.full((s, exp.config.train.batch_size), -1, np.int32)
  calls = [(steps.train_group, (state, acc, d, sharding.shard_rows(idx, exp.mesh, axis=1),
                                keys)) for d in train_data.data]
  eidx = sharding.shard_rows(np.full(exp.config.eval.batch_size, -1, np.int32), exp.mesh)
  calls += [(steps.eval_group, (state.params, d, eidx)) for d in val_data.data]
  return exp.ledger.precompile(calls)


def _epoch_line(variant, seed, epoch, epochs, row, seconds, compile_s, note) -> str:
  compile_note = f", compile {compile_s:.1f}s" if compile_s > 0.05 else ""
  return (f"[{variant} seed {seed}] epoch {epoch:02d}/{epochs} | train loss "
          f"{row['train_loss']:.4f} acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} "
          f"acc {row['val_acc']:.4f} uar {row['val_uar']:.4f} | lr {row['learning_rate']:.2e} | "
          f"{seconds:.1f}s{compile_note}, {row['samples_per_second']:.0f} samples/s{note}")


def train_run(exp: Experiment, variant: str, seed: int, train: Split, val: Split, *,
              after_epoch: Optional[Callable[[int], None]] = None) -> RunResult:
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

  Returns:
    The run's state (history, best) and costs. Checkpoints are in
    ``exp.model_dir/{variant}/seed_{seed}/{best,latest}``; epochs are appended to
    ``exp.results_dir/metrics.jsonl``.
  """
  return train_runs(exp, variant, [seed], train, val, after_epoch=after_epoch)[0]


def parallel_seeds(config) -> bool:
  """``config.train.parallel_seeds``; unset: True on accelerators, False on CPU, where three
  seeds as one vmapped program measured slower than one after another (BUILD_NOTES)."""
  value = config.train.get("parallel_seeds")
  return jax.default_backend() != "cpu" if value is None else bool(value)


def train_runs(exp: Experiment, variant: str, seeds: Sequence[int], train: Split, val: Split,
               *, after_epoch: Optional[Callable[[int], None]] = None) -> list:
  """Trains the seeds of one variant as one program (see :func:`train_run` for one seed).

  Parameters, optimizer state and plateau rate are stacked on a leading axis and the
  step is ``vmap``ped over it; each seed keeps its own initialisation, dropout, rows,
  best checkpoint, history and resume, and gives the result it gives alone (tested).
  With ``config.train.parallel_seeds`` False (the default on CPU: :func:`parallel_seeds`)
  they train one after another instead.
  Seeds whose checkpoints stand at different epochs resume in separate groups.
  """
  return _train_runs(exp, variant, seeds, train, val, after_epoch=after_epoch)


def _train_runs(exp: Experiment, variant: str, seeds: Sequence[int], train: Split, val: Split,
                *, after_epoch: Optional[Callable[[int], None]] = None,
                finish: Optional[Callable[[Callable[[], None]], None]] = None) -> list:
  """:func:`train_runs`; ``finish(job)``, when given, runs each run's closing ``job`` (its
  last checkpoints written, the run unlocked) later, e.g. in a thread while the next
  variant trains (:func:`train_and_evaluate`); without it the job runs before returning."""
  check_data_dims(exp, train, val)
  seeds = [int(s) for s in seeds]
  if len(seeds) > 1 and not parallel_seeds(exp.config):
    return [r for s in seeds for r in _train_runs(exp, variant, [s], train, val,
                                                  after_epoch=after_epoch, finish=finish)]
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
    results = _train(exp, variant, seeds, train, val, members, fingerprint, after_epoch)
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


def _train(exp, variant, seeds, train, val, ckpts_list, fingerprint, after_epoch) -> list:
  cfg, log = exp.config, exp.log
  shapes = exp.training_shapes(train, val)
  steps = exp.steps(variant)
  members = []
  for seed, ckpts in zip(seeds, ckpts_list):
    root = run_key(seed, variant)
    state = steps.init_state(jax.random.fold_in(root, 0), cfg.optim.learning_rate)
    state, run = _resume(exp, ckpts, state, runs.RunState.new(
        variant, seed, steps_lib.Plateau.from_config(cfg.optim)), fingerprint)
    members.append((seed, ckpts, jax.device_get(state), run, jax.random.fold_in(root, 1)))
  starts = sorted({m[3].epoch for m in members})
  if len(starts) > 1:   # resume points differ: one group per starting epoch
    log(f"[{variant}] seeds resume from different epochs {starts}: training them in groups")
    out = {}
    for start in starts:
      group = [(m[0], m[1]) for m in members if m[3].epoch == start]
      for seed, result in zip([g[0] for g in group], _train(
          exp, variant, [g[0] for g in group], train, val, [g[1] for g in group],
          fingerprint, after_epoch)):
        out[seed] = result
    return [out[s] for s in seeds]
  start_epoch, epochs = starts[0], cfg.train.epochs
  metric = configs.selection_metric(cfg)
  if start_epoch > epochs:   # cannot rewind: the best may come from a later epoch
    raise runs.RunMismatch(ckpts_list[0].directory, f"has trained {start_epoch} epochs, more "
                           f"than the {epochs} asked for", hint="use another --model_dir for a "
                           "shorter run, or --epochs >= the epochs done")
  state = sharding.replicate(stack_runs([m[2] for m in members]), exp.mesh)
  keys = jnp.stack([m[4] for m in members])
  run_states = [m[3] for m in members]
  n_params = model_lib.count_params(members[0][2].params)
  for seed, run in zip(seeds, run_states):
    log(f"[{variant} seed {seed}] {n_params:,} parameters; "
        + (f"text buckets {list(shapes.text_buckets)}; " if shapes.text_buckets else
           f"speech buckets {list(shapes.speech_buckets)}, text length {shapes.text_length}; ")
        + (f"resuming after epoch {start_epoch}/{epochs}" if start_epoch else
           f"training {epochs} epochs on {len(train)} utterances")
        + (f" (with seeds {seeds}, as one program)" if len(seeds) > 1 else ""))
  jsonl = _metrics_log(exp)
  if jsonl:
    for seed, run in zip(seeds, run_states):
      jsonl.replace(lambda r, s=seed: r.get("variant") == variant and r.get("seed") == s,
                    [run.epoch_record(e) for e in range(1, run.epoch + 1)])

  t_run, compile_total = time.perf_counter(), 0.0
  if start_epoch < epochs:   # (a finished run uploads nothing)
    train_data, val_data = exp.device_split(train, shapes), exp.device_split(val, shapes)
    compile_total = _precompile(exp, steps, state, keys, train_data, val_data)
    if compile_total > 0.05:
      log(f"[{variant}] compiled {len(exp.ledger.entries(steps.owner))} step shapes in "
          f"{compile_total:.1f}s")
  last_save = time.perf_counter()
  best_saved = [ckpts.latest_step("best") or 0 for ckpts in ckpts_list]
  background = _off_main_thread()
  for epoch in range(start_epoch, epochs):
    t0, compiled_before = time.perf_counter(), exp.ledger.seconds
    state, sums = train_epoch(exp, steps, state, train_data, train, shapes, seeds, epoch, keys)
    val_stats = evaluate_group(exp, steps, state.params, val_data, len(val))
    seconds = time.perf_counter() - t0
    compile_s = exp.ledger.seconds - compiled_before
    compile_total += compile_s
    save_latest = epoch + 1 == epochs or time.perf_counter() - last_save >= cfg.train.get(
        "checkpoint_every_seconds", 0.0)
    lrs = []
    for i, (seed, run, ckpts) in enumerate(zip(seeds, run_states, ckpts_list)):
      count = max(float(sums["count"][i]), 1)
      train_loss = float(sums["loss_sum"][i]) / count
      if not math.isfinite(train_loss):
        raise Divergence(f"[{variant} seed {seed}] training loss became {train_loss} "
                                 f"in epoch {epoch + 1}; lower optim.learning_rate")
      lr_used = run.plateau.lr
      v = val_stats[i]
      row = dict(train_loss=train_loss, train_acc=float(sums["correct"][i]) / count,
                 val_loss=v["loss"], val_acc=v["accuracy"], val_uar=v["uar"],
                 val_macro_f1=v["macro_f1"], learning_rate=lr_used, epoch_seconds=seconds,
                 samples_per_second=len(seeds) * len(train) / max(seconds - compile_s, 1e-9))
      improved = run.record(row, v, metric)
      lrs.append(run.plateau.step(float(v[metric])))
      save_best = improved and run.epoch > best_saved[i]
      if save_best or save_latest:   # (slicing seed i out of the group costs a dispatch per leaf)
        one = jax.block_until_ready(
            run_of(state, i).replace(learning_rate=jnp.asarray(lrs[-1], jnp.float32)))
        meta = runs.checkpoint_meta(run, cfg, exp.class_names, shapes, train.preprocessing)
        # Best first: after a kill, the rerun replays from "latest" (batch order and
        # dropout are functions of seed and step), reaching the same best again.
        # A replayed improvement older than the best on disk is superseded: skip it.
        # Written by the run's writer thread while the next epoch computes (in order).
        if save_best:
          ckpts.save("best", run.epoch, one, meta, background=background)
          best_saved[i] = run.epoch
        if save_latest:
          ckpts.save("latest", run.epoch, one, meta, background=background)
      if jsonl:
        jsonl.append(run.epoch_record(run.epoch))
      note = (" *best*" if improved else "") + (f" lr→{lrs[-1]:.2e}" if lrs[-1] < lr_used
                                               else "")
      log(_epoch_line(variant, seed, run.epoch, epochs, row, seconds, compile_s, note))
    state = state.replace(learning_rate=sharding.replicate(jnp.asarray(lrs, jnp.float32),
                                                           exp.mesh))
    if save_latest:
      last_save = time.perf_counter()
    if after_epoch is not None:
      for ckpts in ckpts_list:
        ckpts.wait()   # (the callback sees this epoch's checkpoints on disk)
      after_epoch(epoch + 1)
  # (the last epoch's checkpoints are on disk when the caller closes ckpts_list)
  if start_epoch >= epochs:
    for seed in seeds:
      log(f"[{variant} seed {seed}] already trained ({epochs} epochs); reusing checkpoints")
  share = len(seeds)   # a group's time, split evenly between its seeds (sums stay true)
  seconds = time.perf_counter() - t_run
  return [RunResult(state=run, param_count=n_params, checkpoint_dir=ckpts.directory,
                    compile_seconds=compile_total / share, train_seconds=seconds / share,
                    resumed_from_epoch=start_epoch)
          for run, ckpts in zip(run_states, ckpts_list)]


def _off_main_thread() -> bool:
  """Whether checkpoint writes and a run's closing work may run in a thread: not on
  several hosts, where orbax synchronises them (collectives in the main thread only)."""
  return jax.process_count() == 1


def _raise_failed(futures: Sequence[concurrent.futures.Future], done_only: bool = False) -> None:
  """Raises the first error of ``futures`` (waiting for each unless ``done_only``)."""
  for f in futures:
    if not done_only or f.done():
      f.result()


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
    log(f"Train {len(train)} / validation {len(val)} utterances, {exp.num_classes} classes: "
        f"{list(exp.class_names)}")
    log(f"Variants {variants}, seeds {seeds}; "
        f"{'text' if shapes.text_buckets else 'speech'} padding {pad['buckets']:.1%} with "
        f"{shapes.num_buckets} buckets (vs {pad['global_max']:.1%} padding to the "
        "longest utterance)")
    # A variant's closing work (its last checkpoints written, its runs unlocked, the
    # original's .pt exported) runs in one thread, in order, while the next variant
    # compiles and trains; a failure there is raised before the next variant starts (when
    # it is known by then) or else before the report set is committed.
    with concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="fusion_jax_finish") as pool:
      pending = []

      def finish(job, needs_earlier: bool = False):
        """Queues ``job``; ``needs_earlier``: skipped (raising their error) when an earlier
        job failed. Closing a run never is: its lock and queued saves must be let go."""
        if not _off_main_thread():
          job()
          return
        before = list(pending)

        def run():
          if needs_earlier:
            _raise_failed(before)
          job()
        pending.append(pool.submit(run))

      try:
        results = {}
        for v in variants:
          _raise_failed(pending, done_only=True)
          results[v] = _train_runs(exp, v, seeds, train, val, finish=finish)
          if exp.config.train.get("export_torch", False):
            finish(functools.partial(export_torch, exp, v, seeds), needs_earlier=True)
        summary = summarize(results, exp.class_names, shapes, pad,
                            configs.selection_metric(exp.config))
        # The report set appears together, once every run has finished (and its files
        # are written), and replaces the previous training report as a whole: plots of
        # variants this run did not train and their metrics lines go, so the folder never
        # shows two runs at once.
        with io_utils.replaced_dir(os.path.join(results_dir, "plots")) as plots_dir, \
            io_utils.staged_files(results_dir) as out:
          write_training_reports(plots_dir, out, exp, results, summary)
          _raise_failed(pending)
      except BaseException as e:   # (the queued jobs still run; say which of them failed)
        for error in {f.exception() for f in pending} - {None, e}:
          log(f"warning: closing a finished variant failed too: {error}")
        raise
    jsonl = _metrics_log(exp)
    kept = {(v, s) for v in variants for s in seeds}
    jsonl.replace(lambda r: (r.get("variant"), r.get("seed")) not in kept, [])
  log(reports.training_console_summary(summary))
  log(f"All results saved to: {results_dir}\nAll models saved to: {exp.model_dir}")
  return summary


def write_training_reports(plots_dir: str, out_dir: str, exp: Experiment, results: dict,
                           summary: dict) -> None:
  """The original's training plots (into ``plots_dir``) and report, ``summary.json`` and
  ``config.json`` (into ``out_dir``)."""
  from fusion_jax import plots  # pylint: disable=import-outside-toplevel
  names = exp.class_names
  for variant, rs in results.items():
    spec = registry.get(variant)
    plots.training_curves({r.seed: r.history for r in rs}, spec.title,
                          os.path.join(plots_dir, f"{variant}_training_curves.png"))
    plots.confusion_matrix(
        sum(r.best.confusion for r in rs), names,
        f"Confusion Matrix - {variant.upper()}" + (" Fusion" if spec.is_fusion else "")
        + (f" (validation, {len(rs)} seeds)" if len(rs) > 1 else " (validation)"),
        os.path.join(plots_dir, f"{variant}_confusion_matrix.png"))
  plots.variants_comparison({v: rs[0].history for v, rs in results.items()},
                            os.path.join(plots_dir, "fusion_variants_comparison.png"))
  io_utils.write_text(os.path.join(out_dir, "fusion_variants_comparison.txt"),
                      reports.training_comparison(summary))
  io_utils.write_json(os.path.join(out_dir, "summary.json"), summary)
  io_utils.write_json(os.path.join(out_dir, "config.json"),
                      json.loads(exp.config.to_json_best_effort()))


def export_torch(exp: Experiment, variant: str, seeds: Sequence[int]) -> Optional[str]:
  """Writes ``exp.model_dir/best_{variant}_model.pt`` from a run's best checkpoint.

  The seed is ``config.train.export_torch_seed`` (-1: the first of ``seeds``). A
  variant the original has no module for, or a model with an input projection, is
  skipped with one line saying why. Returns the path written, or None.
  """
  from fusion_jax.models import convert  # pylint: disable=import-outside-toplevel
  want = exp.config.train.get("export_torch_seed", -1)
  seed = seeds[0] if want < 0 else want
  path = runs.torch_checkpoint_path(exp.model_dir, variant)
  try:
    run = runs.load_run(exp.model_dir, variant, seed)
    convert.save_torch_checkpoint(
        run.params, variant, path, epoch=run.state.best.epoch, val_acc=run.val_acc,
        class_names=run.class_names, confusion_matrix=run.state.best.confusion,
        opt_state=run.opt_state, learning_rate=run.learning_rate, optim_config=exp.config.optim)
  except (ValueError, FileNotFoundError) as e:
    exp.log(f"[{variant}] no {os.path.basename(path)}: {e}")
    return None
  exp.log(f"[{variant} seed {seed}] wrote the original's checkpoint {path}")
  return path


def summarize(results: dict, class_names: Sequence[str], shapes: batching.BatchShapes,
              pad: dict, selection_metric: str = "accuracy") -> dict:
  """``summary.json``: per variant the best validation accuracy over seeds and the best
  ``selection_metric`` (``best_val_score_*``, what chose the checkpoints), per seed the
  best checkpoint, the ranking (validation, by the selection metric) and paired tests
  between variants on it."""
  variants = {}
  for v, rs in results.items():
    accs = [r.best.val_acc for r in rs]
    mean, std = metrics.mean_std(accs)
    lo, hi = metrics.bootstrap_ci(accs)
    score_mean, score_std = metrics.mean_std([r.best.score for r in rs])
    variants[v] = dict(
        best_val_acc_mean=mean, best_val_acc_std=std, best_val_acc_ci95=[lo, hi],
        best_val_score_mean=score_mean, best_val_score_std=score_std,
        param_count=rs[0].param_count, is_fusion=registry.get(v).is_fusion,
        seeds={str(r.seed): dict(
            best_val_acc=r.best.val_acc, best_val_score=r.best.score, best_epoch=r.best.epoch,
            final_val_acc=r.state.final_val_acc, final_train_acc=r.history["train_acc"][-1],
            best_metrics=r.best.metrics, checkpoint_dir=r.checkpoint_dir,
            compile_seconds=r.compile_seconds, train_seconds=r.train_seconds,
            resumed_from_epoch=r.resumed_from_epoch,
            best_confusion=r.best.confusion.tolist()) for r in rs})
  ranking = sorted(variants, key=lambda v: -variants[v]["best_val_score_mean"])
  scores = {v: [r.best.score for r in rs] for v, rs in results.items()}
  originals = [v for v in ranking if registry.get(v).original and registry.get(v).is_fusion]
  reference = originals[0] if originals else None
  return dict(class_names=list(class_names), ranking=ranking, variants=variants,
              comparisons=metrics.paired_comparisons(scores),
              reference=reference,
              vs_reference=metrics.against_reference(scores, reference) if reference else {},
              shapes=dict(speech_buckets=list(shapes.speech_buckets),
                          text_length=shapes.text_length,
                          text_buckets=list(shapes.text_buckets)),
              padding_fraction=pad, selected_on="validation", selection_metric=selection_metric)
