"""Writes the embedded synthetic demo dataset in the original on-disk format.

  python experiments/make_demo_data.py --out_dir demo_run/data --signal both

Files: {train,val,test}_speech.pt, {train,val,test}_text.pt (torch.save dicts
{'x','m','y'}, written without torch) and {train,val,test}_split.csv
(path,label,emotion_name,transcript,speaker). --signal chooses which modality
carries the class: both, speech, text or complementary.
"""

from absl import flags

from fusion_jax import cli, data

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "demo_run/data", "Output directory.")
flags.DEFINE_enum("signal", "both", list(data.SIGNALS), "Which modality carries the class.")
flags.DEFINE_integer("train_size", 280, "Training utterances.")
flags.DEFINE_integer("val_size", 105, "Validation utterances.")
flags.DEFINE_integer("test_size", 105, "Test utterances.")
flags.DEFINE_integer("speech_dim", 64, "Speech feature dim (the original's wav2vec2: 768).")
flags.DEFINE_integer("text_dim", 64, "Text feature dim (the original's RoBERTa: 768).")
flags.DEFINE_float("strength", data.DemoSpec.strength, "Class-signal amplitude per frame.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
  del argv
  spec = data.DemoSpec(signal=FLAGS.signal, speech_dim=FLAGS.speech_dim,
                       text_dim=FLAGS.text_dim, strength=FLAGS.strength, seed=FLAGS.seed,
                       sizes=(("train", FLAGS.train_size), ("val", FLAGS.val_size),
                              ("test", FLAGS.test_size)))
  paths = data.make_demo_dataset(FLAGS.out_dir, spec)
  for split, files in paths.items():
    print(f"{split}: {files['speech']}, {files['text']}, {files['csv']}")


if __name__ == "__main__":
  cli.main(main)
