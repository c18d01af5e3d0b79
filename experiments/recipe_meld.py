r"""MELD text recipe: transcripts → MiniLM token states → the contextual block (text_only).

  python experiments/recipe_meld.py --meld_dir data/meld --work_dir runs/meld

1. Reads train_sent_emo.csv and dev_sent_emo.csv (7 emotions; Windows-1252
   mojibake in the transcripts is repaired).
2. Extracts all-MiniLM-L6-v2 token states (resumable) into WORK/features.
3. Trains the text_only variant (the contextual transformer + classifier) per
   seed on train and selects each run's checkpoint on dev, as the issue asks
   (--select_on=dev; dev figures are then optimistic) or on a held-out 10% of
   the training dialogues (--select_on=train_holdout; dev stays untouched).
4. Evaluates on dev: accuracy, weighted F1 (MELD's usual figure: half the lines
   are neutral) and macro F1, per-class reports and failure cases with the lines.
5. Baseline: mean-pooled, L2-normalised MiniLM sentence vectors + logistic
   regression (the "frozen MiniLM + LR" row of docs/original.md, "Published figures").

Beyond the frozen last layer (BUILD_NOTES, "Accuracy beyond frozen last layers"):
--text_hidden_states=all mixes MiniLM's 7 hidden states with learned weights;
--config.model.text_finetune_layers=k fine-tunes its top k layers (k = 6: all of them);
--context=k gives each line its dialogue's previous k lines; --config.optim.focal_gamma
and --config.optim.class_weights=balanced weight the rare classes. Choose among them with
--select_on=train_holdout, so dev stays a test.

With speech features of MELD's clips (--train_speech_features /
--dev_speech_features: per-utterance files keyed by dia{D}_utt{U}, or any file
in the CSV's row order) every fusion variant and speech_only can run too
(--variants=all). Without them each utterance gets a one-frame zero speech input
that text_only never reads.

Writes WORK/results (training plots, reports), WORK/results/test_results (dev
reports), WORK/meld_results.txt and WORK/meld_summary.json.
"""

import os

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("meld_dir", None, "Folder with MELD's train_sent_emo.csv and dev_sent_emo.csv.")
flags.DEFINE_string("work_dir", "runs/meld", "Features, checkpoints, reports and tables.")
flags.DEFINE_string("text_extractor", "minilm", "Text features: minilm, or hf (--text_model).")
flags.DEFINE_string("text_model", None, "hf: a BERT / RoBERTa / XLM-R snapshot (folder or "
                    "cached id, e.g. roberta-base; never downloaded). minilm: another BERT "
                    "folder.")
flags.DEFINE_integer("context", 0, "Give each line the previous N lines of its dialogue with "
                     "their speakers (\"Who: text | ...\", as MiniLM's segment B; never a later "
                     "line or another dialogue). 0 = the line alone.")
flags.DEFINE_enum("text_hidden_states", "last", ["last", "all"], "MiniLM's last layer, or "
                  "every hidden state (embeddings + 6 layers, float16): the model mixes them "
                  "with learned softmax weights, or fine-tunes the top "
                  "--config.model.text_finetune_layers layers (which implies all).")
flags.DEFINE_string("train_speech_features", None, "Optional speech features of the train clips.")
flags.DEFINE_string("dev_speech_features", None, "Optional speech features of the dev clips.")
flags.DEFINE_enum("select_on", "dev", ["dev", "train_holdout"], "Where checkpoints are chosen: "
                  "dev (as MELD papers do; dev figures optimistic) or 10% of the training "
                  "dialogues (dev untouched until the report).")
flags.DEFINE_float("holdout_fraction", 0.1, "train_holdout: fraction of training dialogues.")
flags.DEFINE_bool("baseline", True, "Also fit mean-pooled MiniLM vectors + logistic regression.")
flags.DEFINE_integer("max_tokens", 48, "Keep at most this many token states per line (the "
                     "text is padded to one length: MELD's longest line has 95 tokens, its "
                     "99.9th percentile 52, its mean 14). 0 = keep all.")
flags.DEFINE_integer("limit", 0, "Use only the first N lines of each split (smoke tests).")
cli.define_common_flags("meld.py")
flags.adopt_module_key_flags(cli)

def main(argv):
  del argv
  config = cli.config_from_flags()
  cli.require("the folder with MELD's *_sent_emo.csv", meld_dir=FLAGS.meld_dir)
  from fusion_jax import io_utils, reports  # pylint: disable=import-outside-toplevel
  from fusion_jax.recipes import meld  # pylint: disable=import-outside-toplevel
  options = meld.Options(
      text_extractor=FLAGS.text_extractor, text_model=FLAGS.text_model, context=FLAGS.context,
      text_hidden_states=FLAGS.text_hidden_states,
      train_speech_features=FLAGS.train_speech_features,
      dev_speech_features=FLAGS.dev_speech_features, select_on=FLAGS.select_on,
      holdout_fraction=FLAGS.holdout_fraction, baseline=FLAGS.baseline,
      max_tokens=FLAGS.max_tokens, limit=FLAGS.limit)
  log = lambda m: print(m, flush=True)
  variants = meld.variants_for(config, options, cli.explicit("train.variants"), log)
  if variants is not None:
    with config.unlocked():
      config.train.variants = variants
  result = meld.run(config, FLAGS.meld_dir, FLAGS.work_dir, options,
                    mesh=cli.setup_jax(config), log=log)
  table = reports.meld_table(result)
  with io_utils.staged_files(FLAGS.work_dir) as tmp:   # both files, or neither
    io_utils.write_json(os.path.join(tmp, "meld_summary.json"), result)
    io_utils.write_text(os.path.join(tmp, "meld_results.txt"), table)
  print("\n" + table, flush=True)


if __name__ == "__main__":
  cli.main(main)
