"""Manifest → feature files: batched, resumable, one clear error per bad utterance.

A manifest is a CSV with one row per utterance::

  path,transcript,label,speaker[,id]
  Actor_01/03-01-05-01-01-01-01.wav,Kids are talking by the door,angry,Actor_01

``label`` is a class name or an integer; ``speaker`` (or ``group``) is used for
speaker-independent folds; ``id`` defaults to the path's stem. Relative paths
are resolved against ``audio_root`` (default: the manifest's folder).

:func:`extract` writes fusion_jax's native ``.npz`` (and, on request, the
original's padded ``.pt`` dict), a split CSV in the original's format, and a
JSON sidecar (extractor, dims, frame rate, failures, time). Finished batches are
kept in ``<out>.parts/`` until the end, so an interrupted run resumes where it
stopped; utterances that fail are listed at the end and never stop the others.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from fusion_jax import io_utils
from fusion_jax.data import features as features_lib
from fusion_jax.data.errors import DataError
from fusion_jax.features.extractors import Extractor

_REQUIRED = ("label",)


@dataclasses.dataclass
class Manifest:
  """Rows of a manifest, checked.

  Attributes:
    frame: columns ``id, path, transcript, label, speaker`` (+ any others),
      ``path`` absolute (or empty when there is no audio).
    class_names: index → name; ``label`` holds the index.
    source: the CSV file (for messages).
  """
  frame: pd.DataFrame
  class_names: list
  source: str

  def __len__(self) -> int:
    return len(self.frame)

  def rows(self) -> list:
    return self.frame.to_dict("records")


def manifest_from_frame(frame: pd.DataFrame, source: str, *, audio_root: Optional[str] = None,
                        class_names: Optional[Sequence[str]] = None) -> Manifest:
  """Checks and normalises a manifest table (see the module docstring).

  Raises:
    DataError: naming the manifest, the column and the first bad row.
  """
  df = frame.copy()
  df.columns = [str(c).strip() for c in df.columns]
  if "group" in df.columns and "speaker" not in df.columns:
    df["speaker"] = df["group"]
  missing = [c for c in _REQUIRED if c not in df.columns]
  if missing or not ({"path", "transcript"} & set(df.columns)):
    raise DataError(source, f"missing column(s) {missing or ['path or transcript']}; "
                    f"found {list(df.columns)}", field=(missing or ["path"])[0],
                    hint="a manifest needs path and/or transcript, and label")
  for col in ("path", "transcript", "speaker"):
    if col not in df.columns:
      df[col] = ""
    df[col] = df[col].fillna("").astype(str)
  root = audio_root if audio_root is not None else os.path.dirname(os.path.abspath(source))
  df["path"] = [p if not p or os.path.isabs(p) else os.path.join(root, p) for p in df["path"]]
  if "id" not in df.columns:
    df["id"] = [os.path.splitext(os.path.basename(p))[0] if p else f"row{r}"
                for r, p in enumerate(df["path"])]
  df["id"] = df["id"].astype(str)
  dup = df["id"].duplicated()
  if dup.any():
    r = int(np.flatnonzero(dup.to_numpy())[0])
    raise DataError(source, f"duplicate utterance id {df['id'].iloc[r]!r}", field="id", row=r,
                    hint="give an id column that is unique")
  idx, class_names = _label_indices(df["label"], source, class_names)
  df["label"] = idx
  df["emotion"] = [class_names[k] for k in idx]
  return Manifest(frame=df.reset_index(drop=True), class_names=list(class_names), source=source)


def _label_indices(labels: pd.Series, source: str,
                   class_names: Optional[Sequence[str]]) -> tuple:
  """A manifest's labels (class indices or names) as ``(indices [N], class names)``."""
  if labels.isna().any():
    raise DataError(source, "missing label", field="label",
                    row=int(np.flatnonzero(labels.isna().to_numpy())[0]))
  numeric = pd.to_numeric(labels, errors="coerce")
  if numeric.notna().all():
    idx = numeric.astype(np.int64).to_numpy()
    if class_names is None:
      if (idx < 0).any():
        r = int(np.flatnonzero(idx < 0)[0])
        raise DataError(source, f"negative label {idx[r]}", field="label", row=r)
      class_names = [str(k) for k in range(int(idx.max()) + 1)]
    bad = (idx < 0) | (idx >= len(class_names))
    if bad.any():
      r = int(np.flatnonzero(bad)[0])
      raise DataError(source, f"label {idx[r]} outside the {len(class_names)} classes",
                      field="label", row=r)
  else:
    names = labels.astype(str).str.strip()
    class_names = list(class_names) if class_names is not None else sorted(names.unique())
    lookup = {n: k for k, n in enumerate(class_names)}
    unknown = ~names.isin(list(lookup))
    if unknown.any():
      r = int(np.flatnonzero(unknown.to_numpy())[0])
      raise DataError(source, f"label {names.iloc[r]!r} is not one of {class_names}",
                      field="label", row=r)
    idx = names.map(lookup).to_numpy(np.int64)
  return idx, list(class_names)


def read_manifest(path, *, audio_root: Optional[str] = None,
                  class_names: Optional[Sequence[str]] = None) -> Manifest:
  """Reads a manifest CSV (see the module docstring)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise DataError(path, "is a directory, not a manifest CSV")
  try:
    frame = pd.read_csv(path, dtype={"path": str, "transcript": str, "speaker": str,
                                     "group": str, "id": str}, keep_default_na=False,
                        na_values={"label": [""]})
  except FileNotFoundError:
    raise DataError(path, "manifest not found") from None
  except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
    raise DataError(path, f"unreadable CSV ({e})") from None
  return manifest_from_frame(frame, path, audio_root=audio_root, class_names=class_names)


@dataclasses.dataclass
class Failure:
  row: int
  id: str
  message: str


@dataclasses.dataclass
class ExtractionResult:
  """What :func:`extract` did.

  Attributes:
    path: the native ``.npz`` written.
    ids: utterance ids in it, in manifest order.
    failures: rows that could not be extracted (not in the file).
    extracted, reused: utterances computed now / taken from an earlier run.
    seconds: wall time of this call.
  """
  path: str
  ids: list
  failures: list
  extracted: int
  reused: int
  seconds: float


class Progress:
  """Progress on stderr: a tqdm bar on a terminal; in a log (not a terminal), one line per
  10 % (``label: done/total (pct) rate/s, eta m:ss``), which reads well in files."""

  def __init__(self, total: int, label: str, stream=None, enabled: bool = True):
    self.total, self.label, self.done = total, label, 0
    self.stream = stream or sys.stderr
    self.enabled = enabled and total > 0
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.start, self._last_decile = time.perf_counter(), -1
    self.bar = None
    if self.enabled and self.tty:
      import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm.tqdm(total=total, desc=label, file=self.stream, unit="item",
                           dynamic_ncols=True)

  def update(self, n: int) -> None:
    self.done += n
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.update(n)
      if self.done >= self.total:
        self.bar.close()
      return
    frac = self.done / self.total
    if int(frac * 10) > self._last_decile:
      self._last_decile = int(frac * 10)
      rate = self.done / max(time.perf_counter() - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      self.stream.write(f"{self.label}: {self.done}/{self.total} ({frac:.0%}) {rate:.1f}/s, "
                        f"eta {int(eta) // 60}:{int(eta) % 60:02d}\n")
      self.stream.flush()


def _parts_dir(out_path: str) -> str:
  return out_path + ".parts"


_sidecar = features_lib.sidecar_path


def _load_parts(parts: str) -> dict:
  done = {}
  for f in sorted(glob.glob(os.path.join(parts, "part-*.npz"))):
    feats = features_lib.load_features(f)
    done.update(zip(feats.ids, feats.sequences))
  return done


def _resumable(manifest: Manifest, extractor: Extractor, out_path: str, parts: str,
               resume: bool) -> dict:
  """Prepares the ``.parts`` folder and returns ``{id: features}`` already extracted: finished
  parts of an interrupted run with the same settings, and (same extractor) the rows of a
  finished earlier ``out_path``."""
  fingerprint = dict(extractor.fingerprint(), manifest=os.path.abspath(manifest.source))
  meta_path = os.path.join(parts, "extractor.json")
  if os.path.isdir(parts) and resume and os.path.exists(meta_path):
    with open(meta_path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous != json.loads(json.dumps(fingerprint)):
      raise DataError(meta_path, f"an interrupted run with other settings ({previous}) left "
                      f"parts here; this run is {fingerprint}",
                      hint="delete the .parts folder or pass --noresume")
  elif os.path.isdir(parts):
    shutil.rmtree(parts)
  os.makedirs(parts, exist_ok=True)
  io_utils.write_json(meta_path, fingerprint)
  done = _load_parts(parts) if resume else {}
  if resume and os.path.exists(out_path) and os.path.exists(_sidecar(out_path)):
    with open(_sidecar(out_path), encoding="utf-8") as f:
      same = json.load(f).get("extractor") == json.loads(json.dumps(extractor.fingerprint()))
    if same:   # a finished earlier run: keep what it extracted, compute only new rows
      previous = features_lib.load_features(out_path)
      done.update((i, s) for i, s in zip(previous.ids or [], previous.sequences)
                  if i not in done)
  return done


def _compute_batch(extractor: Extractor, rows: list, batch: list, source: str,
                   failures: list) -> list:
  """Loads and computes one batch of row indices; returns ``[(row, features)]`` of those that
  worked, in the dtype the file stores, and appends a :class:`Failure` for each that did
  not (a batch that breaks is redone one item at a time to find the culprit)."""
  loaded, ok, absent = [], [], []
  for r in batch:
    if is_absent(extractor, rows[r]):
      absent.append((r, np.zeros((0, extractor.dim), extractor.storage_dtype)))
      continue
    try:
      loaded.append(extractor.load(rows[r], source, r))
      ok.append(r)
    except DataError as e:
      failures.append(Failure(r, rows[r]["id"], str(e)))
  if not loaded:
    return absent
  try:
    feats = extractor.compute(loaded)
  except Exception:  # pylint: disable=broad-except
    feats = []   # one item broke the batch: redo one by one to find it
    for r, item in zip(list(ok), loaded):
      try:
        feats.append(extractor.compute([item])[0])
      except Exception as e:  # pylint: disable=broad-except
        failures.append(Failure(r, rows[r]["id"], f"{rows[r]['path'] or rows[r]['id']}: "
                                f"extraction failed ({type(e).__name__}: {e})"))
        ok.remove(r)
  good = [(r, np.asarray(f, np.float32)) for r, f in zip(ok, feats)]
  bad = [(r, f) for r, f in good if f.ndim != 2 or f.shape[0] < 1 or
         f.shape[1] != extractor.dim or not np.isfinite(f).all()]
  for r, f in bad:
    failures.append(Failure(r, rows[r]["id"], f"{rows[r]['path'] or rows[r]['id']}: "
                            f"extractor gave {f.shape} with non-finite values or no frames"))
  return sorted(absent + [(r, f.astype(extractor.storage_dtype, copy=False)) for r, f in good
                          if all(r != b for b, _ in bad)],   # (in the dtype the file stores)
                key=lambda x: x[0])


def is_absent(extractor: Extractor, row: dict) -> bool:
  """Whether a manifest row leaves ``extractor``'s modality out by choice: no transcript
  for text, no audio path for speech. Its features are 0 frames (an absent input, which
  fusion variants take), counted in the log, not an error."""
  if extractor.modality == "text":
    text = row.get("transcript")
    return not isinstance(text, str) or not text.strip()
  return not row.get("path")


def extract(manifest: Manifest, extractor: Extractor, out_path, *, batch_size: int = 16,
            original_layout: Optional[str] = None, split_csv: Optional[str] = None,
            resume: bool = True, progress: bool = True, log=print) -> ExtractionResult:
  """Extracts one modality for every manifest row and writes the feature file.

  Args:
    manifest: from :func:`read_manifest`.
    extractor: from :func:`fusion_jax.features.extractors.make_extractor`.
    out_path: the native ``.npz`` to write (atomically, at the end).
    batch_size: utterances per compute batch (and per resumable part).
    original_layout: also write the original's padded ``{'x','m','y'}`` ``.pt`` here.
    split_csv: also write ``path,label,emotion_name,transcript,group`` for the rows written.
    resume: reuse finished batches of an interrupted run with the same extractor.
    progress: show a progress line on stderr.

  Returns:
    An :class:`ExtractionResult`; failed rows are also in the sidecar JSON.

  Raises:
    DataError: when every row failed (nothing is written then), or when the
      resumable parts were made by a different extractor.
  """
  t0 = time.perf_counter()
  out_path = os.fspath(out_path)
  parts = _parts_dir(out_path)
  done = _resumable(manifest, extractor, out_path, parts, resume)
  rows = manifest.rows()
  todo = [r for r, row in enumerate(rows) if row["id"] not in done]
  reused = len(rows) - len(todo)
  if reused:
    log(f"Resuming: {reused} of {len(rows)} utterances already extracted (earlier run of "
        f"{out_path})")
  failures = _extract_parts(extractor, rows, todo, manifest.source, parts, done, batch_size,
                            progress)
  kept = [r for r, row in enumerate(rows) if row["id"] in done]
  failures.sort(key=lambda f: f.row)
  if not kept:
    raise DataError(manifest.source, f"no utterance could be extracted ({len(failures)} "
                    "failed); first: " + (failures[0].message if failures else "empty manifest"))
  frame = manifest.frame.iloc[kept]
  seqs = [done[i] for i in frame["id"]]
  if all(x.shape[0] == 0 for x in seqs):
    raise DataError(manifest.source, f"no row has {extractor.modality} (every "
                    f"{'transcript' if extractor.modality == 'text' else 'path'} is empty)",
                    field="transcript" if extractor.modality == "text" else "path",
                    hint=f"extract {extractor.modality} from a manifest that has it")
  _write_outputs(manifest, extractor, out_path, frame, seqs, failures, original_layout,
                 split_csv, seconds=time.perf_counter() - t0)
  shutil.rmtree(parts, ignore_errors=True)
  result = ExtractionResult(path=out_path, ids=list(frame["id"]), failures=failures,
                            extracted=len(todo) - len(failures), reused=reused,
                            seconds=time.perf_counter() - t0)
  _log_extraction(result, extractor, seqs, len(rows), log)
  return result


def _extract_parts(extractor: Extractor, rows: list, todo: list, source: str, parts: str,
                   done: dict, batch_size: int, progress: bool) -> list:
  """Computes the ``todo`` rows batch by batch, each batch saved as a resumable part and
  added to ``done`` (id → features). Returns the failures."""
  failures: list = []
  bar = Progress(len(todo), f"{extractor.name} ({extractor.modality})", enabled=progress)
  part_no = len(glob.glob(os.path.join(parts, "part-*.npz")))
  for s in range(0, len(todo), batch_size):
    batch = todo[s:s + batch_size]
    good = _compute_batch(extractor, rows, batch, source, failures)
    if good:
      features_lib.save_features(os.path.join(parts, f"part-{part_no:05d}.npz"),
                                 [f for _, f in good], ids=[rows[r]["id"] for r, _ in good],
                                 stack=extractor.stack, dtype=extractor.storage_dtype)
      part_no += 1
      done.update((rows[r]["id"], f) for r, f in good)
    bar.update(len(batch))
  return failures


def _log_extraction(result: "ExtractionResult", extractor: Extractor, seqs: list, total: int,
                    log) -> None:
  lengths = np.array([s.shape[0] for s in seqs])
  if (lengths == 0).any():
    what = "transcript" if extractor.modality == "text" else "audio path"
    log(f"{int((lengths == 0).sum())} of {len(seqs)} utterances have no {what}: written as "
        f"absent {extractor.modality} (0 frames; fusion variants take them)")
  if result.failures:
    log(f"{len(result.failures)} of {total} utterances failed and are not in {result.path}:")
    for f in result.failures:
      log(f"  - {f.message}")
  log(f"Wrote {result.path}: {len(seqs)} utterances, {extractor.dim}-d, frames per utterance "
      f"{lengths.mean():.1f} mean [{lengths.min()}, {lengths.max()}] "
      f"({result.extracted} extracted, {result.reused} reused, {result.seconds:.1f} s)")


def _write_outputs(manifest: Manifest, extractor: Extractor, out_path: str, frame, seqs: list,
                   failures: list, original_layout: Optional[str], split_csv: Optional[str],
                   seconds: float) -> None:
  """The feature file, the original-layout ``.pt`` and split CSV when asked, and the sidecar
  JSON (extractor, class names, frame counts, failures)."""
  labels = frame["label"].to_numpy(np.int64)
  features_lib.save_features(out_path, seqs, labels=labels, ids=list(frame["id"]),
                             stack=extractor.stack, dtype=extractor.storage_dtype)
  if original_layout:
    features_lib.save_original_layout(original_layout, seqs, labels)
  if split_csv:
    write_split_csv(split_csv, frame)
  lengths = np.array([s.shape[0] for s in seqs])
  io_utils.write_json(_sidecar(out_path), dict(
      extractor=extractor.fingerprint(), manifest=os.path.abspath(manifest.source),
      class_names=manifest.class_names, utterances=len(seqs),
      frames=dict(mean=float(lengths.mean()), min=int(lengths.min()), max=int(lengths.max())),
      failures=[dataclasses.asdict(f) for f in failures], seconds=seconds,
      original_layout=original_layout, split_csv=split_csv))


def write_split_csv(path, frame: pd.DataFrame) -> None:
  """The original's split CSV (``path,label,emotion_name,transcript``) plus ``group``.

  Rows without audio (a text-only corpus) are named by their utterance id.
  """
  paths = frame["path"].where(frame["path"].astype(str) != "", frame["id"])
  out = pd.DataFrame({"path": paths, "label": frame["label"],
                      "emotion_name": frame["emotion"], "transcript": frame["transcript"],
                      "group": frame["speaker"]})
  with io_utils.atomic_open(path, "w", encoding="utf-8", newline="") as f:
    out.to_csv(f, index=False)


def subset_feature_file(path, keep_ids, original_layout: Optional[str] = None) -> int:
  """Rewrites a native feature file keeping only ``keep_ids`` (order kept). Returns rows kept.

  Used to keep speech and text files row-aligned when each lost different utterances.
  """
  feats = features_lib.load_features(path)
  rows = [i for i, uid in enumerate(feats.ids) if uid in keep_ids]
  if len(rows) != len(feats):
    feats = feats.take(rows)
    features_lib.save_features(path, feats)
    if original_layout:
      features_lib.save_original_layout(original_layout, feats.sequences, feats.labels)
  return len(rows)


@dataclasses.dataclass
class AlignedExtraction:
  """What :func:`extract_aligned` wrote.

  Attributes:
    paths: modality → native ``.npz``, each holding exactly the rows of ``frame``.
    split_csv: the split CSV of those rows (the original's columns + group).
    frame: the manifest rows kept, in manifest order.
    failed: ids of the rows left out of every file (some modality failed on them).
    results: modality → :class:`ExtractionResult`.
  """
  paths: dict
  split_csv: str
  frame: pd.DataFrame
  failed: set
  results: dict


def extract_aligned(manifest: Manifest, outputs: dict, split_csv, *, batch_size: int = 16,
                    original_layout: bool = False, resume: bool = True, progress: bool = True,
                    log=print) -> AlignedExtraction:
  """Extracts every modality and keeps the files row-aligned.

  Each modality is extracted with :func:`extract`; a row that failed in any
  modality is dropped from every file (and from the split CSV), so row i of the
  speech file, the text file and the CSV is the same utterance.

  Args:
    manifest: from :func:`read_manifest` or :mod:`fusion_jax.features.corpora`.
    outputs: ``{modality: (extractor, out_path)}``.
    split_csv: where the split CSV goes.
    original_layout: also write each modality's padded ``.pt`` beside its ``.npz``.
  """
  failed, results = set(), {}
  pt = lambda path: os.path.splitext(path)[0] + ".pt" if original_layout else None
  for modality, (extractor, path) in outputs.items():
    if extractor.modality != modality:
      raise ValueError(f"{extractor.name} is a {extractor.modality} extractor, not {modality}")
    results[modality] = extract(manifest, extractor, path, batch_size=batch_size,
                                original_layout=pt(path), resume=resume, progress=progress,
                                log=log)
    failed |= {f.id for f in results[modality].failures}
  kept = manifest.frame[~manifest.frame["id"].isin(failed)]
  if failed:
    log(f"{len(failed)} utterances left out of every file so the modalities stay aligned")
    for _, path in outputs.values():
      subset_feature_file(path, set(kept["id"]), pt(path))
  write_split_csv(split_csv, kept)
  return AlignedExtraction({m: p for m, (_, p) in outputs.items()}, os.fspath(split_csv),
                           kept.reset_index(drop=True), failed, results)
