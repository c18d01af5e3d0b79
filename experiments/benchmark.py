r"""Training/evaluation throughput, memory and FLOPs per variant on generated data.

  python experiments/benchmark.py                       # original dims (768-d), all fusion heads
  python experiments/benchmark.py --feature_dim 256 --dtype bfloat16 --num_buckets 6
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/benchmark.py --num_devices 8

Data: --num_utterances utterances of --feature_dim features (default: the config's
model.speech_dim, 768 in configs/default.py), speech lengths lognormal with mean
--mean_speech_frames (default 180, wav2vec2 at 50 Hz), text mean --mean_text_tokens (20).
Model, batch sizes, dtype and buckets come from --config; --batch_size, --dtype,
--num_buckets, --eval_batch_size are aliases of its fields.
Prints a table and writes --json_out. Training samples/s is the median over --repeats
timed epochs after a warm-up epoch that compiles every bucket (compile reported apart).
--dump_data writes the generated split as .npz for scripts/torch_throughput.py.
"""

import dataclasses
import json
import os
import platform

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
cli.alias("batch_size", "train.batch_size", int, "Training batch size.")
cli.alias("eval_batch_size", "eval.batch_size", int, "Evaluation batch size.")
cli.alias("dtype", "model.dtype", str, "Compute dtype: float32 or bfloat16 (params stay "
          "float32).")
cli.alias("num_buckets", "data.num_buckets", int, "Speech-length buckets (compiled shapes).")
flags.DEFINE_integer("feature_dim", None, "Speech and text feature dim of the generated data "
                     "(default: the config's model.speech_dim; the original: 768).")
flags.DEFINE_integer("num_utterances", 64, "Generated utterances per epoch (64 keeps a CPU run "
                     "of the four fusion heads at 768-d to minutes; 256+ for steadier numbers).",
                     lower_bound=1)
flags.DEFINE_float("mean_speech_frames", 180.0, "Mean speech length in frames.", lower_bound=1.0)
flags.DEFINE_float("mean_text_tokens", 20.0, "Mean text length in tokens.", lower_bound=1.0)
flags.DEFINE_integer("repeats", 2, "Timed epochs (and evaluation passes) per variant.",
                     lower_bound=1)
flags.DEFINE_string("json_out", "benchmark.json", "Where the JSON results go.")
flags.DEFINE_integer("parallel_seeds", 1, "Seeds trained as one program (training's vmapped "
                     "group step); samples/s counts every seed's utterances.", lower_bound=1)
flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s for the run's dtype, "
                   "to report model FLOP utilisation (MFU = useful FLOPs × samples/s / "
                   "peak), e.g. 989 (H100/H200 SXM, bfloat16 dense) or 495 (TF32: JAX's "
                   "default float32 matmuls on those GPUs).", lower_bound=0.0)
flags.DEFINE_string("dump_data", None, "Write the generated split to this .npz and exit.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  config = cli.config_from_flags()
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from fusion_jax import benchmark, experiment, io_utils, models  # pylint: disable=import-outside-toplevel
  dim = FLAGS.feature_dim or config.model.speech_dim
  split = benchmark.synthetic_split(FLAGS.num_utterances, dim, dim, FLAGS.mean_speech_frames,
                                    FLAGS.mean_text_tokens)
  if FLAGS.dump_data:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.dump_data)), exist_ok=True)
    np.savez(FLAGS.dump_data, speech_lengths=split.speech_lengths,
             text_lengths=split.text_lengths, labels=split.labels, feature_dim=dim, seed=0)
    print(f"wrote {FLAGS.dump_data}")
    return
  mesh = cli.setup_jax(config)
  exp = experiment.Experiment.create(config, [f"class{k}" for k in range(7)], train=split,
                                     mesh=mesh)
  # Default: the original's four heads (the config's variant list is for training).
  variants = exp.variants if cli.explicit("train.variants") else models.parse_variants(
      "original")
  cfg = exp.config
  lens = split.speech_lengths
  print(f"{len(split)} utterances, speech frames mean {lens.mean():.0f} (min {lens.min()}, "
        f"max {lens.max()}), text tokens mean {split.text_lengths.mean():.0f}; dim {dim}, "
        f"dtype {cfg.model.dtype}, batch {cfg.train.batch_size}, {cfg.data.num_buckets} "
        f"buckets, {mesh.devices.size} device(s)", flush=True)
  results = []
  for v in variants:
    results.append(benchmark.run_variant(exp, v, split, repeats=FLAGS.repeats,
                                         seeds=FLAGS.parallel_seeds,
                                         peak_tflops=FLAGS.peak_tflops))
    print(benchmark.table(results[-1:]).splitlines()[-1], flush=True)
  print()
  print(f"host CPU: {benchmark.describe_cpu(benchmark.host_cpu())}")
  print(benchmark.table(results))
  dev = jax.devices()[0]
  io_utils.write_json(FLAGS.json_out, dict(
      machine=dict(platform=dev.platform, device_kind=dev.device_kind,
                   devices=int(mesh.devices.size), cpu=platform.processor(),
                   host_cpu=benchmark.host_cpu(),
                   python=platform.python_version(), jax=jax.__version__),
      settings=dict(batch_size=cfg.train.batch_size, eval_batch_size=cfg.eval.batch_size,
                    dtype=cfg.model.dtype, num_buckets=cfg.data.num_buckets,
                    feature_dim=dim, num_utterances=FLAGS.num_utterances,
                    mean_speech_frames=FLAGS.mean_speech_frames,
                    mean_text_tokens=FLAGS.mean_text_tokens, repeats=FLAGS.repeats,
                    parallel_seeds=FLAGS.parallel_seeds,
                    peak_tflops=FLAGS.peak_tflops, model=dict(cfg.model)),
      config=json.loads(cfg.to_json_best_effort()),
      results=[dataclasses.asdict(r) for r in results]))
  print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  cli.main(main)
