r"""Trains fusion variants (and unimodal baselines) on precomputed features.

The original's command works unchanged:

  python experiments/train.py \
    --train_speech_features train_speech.pt --train_text_features train_text.pt \
    --val_speech_features val_speech.pt --val_text_features val_text.pt \
    --csv_path train_split.csv --epochs 30 --batch_size 32 \
    --model_dir models/fusion_pipeline --results_dir results

plus --config (and --config.<field>=... overrides), --variants, --seeds. The
original's flags are aliases of config fields (--epochs = --config.train.epochs,
the paths = --config.paths.*). Feature dims come from the files. With
--data_dir, missing paths default to DIR/{train,val}_{speech,text}.pt and
DIR/train_split.csv (the layout experiments/make_demo_data.py writes).

Writes results/plots/{variant}_training_curves.png, {variant}_confusion_matrix.png,
fusion_variants_comparison.png, results/fusion_variants_comparison.txt,
metrics.jsonl, summary.json, config.json; checkpoints (orbax) under
model_dir/{variant}/seed_{seed}/{best,latest}, and the original's
model_dir/best_{variant}_model.pt (loadable by its PyTorch code). Rerunning the same command
resumes an interrupted run.
"""

import os

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
for _name, _help in (
    ("train_speech_features", "Training speech features (.pt or .npz)."),
    ("train_text_features", "Training text features (.pt or .npz)."),
    ("val_speech_features", "Validation speech features."),
    ("val_text_features", "Validation text features."),
    ("csv_path", "Training split CSV (path,label,emotion_name[,transcript]); class names come "
     "from it, as in the original."),
    ("val_csv_path", "Optional validation split CSV: its labels are checked against the "
     "feature files. Default: DIR/val_split.csv next to --csv_path when that file exists."),
    ("model_dir", "Where checkpoints go (the original's default models/fusion_pipeline)."),
    ("results_dir", "Where plots and reports go."),
    ("data_dir", "Directory with {train,val}_{speech,text}.pt and {train,val}_split.csv; fills "
     "whichever path flags are not given.")):
  cli.alias(_name, f"paths.{_name}", str, _help)
cli.alias("epochs", "train.epochs", int, "Training epochs (the original's flag).")
cli.alias("batch_size", "train.batch_size", int, "Batch size (the original's flag).")
cli.alias("export_torch", "train.export_torch", bool, "Also write the original's "
          "MODEL_DIR/best_{variant}_model.pt (torch.save format, written without torch; "
          "--noexport_torch skips it).")
cli.define_common_flags()
cli.define_fold_flags()
flags.adopt_module_key_flags(cli)


def _paths(config):
  names = dict(train_speech_features="train_speech.pt", train_text_features="train_text.pt",
               csv_path="train_split.csv")
  if config.data.fold < 0:   # (one fold: the training files hold the whole corpus)
    names.update(val_speech_features="val_speech.pt", val_text_features="val_text.pt")
  paths = {f: cli.data_path(config, f, name) for f, name in names.items()}
  cli.require("or give --data_dir DIR holding {train,val}_{speech,text}.pt and "
              "train_split.csv", **paths)
  if config.data.fold >= 0:
    return paths
  val_csv = cli.optional_path(config, "val_csv_path", "val_split.csv")
  if val_csv is None and not config.paths.val_csv_path and "train" in os.path.basename(
      paths["csv_path"]):   # beside the training CSV, as the original's layout has it
    val_csv = cli.existing(os.path.join(os.path.dirname(paths["csv_path"]), "val_split.csv"))
  paths["val_csv_path"] = val_csv
  return paths


def main(argv):
  del argv
  config = cli.config_from_flags()
  paths = _paths(config)
  from fusion_jax import data, experiment, training  # pylint: disable=import-outside-toplevel
  mesh = cli.setup_jax(config, multi_process=True)
  names = data.class_names_from_csv(paths["csv_path"])
  train = data.load_split("train", paths["train_speech_features"],
                          paths["train_text_features"], paths["csv_path"], class_names=names)
  if config.data.fold >= 0:
    train, val, _ = cli.fold_of(config, train)
  else:
    val = data.load_split("val", paths["val_speech_features"], paths["val_text_features"],
                          paths["val_csv_path"], class_names=names)
  for m in ("speech", "text"):  # dims come from the data; an explicit dim must agree
    field = f"model.{m}_dim"
    got = int(getattr(train, m)[0].shape[1])
    if cli.explicit(field) and config.model[f"{m}_dim"] != got:
      raise data.DataError(train.sources[m], f"{m} features are {got}-d but "
                           f"--config.{field}={config.model[f'{m}_dim']}", field="x",
                           hint=f"drop --config.{field}: dims are read from the files")
  exp = experiment.Experiment.create(config, names, train=train, val=val, mesh=mesh,
                                     model_dir=config.paths.model_dir,
                                     results_dir=config.paths.results_dir)
  training.train_and_evaluate(exp, train, val)


if __name__ == "__main__":
  cli.main(main)
