r"""Separability of the temporal, contextual and fusion blocks: plots and numbers.

  python experiments/analyze_embeddings.py --model_dir models/fusion_pipeline \
    --results_dir results --split test --data_dir features/ --methods tsne,umap,pca

The original's test.py flags work too (--test_speech_features, --test_text_features,
--csv_path, --test_csv_path, --model_dir, --results_dir, --batch_size): with
--split=test (the default) they name the analysed files.

Restores the best checkpoint of each variant (first seed), extracts the
masked-mean speech and text vectors and the fused vector from the model's aux
in one jitted pass, and writes results/separability/:
{variant}_{temporal|contextual|fusion}_{tsne|umap|pca}.png,
fusion_comparison_all.png, separability_report.txt, separability.json
(silhouette, 5-NN and linear-probe accuracy per block), and the heads'
internals: {variant}_gates_by_class.png, {variant}_modality_weights_by_class.png,
{variant}_attention_map.png. Works with the original's .pt checkpoints too.
"""

import os

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split to analyse; its "
                  "files default to --{split}_speech_features etc., else DATA_DIR/"
                  "{split}_{speech,text}.pt and {split}_split.csv.")
flags.DEFINE_string("speech_features", None, "The split's speech features (overrides the "
                    "split's path flags).")
flags.DEFINE_string("text_features", None, "The split's text features.")
flags.DEFINE_string("split_csv_path", None, "The split's CSV (file names for the attention "
                    "map; labels checked).")
for _name, _help in (
    ("model_dir", "Where the checkpoints are."),
    ("results_dir", "Outputs go to RESULTS_DIR/separability."),
    ("data_dir", "Directory holding the split's feature files and CSVs."),
    ("csv_path", "Training CSV: class names (default DATA_DIR/train_split.csv)."),
    ("test_speech_features", "Test speech features (the original test.py's flag)."),
    ("test_text_features", "Test text features (the original test.py's flag)."),
    ("test_csv_path", "Test split CSV (the original test.py's flag).")):
  cli.alias(_name, f"paths.{_name}", str, _help)
cli.alias("batch_size", "eval.batch_size", int, "Batch size of the embedding pass.")
cli.alias("methods", "analysis.methods", str, "Comma-separated projections: tsne, umap, pca.")
cli.alias("max_per_class", "analysis.max_per_class", int, "Subsample each class to at most "
          "this many points (0 = all). Reported when used.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  config = cli.config_from_flags()
  split = FLAGS.split
  speech = FLAGS.speech_features or cli.data_path(config, f"{split}_speech_features",
                                                   f"{split}_speech.pt")
  text = FLAGS.text_features or cli.data_path(config, f"{split}_text_features",
                                               f"{split}_text.pt")
  csv = cli.data_path(config, "csv_path", "train_split.csv")
  if FLAGS.split_csv_path and not os.path.exists(FLAGS.split_csv_path):
    cli.fail(f"--split_csv_path={FLAGS.split_csv_path}: no such file")
  split_csv = FLAGS.split_csv_path or cli.optional_path(
      config, "csv_path" if split == "train" else f"{split}_csv_path", f"{split}_split.csv")
  cli.require(speech_features=speech, text_features=text, csv_path=csv)
  from fusion_jax import analysis, data, evaluation, experiment  # pylint: disable=import-outside-toplevel
  mesh = cli.setup_jax(config)
  names = data.class_names_from_csv(csv)
  sp = data.load_split(split, speech, text, split_csv, class_names=names)
  exp = experiment.Experiment.create(config, names, mesh=mesh,
                                     model_dir=config.paths.model_dir,
                                     results_dir=config.paths.results_dir)
  runs = evaluation.load_runs(exp, exp.variants if cli.explicit("train.variants") else None,
                              exp.seeds if cli.explicit("train.seeds") else None)
  analysis.analyze(exp, runs, sp)


if __name__ == "__main__":
  cli.main(main)
