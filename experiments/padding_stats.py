"""Prints the fraction of speech frames that are padding: buckets vs batch max vs global max.

  python experiments/padding_stats.py --speech_features demo_run/data/train_speech.pt \
      --text_features demo_run/data/train_text.pt --batch_size 32 --num_buckets 1,2,3,4,6,8

"buckets" = fusion_jax's fixed shapes (one compile per bucket, padded rows
counted as padding); "batch max" = a DataLoader padding each batch to its
longest utterance (one shape per batch: a recompile per batch under jit);
"global max" = the original's files, every utterance padded to the longest.
"""

from absl import flags

from fusion_jax import cli, data

FLAGS = flags.FLAGS
flags.DEFINE_string("speech_features", "demo_run/data/train_speech.pt", "Speech features.")
flags.DEFINE_string("text_features", "demo_run/data/train_text.pt", "Text features.")
flags.DEFINE_integer("batch_size", 32, "Batch size.", lower_bound=1)
flags.DEFINE_list("num_buckets", ["1", "2", "3", "4", "6", "8"], "Bucket counts to compare.")


def main(argv):
  del argv
  split = data.load_split("train", FLAGS.speech_features, FLAGS.text_features)
  lens = split.speech_lengths
  print(f"{len(split)} utterances, speech frames: min {lens.min()}, median "
        f"{int(sorted(lens)[len(lens) // 2])}, mean {lens.mean():.0f}, max {lens.max()}")
  print(f"{'buckets':>8} {'lengths':<36} {'padding (buckets)':>18} {'batch max':>10} "
        f"{'global max':>11}")
  if not all(k.isdigit() and int(k) >= 1 for k in FLAGS.num_buckets):
    cli.fail(f"--num_buckets={','.join(FLAGS.num_buckets)}: give bucket counts >= 1, e.g. 1,2,4")
  for k in FLAGS.num_buckets:
    shapes = data.plan_shapes([split], int(k), batch_size=FLAGS.batch_size)
    fr = data.padding_fraction(split, shapes, FLAGS.batch_size)
    print(f"{k:>8} {str(list(shapes.speech_buckets)):<36} {fr['buckets']:>18.1%} "
          f"{fr['batch_max']:>10.1%} {fr['global_max']:>11.1%}")


if __name__ == "__main__":
  cli.main(main)
