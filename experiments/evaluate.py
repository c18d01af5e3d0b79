r"""Evaluates the best checkpoint of every variant on the test split.

The original's command works unchanged:

  python experiments/evaluate.py \
    --test_speech_features test_speech.pt --test_text_features test_text.pt \
    --csv_path train_split.csv --test_csv_path test_split.csv \
    --model_dir models/fusion_pipeline --results_dir results --batch_size 32

--model_dir may hold fusion_jax runs ({variant}/seed_{s}/best) or the original's
PyTorch checkpoints (best_{variant}_model.pt), which are converted without torch.

Writes results/test_results/: {variant}_test_confusion_matrix.png,
test_metrics_comparison.txt (ranked on validation, test beside it),
failure_cases_report.txt (file names and transcripts from --test_csv_path),
{variant}_predictions.csv, {variant}_reliability_diagram.png,
modality_ablation.txt, modality_reliance.png, fusion_gain_per_class.png,
test_summary.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from fusion_jax import cli  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("test_speech_features", None, "Test speech features (.pt or .npz).")
flags.DEFINE_string("test_text_features", None, "Test text features (.pt or .npz).")
flags.DEFINE_string("csv_path", None, "Training split CSV: the class names come from it.")
flags.DEFINE_string("test_csv_path", None, "Test split CSV: file names and transcripts for the "
                    "failure report; its labels are checked against the feature files.")
flags.DEFINE_string("model_dir", "models/fusion_pipeline", "Where the checkpoints are.")
flags.DEFINE_string("results_dir", "results", "Outputs go to RESULTS_DIR/test_results.")
flags.DEFINE_integer("batch_size", None, "Evaluation batch size (default config.eval.batch_size)."
                     " It need not match training.")
flags.DEFINE_string("data_dir", None, "Directory with test_{speech,text}.pt, train_split.csv, "
                    "test_split.csv (and train_*.pt for the modality fill); fills missing paths.")
flags.DEFINE_string("train_speech_features", None, "Training speech features, only for the "
                    "mean frame that replaces a removed modality (default: DATA_DIR's).")
flags.DEFINE_string("train_text_features", None, "Training text features (same use).")
flags.DEFINE_enum("ablation", "mean", ["mean", "zero", "none"], "How a removed modality is "
                  "filled: mean training frame, zero frame, or skip the modality ablation.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.batch_size is not None:
    with config.unlocked():
      config.eval.batch_size = FLAGS.batch_size
  speech = cli.data_path(FLAGS.test_speech_features, "test_speech.pt")
  text = cli.data_path(FLAGS.test_text_features, "test_text.pt")
  csv = cli.data_path(FLAGS.csv_path, "train_split.csv")
  test_csv = cli.data_path(FLAGS.test_csv_path, "test_split.csv")
  cli.require(test_speech_features=speech, test_text_features=text, csv_path=csv)
  from fusion_jax import data, evaluation, models, training  # pylint: disable=import-outside-toplevel
  try:
    variants = models.parse_variants(FLAGS.variants) if FLAGS.variants else None
    seeds = training.parse_seeds(FLAGS.seeds) if FLAGS.seeds else None
    mesh = cli.setup_jax()
    class_names = data.class_names_from_csv(csv)
    test = data.load_split("test", speech, text, test_csv if test_csv and os.path.exists(
        test_csv) else None, class_names=class_names)
    train = None
    tr_s, tr_t = cli.data_path(FLAGS.train_speech_features, "train_speech.pt"), cli.data_path(
        FLAGS.train_text_features, "train_text.pt")
    if FLAGS.ablation == "mean" and tr_s and tr_t and os.path.exists(tr_s) and os.path.exists(
        tr_t):
      train = data.load_split("train", tr_s, tr_t)
    evaluation.evaluate(config, test, class_names, FLAGS.model_dir, FLAGS.results_dir,
                        variants=variants, seeds=seeds, train=train, ablation=FLAGS.ablation,
                        mesh=mesh)
  except (data.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main)
