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

import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from fusion_jax import checkpoint, io_utils, metrics, reports, runs, sharding
from fusion_jax import steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.data.errors import DataError
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


def train_epoch(exp: Experiment, steps: steps_lib.Steps, state: steps_lib.TrainState,
                split: Split, shapes: batching.BatchShapes, seed: int, epoch: int,
                dropout_key) -> tuple:
  """One pass over ``split`` in the seeded order; returns ``(state, host metric sums)``."""
  bs = exp.config.train.batch_size
  acc = sharding.replicate(steps_lib.zero_metrics(), exp.mesh)
  plan = batching.batch_indices(split, shapes, bs, shuffle=True, seed=seed, epoch=epoch)
  every = exp.config.train.get("progress_every", 0) or max(1, len(plan) // 10)
  show = len(plan) >= 20 and sys.stdout.isatty()
  for i, (b, rows) in enumerate(plan):
    batch = batching.make_batch(split, rows, shapes.speech_buckets[b], shapes.text_length, bs)
    state, acc = exp.ledger(steps.train, state, acc, exp.shard(batch), dropout_key)
    if show and (i + 1) % every == 0 and i + 1 < len(plan):
      print(f"\r  epoch {epoch + 1}: step {i + 1}/{len(plan)}", end="", flush=True)
  if show:
    print("\r", end="")
  return state, jax.device_get(acc)  # the one host sync of the epoch


def _precompile(exp, steps, state, dropout_key, shapes, template) -> float:
  calls = []
  for length in shapes.speech_buckets:
    for step, bs in ((steps.train, exp.config.train.batch_size),
                     (steps.eval, exp.config.eval.batch_size)):
      batch = exp.shard(batching.make_batch(template, [], length, shapes.text_length, bs))
      args = ((state, sharding.replicate(steps_lib.zero_metrics(), exp.mesh), batch,
               dropout_key) if step is steps.train else (state.params, batch))
      calls.append((step, args))
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
  check_data_dims(exp, train, val)
  fingerprint = runs.fingerprint(exp.config)
  identity = dict(variant=variant, seed=int(seed), fingerprint=fingerprint,
                  class_names=list(exp.class_names), train=exp.data_identity(train),
                  val=exp.data_identity(val))
  directory = runs.run_dir(exp.model_dir, variant, seed)
  with runs.RunLock(directory):
    ckpts = checkpoint.RunCheckpoints(directory)
    try:
      if not os.path.exists(os.path.join(directory, "run.json")):
        _check_unrecorded(ckpts, directory, fingerprint)
      runs.check_identity(directory, identity)
      return _train(exp, variant, seed, train, val, ckpts, fingerprint, after_epoch)
    finally:
      ckpts.close()


def _check_unrecorded(ckpts, directory, fingerprint) -> None:
  """Checkpoints without a run record (written before records existed): same config only."""
  for kind in ("latest", "best"):
    if ckpts.latest_step(kind) is not None:
      meta = ckpts.restore_meta(kind)
      if meta.get("fingerprint") != fingerprint:
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
      if meta.get("fingerprint") != fingerprint:
        raise runs.RunMismatch(ckpts.path("latest", step), "was saved with another config",
                               hint="use another --model_dir or delete it")
      saved, meta = ckpts.restore("latest", abstract, step)
      return sharding.replicate(saved, exp.mesh), runs.RunState.from_meta(meta, run.plateau)
    except checkpoint.CorruptCheckpoint as e:
      exp.log(f"warning: {e}; trying an older checkpoint")
  return state, run


def _train(exp, variant, seed, train, val, ckpts, fingerprint, after_epoch) -> RunResult:
  cfg, log = exp.config, exp.log
  shapes = exp.training_shapes(train, val)
  steps = exp.steps(variant)
  root = run_key(seed, variant)
  state = sharding.replicate(steps.init_state(jax.random.fold_in(root, 0),
                                              cfg.optim.learning_rate), exp.mesh)
  dropout_key = jax.random.fold_in(root, 1)
  state, run = _resume(exp, ckpts, state, runs.RunState.new(
      variant, seed, steps_lib.Plateau.from_config(cfg.optim)), fingerprint)
  start_epoch, epochs = run.epoch, cfg.train.epochs
  n_params = model_lib.count_params(state.params)
  log(f"[{variant} seed {seed}] {n_params:,} parameters; speech buckets "
      f"{list(shapes.speech_buckets)}, text length {shapes.text_length}; "
      + (f"resuming after epoch {start_epoch}/{epochs}" if start_epoch else
         f"training {epochs} epochs on {len(train)} utterances"))
  jsonl = _metrics_log(exp)
  if jsonl:
    jsonl.replace(lambda r: r.get("variant") == variant and r.get("seed") == seed,
                  [run.epoch_record(e) for e in range(1, run.epoch + 1)])

  t_run, compile_total = time.perf_counter(), 0.0
  if start_epoch < epochs:
    compile_total = _precompile(exp, steps, state, dropout_key, shapes, train)
    if compile_total > 0.05:
      log(f"[{variant} seed {seed}] compiled {len(exp.ledger.entries(steps.owner))} step "
          f"shapes in {compile_total:.1f}s")
  val_cache: dict = {}
  last_save = time.perf_counter()
  for epoch in range(start_epoch, epochs):
    t0, compiled_before = time.perf_counter(), exp.ledger.seconds
    state, sums = train_epoch(exp, steps, state, train, shapes, seed, epoch, dropout_key)
    val_stats = exp.evaluate_split(steps, state.params, val, shapes, cache=val_cache)
    seconds = time.perf_counter() - t0
    compile_s = exp.ledger.seconds - compiled_before
    compile_total += compile_s
    count = max(float(sums["count"]), 1)
    train_loss = float(sums["loss_sum"]) / count
    if not math.isfinite(train_loss):
      raise FloatingPointError(f"[{variant} seed {seed}] training loss became {train_loss} in "
                               f"epoch {epoch + 1}; lower optim.learning_rate")
    lr_used = run.plateau.lr
    row = dict(train_loss=train_loss, train_acc=float(sums["correct"]) / count,
               val_loss=val_stats["loss"], val_acc=val_stats["accuracy"],
               val_uar=val_stats["uar"], val_macro_f1=val_stats["macro_f1"],
               learning_rate=lr_used, epoch_seconds=seconds,
               samples_per_second=len(train) / max(seconds - compile_s, 1e-9))
    improved = run.record(row, val_stats)
    new_lr = run.plateau.step(row["val_acc"])
    state = state.replace(learning_rate=jnp.asarray(new_lr, jnp.float32))
    meta = runs.checkpoint_meta(run, cfg, exp.class_names, shapes, train.preprocessing)
    # Best first: after a kill, the rerun replays from "latest" (batch order and
    # dropout are functions of seed and step), reaching the same best again.
    # A replayed improvement older than the best on disk is superseded: skip it.
    if improved and run.epoch > (ckpts.latest_step("best") or 0):
      ckpts.save("best", run.epoch, state, meta)
    if run.epoch == epochs or time.perf_counter() - last_save >= cfg.train.get(
        "checkpoint_every_seconds", 0.0):
      ckpts.save("latest", run.epoch, state, meta)
      last_save = time.perf_counter()
    if jsonl:
      jsonl.append(run.epoch_record(run.epoch))
    note = (" *best*" if improved else "") + (f" lr→{new_lr:.2e}" if new_lr < lr_used else "")
    log(_epoch_line(variant, seed, run.epoch, epochs, row, seconds, compile_s, note))
    if after_epoch is not None:
      after_epoch(run.epoch)
  if start_epoch >= epochs:
    log(f"[{variant} seed {seed}] already trained ({epochs} epochs); reusing checkpoints")
  return RunResult(state=run, param_count=n_params, checkpoint_dir=ckpts.directory,
                   compile_seconds=compile_total, train_seconds=time.perf_counter() - t_run,
                   resumed_from_epoch=start_epoch)


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
  variants = list(variants or exp.variants)
  seeds = list(seeds if seeds is not None else exp.seeds)
  with runs.RunLock(results_dir, "training report"):
    shapes = exp.training_shapes(train, val)
    pad = batching.padding_fraction(train, shapes, exp.config.train.batch_size)
    log(f"Train {len(train)} / validation {len(val)} utterances, {exp.num_classes} classes: "
        f"{list(exp.class_names)}")
    log(f"Variants {variants}, seeds {seeds}; speech padding {pad['buckets']:.1%} with "
        f"{len(shapes.speech_buckets)} buckets (vs {pad['global_max']:.1%} padding to the "
        "longest utterance)")
    results = {v: [train_run(exp, v, seed, train, val) for seed in seeds] for v in variants}
    if exp.config.train.get("export_torch", False):
      for v in variants:
        export_torch(exp, v, seeds)
    summary = summarize(results, exp.class_names, shapes, pad)
    # The report set appears together, only once every run has finished.
    with io_utils.staged_files(results_dir) as out:
      write_training_reports(out, exp, results, summary)
  log(reports.training_console_summary(summary))
  log(f"All results saved to: {results_dir}\nAll models saved to: {exp.model_dir}")
  return summary


def write_training_reports(out_dir: str, exp: Experiment, results: dict,
                           summary: dict) -> None:
  """The original's training plots and report, ``summary.json`` and ``config.json``."""
  from fusion_jax import plots  # pylint: disable=import-outside-toplevel
  names = exp.class_names
  for variant, rs in results.items():
    spec = registry.get(variant)
    plots.training_curves({r.seed: r.history for r in rs}, spec.title,
                          os.path.join(out_dir, "plots", f"{variant}_training_curves.png"))
    plots.confusion_matrix(
        sum(r.best.confusion for r in rs), names,
        f"Confusion Matrix - {variant.upper()}" + (" Fusion" if spec.is_fusion else "")
        + (f" (validation, {len(rs)} seeds)" if len(rs) > 1 else " (validation)"),
        os.path.join(out_dir, "plots", f"{variant}_confusion_matrix.png"))
  plots.variants_comparison({v: rs[0].history for v, rs in results.items()},
                            os.path.join(out_dir, "plots", "fusion_variants_comparison.png"))
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
              pad: dict) -> dict:
  """``summary.json``: per variant the best validation accuracy over seeds, per seed the
  best checkpoint, the ranking (validation) and paired tests between variants."""
  variants = {}
  for v, rs in results.items():
    accs = [r.best.val_acc for r in rs]
    mean, std = metrics.mean_std(accs)
    lo, hi = metrics.bootstrap_ci(accs)
    variants[v] = dict(
        best_val_acc_mean=mean, best_val_acc_std=std, best_val_acc_ci95=[lo, hi],
        param_count=rs[0].param_count, is_fusion=registry.get(v).is_fusion,
        seeds={str(r.seed): dict(
            best_val_acc=r.best.val_acc, best_epoch=r.best.epoch,
            final_val_acc=r.state.final_val_acc, final_train_acc=r.history["train_acc"][-1],
            best_metrics=r.best.metrics, checkpoint_dir=r.checkpoint_dir,
            compile_seconds=r.compile_seconds, train_seconds=r.train_seconds,
            resumed_from_epoch=r.resumed_from_epoch,
            best_confusion=r.best.confusion.tolist()) for r in rs})
  ranking = sorted(variants, key=lambda v: -variants[v]["best_val_acc_mean"])
  scores = {v: [r.best.val_acc for r in rs] for v, rs in results.items()}
  originals = [v for v in ranking if registry.get(v).original and registry.get(v).is_fusion]
  reference = originals[0] if originals else None
  return dict(class_names=list(class_names), ranking=ranking, variants=variants,
              comparisons=metrics.paired_comparisons(scores),
              reference=reference,
              vs_reference=metrics.against_reference(scores, reference) if reference else {},
              shapes=dict(speech_buckets=list(shapes.speech_buckets),
                          text_length=shapes.text_length),
              padding_fraction=pad, selected_on="validation")
