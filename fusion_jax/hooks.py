"""The hooks of the epoch loop (:func:`fusion_jax.loop.train_group`).

* :class:`Checkpoints` — each run's ``best`` (when it improved) and ``latest`` (every
  ``train.checkpoint_every_seconds`` and at the end), best first;
* :class:`MetricsLog` — one JSON line per run and epoch in ``metrics.jsonl``;
* :class:`Console` — the run's header, the compile time and one line per run and epoch;
* :class:`TensorBoard` — TensorBoard event files, one folder per run, flushed every epoch
  (:func:`read_scalars` reads them back);
* :class:`AfterEpoch` — calls a function with the epoch number once its checkpoints are on
  disk (tests interrupt a run with it);
* :class:`Timing` — what the benchmark reads: every epoch's pass times and step issue times.

A hook of your own subclasses :class:`fusion_jax.loop.Hook` and is passed to
:func:`fusion_jax.training.train_runs` (``hooks=``) or to ``train_group`` directly.
"""

from __future__ import annotations

import glob
import os
import struct
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


# a run's history key → its TensorBoard tag (the history keeps the original's names)
TENSORBOARD_TAGS = {
    "train_loss": "train/loss", "train_acc": "train/accuracy",
    "val_loss": "val/loss", "val_acc": "val/accuracy", "val_uar": "val/uar",
    "val_macro_f1": "val/macro_f1", "learning_rate": "learning_rate",
    "epoch_seconds": "time/epoch_seconds", "samples_per_second": "time/samples_per_second"}


def tensorboard_dir(logdir: str, variant: str, seed: int) -> str:
  """One run's event folder: ``{logdir}/{variant}/seed_{seed}`` (TensorBoard lists it as a
  run named ``variant/seed_N``)."""
  return os.path.join(logdir, variant, f"seed_{int(seed)}")


class TensorBoard(Hook):
  """Per-epoch scalars of every run as TensorBoard event files, for watching runs live:
  ``tensorboard --logdir {results_dir}/tensorboard``.

  Scalars (step = epoch): :data:`TENSORBOARD_TAGS`. Written synchronously (tensorboardX's
  ``EventsWriter``, not its queued ``SummaryWriter``, whose ``flush`` leaves queued events
  behind) and flushed after every epoch. A resumed run continues its folder in a new file
  that starts with a purge from step 1 (TensorBoard's ``purge_step``) and the run's
  history so far, as ``metrics.jsonl`` is rewritten: what a killed process wrote after its
  last checkpoint is dropped, and an epoch it checkpointed but had not yet flushed is
  there. On several hosts, process 0 writes.

  Args:
    logdir: the root folder (``tensorboard/`` in the results folder).
  """

  def __init__(self, logdir: str):
    self.logdir, self.writers = logdir, []

  def start(self, group: Group) -> None:
    if jax.process_index() != 0:
      return
    from tensorboardX.event_file_writer import EventsWriter   # (imported when training)
    from tensorboardX.proto import event_pb2
    for run in group.runs:
      folder = tensorboard_dir(self.logdir, run.variant, run.seed)
      os.makedirs(folder, exist_ok=True)
      earlier = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
      # (files are named by the second they open in: the count keeps a resume within the
      # same second from overwriting the last file, and sorts after it)
      writer = EventsWriter(os.path.join(folder, "events"), f".{len(earlier):04d}")
      if earlier:   # everything the earlier files hold is replaced by the history
        writer.write_event(event_pb2.Event(
            wall_time=time.time(), step=1,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
      for e in range(1, run.epoch + 1):
        self._write(writer, run.epoch_record(e), e)
      writer.flush()
      self.writers.append(writer)

  @staticmethod
  def _write(writer, record: dict, epoch: int) -> None:
    from tensorboardX.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(record[key]))
              for key, tag in TENSORBOARD_TAGS.items() if record.get(key) is not None]
    writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(epoch),
                                       summary=summary_pb2.Summary(value=values)))

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    for writer, run in zip(self.writers, group.runs):
      self._write(writer, run.epoch_record(run.epoch), run.epoch)
      writer.flush()

  def end(self, group: Group) -> None:
    for writer in self.writers:
      writer.close()
    self.writers = []


def read_scalars(folder: str) -> dict:
  """The scalars of one run's event folder (:func:`tensorboard_dir`) as TensorBoard shows
  them: ``{tag: [(step, value), ...]}`` sorted by step, a purge (a resumed run's
  ``purge_step``) dropping what earlier files held from that step on.

  Reads the TFRecord framing (length, CRC, Event protobuf, CRC) with tensorboardX's protos
  (TensorBoard itself is not needed); a file cut short by a kill ends at its last whole
  record.
  """
  from tensorboardX.proto import event_pb2
  scalars: dict = {}
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack_from("<Q", data, pos)
      if pos + 12 + length + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        for tag in scalars:
          scalars[tag] = {s: v for s, v in scalars[tag].items() if s < event.step}
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
  return {tag: sorted(points.items()) for tag, points in scalars.items()}


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
