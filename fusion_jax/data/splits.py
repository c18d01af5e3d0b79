"""Split CSVs and aligned (speech, text, label) splits.

The original pairs row i of the speech file, the text file and the split CSV
(``path,label,emotion_name``): alignment is by row order. :func:`load_split`
keeps that contract and checks it: same N everywhere, the same label in every
source, labels inside the class list.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from fusion_jax.errors import DataError
from fusion_jax.data.features import (ModalityFeatures, _from_padded, load_features,
                                      read_extractor)

REQUIRED_COLUMNS = ("path", "label", "emotion_name")
TRANSCRIPT_COLUMNS = ("transcript", "text", "utterance", "Utterance", "sentence")


@dataclasses.dataclass
class SplitCSV:
  """A split CSV. ``paths``/``transcripts`` are per row (transcripts may be None)."""
  path: str
  paths: list
  labels: np.ndarray
  emotion_names: list
  transcripts: Optional[list]
  groups: Optional[list] = None


def read_split_csv(path) -> SplitCSV:
  """Reads ``path,label,emotion_name[,transcript][,speaker]`` with row-level checks."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(path, "file not found")
  if os.path.isdir(path):
    raise DataError(path, "is a directory, not a CSV file")
  try:
    df = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "emotion_name": str})
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise DataError(path, f"not a readable CSV ({e})") from None
  missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
  if missing:
    found = repr(list(df.columns))
    raise DataError(path, f"missing column(s) {missing}; found {found[:120]}"
                    f"{'...' if len(found) > 120 else ''}",
                    field=missing[0], hint="a split CSV needs path,label,emotion_name")
  labels = pd.to_numeric(df["label"], errors="coerce")
  bad = labels.isna() | (labels != labels.round())
  if bad.any():
    r = int(np.flatnonzero(bad.to_numpy())[0])
    raise DataError(path, f"label {df['label'].iloc[r]!r} is not an integer", field="label",
                    row=r)
  transcript_col = next((c for c in TRANSCRIPT_COLUMNS if c in df.columns), None)
  group_col = next((c for c in ("speaker", "group", "actor") if c in df.columns), None)
  return SplitCSV(
      path=path,
      paths=df["path"].astype(str).tolist(),
      labels=labels.to_numpy().astype(np.int64),
      emotion_names=df["emotion_name"].astype(str).tolist(),
      transcripts=None if transcript_col is None else df[transcript_col].astype(str).tolist(),
      groups=None if group_col is None else df[group_col].astype(str).tolist())


def class_names_from_csv(path) -> list:
  """Class names exactly as the original derives them.

  The ``emotion_name`` of the first row of each ``label``, ordered by label
  (``df.groupby('label')['emotion_name'].first().sort_index()``). Labels must
  be 0..K-1, since they index the classifier's outputs.
  """
  csv = read_split_csv(path)
  if len(csv.labels) == 0:
    raise DataError(path, "no rows", field="label")
  negative = csv.labels < 0
  if negative.any():
    r = int(np.flatnonzero(negative)[0])
    raise DataError(path, f"label {csv.labels[r]} is negative; labels must be 0..K-1",
                    field="label", row=r, hint="renumber the labels from 0")
  names, first = {}, {}
  for r, (label, name) in enumerate(zip(csv.labels.tolist(), csv.emotion_names)):
    if not name.strip():
      raise DataError(path, f"label {label} has no emotion_name", field="emotion_name", row=r)
    names.setdefault(label, name)   # the first name of each label, as the original
    first.setdefault(label, r)
  ordered = sorted(names)
  if ordered != list(range(len(ordered))):
    missing = sorted(set(range(max(ordered) + 1)) - set(ordered))
    top = max(ordered)
    raise DataError(path, f"labels must be 0..K-1; label(s) {missing[:5]}"
                    f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} never "
                    f"appear below label {top}", field="label", row=first[top],
                    hint="renumber the labels or add the missing classes")
  return [names[k] for k in ordered]


@dataclasses.dataclass
class Split:
  """Aligned speech, text and labels of one split, unpadded.

  Attributes:
    name: "train", "val", "test", ...
    speech: N float32 arrays ``[T_i, speech_dim]`` (float16 for stacks of hidden states:
      ``preprocessing["speech"]["stack"]`` states of ``speech_dim / stack`` per frame).
    text: N float32 arrays ``[L_i, text_dim]`` (likewise).
    labels: ``[N]`` int64 in ``[0, num_classes)``.
    paths: N audio file names from the split CSV, or None.
    transcripts: N transcripts from the split CSV, or None.
    groups: N speaker/group ids from the CSV, or None.
    sources: where each part came from, for messages and reports.
    preprocessing: how each modality's features were made and transformed, so that
      they can be recomputed for new recordings: ``{"speech": {"extractor": {...},
      "standardize": {"mean": [...], "std": [...]}}, "text": {..., "max_tokens": 48}}``
      (the extractor from the feature file's JSON sidecar; transforms added by recipes).
  """
  name: str
  speech: list
  text: list
  labels: np.ndarray
  paths: Optional[list] = None
  transcripts: Optional[list] = None
  groups: Optional[list] = None
  sources: dict = dataclasses.field(default_factory=dict)
  preprocessing: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def speech_lengths(self) -> np.ndarray:
    return np.array([s.shape[0] for s in self.speech], np.int64)

  @property
  def text_lengths(self) -> np.ndarray:
    return np.array([s.shape[0] for s in self.text], np.int64)

  def absent(self, modality: str) -> int:
    """How many utterances lack ``modality`` ("speech"/"text"): 0 frames, an absent input
    every fusion head takes (:mod:`fusion_jax.models.heads`)."""
    lengths = self.speech_lengths if modality == "speech" else self.text_lengths
    return int(np.sum(lengths == 0))

  def describe_absent(self) -> str:
    """``"; 3 without text"`` (or ``""``): the absent-modality counts, for the log."""
    parts = [f"{n} without {m}" for m in ("speech", "text") if (n := self.absent(m))]
    return f"; {self.name}: {', '.join(parts)} (absent, not an error)" if parts else ""

  def file_name(self, i: int) -> str:
    """The real file name of row i (``sample_i`` only when no CSV path exists)."""
    return self.paths[i] if self.paths else f"sample_{i}"

  def take(self, rows: Sequence[int], name: Optional[str] = None) -> "Split":
    rows = list(rows)
    pick = lambda xs: None if xs is None else [xs[i] for i in rows]
    return Split(name=name or self.name, speech=pick(self.speech), text=pick(self.text),
                 labels=self.labels[rows], paths=pick(self.paths),
                 transcripts=pick(self.transcripts), groups=pick(self.groups),
                 sources=dict(self.sources), preprocessing=copy.deepcopy(self.preprocessing))


def _align_by_id(feats: ModalityFeatures, csv: SplitCSV) -> ModalityFeatures:
  """Orders a per-utterance file by the CSV rows (id = path, basename or stem)."""
  index = {}
  for i, uid in enumerate(feats.ids):
    index.setdefault(uid, i)
  rows = []
  for r, p in enumerate(csv.paths):
    keys = (p, os.path.basename(p), os.path.splitext(os.path.basename(p))[0])
    hit = next((index[k] for k in keys if k in index), None)
    if hit is None:
      raise DataError(feats.path, f"no features for CSV row {r} ({p!r}) of {csv.path}",
                      field="utterance_id", row=r,
                      hint="keys must be the CSV path, its file name or its stem")
    rows.append(hit)
  return feats.take(rows)


def _compare_labels(name_a, labels_a, name_b, labels_b, field_b):
  diff = labels_a != labels_b
  if diff.any():
    r = _first(diff)
    raise DataError(name_b, f"label {labels_b[r]} disagrees with label {labels_a[r]} in "
                    f"{name_a}", field=field_b, row=r,
                    hint="rows of the speech file, the text file and the CSV must be the "
                    "same utterances in the same order")


def _first(mask) -> int:
  return int(np.flatnonzero(mask)[0])


def load_split(name: str, speech_path, text_path, csv_path=None, *,
               class_names: Optional[Sequence[str]] = None,
               speech_dim: Optional[int] = None,
               text_dim: Optional[int] = None) -> Split:
  """Loads and checks one split. Nothing is returned unless everything is valid.

  Args:
    name: the split's name, for messages.
    speech_path, text_path: feature files (see :mod:`fusion_jax.data.features`).
    csv_path: the split CSV (``path,label,emotion_name[,transcript]``), optional
      unless a feature file is per-utterance (then it defines the order).
    class_names: the class list; a label outside it is an error.
    speech_dim, text_dim: the config's feature dims.

  Raises:
    DataError: naming file, field and first bad row.
  """
  speech = load_features(speech_path, expected_dim=speech_dim)
  text = load_features(text_path, expected_dim=text_dim)
  csv = read_split_csv(csv_path) if csv_path is not None else None
  for feats in (speech, text):
    if feats.labels is None and feats.ids is not None:
      if csv is None:
        raise DataError(feats.path, "a per-utterance feature file needs a split CSV to order "
                        "its utterances and give their labels", field="utterance_id")
  if csv is not None:
    speech = _align_by_id(speech, csv) if speech.labels is None and speech.ids else speech
    text = _align_by_id(text, csv) if text.labels is None and text.ids else text
  sizes = [(speech.path, len(speech)), (text.path, len(text))]
  if csv is not None:
    sizes.append((csv.path, len(csv.labels)))
  ref_path, ref_n = sizes[0]
  for p, n in sizes[1:]:
    if n != ref_n:
      raise DataError(p, f"{n} utterances, but {ref_path} has {ref_n}", field="N",
                      row=min(n, ref_n),
                      hint="speech, text and CSV rows must correspond one to one; the row "
                      "named is the first that exists in one source and not the other")
  labels = _checked_labels(speech, text, csv, class_names)
  neither = np.array([a.shape[0] == 0 and b.shape[0] == 0
                      for a, b in zip(speech.sequences, text.sequences)], bool)
  if neither.any():   # one modality may be absent, never both
    raise DataError(text.path, f"utterance has neither speech ({speech.path}) nor text frames",
                    field="x", row=_first(neither), hint="drop the utterance or re-extract it")
  return Split(
      name=name, speech=speech.sequences, text=text.sequences, labels=labels,
      paths=csv.paths if csv else None, transcripts=csv.transcripts if csv else None,
      groups=csv.groups if csv else None,
      sources={"speech": speech.path, "text": text.path, "csv": csv.path if csv else None},
      preprocessing=_preprocessing(speech, text))


def _checked_labels(speech: ModalityFeatures, text: ModalityFeatures, csv: Optional[SplitCSV],
                    class_names: Optional[Sequence[str]]) -> np.ndarray:
  """The split's labels, after checking that every source of them agrees, that they index
  ``class_names`` and that each CSV row's ``emotion_name`` is its label's class."""
  label_sources = [(p, f, lab) for p, f, lab in (
      (speech.path, "y", speech.labels), (text.path, "y", text.labels),
      (csv.path if csv else None, "label", csv.labels if csv else None)) if lab is not None]
  if not label_sources:
    raise DataError(speech.path, "no labels in any feature file or CSV", field="y")
  ref_path, ref_field, labels = label_sources[0]
  for p, f, lab in label_sources[1:]:
    _compare_labels(ref_path, labels, p, lab, f)
  if class_names is None:
    return labels
  bad = (labels < 0) | (labels >= len(class_names))
  if bad.any():
    r = _first(bad)
    raise DataError(ref_path, f"label {labels[r]} is outside the {len(class_names)} classes "
                    f"{list(class_names)}", field=ref_field, row=r,
                    hint="the class list comes from --csv_path (the training CSV)")
  if csv is not None:   # a row's name must be its label's class (else scored as another)
    for r, (label, got) in enumerate(zip(labels.tolist(), csv.emotion_names)):
      want = class_names[label]
      if got.strip() and got.strip().lower() != str(want).strip().lower():
        raise DataError(csv.path, f"emotion_name {got.strip()!r} but label {label} is "
                        f"{want!r} (classes {list(class_names)})", field="emotion_name",
                        row=r, hint="fix the row's label or name; the classes come from "
                        "the training CSV (--csv_path)")
  return labels


def _preprocessing(speech: ModalityFeatures, text: ModalityFeatures) -> dict:
  """Per modality: the extractor (from the sidecar) and the stack of hidden states (if > 1)."""
  out = {}
  for m, feats in (("speech", speech), ("text", text)):
    fp = read_extractor(feats.path)
    entry = ({"extractor": fp} if fp else {}) | ({"stack": feats.stack} if feats.stack > 1
                                                   else {})
    if entry:
      out[m] = entry
  return out


def split_from_arrays(name: str, speech_x, speech_m, text_x, text_m, labels, *,
                      paths=None, transcripts=None) -> Split:
  """Builds a :class:`Split` from in-memory padded arrays (notebooks, tests).

  Args:
    speech_x: ``[N, T, Ds]``; speech_m: ``[N, T]`` (1 = real frame).
    text_x: ``[N, L, Dt]``; text_m: ``[N, L]``.
    labels: ``[N]`` ints.
  """
  s = _from_padded(f"<{name} speech arrays>", {"x": speech_x, "m": speech_m, "y": labels}, None)
  t = _from_padded(f"<{name} text arrays>", {"x": text_x, "m": text_m, "y": labels}, None)
  return Split(name=name, speech=s.sequences, text=t.sequences, labels=s.labels,
               paths=None if paths is None else list(paths),
               transcripts=None if transcripts is None else list(transcripts))
