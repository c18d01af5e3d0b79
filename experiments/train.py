r"""Trains fusion variants (and unimodal baselines) on precomputed features.

The original's command works unchanged:

  python experiments/train.py \
    --train_speech_features train_speech.pt --train_text_features train_text.pt \
    --val_speech_features val_speech.pt --val_text_features val_text.pt \
    --csv_path train_split.csv --epochs 30 --batch_size 32 \
    --model_dir models/fusion_pipeline --results_dir results

plus --config (and --config.<field>=... overrides), --variants, --seeds. With
--data_dir, missing paths default to DIR/{train,val}_{speech,text}.pt and
DIR/train_split.csv (the layout experiments/make_demo_data.py writes).

Writes results/plots/{variant}_training_curves.png, {variant}_confusion_matrix.png,
fusion_variants_comparison.png, results/fusion_variants_comparison.txt,
metrics.jsonl, summary.json, config.json; checkpoints (orbax) under
model_dir/{variant}/seed_{seed}/{best,latest}. Rerunning the same command
resumes an interrupted run.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from fusion_jax import cli  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("train_speech_features", None, "Training speech features (.pt or .npz).")
flags.DEFINE_string("train_text_features", None, "Training text features (.pt or .npz).")
flags.DEFINE_string("val_speech_features", None, "Validation speech features.")
flags.DEFINE_string("val_text_features", None, "Validation text features.")
flags.DEFINE_string("csv_path", None, "Training split CSV (path,label,emotion_name[,transcript]);"
                    " class names come from it, as in the original.")
flags.DEFINE_string("val_csv_path", None, "Optional validation split CSV: its labels are "
                    "checked against the feature files. Default: DIR/val_split.csv next to "
                    "--csv_path when that file exists.")
flags.DEFINE_integer("epochs", None, "Training epochs (default: config.train.epochs = 30).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: config.train.batch_size = 32).")
flags.DEFINE_string("model_dir", "models/fusion_pipeline", "Where checkpoints go.")
flags.DEFINE_string("results_dir", "results", "Where plots and reports go.")
flags.DEFINE_string("data_dir", None, "Directory with {train,val}_{speech,text}.pt and "
                    "{train,val}_split.csv; fills whichever path flags are not given.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def _paths():
  flag_of = dict(train_speech="train_speech_features", train_text="train_text_features",
                 val_speech="val_speech_features", val_text="val_text_features",
                 csv="csv_path")
  paths = {k: cli.data_path(FLAGS[f].value, f"{k}.pt" if k != "csv" else "train_split.csv")
           for k, f in flag_of.items()}
  cli.require("or give --data_dir DIR holding {train,val}_{speech,text}.pt and "
              "train_split.csv", **{flag_of[k]: v for k, v in paths.items()})
  val_csv = cli.data_path(FLAGS.val_csv_path, "val_split.csv")
  if val_csv is None:
    guess = os.path.join(os.path.dirname(paths["csv"]), "val_split.csv")
    val_csv = guess if os.path.exists(guess) and "train" in os.path.basename(paths["csv"]) \
        else None
  paths["val_csv"] = val_csv if val_csv and os.path.exists(val_csv) else None
  return paths


def main(argv):
  del argv
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.epochs is not None:
      config.train.epochs = FLAGS.epochs
    if FLAGS.batch_size is not None:
      config.train.batch_size = FLAGS.batch_size
  from fusion_jax import data, training  # pylint: disable=import-outside-toplevel
  paths = _paths()
  try:
    variants, seeds = cli.variants_and_seeds(config)
    mesh = cli.setup_jax()
    class_names = data.class_names_from_csv(paths["csv"])
    train = data.load_split("train", paths["train_speech"], paths["train_text"], paths["csv"],
                            class_names=class_names, speech_dim=config.model.speech_dim,
                            text_dim=config.model.text_dim)
    val = data.load_split("val", paths["val_speech"], paths["val_text"], paths["val_csv"],
                          class_names=class_names, speech_dim=config.model.speech_dim,
                          text_dim=config.model.text_dim)
    training.train_and_evaluate(config, train, val, class_names, FLAGS.model_dir,
                                FLAGS.results_dir, variants=variants, seeds=seeds, mesh=mesh)
  except (data.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main)
