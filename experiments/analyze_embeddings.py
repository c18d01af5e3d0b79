r"""Separability of the temporal, contextual and fusion blocks: plots and numbers.

  python experiments/analyze_embeddings.py --model_dir models/fusion_pipeline \
    --results_dir results --split test --data_dir features/ --methods tsne,umap,pca

Restores the best checkpoint of each variant (first seed), extracts the
masked-mean speech and text vectors and the fused vector from the model's aux
in one jitted pass, and writes results/separability/:
{variant}_{temporal|contextual|fusion}_{tsne|umap|pca}.png,
fusion_comparison_all.png, separability_report.txt, separability.json
(silhouette, 5-NN and linear-probe accuracy per block), and the heads'
internals: gated_gates_by_class.png, weighted_modality_weights_by_class.png,
cross_attention_attention_map.png. Works with the original's .pt checkpoints too.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from fusion_jax import cli  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", "models/fusion_pipeline", "Where the checkpoints are.")
flags.DEFINE_string("results_dir", "results", "Outputs go to RESULTS_DIR/separability.")
flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Which split to analyse; its "
                  "files default to DATA_DIR/{split}_{speech,text}.pt and {split}_split.csv.")
flags.DEFINE_string("data_dir", None, "Directory holding the split's feature files and CSVs.")
flags.DEFINE_string("speech_features", None, "The split's speech features (overrides "
                    "--data_dir).")
flags.DEFINE_string("text_features", None, "The split's text features.")
flags.DEFINE_string("split_csv_path", None, "The split's CSV (file names for the attention "
                    "map; labels checked).")
flags.DEFINE_string("csv_path", None, "Training CSV: class names (default DATA_DIR/"
                    "train_split.csv).")
flags.DEFINE_string("methods", None, "Comma-separated projections: tsne, umap, pca "
                    "(default config.analysis.methods).")
flags.DEFINE_integer("max_per_class", None, "Subsample each class to at most this many points "
                     "(0 = all; default config.analysis.max_per_class). Reported when used.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  config = FLAGS.config
  split = FLAGS.split
  speech = cli.data_path(FLAGS.speech_features, f"{split}_speech.pt")
  text = cli.data_path(FLAGS.text_features, f"{split}_text.pt")
  csv = cli.data_path(FLAGS.csv_path, "train_split.csv")
  split_csv = cli.data_path(FLAGS.split_csv_path, f"{split}_split.csv")
  cli.require(speech_features=speech, text_features=text, csv_path=csv)
  from fusion_jax import analysis, data, evaluation, models, training  # pylint: disable=import-outside-toplevel
  try:
    variants = models.parse_variants(FLAGS.variants) if FLAGS.variants else \
        evaluation.available_variants(FLAGS.model_dir)
    if not variants:
      raise FileNotFoundError(f"no trained variants in {FLAGS.model_dir}")
    seeds = training.parse_seeds(FLAGS.seeds) if FLAGS.seeds else None
    methods = [m.strip() for m in (FLAGS.methods or config.analysis.methods).split(",")
               if m.strip()]
    mesh = cli.setup_jax()
    class_names = data.class_names_from_csv(csv)
    sp = data.load_split(split, speech, text, split_csv if split_csv and os.path.exists(
        split_csv) else None, class_names=class_names)
    runs = evaluation.load_runs(FLAGS.model_dir, variants, seeds, len(class_names), config)
    max_per_class = (config.analysis.max_per_class if FLAGS.max_per_class is None
                     else FLAGS.max_per_class)
    analysis.analyze(config, runs, sp, class_names, FLAGS.results_dir, methods=methods,
                     max_per_class=max_per_class, mesh=mesh)
  except (data.DataError, ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main)
