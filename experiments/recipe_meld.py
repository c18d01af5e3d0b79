r"""MELD text recipe: transcripts → MiniLM token states → the contextual block (text_only).

  python experiments/recipe_meld.py --meld_dir data/meld --work_dir runs/meld

1. Reads train_sent_emo.csv and dev_sent_emo.csv (7 emotions; Windows-1252
   mojibake in the transcripts is repaired).
2. Extracts all-MiniLM-L6-v2 token states (resumable) into WORK/features.
3. Trains the text_only variant (the contextual transformer + classifier) per
   seed on train and selects each run's checkpoint on dev, as MELD papers usually do
   (--select_on=dev; dev figures are then optimistic) or on a held-out 10% of
   the training dialogues (--select_on=train_holdout; dev stays untouched).
4. Evaluates on dev: accuracy, weighted F1 (MELD's usual figure: half the lines
   are neutral) and macro F1, per-class reports and failure cases with the lines.
5. Baseline: mean-pooled, L2-normalised MiniLM sentence vectors + logistic
   regression (the "frozen MiniLM + LR" row of docs/original.md, "Published figures").

Beyond the frozen last layer (BUILD_NOTES.md, "MELD recipe"):
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
import time

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("meld_dir", None, "Folder with MELD's train_sent_emo.csv and dev_sent_emo.csv.")
flags.DEFINE_string("work_dir", "runs/meld", "Features, checkpoints, reports and tables.")
flags.DEFINE_string("text_extractor", "minilm", "Text features (minilm).")
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

PUBLISHED = [("text-CNN (weighted F1)", 0.550), ("bc-LSTM (weighted F1)", 0.564),
             ("DialogueRNN (weighted F1)", 0.570), ("RoBERTa fine-tuned (weighted F1)", 0.625),
             ("frozen MiniLM + LR (weighted F1)", 0.56)]


def _prepare(tag, csv_name, features, extractor):
  manifest = features.corpora.meld_manifest(os.path.join(FLAGS.meld_dir, csv_name))
  if FLAGS.limit:
    manifest.frame = manifest.frame.iloc[:FLAGS.limit].reset_index(drop=True)
  manifest.frame["context"] = features.corpora.dialogue_context(manifest.frame, FLAGS.context)
  fdir = os.path.join(FLAGS.work_dir, "features")
  name = (f"meld_{tag}_{extractor.name}" + (f"_ctx{FLAGS.context}" if FLAGS.context else "")
          + ("_all" if extractor.stack > 1 else "") + ".npz")
  out = features.extract_aligned(
      manifest, {"text": (extractor, os.path.join(fdir, name))},
      os.path.join(fdir, f"meld_{tag}_split.csv"), batch_size=256)
  return manifest, out.paths["text"], out.split_csv


def _load(name, names, text_path, speech_path, csv_path):
  from fusion_jax import data, recipes  # pylint: disable=import-outside-toplevel
  if speech_path:
    return data.load_split(name, speech_path, text_path, csv_path, class_names=names)
  return recipes.without_speech(data.load_split(name, text_path, text_path, csv_path,
                                                class_names=names))


def main(argv):
  del argv
  config = cli.config_from_flags()
  cli.require("the folder with MELD's *_sent_emo.csv", meld_dir=FLAGS.meld_dir)
  if bool(FLAGS.train_speech_features) != bool(FLAGS.dev_speech_features):
    cli.fail("give both --train_speech_features and --dev_speech_features, or neither")
  # pylint: disable=import-outside-toplevel
  from fusion_jax import evaluation, experiment, features, io_utils, models, recipes, training
  t0 = time.time()
  try:
    has_speech = bool(FLAGS.train_speech_features)
    variants = models.parse_variants(config.train.variants)
    if not has_speech and not cli.explicit("train.variants") and variants != ["text_only"]:
      print(f"No speech features: training text_only (the config lists {variants}).",
            flush=True)
      with config.unlocked():
        config.train.variants = "text_only"
      variants = ["text_only"]
    needs_speech = [v for v in variants if models.get_variant(v).reads("speech")]
    if needs_speech and not has_speech:
      cli.fail(f"variants {needs_speech} need speech features: give --train_speech_features "
               "and --dev_speech_features, or --variants=text_only")
    hidden = "all" if config.model.text_finetune_layers else FLAGS.text_hidden_states
    extractor = features.make_extractor(
        FLAGS.text_extractor, **({"hidden_states": hidden} if hidden != "last" else {}),
        **({"context": FLAGS.context} if FLAGS.context else {}))
    train_m, train_text, train_csv = _prepare("train", "train_sent_emo.csv", features, extractor)
    _, dev_text, dev_csv = _prepare("dev", "dev_sent_emo.csv", features, extractor)
    extract_seconds = time.time() - t0
    mesh = cli.setup_jax(config)
    names = train_m.class_names
    train = _load("train", names, train_text, FLAGS.train_speech_features, train_csv)
    dev = _load("dev", names, dev_text, FLAGS.dev_speech_features, dev_csv)
    if FLAGS.max_tokens:
      cut = recipes.truncate_text([train, dev], FLAGS.max_tokens)
      print(f"--max_tokens={FLAGS.max_tokens}: {cut} of {len(train) + len(dev)} lines "
            "truncated", flush=True)
    if FLAGS.select_on == "train_holdout":
      train, val = recipes.holdout_split(train, FLAGS.holdout_fraction)
    else:
      val = dev
    results = os.path.join(FLAGS.work_dir, "results")
    exp = experiment.Experiment.create(config, names, train=train, val=val, mesh=mesh,
                                       model_dir=os.path.join(FLAGS.work_dir, "models"),
                                       results_dir=results)
    training.train_and_evaluate(exp, train, val)
    summary = evaluation.evaluate(exp, dev, variants=exp.variants, seeds=exp.seeds,
                                  train=train, ablation="mean" if has_speech else "none")
    rows = {}
    for v, s in summary["variants"].items():
      rows[v] = {k: recipes.summarise([t[k] for t in s["test"]])
                 for k in ("accuracy", "uar", "macro_f1", "weighted_f1")}
      rows[v]["val_acc"] = recipes.summarise(s["val_acc"])
      rows[v]["val_score"] = recipes.summarise(s["val_score"])   # the selection metric
      rows[v]["per_class_f1"] = {c: recipes.summarise([t["per_class"]["f1"][i]
                                                       for t in s["test"]])
                                 for i, c in enumerate(names)}
    if FLAGS.baseline:
      rows["minilm_mean_pool_lr"] = recipes.sentence_vector_baseline(train, dev, len(names))
    table = _table(rows, extractor, extract_seconds, time.time() - t0,
                   summary["selection_metric"])
    io_utils.write_json(os.path.join(FLAGS.work_dir, "meld_summary.json"), dict(
        rows=rows, class_names=names, select_on=FLAGS.select_on,
        selection_metric=summary["selection_metric"], seeds=exp.seeds,
        extractor=extractor.fingerprint(), seconds=time.time() - t0,
        train_size=len(train), val_size=len(val), dev_size=len(dev)))
    io_utils.write_text(os.path.join(FLAGS.work_dir, "meld_results.txt"), table)
    print("\n" + table, flush=True)
  except cli.USER_ERRORS as e:
    cli.fail(str(e))
  except KeyboardInterrupt:
    cli.interrupted()


def _table(rows, extractor, extract_seconds, total, metric="accuracy"):
  from fusion_jax import reports  # pylint: disable=import-outside-toplevel
  head = f"{'Model':<24} {'Dev acc':>15} {'Weighted F1':>15} {'Macro F1':>15} {'runs':>5}"
  lines = [f"MELD dev (checkpoints selected on {FLAGS.select_on}"
           + ("" if metric == "accuracy" else f" by {reports.METRIC_NAMES[metric][1]}")
           + ("; dev figures are optimistic" if FLAGS.select_on == "dev" else "") + ")",
           head, "-" * len(head)]
  for v, r in rows.items():
    lines.append(f"{v:<24} {reports.cell(r['accuracy']):>15} {reports.cell(r['weighted_f1']):>15} "
                 f"{reports.cell(r['macro_f1']):>15} {r['accuracy']['n']:>5}")
  with_classes = [v for v, r in rows.items() if "per_class_f1" in r]
  if with_classes:
    names = list(rows[with_classes[0]]["per_class_f1"])
    lines += ["", "Per-class F1 on dev (mean over runs):",
              f"{'Model':<24} " + " ".join(f"{c[:8]:>8}" for c in names)]
    lines += [f"{v:<24} " + " ".join(f"{rows[v]['per_class_f1'][c]['mean']:>8.3f}"
                                     for c in names) for v in with_classes]
  lines += ["", "Published (MELD test split, for orientation; docs/original.md):"]
  lines += [f"  {n:<34} {v:.3f}" for n, v in PUBLISHED]
  lines += ["", f"Text features: {extractor.name} ({extractor.dim}-d token states"
            + (f", {extractor.stack} hidden states" if extractor.stack > 1 else "")
            + (f", previous {FLAGS.context} lines as context" if FLAGS.context else "")
            + f"). Total "
            f"{total / 60:.1f} min (extraction {extract_seconds:.0f} s)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  cli.main(main)
