"""Throughput, memory and FLOPs of the training and evaluation steps on generated data.

Data has the original's shapes: speech frames with a realistic length spread
(lognormal, mean ~180 frames, as wav2vec2 at 50 Hz on TESS-like clips), text
tokens with mean ~20. Every number is measured after compilation; compile
time and the number of compiled shapes are reported apart.
"""

from __future__ import annotations

import dataclasses
import resource
from typing import Optional, Sequence

import jax
import numpy as np

from fusion_jax import hooks, loop, optim as optim_lib, runs
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import model as model_lib


def host_cpu(cpuinfo: Optional[str] = None) -> dict:
  """The host CPU a figure was measured on: ``model`` (its name), ``cores`` (logical),
  ``avx2``, ``avx512`` (AVX-512 F), ``amx`` (AMX tiles with bf16), from ``/proc/cpuinfo``
  (or the text given). Hosts of one kind can differ here, and speed with them (XLA and
  oneDNN take other paths on AVX-512 / AMX), so every benchmark records it."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  model, flags, cores = "", set(), 0
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    key = key.strip()
    if key == "processor":
      cores += 1
    elif key == "model name" and not model:
      model = value.strip()
    elif key == "flags" and not flags:
      flags = set(value.split())
  return dict(model=model or "unknown", cores=cores, avx2="avx2" in flags,
              avx512="avx512f" in flags, amx={"amx_tile", "amx_bf16"} <= flags)


def describe_cpu(cpu: dict) -> str:
  """``"AMD EPYC, 2 cores, AVX2"``: :func:`host_cpu` in one line."""
  isa = [n for n, k in (("AVX2", "avx2"), ("AVX-512", "avx512"), ("AMX", "amx")) if cpu[k]]
  return f"{cpu['model']}, {cpu['cores']} cores, {' + '.join(isa) or 'no AVX2'}"


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
                seeds: int = 1, peak_tflops: Optional[float] = None) -> Result:
  """Times the training loop itself (:func:`fusion_jax.loop.train_group`, through a
  :class:`~fusion_jax.hooks.Timing` hook): one warm-up epoch that compiles, then
  ``repeats`` epochs, each a training pass and a validation pass over ``split``.

  ``exp`` is built on ``split`` (its dims and batch shapes); compile times and XLA's
  FLOP counts come from the experiment's compile ledger. An epoch's training pass is
  timed as training runs it: steps issued one after another without waiting for each
  (JAX dispatches asynchronously), one wait at the end; "host ms" is the median time to
  issue a step.

  Args:
    seeds: how many runs step together (the vmapped group step of training).
    peak_tflops: the device's peak rate for the step's dtype (e.g. 989 for an H100/H200
      in bfloat16, 495 in TF32); gives ``mfu``, model FLOP utilisation.
  """
  cfg, log = exp.config, exp.log
  bs = cfg.train.batch_size
  shapes = exp.training_shapes(split)
  steps = exp.steps(variant)
  one = steps.init_state(jax.random.key(0), cfg.optim.learning_rate)
  group = loop.Group.start(
      exp, variant, range(seeds),
      [runs.RunState.new(variant, s, optim_lib.Plateau.from_config(cfg.optim))
       for s in range(seeds)], [one] * seeds, [jax.random.key(1 + s) for s in range(seeds)],
      shapes, epochs=1 + repeats)
  num_params = group.param_count
  del one  # (its buffers would count in the peak memory)
  n = len(split)
  compiled_before = exp.ledger.seconds
  timing = hooks.Timing()
  loop.train_group(exp, group, split, split, [timing])
  warm, timed = timing.epochs[0], timing.epochs[1:]
  train_entries = exp.ledger.entries(steps.owner, "train_group")
  log(f"  [{variant}] warm-up epoch {warm.seconds:.1f}s (compile "
      f"{(timing.compile_seconds or 0.0) + warm.compile_seconds:.1f}s, "
      f"{len(train_entries)} shapes)")
  train_rate = float(np.median([seeds * n / e.train_seconds for e in timed]))
  executed, useful = _epoch_flops(exp, variant, steps, split, shapes, train_entries, seeds)
  pad = batching.padding_fraction(split, shapes, bs)["buckets"]
  peak_host_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  compiled_shapes = len(exp.ledger.entries(steps.owner))
  del group
  exp.forget(variant)  # the next variant starts without this one's executables
  model_tflops = useful / (n * seeds) * train_rate / 1e12
  return Result(
      variant=variant, train_samples_per_s=train_rate,
      train_step_ms=float(np.median([1000 * e.train_seconds / len(e.issue_seconds)
                                     for e in timed])),
      eval_samples_per_s=float(np.median([seeds * n / e.eval_seconds for e in timed])),
      compile_s=exp.ledger.seconds - compiled_before,
      compiled_shapes=compiled_shapes,
      padding_fraction=pad, executed_flops_per_sample=executed / (n * seeds),
      useful_flops_per_sample=useful / (n * seeds),
      achieved_tflops=executed / (n * seeds) * train_rate / 1e12,
      peak_host_mb=peak_host_mb,
      peak_device_mb=_peak_device_mb(), params=num_params, seeds=seeds,
      host_ms_per_step=float(np.median([1000 * t for e in timed for t in e.issue_seconds])),
      model_tflops=model_tflops, mfu=model_tflops / peak_tflops if peak_tflops else None)


def _epoch_flops(exp: Experiment, variant: str, steps, split: Split, shapes, train_entries,
                 seeds: int) -> tuple:
  """One training epoch's ``(executed, useful)`` FLOPs: executed from XLA's cost analysis
  of each compiled bucket (padding included), useful from the model's own count
  (forward × 3, real lengths only)."""
  bs = exp.config.train.batch_size
  plan = batching.batch_indices(split, shapes, bs, shuffle=True, seed=0, epoch=1)
  # (XLA counts a loop's body once: a step computed in microbatches is scaled by their count)
  per_bucket = {e.batch_shapes["speech"][1]: e.flops() * steps.microbatches(
      bs, e.batch_shapes["speech"][1], e.batch_shapes["text"][1]) for e in train_entries}
  executed = sum(per_bucket.get(shapes.speech_buckets[b], 0.0) for b, _ in plan)
  useful = seeds * sum(3 * model_lib.forward_flops(exp.model_config, variant, int(s), int(t))
                       for s, t in zip(split.speech_lengths, split.text_lengths))
  return executed, useful


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
