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
test_summary.json; and, as the original's test.py, results/separability/
({variant}_{temporal|contextual|fusion}_{tsne|umap|pca}.png, fusion_comparison_all.png,
separability_report.txt; --noanalysis skips them).
"""

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
for _name, _help in (
    ("test_speech_features", "Test speech features (.pt or .npz)."),
    ("test_text_features", "Test text features (.pt or .npz)."),
    ("csv_path", "Training split CSV: the class names come from it."),
    ("test_csv_path", "Test split CSV: file names and transcripts for the failure report; its "
     "labels are checked against the feature files."),
    ("model_dir", "Where the checkpoints are."),
    ("results_dir", "Outputs go to RESULTS_DIR/test_results."),
    ("data_dir", "Directory with test_{speech,text}.pt, train_split.csv, test_split.csv (and "
     "train_*.pt for the modality fill); fills missing paths."),
    ("train_speech_features", "Training speech features, only for the mean frame that "
     "replaces a removed modality (default: DATA_DIR's)."),
    ("train_text_features", "Training text features (same use).")):
  cli.alias(_name, f"paths.{_name}", str, _help)
cli.alias("batch_size", "eval.batch_size", int, "Evaluation batch size; it need not match "
          "training.")
flags.DEFINE_enum("ablation", "absent", ["absent", "mean", "zero", "none"],
                  "How a modality is removed for the modality-removal table: absent (no "
                  "frame, what a missing modality is), mean training frame, zero frame, or "
                  "none (skip the table).")
flags.DEFINE_bool("analysis", True, "Also write the original test.py's separability outputs "
                  "(RESULTS_DIR/separability: t-SNE/UMAP/PCA of every block, "
                  "fusion_comparison_all.png; --config.analysis.methods chooses); "
                  "--noanalysis skips them.")
cli.define_common_flags()
cli.define_fold_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  config = cli.config_from_flags()
  csv = cli.data_path(config, "csv_path", "train_split.csv")
  from fusion_jax import analysis, data, evaluation, experiment  # pylint: disable=import-outside-toplevel
  if config.data.fold >= 0:   # the training files hold the corpus: test on the fold's own
    tr_s = cli.data_path(config, "train_speech_features", "train_speech.pt")
    tr_t = cli.data_path(config, "train_text_features", "train_text.pt")
    cli.require(train_speech_features=tr_s, train_text_features=tr_t, csv_path=csv)
    mesh = cli.setup_jax(config)
    names = data.class_names_from_csv(csv)
    # (the mean ablation fills with the fold's training speakers' mean)
    train, _, test = cli.fold_of(config, data.load_split("corpus", tr_s, tr_t, csv,
                                                         class_names=names))
  else:
    speech = cli.data_path(config, "test_speech_features", "test_speech.pt")
    text = cli.data_path(config, "test_text_features", "test_text.pt")
    test_csv = cli.optional_path(config, "test_csv_path", "test_split.csv")
    cli.require(test_speech_features=speech, test_text_features=text, csv_path=csv)
    mesh = cli.setup_jax(config)
    names = data.class_names_from_csv(csv)
    test = data.load_split("test", speech, text, test_csv, class_names=names)
    train = None
    tr_s = cli.optional_path(config, "train_speech_features", "train_speech.pt")
    tr_t = cli.optional_path(config, "train_text_features", "train_text.pt")
    if FLAGS.ablation == "mean" and tr_s and tr_t:
      train = data.load_split("train", tr_s, tr_t)
    elif FLAGS.ablation == "mean":
      print("note: no training features (--train_speech_features, --train_text_features): "
            "modality removal fills with the test split's own mean frame", flush=True)
  exp = experiment.Experiment.create(config, names, mesh=mesh,
                                     model_dir=config.paths.model_dir,
                                     results_dir=config.paths.results_dir)
  variants = exp.variants if cli.explicit("train.variants") else None
  seeds = exp.seeds if cli.explicit("train.seeds") else None
  evaluation.evaluate(exp, test, variants=variants, seeds=seeds, train=train,
                      ablation=FLAGS.ablation)
  if FLAGS.analysis:   # as the original test.py: separability of every block, on test
    analysis.analyze(exp, evaluation.load_runs(exp, variants, seeds), test)


if __name__ == "__main__":
  cli.main(main)
