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

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("ravdess_dir", None, "RAVDESS folder holding Actor_XX/*.wav "
                    "(16 kHz mono; other rates are resampled).")
flags.DEFINE_string("work_dir", "runs/ravdess", "Features, checkpoints, reports and tables.")
flags.DEFINE_string("speech_extractor", "whisper", "logmel, egemaps, compare, whisper "
                    "(Whisper tiny.en), whisper_base (Whisper base, 512-d, ≈ 2.4× the time) or "
                    "hf (your own snapshot: --speech_model).")
flags.DEFINE_integer("pool", None, "Average this many consecutive speech frames (default: "
                     "logmel, egemaps, compare 8; whisper, whisper_base, hf 4: all 12.5 frames/s).")
flags.DEFINE_string("speech_model", None, "hf: your Hugging Face speech snapshot, a folder or "
                    "an id in the local cache (e.g. microsoft/wavlm-large, "
                    "openai/whisper-large-v3; never downloaded). whisper, whisper_base: another "
                    "CTranslate2 folder.")
flags.DEFINE_string("text_extractor", "minilm", "Text features: minilm, or hf (--text_model).")
flags.DEFINE_string("text_model", None, "hf: a BERT / RoBERTa / XLM-R snapshot (folder or "
                    "cached id, e.g. roberta-base). minilm: another BERT folder.")
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



def main(argv):
  del argv
  config = cli.config_from_flags()
  cli.require("the RAVDESS folder with Actor_XX/*.wav", ravdess_dir=FLAGS.ravdess_dir)
  from fusion_jax import io_utils, reports  # pylint: disable=import-outside-toplevel
  from fusion_jax.recipes import ravdess  # pylint: disable=import-outside-toplevel
  options = ravdess.Options(
      speech_extractor=FLAGS.speech_extractor, speech_model=FLAGS.speech_model, pool=FLAGS.pool,
      text_model=FLAGS.text_model,
      speech_hidden_states=FLAGS.speech_hidden_states, text_extractor=FLAGS.text_extractor,
      text_hidden_states=FLAGS.text_hidden_states, folds=FLAGS.folds,
      val_speakers=FLAGS.val_speakers,
      analyse_folds=[int(f) for f in FLAGS.analyse_folds.split(",") if f.strip()],
      baseline=FLAGS.baseline, limit_per_actor=FLAGS.limit_per_actor)
  summary = ravdess.run(config, FLAGS.ravdess_dir, FLAGS.work_dir, options,
                        mesh=cli.setup_jax(config), log=lambda m: print(m, flush=True))
  table = reports.ravdess_table(summary)
  with io_utils.staged_files(FLAGS.work_dir) as tmp:   # both files, or neither
    io_utils.write_json(os.path.join(tmp, "cv_summary.json"), summary)
    io_utils.write_text(os.path.join(tmp, "cv_results.txt"), table)
  print("\n" + table, flush=True)


if __name__ == "__main__":
  cli.main(main)
