"""The hooks of the epoch loop (:func:`fusion_jax.loop.train_group`).

* :class:`Checkpoints` — each run's ``best`` (when it improved) and ``latest`` (every
  ``train.checkpoint_every_seconds`` and at the end), best first;
* :class:`MetricsLog` — one JSON line per run and epoch in ``metrics.jsonl``;
* :class:`Console` — the run's header, the compile time and one line per run and epoch;
* :class:`AfterEpoch` — calls a function with the epoch number once its checkpoints are on
  disk (tests interrupt a run with it);
* :class:`Timing` — what the benchmark reads: every epoch's pass times and step issue times.

A hook of your own subclasses :class:`fusion_jax.loop.Hook` and is passed to
:func:`fusion_jax.training.train_runs` (``hooks=``) or to ``train_group`` directly.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import jax

from fusion_jax import io_utils, runs
from fusion_jax.checkpoint import RunCheckpoints
from fusion_jax.ledger import CompileLedger
from fusion_jax.loop import EpochEnd, Group, Hook, run_of
from fusion_jax.models import floor


class Checkpoints(Hook):
  """Saves each run's ``best`` and ``latest`` checkpoints.

  Best is written before latest: after a kill, the rerun replays from ``latest`` (batch
  order and dropout are functions of seed and step) and reaches the same best again; a
  replayed improvement older than the best on disk is superseded and skipped. The writes
  run in each run's writer thread while the next epoch computes (``background``), in order.

  Args:
    ckpts: one :class:`~fusion_jax.checkpoint.RunCheckpoints` per run of the group.
    meta: ``meta(run)`` → the metadata saved with a checkpoint
      (:func:`fusion_jax.runs.checkpoint_meta`).
    every_seconds: the ``latest`` cadence (it is always written after the last epoch).
    background: whether the writes may leave the main thread (one host only).
  """

  def __init__(self, ckpts: Sequence[RunCheckpoints], meta: Callable[[runs.RunState], dict],
               every_seconds: float, background: bool):
    self.ckpts, self.meta = list(ckpts), meta
    self.every_seconds, self.background = every_seconds, background
    self.best_saved = [c.latest_step("best") or 0 for c in self.ckpts]
    self.last_save = time.perf_counter()

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    save_latest = (end.epoch == group.epochs
                   or time.perf_counter() - self.last_save >= self.every_seconds)
    for i, (run, ckpts) in enumerate(zip(group.runs, self.ckpts)):
      save_best = end.improved[i] and run.epoch > self.best_saved[i]
      if not (save_best or save_latest):
        continue
      # (slicing run i out of the group costs a dispatch per leaf: only when saving)
      one = jax.block_until_ready(run_of(group.state, i))
      meta = self.meta(run)
      if save_best:
        ckpts.save("best", run.epoch, one, meta, background=self.background)
        self.best_saved[i] = run.epoch
      if save_latest:
        ckpts.save("latest", run.epoch, one, meta, background=self.background)
    if save_latest:
      self.last_save = time.perf_counter()


class MetricsLog(Hook):
  """``metrics.jsonl``: at the start, a resumed run's epochs replace its older lines (a
  replayed epoch never appears twice); then one line per run and epoch."""

  def __init__(self, jsonl: io_utils.JsonLines):
    self.jsonl = jsonl

  def start(self, group: Group) -> None:
    for run in group.runs:
      self.jsonl.replace(
          lambda r, run=run: r.get("variant") == run.variant and r.get("seed") == run.seed,
          [run.epoch_record(e) for e in range(1, run.epoch + 1)])

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    for run in group.runs:
      self.jsonl.append(run.epoch_record(run.epoch))


def epoch_line(variant, seed, epoch, epochs, row, seconds, compile_s, note) -> str:
  """One run's epoch as the console shows it."""
  compile_note = f", compile {compile_s:.1f}s" if compile_s > 0.05 else ""
  return (f"[{variant} seed {seed}] epoch {epoch:02d}/{epochs} | train loss "
          f"{row['train_loss']:.4f} acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} "
          f"acc {row['val_acc']:.4f} uar {row['val_uar']:.4f} | lr {row['learning_rate']:.2e} | "
          f"{seconds:.1f}s{compile_note}, {row['samples_per_second']:.0f} samples/s{note}")


class Console(Hook):
  """The group's header line per run, its compile time, and one line per run and epoch."""

  def __init__(self, log: Callable[[str], None], num_train: int, ledger: CompileLedger):
    self.log, self.num_train, self.ledger = log, num_train, ledger

  def start(self, group: Group) -> None:
    shapes, seeds = group.shapes, group.seeds
    for seed in seeds:
      self.log(f"[{group.variant} seed {seed}] {group.param_count:,} parameters; "
               + (f"text buckets {list(shapes.text_buckets)}; " if shapes.text_buckets else
                  f"speech buckets {list(shapes.speech_buckets)}, text length "
                  f"{shapes.text_length}; ")
               + (f"resuming after epoch {group.start_epoch}/{group.epochs}"
                  if group.start_epoch else
                  f"training {group.epochs} epochs on {self.num_train} utterances")
               + (f" (with seeds {seeds}, as one program)" if len(seeds) > 1 else ""))

  def compiled(self, group: Group, seconds: float) -> None:
    if seconds > 0.05:
      self.log(f"[{group.variant}] compiled {len(self.ledger.entries(group.steps.owner))} step shapes in "
               f"{seconds:.1f}s")

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    for i, (seed, run) in enumerate(zip(group.seeds, group.runs)):
      note = (" *best*" if end.improved[i] else "") + (
          f" lr→{end.lr_next[i]:.2e}" if end.lr_next[i] < end.lr_used[i] else "")
      blend = end.val_stats[i].get("blend")
      if blend is not None and blend[0][0] < 1:   # the floor leans on a modality's own head
        note += f" | floor: {floor.describe(blend[0])}"
      self.log(epoch_line(group.variant, seed, run.epoch, group.epochs, end.rows[i],
                          end.seconds, end.compile_seconds, note))

  def end(self, group: Group) -> None:
    if group.start_epoch >= group.epochs:
      for seed in group.seeds:
        self.log(f"[{group.variant} seed {seed}] already trained ({group.epochs} epochs); "
                 "reusing checkpoints")


class AfterEpoch(Hook):
  """Calls ``fn(epoch)`` after each epoch, once the epoch's checkpoints are on disk."""

  def __init__(self, fn: Callable[[int], None], ckpts: Sequence[RunCheckpoints] = ()):
    self.fn, self.ckpts = fn, list(ckpts)

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    for ckpts in self.ckpts:
      ckpts.wait()
    self.fn(end.epoch)


class Timing(Hook):
  """Keeps every epoch's :class:`~fusion_jax.loop.EpochEnd` and the group's compile time."""

  def __init__(self):
    self.epochs: list = []
    self.compile_seconds: Optional[float] = None

  def compiled(self, group: Group, seconds: float) -> None:
    self.compile_seconds = seconds

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    self.epochs.append(end)
