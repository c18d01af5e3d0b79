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

from fusion_jax import sharding, training
from fusion_jax.data import batching
from fusion_jax.data.splits import Split


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


def analytic_forward_flops(cfg, speech_len: int, text_len: int, variant: str) -> float:
  """Useful (unpadded) forward FLOPs of one utterance: matmuls and attention only."""
  def encoder(t, d_in):
    d = cfg.model_dim or d_in
    f = 2.0 * t * d_in * d if cfg.model_dim else 0.0
    per_layer = 2 * t * 4 * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * 4 * cfg.hidden
    return f + cfg.layers * per_layer, d
  flops = 0.0
  ds = dt = 0
  if variant != "text_only":
    f, ds = encoder(speech_len, cfg.speech_dim)
    flops += f
  if variant != "speech_only":
    f, dt = encoder(text_len, cfg.text_dim)
    flops += f
  F = cfg.f_hidden
  if variant == "cross_attention":
    flops += 2 * (speech_len * ds + text_len * dt) * F              # projections
    flops += 2 * 4 * F * F * (speech_len + text_len) + 2 * 2 * 2 * speech_len * text_len * F
    flops += 2 * 2 * F * F
  elif variant in ("concatenation", "gated", "weighted"):
    flops += 2 * (ds + dt) * F + 2 * F * F * (4 if variant == "gated" else 1)
  return flops


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


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def run_variant(config, variant: str, split: Split, *, mesh=None, repeats: int = 3,
                log=print) -> Result:
  """Times whole training epochs (after a compile/warm-up epoch) and evaluation passes."""
  mesh = mesh or sharding.make_mesh(1)
  bs, eval_bs = config.train.batch_size, config.eval.batch_size
  shapes = training.plan_shapes(config, split)
  trainer = training.make_trainer(config, variant, 7, mesh)
  state = trainer.init_state(jax.random.key(0), config.optim.learning_rate)
  key = jax.random.key(1)
  n = len(split)

  def epoch(e):
    nonlocal state
    acc = sharding.replicate(training._zeros_acc(), mesh)  # pylint: disable=protected-access
    times = []
    for b, rows in batching.batch_indices(split, shapes, bs, shuffle=True, seed=0, epoch=e):
      batch = batching.make_batch(split, rows, shapes.speech_buckets[b], shapes.text_length, bs)
      t0 = time.perf_counter()
      state, acc = trainer.train_step(state, acc, batch, key)
      jax.block_until_ready(acc)
      times.append((time.perf_counter() - t0, len(rows), b))
    return times

  t0 = time.perf_counter()
  epoch(0)  # compiles every bucket
  warm = time.perf_counter() - t0
  train_compile = trainer.compile_seconds
  log(f"  [{variant}] warm-up epoch {warm:.1f}s (compile {train_compile:.1f}s, "
      f"{trainer.compile_count} shapes)")
  epoch_rates, step_ms = [], []
  for r in range(repeats):
    times = epoch(r + 1)
    total = sum(t for t, _, _ in times)
    epoch_rates.append(n / total)
    step_ms += [1000 * t for t, _, _ in times]
  # executed FLOPs of one epoch from XLA's cost analysis of each compiled bucket
  plan = batching.batch_indices(split, shapes, bs, shuffle=True, seed=0, epoch=1)
  per_bucket = {}
  for sig, compiled in trainer._compiled.items():  # pylint: disable=protected-access
    if sig[0] == "train":
      per_bucket[_speech_len(sig)] = _flops(compiled)
  executed = sum(per_bucket.get(shapes.speech_buckets[b], 0.0) for b, _ in plan)
  useful = sum(3 * analytic_forward_flops(_model_cfg(config), int(s), int(t), variant)
               for s, t in zip(split.speech_lengths, split.text_lengths))
  train_rate = float(np.median(epoch_rates))
  # evaluation
  cache: dict = {}
  trainer.evaluate(state.params, split, shapes, eval_bs, cache=cache)  # compile + transfer
  eval_rates = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    trainer.evaluate(state.params, split, shapes, eval_bs, cache=cache)
    eval_rates.append(n / (time.perf_counter() - t0))
  pad = batching.padding_fraction(split, shapes, bs)["buckets"]
  return Result(
      variant=variant, train_samples_per_s=train_rate,
      train_step_ms_median=float(np.median(step_ms)),
      eval_samples_per_s=float(np.median(eval_rates)),
      compile_s=trainer.compile_seconds, compiled_shapes=trainer.compile_count,
      padding_fraction=pad, executed_flops_per_sample=executed / n,
      useful_flops_per_sample=useful / n,
      achieved_tflops=executed / n * train_rate / 1e12,
      peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      peak_device_mb=_peak_device_mb(),
      params=sum(x.size for x in jax.tree_util.tree_leaves(state.params)))


def _speech_len(sig) -> int:
  """Speech length of a compiled train step's signature (its batch's ``speech`` leaf)."""
  shapes = [s for s, _ in sig[2]]
  three_d = [s for s in shapes if len(s) == 3]
  return int(three_d[0][1])  # batch dict leaves sorted by key: speech before text


def _model_cfg(config):
  from fusion_jax.models.model import ModelConfig  # pylint: disable=import-outside-toplevel
  return ModelConfig.from_config(config.model)


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
