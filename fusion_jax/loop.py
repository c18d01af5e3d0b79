"""The one epoch loop: a group of runs trained as one program, periodic work in hooks.

:func:`train_group` is the whole of training once the runs are open: compile every shape,
then per epoch a training pass (:func:`train_epoch`), a validation pass
(:func:`evaluate_group`), each run's history, best and plateau rate updated, and the
hooks called. Everything else a run does at an epoch's end — checkpoints, the metrics
lines, the console, a test's interruption, a benchmark's clock — is a :class:`Hook`
(:mod:`fusion_jax.hooks`), in the manner of clu's periodic actions::

  group = loop.Group.start(exp, variant, seeds, run_states, states, keys, shapes)
  loop.train_group(exp, group, train, val, [hooks.Console(exp.log), hooks.Timing()])

A group's runs share the bucket schedule (one program steps them all, ``vmap``ped over a
leading ``[S]`` axis of the stacked state), each with its own rows, dropout, history,
best and plateau; a run of the group gives the result it gives alone.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from fusion_jax import configs, passes, sharding
from fusion_jax import steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.errors import Divergence
from fusion_jax.experiment import Experiment
from fusion_jax.models import floor
from fusion_jax.models import model as model_lib


def stack_runs(trees):
  """Pytrees of S runs (states, metric sums) → one pytree with a leading ``[S]`` axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def run_of(tree, i):
  """Run ``i`` of a :func:`stack_runs` pytree."""
  return jax.tree_util.tree_map(lambda x: x[i], tree)


@dataclasses.dataclass
class Group:
  """The runs of one variant that train together from the same epoch.

  Attributes:
    variant, seeds: which runs (``seeds[i]`` is run ``i`` of every stacked array).
    runs: each run's :class:`~fusion_jax.runs.RunState` (history, best, plateau), updated
      every epoch.
    state: the stacked :class:`~fusion_jax.steps.TrainState` ``[S, ...]`` on the mesh.
    keys: ``[S]`` dropout keys.
    start_epoch, epochs: epochs already done (resumed) and the epochs to reach.
    steps, shapes: the jitted steps and the batch shapes (buckets).
    param_count: parameters of one run.
    compile_seconds, seconds: compile time and wall time of the whole group so far.
  """
  variant: str
  seeds: list
  runs: list
  state: Any
  keys: Any
  start_epoch: int
  epochs: int
  steps: steps_lib.Steps
  shapes: batching.BatchShapes
  param_count: int
  compile_seconds: float = 0.0
  seconds: float = 0.0

  @classmethod
  def start(cls, exp: Experiment, variant: str, seeds: Sequence[int], run_states: Sequence,
            states: Sequence, keys: Sequence, shapes: batching.BatchShapes,
            epochs: Optional[int] = None) -> "Group":
    """A group from each run's (host) state and key; ``epochs`` default: the config's."""
    starts = {r.epoch for r in run_states}
    assert len(starts) == 1, f"a group's runs start from one epoch, not {sorted(starts)}"
    return cls(variant=variant, seeds=[int(s) for s in seeds], runs=list(run_states),
               state=sharding.replicate(stack_runs(list(states)), exp.mesh),
               keys=jnp.stack(list(keys)), start_epoch=starts.pop(),
               epochs=exp.config.train.epochs if epochs is None else int(epochs),
               steps=exp.steps(variant), shapes=shapes,
               param_count=model_lib.count_params(states[0].params))


@dataclasses.dataclass
class EpochEnd:
  """What one epoch of a group did (``rows[i]``, ``improved[i]``, ... are run ``i``'s).

  Attributes:
    epoch: the epoch just done, 1-based.
    rows: each run's history row (train/val loss and metrics, learning rate, seconds).
    val_stats: each run's validation statistics (loss, confusion, accuracy, uar, ...).
    improved: whether the epoch is the run's best so far by the selection metric.
    lr_used, lr_next: the learning rate of this epoch and of the next (the plateau's).
    seconds: the epoch's wall time; ``train_seconds`` / ``eval_seconds`` its two passes;
      ``compile_seconds`` what compiling took inside it (0 once every shape is compiled).
    issue_seconds: host time to issue each training step (JAX dispatches asynchronously).
  """
  epoch: int
  rows: list
  val_stats: list
  improved: list
  lr_used: list
  lr_next: list
  seconds: float
  train_seconds: float
  eval_seconds: float
  compile_seconds: float
  issue_seconds: list


class Hook:
  """Periodic work around :func:`train_group`; override what you need.

  ``start`` runs before compiling, ``compiled`` after every shape is compiled,
  ``epoch_end`` after each epoch (in the order the hooks are given), ``end`` after the last
  epoch (also when the group had nothing left to train).
  """

  def start(self, group: Group) -> None:
    pass

  def compiled(self, group: Group, seconds: float) -> None:
    pass

  def epoch_end(self, group: Group, end: EpochEnd) -> None:
    pass

  def end(self, group: Group) -> None:
    pass


def train_epoch(exp: Experiment, steps: steps_lib.Steps, state, data, split: Split,
                shapes: batching.BatchShapes, seeds: Sequence[int], epoch: int,
                dropout_keys, issue_seconds: Optional[list] = None) -> tuple:
  """One pass over ``split`` for every run of the group (stacked ``state``).

  Each seed has its own rows; all share the bucket schedule
  (:func:`fusion_jax.data.batch_indices`), so one program steps them together. The
  batches are gathered on the device from ``data`` (:class:`~fusion_jax.experiment.
  DeviceSplit`); the host only sends row indices. Returns ``(state, metric sums [S])``;
  ``issue_seconds``, when given, receives the host time to issue each step.
  """
  bs = exp.config.train.batch_size
  acc = sharding.replicate(stack_runs([steps_lib.zero_metrics()] * len(seeds)), exp.mesh)
  plans = [batching.batch_indices(split, shapes, bs, shuffle=True, seed=s, epoch=epoch)
           for s in seeds]
  every = exp.config.train.progress_every or max(1, len(plans[0]) // 10)
  bar = (tqdm.tqdm(total=len(plans[0]), desc=f"  epoch {epoch + 1}", unit="step", leave=False,
                   miniters=every, file=sys.stderr, dynamic_ncols=True)
         if len(plans[0]) >= 20 and sys.stderr.isatty() else None)
  for i, steps_i in enumerate(zip(*plans)):
    t0 = time.perf_counter()
    b = steps_i[0][0]
    assert all(s[0] == b for s in steps_i), "seeds of a group must share the bucket schedule"
    idx = np.stack([data.indices(rows, bs) for _, rows in steps_i])
    state, acc = exp.ledger(steps.train_group, state, acc, data.data[b],
                            sharding.shard_rows(idx, exp.mesh, axis=1), dropout_keys)
    if issue_seconds is not None:
      issue_seconds.append(time.perf_counter() - t0)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return state, jax.device_get(acc)  # the one host sync of the epoch


def evaluate_group(exp: Experiment, steps: steps_lib.Steps, params, data, n: int) -> list:
  """Loss, confusion matrix and summary metrics of each stacked parameter set on a split."""
  stats = jax.device_get([exp.ledger(steps.eval_group, params, data.data[b],
                                     sharding.shard_rows(idx, exp.mesh))
                          for b, idx in data.eval_batches(exp.config.eval.batch_size)])
  return [passes.summarise_eval([{k: v[s] for k, v in x.items()} for x in stats], n)
          for s in range(len(jax.tree_util.tree_leaves(params)[0]))]


def choose_blends(exp: Experiment, group: Group, val_stats: list, metric: str) -> list:
  """A floor's validation pass (:mod:`fusion_jax.models.floor`): each run takes, per
  pattern, the candidate blend that scores best by ``metric`` on validation; its stats
  become those of the "both" choice (the split as it is), with ``blend`` (the chosen
  rows, ``[3][3]``) and ``pattern_scores`` (each pattern's chosen score); the group's
  parameters get the blends. Without a floor, ``val_stats`` unchanged."""
  if not val_stats or "blends" not in val_stats[0]:
    return val_stats
  out, rows = [], []
  for v in val_stats:
    chosen = {p: floor.choose([b[metric] for b in v["blends"][p]]) for p in floor.PATTERNS}
    blend = [floor.CANDIDATES[p][chosen[p]] for p in floor.PATTERNS]
    rows.append(blend)
    out.append(dict({k: x for k, x in v.items() if k != "blends"},
                    **v["blends"]["both"][chosen["both"]],
                    blend=[[float(w) for w in r] for r in blend],
                    pattern_scores={p: float(v["blends"][p][chosen[p]][metric])
                                    for p in floor.PATTERNS}))
  params = dict(group.state.params)
  params["floor_blend"] = sharding.replicate(jnp.asarray(np.asarray(rows, np.float32)),
                                             exp.mesh)
  group.state = group.state.replace(params=params)
  return out


def precompile(exp: Experiment, group: Group, train_data, val_data) -> float:
  """Compiles the group's training and evaluation step for every bucket; wall seconds."""
  s, steps = len(group.seeds), group.steps
  acc = sharding.replicate(stack_runs([steps_lib.zero_metrics()] * s), exp.mesh)
  idx = np.full((s, exp.config.train.batch_size), -1, np.int32)
  calls = [(steps.train_group, (group.state, acc, d, sharding.shard_rows(idx, exp.mesh, axis=1),
                                group.keys)) for d in train_data.data]
  eidx = sharding.shard_rows(np.full(exp.config.eval.batch_size, -1, np.int32), exp.mesh)
  calls += [(steps.eval_group, (group.state.params, d, eidx)) for d in val_data.data]
  return exp.ledger.precompile(calls)


def _row(sums, i: int, v: dict, lr: float, seconds: float, compile_s: float, samples: int,
         label: str, epoch: int) -> dict:
  count = max(float(sums["count"][i]), 1)
  train_loss = float(sums["loss_sum"][i]) / count
  if not math.isfinite(train_loss):
    raise Divergence(f"[{label}] training loss became {train_loss} in epoch {epoch}; lower "
                     "optim.learning_rate")
  return dict(train_loss=train_loss, train_acc=float(sums["correct"][i]) / count,
              val_loss=v["loss"], val_acc=v["accuracy"], val_uar=v["uar"],
              val_macro_f1=v["macro_f1"], learning_rate=lr, epoch_seconds=seconds,
              samples_per_second=samples / max(seconds - compile_s, 1e-9))


def train_group(exp: Experiment, group: Group, train: Split, val: Split,
                hooks: Sequence[Hook] = ()) -> Group:
  """Trains ``group`` from its ``start_epoch`` to its ``epochs``, calling ``hooks``.

  Each epoch: a training pass, a validation pass, then for every run its history row,
  whether it improved on its best by the selection metric
  (:func:`fusion_jax.configs.selection_metric`), and its plateau step; then the new rates
  go into the state and each hook's ``epoch_end`` runs. A non-finite training loss stops
  with :class:`~fusion_jax.errors.Divergence`. Returns ``group`` (its ``state``, ``runs``
  and times updated).
  """
  t_start = time.perf_counter()
  for hook in hooks:
    hook.start(group)
  metric = configs.selection_metric(exp.config)
  if group.start_epoch < group.epochs:   # (a finished group uploads and compiles nothing)
    train_data = exp.device_split(train, group.shapes)
    val_data = exp.device_split(val, group.shapes.largest(configs.eval_buckets(exp.config)))
    seconds = precompile(exp, group, train_data, val_data)
    group.compile_seconds += seconds
    for hook in hooks:
      hook.compiled(group, seconds)
  for epoch in range(group.start_epoch, group.epochs):
    t0, compiled_before, issue = time.perf_counter(), exp.ledger.seconds, []
    group.state, sums = train_epoch(exp, group.steps, group.state, train_data, train,
                                    group.shapes, group.seeds, epoch, group.keys, issue)
    t1 = time.perf_counter()
    val_stats = evaluate_group(exp, group.steps, group.state.params, val_data, len(val))
    val_stats = choose_blends(exp, group, val_stats, metric)
    t2 = time.perf_counter()
    compile_s = exp.ledger.seconds - compiled_before
    group.compile_seconds += compile_s
    rows, improved, lr_used, lr_next = [], [], [], []
    for i, (seed, run) in enumerate(zip(group.seeds, group.runs)):
      lr_used.append(run.plateau.lr)
      rows.append(_row(sums, i, val_stats[i], run.plateau.lr, t2 - t0, compile_s,
                       len(group.seeds) * len(train), f"{group.variant} seed {seed}", epoch + 1))
      improved.append(run.record(rows[-1], val_stats[i], metric))
      lr_next.append(run.plateau.step(float(val_stats[i][metric])))
    group.state = group.state.replace(learning_rate=sharding.replicate(
        jnp.asarray(lr_next, jnp.float32), exp.mesh))
    end = EpochEnd(epoch + 1, rows, val_stats, improved, lr_used, lr_next, t2 - t0, t1 - t0,
                   t2 - t1, compile_s, issue)
    for hook in hooks:
      hook.epoch_end(group, end)
  group.seconds += time.perf_counter() - t_start
  for hook in hooks:
    hook.end(group)
  return group
