"""Converts feature files between the original's .pt layout and fusion_jax's .npz.

  python experiments/convert_features.py --input train_speech.pt --output train_speech.npz
  python experiments/convert_features.py --input feats.npz --output feats.pt   # original layout

The .pt input is read without torch (restricted unpickler). The native .npz
stores utterances unpadded (features [sum T, D], lengths [N], labels [N], ids);
a .pt output is the original's padded dict {'x', 'm', 'y'}.
"""

from absl import flags

from fusion_jax import cli, data

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Input feature file (.pt or .npz).", required=True)
flags.DEFINE_string("output", None, "Output file: .npz (native) or .pt (original layout).",
                    required=True)
flags.DEFINE_integer("expected_dim", None, "Fail unless the feature dim is this.")


def main(argv):
  del argv
  feats = data.load_features(FLAGS.input, expected_dim=FLAGS.expected_dim)
  if FLAGS.output.endswith(".npz"):
    data.save_features(FLAGS.output, feats)
  elif FLAGS.output.endswith(".pt"):
    if feats.labels is None:
      raise data.DataError(FLAGS.input, "no labels: the original .pt layout needs 'y'",
                           field="y")
    data.save_original_layout(FLAGS.output, feats.sequences, feats.labels)
  else:
    raise data.DataError(FLAGS.output, "output must end in .npz or .pt")
  lengths = feats.lengths
  print(f"{FLAGS.input} -> {FLAGS.output}: {len(feats)} utterances, dim {feats.dim}, "
        f"{int(lengths.sum())} frames (min {lengths.min()}, max {lengths.max()})")


if __name__ == "__main__":
  cli.main(main)
