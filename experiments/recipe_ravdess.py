r"""RAVDESS recipe: wav files → features → speaker-independent folds → train, evaluate, analyse
(every variant and an eGeMAPS + logistic regression baseline).

One command, offline:

  python experiments/recipe_ravdess.py --ravdess_dir data/ravdess16k \
    --speech_extractor whisper --work_dir runs/ravdess_whisper

1. Builds the manifest from the file names (emotion, intensity, statement, actor);
   the transcript is the statement ("Kids are talking by the door" / "Dogs are
   sitting by the door"), the same for every emotion: the text cannot help, so
   this tests fusion robustness.
2. Extracts --speech_extractor and MiniLM text features into WORK/features
   (resumable; a rerun reuses them).
3. Splits the actors into --folds contiguous blocks (actors 01–16: 4 folds of 2
   male + 2 female); each fold tests on one block, selects checkpoints on
   --val_speakers actors of the next block and trains on the rest.
4. Trains every variant (four fusion heads, speech_only, text_only) × seed,
   evaluates on the test actors (reports, failure cases, modality removal),
   analyses fold 0 (t-SNE/PCA separability).
5. Runs eGeMAPS functionals + logistic regression on the same folds (opensmile).

Writes WORK/fold_{k}/{models,results}, WORK/cv_summary.json, WORK/cv_results.txt
(accuracy, UAR, macro/weighted F1: mean ± std over folds × seeds, with the
baseline and the published numbers of docs/original.md, "Published figures", beside them).
"""

import os
import time

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("ravdess_dir", None, "RAVDESS folder holding Actor_XX/*.wav "
                    "(16 kHz mono; other rates are resampled).")
flags.DEFINE_string("work_dir", "runs/ravdess", "Features, checkpoints, reports and tables.")
flags.DEFINE_string("speech_extractor", "whisper", "logmel, egemaps, compare, whisper "
                    "(Whisper tiny.en) or whisper_base (Whisper base, 512-d, ≈ 2.4× the time).")
flags.DEFINE_integer("pool", None, "Average this many consecutive speech frames (default: "
                     "logmel, egemaps, compare 8; whisper, whisper_base 4: all 12.5 frames/s).")
flags.DEFINE_string("text_extractor", "minilm", "Text features (minilm).")
flags.DEFINE_enum("speech_hidden_states", "last", ["last", "all"], "whisper, whisper_base: "
                  "the encoder's last layer, or every hidden state (embeddings + 4 or 6 "
                  "layers, float16), mixed "
                  "by the model with learned softmax weights (reported after training).")
flags.DEFINE_enum("text_hidden_states", "last", ["last", "all"], "minilm: the last layer, or "
                  "every hidden state (embeddings + 6 layers), mixed likewise.")
flags.DEFINE_integer("folds", 4, "Speaker-independent folds over the actors found.")
flags.DEFINE_integer("val_speakers", 2, "Validation actors per fold (from the next block).")
flags.DEFINE_string("analyse_folds", "0", "Folds to run the embedding analysis on ('' = none).")
flags.DEFINE_bool("baseline", True, "Also run eGeMAPS functionals + logistic regression "
                  "(needs opensmile).")
flags.DEFINE_integer("limit_per_actor", 0, "Use only this many clips per actor (0 = all; "
                     "for smoke tests).")
cli.define_common_flags("ravdess.py")
flags.adopt_module_key_flags(cli)

DEFAULT_POOL = {"logmel": 8, "egemaps": 8, "compare": 8, "whisper": 4, "whisper_base": 4}
PUBLISHED = [("EmoBox wav2vec2-base (UA)", 0.543), ("EmoBox HuBERT-base (UA)", 0.654),
             ("EmoBox WavLM-large (UA)", 0.720), ("EmoBox Whisper-large-v3 (UA)", 0.753),
             ("eGeMAPS functionals + LR (acc)", 0.50)]


def main(argv):
  del argv
  config = cli.config_from_flags()
  cli.require("the RAVDESS folder with Actor_XX/*.wav", ravdess_dir=FLAGS.ravdess_dir)
  from fusion_jax import experiment, features, io_utils, recipes, reports  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  try:
    manifest = features.corpora.ravdess_manifest(FLAGS.ravdess_dir)
    if FLAGS.limit_per_actor:
      manifest.frame = manifest.frame.groupby("speaker", sort=False).head(
          FLAGS.limit_per_actor).reset_index(drop=True)
    print(f"RAVDESS: {len(manifest)} clips, {manifest.frame['speaker'].nunique()} actors, "
          f"classes {manifest.class_names}", flush=True)
    fdir = os.path.join(FLAGS.work_dir, "features")
    pool = FLAGS.pool or DEFAULT_POOL.get(FLAGS.speech_extractor, 1)
    hidden = lambda h: {} if h == "last" else {"hidden_states": h}
    speech_ex = features.make_extractor(FLAGS.speech_extractor, pool=pool,
                                        **hidden(FLAGS.speech_hidden_states))
    text_ex = features.make_extractor(FLAGS.text_extractor, **hidden(FLAGS.text_hidden_states))
    name = lambda ex: f"ravdess_{ex.name}{'_all' if ex.stack > 1 else ''}.npz"
    out = features.extract_aligned(
        manifest, {"speech": (speech_ex, os.path.join(fdir, name(speech_ex))),
                   "text": (text_ex, os.path.join(fdir, name(text_ex)))},
        os.path.join(fdir, "ravdess_split.csv"))
    extract_seconds = time.time() - t0
    mesh = cli.setup_jax(config)
    split = recipes.load_corpus(out.paths["speech"], out.paths["text"], out.split_csv,
                                name="ravdess")
    exp = experiment.Experiment.create(config, manifest.class_names, train=split, mesh=mesh)
    folds = recipes.group_folds(split.groups, FLAGS.folds, FLAGS.val_speakers)
    analyse = [int(f) for f in FLAGS.analyse_folds.split(",") if f.strip()]
    summary = recipes.cross_validate(exp, split, folds, FLAGS.work_dir, analyse_folds=analyse,
                                     write_summary=False)
    extra = {}
    if FLAGS.baseline:
      try:
        x = recipes.cached_functionals(
            list(out.frame["path"]), list(out.frame["id"]),
            os.path.join(fdir, "ravdess_egemaps_functionals.npz"),
            lambda p: features.extractors.opensmile_functionals(features.audio.read_audio(p)))
        extra["egemaps_functionals_lr"] = b = recipes.functionals_baseline(
            x, out.frame["label"].to_numpy(), list(out.frame["speaker"]), folds,
            len(manifest.class_names))
        print(f"eGeMAPS functionals + LR: accuracy {reports.cell(b['accuracy'])}, UAR "
              f"{reports.cell(b['uar'])}", flush=True)
      except ImportError as e:
        print(f"Skipping the eGeMAPS + LR baseline: {e}", flush=True)
    summary["baselines"] = extra
    summary["extractors"] = dict(speech=speech_ex.fingerprint(), text=text_ex.fingerprint())
    summary["extract_seconds"] = extract_seconds
    summary["total_seconds"] = time.time() - t0
    table = reports.cv_table(summary, extra) + "\nPublished (other protocols, docs/original.md; " \
        "for orientation):\n" + "\n".join(f"  {n:<34} {v:.3f}" for n, v in PUBLISHED) + \
        f"\n\nSpeech features: {speech_ex.name} ({speech_ex.dim}-d, " \
        f"{speech_ex.frame_rate:g} frames/s); text: {text_ex.name} ({text_ex.dim}-d). " \
        f"Total {summary['total_seconds'] / 60:.1f} min (extraction {extract_seconds:.0f} s).\n"
    with io_utils.staged_files(FLAGS.work_dir) as tmp:   # both files, or neither
      io_utils.write_json(os.path.join(tmp, "cv_summary.json"), summary)
      io_utils.write_text(os.path.join(tmp, "cv_results.txt"), table)
    print("\n" + table, flush=True)
  except cli.USER_ERRORS as e:
    cli.fail(str(e))
  except KeyboardInterrupt:
    cli.interrupted()


if __name__ == "__main__":
  cli.main(main)
