r"""Applies a trained run to new recordings: emotion, every class's probability, and what the
fusion head relied on, per file. Optionally exports the model for applications.

  python experiments/predict.py my_clip.wav --transcribe     # the shipped RAVDESS model
  python experiments/predict.py --run runs/ravdess --inputs new_clips/ --transcribe
  python experiments/predict.py --run models/fusion_pipeline --inputs manifest.csv \
    --output predictions.csv
  python experiments/predict.py --run runs/ravdess --export exported/   # StableHLO + JSON

Without --run, the shipped model predicts (--model ravdess: Whisper tiny.en + MiniLM, a
4-fold ensemble trained on RAVDESS actors 01-16; its figures and licence in the README).
--run is a model directory (train.py's --model_dir) or a recipe's --work_dir; the
variant is the one best on validation unless --variants names one; every seed (and
fold) of it forms an ensemble. --inputs takes wav files, folders of them, or a manifest
CSV path[,transcript]. A text-only model needs transcripts: from the manifest, or
--transcribe (Whisper tiny.en, in JAX). A fusion model takes clips without transcripts
(predicted from speech alone) and manifest rows with a transcript and an empty path
(text alone): the missing modality is absent, and each row says what it used. Features
are recomputed exactly as the run's were (extractor, pooling, standardisation, token
limit, all recorded in the run).

A recording longer than --timeline_seconds becomes a timeline (segments cut at pauses,
each predicted): <recording>.timeline.csv (start, end, emotion, confidence, transcript,
p_<class>...), .jsonl and .png beside --output.

Writes --output (CSV: file, transcript, modalities, speech_present, text_present,
predicted, confidence, p_<class>..., and the head's gates / modality weights / attention
entropies / floor blend) and the same rows as JSON lines beside it (.jsonl), as one set:
<stem>.manifest.json, written last, holds both files' SHA-256 (the previous pair stays
until the new one is complete; an output that is an input, or read-only, is refused).
--inputs folders are searched for .wav, .flac and .ogg in any letter case. Unreadable
or silent files, and rows with nothing the variant reads, are listed at the end (exit
status 1) without stopping the others; if none could be used, nothing is written. A
segment of a long recording that cannot be predicted is listed too, but its recording
stands on its other segments (segments_left_out in the CSV; exit status 0).
"""

import os
import sys

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Model directory or recipe work directory to predict with "
                    "(instead of --model).")
flags.DEFINE_string("model", None, "A packed model: a shipped one by name (ravdess: Whisper "
                    "tiny.en + MiniLM, trained on RAVDESS; needs scripts/setup.sh --features) or "
                    "a folder with model.json + params.npz. Default when --run is not given: "
                    "ravdess.")
flags.DEFINE_multi_string("inputs", [], "Audio: wav files, folders of wav files, or a manifest "
                          "CSV (path[,transcript]). Repeatable; positional arguments work too.")
flags.DEFINE_bool("transcribe", False, "Transcribe the audio with Whisper tiny.en (JAX) for "
                  "models that read text and inputs without transcripts.")
flags.DEFINE_string("output", "predictions.csv", "CSV of predictions (JSON lines beside it).")
flags.DEFINE_string("export", None, "Also write the model as serialized StableHLO (jax.export, "
                    "symbolic batch and lengths) + model.json into this folder.")
flags.DEFINE_integer("batch_size", 16, "Files read and featurised per batch (> 0).",
                     lower_bound=1)
flags.DEFINE_integer("max_frames", None, "Speech longer than this many feature frames is cut "
                     "into equal segments, predicted separately and averaged by length (the "
                     "CSV's 'segments' column); 0 = never (memory grows with its square). "
                     "Default: predict.Predictor.MAX_FRAMES (2048: 164 s at 12.5 frames/s).",
                     lower_bound=0)
flags.DEFINE_integer("batch_frames", None, "The most padded frames in one batch (rows x "
                     "(speech frames + text tokens)): a long clip is batched with few others "
                     "or alone, so memory stays bounded; 0 = --batch_size rows whatever their "
                     "length. Default: predict.Predictor.BATCH_FRAMES (8192).", lower_bound=0)
flags.DEFINE_float("timeline_seconds", 30.0, "A recording longer than this many seconds "
                   "becomes a timeline: cut where it pauses into segments of at most "
                   "--segment_seconds, each predicted (and transcribed with --transcribe), "
                   "written beside --output as <recording>.timeline.csv / .jsonl / .png; its "
                   "CSV row is the segments' duration-weighted mean. 0 = never.", lower_bound=0)
flags.DEFINE_float("segment_seconds", 8.0, "The longest timeline segment, in seconds, 1 to "
                   "30 (Whisper's window: a longer segment's end would be cut off).",
                   lower_bound=1.0, upper_bound=30.0)
flags.DEFINE_bool("allow_upsampling", False, "Predict from recordings below the model's "
                  "sample rate (e.g. 8 kHz telephone audio), resampled up; by default they are "
                  "refused: the model never heard audio without its upper band.")
flags.DEFINE_string("speech_model", None, "Runs trained on --speech_extractor=hf features: "
                    "where the Hugging Face snapshot is now (folder or cached id), if not where "
                    "it was at extraction. Its weights must be the very same (SHA-256).")
flags.DEFINE_string("text_model", None, "Likewise for --text_extractor=hf features.")
flags.DEFINE_bool("progress", True, "Progress line on stderr.")
cli.define_common_flags()
flags.adopt_module_key_flags(cli)


def main(argv):
  config = cli.config_from_flags()
  if FLAGS.run and FLAGS.model:
    cli.fail("give --run (a trained model directory) or --model (a packed model), not both")
  if FLAGS.output.endswith(".jsonl"):
    cli.fail(f"--output={FLAGS.output}: give the CSV's path; the JSON lines go beside it "
             "(.jsonl)")
  from fusion_jax import experiment, predict  # pylint: disable=import-outside-toplevel
  from fusion_jax.models import registry  # pylint: disable=import-outside-toplevel
  cli.setup_jax(config)
  variant = None
  if cli.explicit("train.variants"):
    names = registry.parse(config.train.variants)
    if len(names) != 1:
      cli.fail(f"--variants={config.train.variants}: predict uses one variant")
    variant = names[0]
  seeds = experiment.parse_seeds(config.train.seeds) if cli.explicit("train.seeds") else None
  limits = {k: v for k, v in (("max_frames", FLAGS.max_frames),
                               ("batch_frames", FLAGS.batch_frames)) if v is not None}
  if FLAGS.run:
    predictor = predict.Predictor.from_run(
        FLAGS.run, variant, seeds, config,
        encoders={"speech": FLAGS.speech_model, "text": FLAGS.text_model}, **limits)
  else:
    if FLAGS.speech_model or FLAGS.text_model:
      cli.fail("--speech_model / --text_model point a --run at its Hugging Face snapshots; a "
               "packed model (--model, or none given) carries its own feature extractors")
    if variant is not None or seeds is not None:
      cli.fail("--variants / --seeds choose among a --run's runs; a packed model (--model) "
               "is one ensemble")
    predictor = predict.Predictor.from_model(FLAGS.model or "ravdess", config, **limits)
  if FLAGS.export:
    out = predictor.export(FLAGS.export)
    print(f"Exported {predictor.variant} to {out['path']} ({out['bytes'] / 2**20:.1f} MB, "
          f"platforms {', '.join(out['spec']['platforms'])}) and model.json", flush=True)
  specs = list(FLAGS.inputs) + list(argv[1:])
  if not specs:
    if FLAGS.export:
      return
    cli.fail("no inputs: give --inputs (wav files, folders, or a manifest CSV)")
  paths, transcripts = predict.read_inputs(specs)
  predict.check_outputs([FLAGS.output, os.path.splitext(FLAGS.output)[0] + ".jsonl"],
                        specs + list(paths))   # before any work, not after it
  preds, failures = predictor.predict_files(paths, transcripts, transcribe=FLAGS.transcribe,
                                            batch_size=FLAGS.batch_size,
                                            progress=FLAGS.progress,
                                            timeline_seconds=FLAGS.timeline_seconds,
                                            segment_seconds=FLAGS.segment_seconds,
                                            upsample=FLAGS.allow_upsampling)
  if not preds:
    print(f"No file could be used; {FLAGS.output} is left as it was.", flush=True)
  else:
    jsonl = predict.write_predictions(preds, FLAGS.output, inputs=specs + list(paths))
  for p in preds[:20]:
    print(f"{os.path.basename(p.name):<40} {p.emotion:<18} {p.confidence:.3f} "
          f"({p.modalities})" + (f'  "{p.transcript}"' if p.transcript else ""))
  if len(preds) > 20:
    print(f"... ({len(preds) - 20} more)")
  if preds:
    print(f"Wrote {FLAGS.output} and {jsonl}: {len(preds)} files", flush=True)
    for path in predict.write_timelines(preds, os.path.dirname(os.path.abspath(FLAGS.output)),
                                        predictor.class_names, inputs=specs + list(paths)):
      stem = path[:-len(".csv")]
      print(f"Timeline: {path} (and {os.path.basename(stem)}.jsonl, .png)", flush=True)
  left_out = [(p.name, x) for p in preds for x in p.left_out]
  if left_out:   # (the recording stands on its other segments: not a failed file)
    print(f"{len(left_out)} segment(s) of long recordings left out; each recording's "
          "prediction and timeline use its other segments:", flush=True)
    for name, x in left_out:
      print(f"  - {name} [{x['start']:.2f}-{x['end']:.2f} s]: {x['reason']}")
  if failures:
    print(f"{len(failures)} file(s) could not be used:", flush=True)
    for path, message in failures:
      print(f"  - {message}")
    sys.exit(1)


if __name__ == "__main__":
  cli.main(main)
