"""Manifests of public corpora: RAVDESS speech (file-name coding), MELD transcripts and
TESS, the original pipeline's corpus (folder names and its split CSVs).

  >>> m = ravdess_manifest("data/ravdess16k")      # 16 actors × 60 clips → 960 rows
  >>> m.frame[["id", "emotion", "speaker", "transcript"]].head()
  >>> splits = tess_manifests("TESS/", "Data Split/")   # {"train": …, "val": …, "test": …}
"""

from __future__ import annotations

import glob
import os
import re
import unicodedata
from typing import Optional

import numpy as np
import pandas as pd

from fusion_jax.data.errors import DataError
from fusion_jax.features.extract import Manifest, manifest_from_frame
from fusion_jax.errors import ConfigError

RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust",
                    "surprised")
RAVDESS_STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")

MELD_EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")

# The original's label map, and its spellings of the folders (OAF_Pleasant_surprise, …).
TESS_EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "pleasant_surprise", "sad")
_TESS_ALIASES = {"surprised": "pleasant_surprise", "surprise": "pleasant_surprise"}
TESS_SPLITS = ("train", "val", "test")


def parse_ravdess_name(path: str) -> dict:
  """Fields of a RAVDESS file name ``MM-VC-EE-II-SS-RR-AA.wav``.

  Raises:
    DataError: a name that does not follow the coding (naming the part at fault).
  """
  stem = os.path.splitext(os.path.basename(path))[0]
  m = _RAVDESS_NAME.match(stem)
  if not m:
    raise DataError(path, "not a RAVDESS file name (expected MM-VC-EE-II-SS-RR-AA.wav, "
                    "seven two-digit fields)", field="file name")
  modality, channel, emotion, intensity, statement, repetition, actor = map(int, m.groups())
  checks = [("emotion", emotion, 1, 8), ("intensity", intensity, 1, 2),
            ("statement", statement, 1, 2), ("repetition", repetition, 1, 2),
            ("actor", actor, 1, 24)]
  for name, value, lo, hi in checks:
    if not lo <= value <= hi:
      raise DataError(path, f"{name} code {value:02d} is outside {lo:02d}..{hi:02d}",
                      field=name)
  return dict(modality=modality, vocal_channel=channel, emotion=RAVDESS_EMOTIONS[emotion - 1],
              intensity="strong" if intensity == 2 else "normal", statement=statement,
              repetition=repetition, actor=actor, gender="female" if actor % 2 == 0 else "male",
              transcript=RAVDESS_STATEMENTS[statement])


def ravdess_manifest(root, *, speech_only: bool = True) -> Manifest:
  """Every RAVDESS clip under ``root`` (``Actor_XX/*.wav``), labelled from its name.

  Args:
    root: the corpus folder.
    speech_only: keep vocal channel 01 (speech), drop song (02).

  Returns:
    A :class:`~fusion_jax.features.extract.Manifest` with columns ``id, path,
    transcript, label, emotion, speaker`` (``Actor_XX``) and the name's fields.
  """
  root = os.fspath(root)
  files = sorted(os.path.abspath(f) for f in
                 glob.glob(os.path.join(root, "**", "*.wav"), recursive=True))
  if not files:
    raise DataError(root, "no .wav files found", hint="point --ravdess_dir at the folder that "
                    "holds Actor_01 … Actor_24")
  records = []
  for f in files:
    info = parse_ravdess_name(f)
    if speech_only and info["vocal_channel"] != 1:
      continue
    records.append(dict(path=f, id=os.path.splitext(os.path.basename(f))[0],
                        label=info.pop("emotion"), speaker=f"Actor_{info['actor']:02d}",
                        **info))
  frame = pd.DataFrame.from_records(records)
  return manifest_from_frame(frame, os.path.join(root, "<RAVDESS file names>"),
                             class_names=RAVDESS_EMOTIONS)


def clean_meld_text(text: str) -> str:
  """MELD's transcripts carry Windows-1252 mojibake (``\\x92`` for ’, ``\\x85`` for …)."""
  if any(0x80 <= ord(c) <= 0x9F for c in text):
    try:
      text = text.encode("latin-1").decode("cp1252")
    except (UnicodeEncodeError, UnicodeDecodeError):
      pass
  return unicodedata.normalize("NFKC", text).strip()


def meld_manifest(csv_path, *, audio_dir: Optional[str] = None,
                  audio_ext: str = ".wav") -> Manifest:
  """One MELD split CSV (``train_sent_emo.csv`` …) as a manifest.

  Args:
    csv_path: MELD's CSV (columns Utterance, Speaker, Emotion, Dialogue_ID, Utterance_ID).
    audio_dir: a folder of ``dia{D}_utt{U}`` audio clips, when a user has them;
      without it rows carry no audio path (text features only).
    audio_ext: the clips' extension.

  Returns:
    A manifest with ids ``dia{D}_utt{U}``, ``speaker`` = the dialogue (so
    folds never split a conversation) and ``character`` = the speaking character.
  """
  csv_path = os.fspath(csv_path)
  try:
    df = pd.read_csv(csv_path, keep_default_na=False, dtype=str)
  except FileNotFoundError:
    raise DataError(csv_path, "file not found") from None
  need = ["Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"]
  missing = [c for c in need if c not in df.columns]
  if missing:
    raise DataError(csv_path, f"missing MELD column(s) {missing}", field=missing[0])
  for col in ("Dialogue_ID", "Utterance_ID"):
    bad = ~df[col].str.fullmatch(r"\d+")
    if bad.any():
      r = int(bad.to_numpy().nonzero()[0][0])
      raise DataError(csv_path, f"{col} {df[col].iloc[r]!r} is not a number", field=col, row=r)
  ids = "dia" + df["Dialogue_ID"] + "_utt" + df["Utterance_ID"]
  paths = [os.path.join(audio_dir, i + audio_ext) for i in ids] if audio_dir else [""] * len(df)
  frame = pd.DataFrame(dict(
      id=ids, path=paths, transcript=[clean_meld_text(t) for t in df["Utterance"]],
      label=df["Emotion"].str.strip().str.lower(), speaker="dia" + df["Dialogue_ID"],
      character=[clean_meld_text(c) for c in df.get("Speaker", [""] * len(df))],
      turn=df["Utterance_ID"].astype(int)))
  return manifest_from_frame(frame, csv_path, class_names=MELD_EMOTIONS)


def dialogue_context(frame: pd.DataFrame, lines: int, *, dialogue: str = "speaker",
                     turn: str = "turn", who: str = "character",
                     text: str = "transcript") -> list:
  """The previous ``lines`` lines of each row's dialogue, oldest first, as
  ``"Who: text | Who: text"`` ("" for a dialogue's first line or ``lines`` = 0).

  Only earlier turns of the *same* dialogue are used (never a later line, never
  another dialogue), so a model reading it could run online. Rows may be in any
  order; ``turn`` orders lines inside a dialogue (MELD's Utterance_ID).

  Args:
    frame: one row per line with columns ``dialogue``, ``turn``, ``who`` (may be
      absent: lines without speaker names) and ``text``.
    lines: how many earlier lines to give.
  """
  if lines < 0:
    raise ConfigError(f"context lines must be 0 or more, got {lines}")
  out = [""] * len(frame)
  if not lines:
    return out
  names = frame[who].astype(str).tolist() if who in frame.columns else [""] * len(frame)
  texts = frame[text].astype(str).tolist()
  turns = frame[turn].to_numpy()
  for _, rows in frame.groupby(dialogue, sort=False).indices.items():
    rows = sorted(rows, key=lambda r: turns[r])
    for j, r in enumerate(rows):
      past = [r2 for r2 in rows[max(0, j - lines):j] if turns[r2] < turns[r]]
      out[r] = " | ".join(f"{names[p]}: {texts[p]}" if names[p] else texts[p] for p in past)
  return out


def tess_emotion(folder: str) -> Optional[str]:
  """The emotion a TESS folder holds (``OAF_angry`` → angry, ``YAF_pleasant_surprised`` →
  pleasant_surprise), as the original reads it; ``None`` for other folders."""
  raw = folder.split("_")[-1].lower()
  raw = _TESS_ALIASES.get(raw, raw)
  return raw if raw in TESS_EMOTIONS else None


def tess_transcript(path: str) -> str:
  """The original's transcript of a TESS clip: ``OAF_back_angry.wav`` → "Say the word back".

  Raises:
    DataError: a file name without the word (no ``_``).
  """
  parts = os.path.splitext(os.path.basename(path))[0].split("_")
  if len(parts) < 2:
    raise DataError(path, "not a TESS file name (expected SPEAKER_word_emotion.wav)",
                    field="file name")
  return f"Say the word {parts[1]}"


def _tess_row(path: str, emotion: str) -> dict:
  return dict(path=path, id=os.path.splitext(os.path.basename(path))[0], label=emotion,
              transcript=tess_transcript(path),
              speaker=os.path.basename(os.path.dirname(path)).split("_")[0])


def tess_manifest(root) -> Manifest:
  """Every TESS clip under ``root`` (``OAF_angry/OAF_back_angry.wav``, …), labelled by its
  folder as the original does; columns ``id, path, transcript, label, speaker`` (OAF/YAF).

  Raises:
    DataError: no emotion folders with .wav files under ``root``.
  """
  root = os.fspath(root)
  records = []
  for folder in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    emotion = tess_emotion(folder)
    if emotion is None or folder.startswith(".") or not os.path.isdir(
        os.path.join(root, folder)):
      continue
    records += [_tess_row(os.path.abspath(f), emotion)
                for f in sorted(glob.glob(os.path.join(root, folder, "*.wav")))]
  if not records:
    raise DataError(root, "no TESS clips found (emotion folders such as OAF_angry/ with .wav "
                    "files)", hint="point --corpus_dir at TESS_Toronto_emotional_speech_set_data")
  return manifest_from_frame(pd.DataFrame.from_records(records),
                             os.path.join(root, "<TESS folders>"), class_names=TESS_EMOTIONS)


def tess_split_manifest(root, split_csv) -> Manifest:
  """One of the original's split CSVs (``path,label,emotion_name``, written on Colab:
  ``/content/TESS_…/YAF_neutral/YAF_turn_neutral.wav``), its paths rebased under ``root``
  (the last folder and the file name), rows in the CSV's order.

  Raises:
    DataError: a missing column, a label that is not TESS's for its emotion_name (the
      original's map), naming the CSV and the row.
  """
  split_csv = os.fspath(split_csv)
  try:
    frame = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
  except (OSError, ValueError) as e:
    raise DataError(split_csv, f"unreadable split CSV ({e})") from None
  missing = [c for c in ("path", "label", "emotion_name") if c not in frame.columns]
  if missing:
    raise DataError(split_csv, f"missing column(s) {missing}; the original's split CSVs have "
                    "path,label,emotion_name", field=missing[0])
  records = []
  for r, row in enumerate(frame.itertuples(index=False)):
    name = row.emotion_name.strip()
    if name not in TESS_EMOTIONS or row.label.strip() != str(TESS_EMOTIONS.index(name)):
      raise DataError(split_csv, f"label {row.label!r} with emotion_name {name!r} is not "
                      f"TESS's map ({', '.join(f'{n} {i}' for i, n in enumerate(TESS_EMOTIONS))})",
                      field="label", row=r)
    parts = row.path.replace("\\", "/").rstrip("/").split("/")
    records.append(_tess_row(os.path.abspath(os.path.join(root, *parts[-2:])), name))
  return manifest_from_frame(pd.DataFrame.from_records(records), split_csv,
                             class_names=TESS_EMOTIONS)


def tess_manifests(root, split_dir: Optional[str] = None, seed: int = 42) -> dict:
  """``{"train", "val", "test"}`` manifests of TESS: the original's split CSVs in
  ``split_dir`` (``train_split.csv``, ``val_split.csv``, ``test_split.csv``: its
  ``Data Split/`` folder), else a 70/15/15 split stratified by emotion (``seed``; not the
  original's own permutation, which followed its file system's listing order)."""
  if split_dir:
    return {s: tess_split_manifest(root, os.path.join(split_dir, f"{s}_split.csv"))
            for s in TESS_SPLITS}
  whole = tess_manifest(root)
  rng = np.random.default_rng(seed)
  parts: dict = {s: [] for s in TESS_SPLITS}
  for emotion in TESS_EMOTIONS:
    rows = np.flatnonzero(whole.frame["emotion"].to_numpy() == emotion)
    rows = rows[rng.permutation(rows.size)]
    cut = [round(rows.size * 0.7), round(rows.size * 0.85)]
    for s, chunk in zip(TESS_SPLITS, np.split(rows, cut)):
      parts[s] += chunk.tolist()
  return {s: manifest_from_frame(whole.frame.iloc[sorted(rows)].reset_index(drop=True),
                                 whole.source, class_names=TESS_EMOTIONS)
          for s, rows in parts.items()}
