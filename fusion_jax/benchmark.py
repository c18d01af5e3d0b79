"""Throughput, memory and FLOPs of the training and evaluation steps on generated data.

Data has the original's shapes: speech frames with a realistic length spread
(lognormal, mean ~180 frames, as wav2vec2 at 50 Hz on TESS-like clips), text
tokens with mean ~20. Every number is measured after compilation; compile
time and the number of compiled shapes are reported apart.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Optional, Sequence

import jax
import numpy as np

from fusion_jax import sharding
from fusion_jax import steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import model as model_lib


def synthetic_split(n: int, speech_dim: int, text_dim: int, mean_speech: float = 180.0,
                    mean_text: float = 20.0, num_classes: int = 7, seed: int = 0) -> Split:
  """Random features with the original's length statistics (lognormal, σ = 0.45)."""
  rng = np.random.default_rng(seed)
  sigma = 0.45
  med = lambda mean: mean / np.exp(sigma ** 2 / 2)
  s_len = np.clip(rng.lognormal(np.log(med(mean_speech)), sigma, n), 20, 4 * mean_speech)
  t_len = np.clip(rng.lognormal(np.log(med(mean_text)), sigma, n), 3, 4 * mean_text)
  return Split(
      name="synthetic",
      speech=[rng.standard_normal((int(k), speech_dim)).astype(np.float32) for k in s_len],
      text=[rng.standard_normal((int(k), text_dim)).astype(np.float32) for k in t_len],
      labels=rng.integers(0, num_classes, n))


@dataclasses.dataclass
class Result:
  variant: str
  train_samples_per_s: float
  train_step_ms_median: float
  eval_samples_per_s: float
  compile_s: float
  compiled_shapes: int
  padding_fraction: float
  executed_flops_per_sample: float   # XLA cost analysis, padding included
  useful_flops_per_sample: float     # analytic, no padding
  achieved_tflops: float
  peak_host_mb: float
  peak_device_mb: Optional[float]
  params: int


def _peak_device_mb() -> Optional[float]:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def run_variant(exp: Experiment, variant: str, split: Split, *, repeats: int = 3) -> Result:
  """Times whole training epochs (after a compile/warm-up epoch) and evaluation passes.

  ``exp`` is built on ``split`` (its dims and batch shapes); compile times and
  XLA's FLOP counts come from the experiment's compile ledger.
  """
  cfg, log = exp.config, exp.log
  shapes = exp.training_shapes(split)
  steps = exp.steps(variant)
  state = sharding.replicate(steps.init_state(jax.random.key(0), cfg.optim.learning_rate),
                             exp.mesh)
  key = jax.random.key(1)
  n = len(split)
  compiled_before = exp.ledger.seconds

  def epoch(e):
    nonlocal state
    bs = cfg.train.batch_size
    acc = sharding.replicate(steps_lib.zero_metrics(), exp.mesh)
    times = []
    for b, rows in batching.batch_indices(split, shapes, bs, shuffle=True, seed=0, epoch=e):
      batch = exp.shard(batching.make_batch(split, rows, shapes.speech_buckets[b],
                                            shapes.text_length, bs))
      t0 = time.perf_counter()
      state, acc = exp.ledger(steps.train, state, acc, batch, key)
      jax.block_until_ready(acc)
      times.append(time.perf_counter() - t0)
    return times

  t0 = time.perf_counter()
  epoch(0)  # compiles every bucket
  warm = time.perf_counter() - t0
  train_entries = exp.ledger.entries(steps.owner, "train")
  log(f"  [{variant}] warm-up epoch {warm:.1f}s (compile "
      f"{exp.ledger.seconds - compiled_before:.1f}s, {len(train_entries)} shapes)")
  epoch_rates, step_ms = [], []
  for r in range(repeats):
    times = epoch(r + 1)
    epoch_rates.append(n / sum(times))
    step_ms += [1000 * t for t in times]
  # executed FLOPs of one epoch from XLA's cost analysis of each compiled bucket
  plan = batching.batch_indices(split, shapes, cfg.train.batch_size, shuffle=True, seed=0,
                                epoch=1)
  per_bucket = {e.batch_shapes["speech"][1]: e.flops() for e in train_entries}
  executed = sum(per_bucket.get(shapes.speech_buckets[b], 0.0) for b, _ in plan)
  model_cfg = exp.model_config
  useful = sum(3 * model_lib.forward_flops(model_cfg, variant, int(s), int(t))
               for s, t in zip(split.speech_lengths, split.text_lengths))
  train_rate = float(np.median(epoch_rates))
  cache: dict = {}
  exp.evaluate_split(steps, state.params, split, shapes, cache=cache)  # compile + transfer
  eval_rates = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    exp.evaluate_split(steps, state.params, split, shapes, cache=cache)
    eval_rates.append(n / (time.perf_counter() - t0))
  pad = batching.padding_fraction(split, shapes, cfg.train.batch_size)["buckets"]
  return Result(
      variant=variant, train_samples_per_s=train_rate,
      train_step_ms_median=float(np.median(step_ms)),
      eval_samples_per_s=float(np.median(eval_rates)),
      compile_s=exp.ledger.seconds - compiled_before,
      compiled_shapes=len(exp.ledger.entries(steps.owner)),
      padding_fraction=pad, executed_flops_per_sample=executed / n,
      useful_flops_per_sample=useful / n,
      achieved_tflops=executed / n * train_rate / 1e12,
      peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      peak_device_mb=_peak_device_mb(),
      params=model_lib.count_params(state.params))


def table(results: Sequence[Result]) -> str:
  head = (f"{'variant':<16} {'train/s':>8} {'step ms':>8} {'eval/s':>8} {'compile s':>9} "
          f"{'shapes':>6} {'pad':>6} {'GFLOP/sample':>12} {'useful':>8} {'TFLOP/s':>8} "
          f"{'host MB':>8} {'dev MB':>7}")
  rows = [head, "-" * len(head)]
  for r in results:
    dev = f"{r.peak_device_mb:.0f}" if r.peak_device_mb is not None else "-"
    rows.append(f"{r.variant:<16} {r.train_samples_per_s:>8.1f} {r.train_step_ms_median:>8.1f} "
                f"{r.eval_samples_per_s:>8.1f} {r.compile_s:>9.1f} {r.compiled_shapes:>6} "
                f"{r.padding_fraction:>6.1%} {r.executed_flops_per_sample / 1e9:>12.2f} "
                f"{r.useful_flops_per_sample / 1e9:>8.2f} {r.achieved_tflops:>8.3f} "
                f"{r.peak_host_mb:>8.0f} {dev:>7}")
  return "\n".join(rows)
