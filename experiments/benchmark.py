r"""Training/evaluation throughput, memory and FLOPs per variant on generated data.

  python experiments/benchmark.py                       # original dims (768-d), all fusion heads
  python experiments/benchmark.py --feature_dim 256 --dtype bfloat16 --num_buckets 6
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/benchmark.py --num_devices 8

Data: --num_utterances utterances, speech lengths lognormal with mean
--mean_speech_frames (default 180, wav2vec2 at 50 Hz), text mean --mean_text_tokens (20).
Prints a table and writes --json_out. Training samples/s is the median over --repeats
timed epochs after a warm-up epoch that compiles every bucket (compile reported apart).
--dump_data writes the generated split as .npz for scripts/torch_throughput.py.
"""

import dataclasses
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from fusion_jax import cli  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Training batch size.")
flags.DEFINE_integer("eval_batch_size", 64, "Evaluation batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (params stay "
                  "float32).")
flags.DEFINE_integer("num_buckets", 4, "Speech-length buckets (compiled shapes).")
flags.DEFINE_integer("feature_dim", 768, "Speech and text feature dim (the original: 768).")
flags.DEFINE_integer("num_utterances", 64, "Generated utterances per epoch (64 keeps a CPU run "
                     "of the four fusion heads at 768-d to minutes; 256+ for steadier numbers).")
flags.DEFINE_float("mean_speech_frames", 180.0, "Mean speech length in frames.")
flags.DEFINE_float("mean_text_tokens", 20.0, "Mean text length in tokens.")
flags.DEFINE_integer("repeats", 2, "Timed epochs (and evaluation passes) per variant.")
flags.DEFINE_string("json_out", "benchmark.json", "Where the JSON results go.")
flags.DEFINE_string("dump_data", None, "Write the generated split to this .npz and exit.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from fusion_jax import benchmark, io_utils, models  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  with config.unlocked():
    config.model.speech_dim = config.model.text_dim = FLAGS.feature_dim
    config.model.dtype = FLAGS.dtype
    config.train.batch_size = FLAGS.batch_size
    config.eval.batch_size = FLAGS.eval_batch_size
    config.data.num_buckets = FLAGS.num_buckets
  split = benchmark.synthetic_split(FLAGS.num_utterances, FLAGS.feature_dim, FLAGS.feature_dim,
                                    FLAGS.mean_speech_frames, FLAGS.mean_text_tokens)
  if FLAGS.dump_data:
    np.savez(FLAGS.dump_data, speech_lengths=split.speech_lengths,
             text_lengths=split.text_lengths, labels=split.labels, feature_dim=FLAGS.feature_dim,
             seed=0)
    print(f"wrote {FLAGS.dump_data}")
    return
  mesh = cli.setup_jax()
  variants = models.parse_variants(FLAGS.variants or "fusion")
  lens = split.speech_lengths
  print(f"{len(split)} utterances, speech frames mean {lens.mean():.0f} (min {lens.min()}, "
        f"max {lens.max()}), text tokens mean {split.text_lengths.mean():.0f}; dim "
        f"{FLAGS.feature_dim}, dtype {FLAGS.dtype}, batch {FLAGS.batch_size}, "
        f"{FLAGS.num_buckets} buckets, {mesh.devices.size} device(s)", flush=True)
  results = []
  for v in variants:
    results.append(benchmark.run_variant(config, v, split, mesh=mesh, repeats=FLAGS.repeats))
    print(benchmark.table(results[-1:]).splitlines()[-1], flush=True)
  print()
  print(benchmark.table(results))
  dev = jax.devices()[0]
  io_utils.write_json(FLAGS.json_out, dict(
      machine=dict(platform=dev.platform, device_kind=dev.device_kind,
                   devices=int(mesh.devices.size), cpu=platform.processor(),
                   python=platform.python_version(), jax=jax.__version__),
      settings=dict(batch_size=FLAGS.batch_size, eval_batch_size=FLAGS.eval_batch_size,
                    dtype=FLAGS.dtype, num_buckets=FLAGS.num_buckets,
                    feature_dim=FLAGS.feature_dim, num_utterances=FLAGS.num_utterances,
                    mean_speech_frames=FLAGS.mean_speech_frames,
                    mean_text_tokens=FLAGS.mean_text_tokens, repeats=FLAGS.repeats,
                    model=dict(config.model)),
      results=[dataclasses.asdict(r) for r in results]))
  print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
