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
import jax.numpy as jnp
import numpy as np

from fusion_jax import sharding
from fusion_jax import steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import model as model_lib
from fusion_jax.errors import ConfigError


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
  train_step_ms: float               # an epoch's wall time / its steps (median over epochs)
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
  seeds: int = 1                     # runs trained as one program (samples/s counts all)
  batches: str = "device"            # "device": gathered on the device; "host": built per step
  host_ms_per_step: float = 0.0      # host time to issue one step (median)
  model_tflops: float = 0.0          # useful (analytic, unpadded) FLOPs × samples/s
  mfu: Optional[float] = None        # model_tflops / the device's peak, when given


def _peak_device_mb() -> Optional[float]:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def run_variant(exp: Experiment, variant: str, split: Split, *, repeats: int = 3,
                seeds: int = 1, batches: str = "device",
                peak_tflops: Optional[float] = None) -> Result:
  """Times whole training epochs (after a compile/warm-up epoch) and evaluation passes.

  ``exp`` is built on ``split`` (its dims and batch shapes); compile times and XLA's
  FLOP counts come from the experiment's compile ledger. An epoch is timed as training
  runs it: steps issued one after another without waiting for each (JAX dispatches
  asynchronously), one wait at the end; "host ms" is the median time to issue a step.

  Args:
    seeds: how many runs step together (the vmapped group step of training).
    batches: ``"device"`` — the split uploaded once, each step gathers its rows on the
      device (what training does); ``"host"`` — each batch padded on the host and
      transferred (the previous design, kept to compare; one seed only).
    peak_tflops: the device's peak rate for the step's dtype (e.g. 989 for an H100/H200
      in bfloat16, 495 in TF32); gives ``mfu``, model FLOP utilisation.
  """
  from fusion_jax import training  # pylint: disable=import-outside-toplevel
  if batches not in ("device", "host") or (batches == "host" and seeds != 1):
    raise ConfigError("batches must be 'device', or 'host' with one seed")
  cfg, log = exp.config, exp.log
  bs = cfg.train.batch_size
  shapes = exp.training_shapes(split)
  steps = exp.steps(variant)
  one = steps.init_state(jax.random.key(0), cfg.optim.learning_rate)
  num_params = model_lib.count_params(one.params)
  keys = jnp.stack([jax.random.key(1 + s) for s in range(seeds)])
  if batches == "device":
    state = sharding.replicate(training.stack_runs([one] * seeds), exp.mesh)
    data = exp.device_split(split, shapes)
  else:
    state, key = sharding.replicate(one, exp.mesh), jax.random.key(1)
  del one  # (its buffers would count in the peak memory)
  n = len(split)
  compiled_before = exp.ledger.seconds

  def epoch(e):
    nonlocal state
    issue = []
    if batches == "device":
      acc = sharding.replicate(training.stack_runs([steps_lib.zero_metrics()] * seeds),
                               exp.mesh)
    else:
      acc = sharding.replicate(steps_lib.zero_metrics(), exp.mesh)
    plans = [batching.batch_indices(split, shapes, bs, shuffle=True, seed=s, epoch=e)
             for s in range(seeds)]
    start = time.perf_counter()
    for steps_i in zip(*plans):
      b = steps_i[0][0]
      t0 = time.perf_counter()
      if batches == "device":
        idx = sharding.shard_rows(np.stack([data.indices(r, bs) for _, r in steps_i]),
                                  exp.mesh, axis=1)
        state, acc = exp.ledger(steps.train_group, state, acc, data.data[b], idx, keys)
      else:
        batch = exp.shard(batching.make_batch(split, steps_i[0][1], *shapes.lengths(b), bs))
        state, acc = exp.ledger(steps.train, state, acc, batch, key)
      issue.append(time.perf_counter() - t0)
    jax.block_until_ready(acc)
    return time.perf_counter() - start, issue

  t0 = time.perf_counter()
  epoch(0)  # compiles every bucket
  warm = time.perf_counter() - t0
  train_name = "train_group" if batches == "device" else "train"
  train_entries = exp.ledger.entries(steps.owner, train_name)
  log(f"  [{variant}] warm-up epoch {warm:.1f}s (compile "
      f"{exp.ledger.seconds - compiled_before:.1f}s, {len(train_entries)} shapes)")
  epoch_rates, step_ms, issue_ms = [], [], []
  for r in range(repeats):
    seconds, issue = epoch(r + 1)
    epoch_rates.append(seeds * n / seconds)
    step_ms.append(1000 * seconds / len(issue))
    issue_ms += [1000 * t for t in issue]
  # executed FLOPs of one epoch from XLA's cost analysis of each compiled bucket
  plan = batching.batch_indices(split, shapes, bs, shuffle=True, seed=0, epoch=1)
  # (XLA counts a loop's body once: a step computed in microbatches is scaled by their count)
  per_bucket = {e.batch_shapes["speech"][1]: e.flops() * steps.microbatches(
      bs, e.batch_shapes["speech"][1], e.batch_shapes["text"][1]) for e in train_entries}
  executed = sum(per_bucket.get(shapes.speech_buckets[b], 0.0) for b, _ in plan)
  model_cfg = exp.model_config
  useful = seeds * sum(3 * model_lib.forward_flops(model_cfg, variant, int(s), int(t))
                       for s, t in zip(split.speech_lengths, split.text_lengths))
  train_rate = float(np.median(epoch_rates))
  params = training.run_of(state.params, 0) if batches == "device" else state.params
  cache: dict = {}
  exp.evaluate_split(steps, params, split, shapes, cache=cache)  # compile + transfer
  eval_rates = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    exp.evaluate_split(steps, params, split, shapes, cache=cache)
    eval_rates.append(n / (time.perf_counter() - t0))
  pad = batching.padding_fraction(split, shapes, bs)["buckets"]
  peak_host_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  compiled_shapes = len(exp.ledger.entries(steps.owner))
  del state, params, cache
  exp.forget(variant)  # the next variant starts without this one's executables
  model_tflops = useful / (n * seeds) * train_rate / 1e12
  return Result(
      variant=variant, train_samples_per_s=train_rate,
      train_step_ms=float(np.median(step_ms)),
      eval_samples_per_s=float(np.median(eval_rates)),
      compile_s=exp.ledger.seconds - compiled_before,
      compiled_shapes=compiled_shapes,
      padding_fraction=pad, executed_flops_per_sample=executed / (n * seeds),
      useful_flops_per_sample=useful / (n * seeds),
      achieved_tflops=executed / (n * seeds) * train_rate / 1e12,
      peak_host_mb=peak_host_mb,
      peak_device_mb=_peak_device_mb(), params=num_params,
      seeds=seeds, batches=batches, host_ms_per_step=float(np.median(issue_ms)),
      model_tflops=model_tflops, mfu=model_tflops / peak_tflops if peak_tflops else None)


def table(results: Sequence[Result]) -> str:
  head = (f"{'variant':<16} {'train/s':>8} {'step ms':>8} {'host ms':>7} {'eval/s':>8} "
          f"{'compile s':>9} {'shapes':>6} {'pad':>6} {'GFLOP/sample':>12} {'useful':>8} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'host MB':>8} {'dev MB':>7}")
  rows = [head, "-" * len(head)]
  for r in results:
    dev = f"{r.peak_device_mb:.0f}" if r.peak_device_mb is not None else "-"
    mfu = f"{r.mfu:.1%}" if r.mfu is not None else "-"
    rows.append(f"{r.variant:<16} {r.train_samples_per_s:>8.1f} {r.train_step_ms:>8.1f} "
                f"{r.host_ms_per_step:>7.2f} "
                f"{r.eval_samples_per_s:>8.1f} {r.compile_s:>9.1f} {r.compiled_shapes:>6} "
                f"{r.padding_fraction:>6.1%} {r.executed_flops_per_sample / 1e9:>12.2f} "
                f"{r.useful_flops_per_sample / 1e9:>8.2f} {r.achieved_tflops:>8.3f} "
                f"{mfu:>6} {r.peak_host_mb:>8.0f} {dev:>7}")
  return "\n".join(rows)
