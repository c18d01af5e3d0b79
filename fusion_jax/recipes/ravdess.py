"""The RAVDESS recipe: wav files → features → speaker-independent folds → train, evaluate,
analyse every variant, beside an eGeMAPS functionals + logistic regression baseline.

  from fusion_jax.recipes import ravdess
  summary = ravdess.run(config, "data/ravdess16k", "runs/ravdess", ravdess.Options())
  print(reports.ravdess_table(summary))

The transcript is the clip's statement, the same for every emotion: the text cannot help,
so the recipe tests fusion robustness as much as accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

from fusion_jax import recipes, reports
from fusion_jax.experiment import Experiment
from fusion_jax.features import audio, corpora, extractors
from fusion_jax.features.extract import extract_aligned

# Frames averaged per speech extractor unless Options.pool says otherwise: every extractor
# at 12.5 frames/s or fewer.
DEFAULT_POOL = {"logmel": 8, "egemaps": 8, "compare": 8, "whisper": 4, "whisper_base": 4,
                "hf": 4}


@dataclasses.dataclass(frozen=True)
class Options:
  """The recipe's choices (``experiments/recipe_ravdess.py``'s flags)."""
  speech_extractor: str = "whisper"
  speech_model: Optional[str] = None  # hf: the snapshot (folder or cached id); else weights dir
  pool: Optional[int] = None          # None: DEFAULT_POOL of the extractor (else 1)
  speech_hidden_states: str = "last"  # or "all": every hidden state, mixed by the model
  text_extractor: str = "minilm"
  text_model: Optional[str] = None    # hf: the snapshot; minilm: another BERT folder
  text_hidden_states: str = "last"
  folds: int = 4
  val_speakers: int = 2
  analyse_folds: Sequence[int] = (0,)
  baseline: bool = True               # eGeMAPS functionals + LR (needs opensmile)
  limit_per_actor: int = 0            # > 0: only this many clips per actor (smoke tests)


def _hidden(h: str) -> dict:
  return {} if h == "last" else {"hidden_states": h}


def run(config, ravdess_dir: str, work_dir: str, options: Options = Options(), *,
        mesh=None, log: Callable[[str], None] = print) -> dict:
  """The whole recipe; returns the cross-validation summary (``cv_summary.json``) with
  ``baselines``, ``extractors``, ``speech_features``, ``text_features`` and times added.

  Writes the features under ``work_dir/features`` (resumable) and each fold's models and
  reports under ``work_dir/fold_{k}`` (:func:`fusion_jax.recipes.cross_validate`).
  """
  t0 = time.time()
  manifest = corpora.ravdess_manifest(ravdess_dir)
  if options.limit_per_actor:
    manifest.frame = manifest.frame.groupby("speaker", sort=False).head(
        options.limit_per_actor).reset_index(drop=True)
  log(f"RAVDESS: {len(manifest)} clips, {manifest.frame['speaker'].nunique()} actors, "
      f"classes {manifest.class_names}")
  fdir = os.path.join(work_dir, "features")
  pool = options.pool or DEFAULT_POOL.get(options.speech_extractor, 1)
  speech_ex = extractors.make_for("speech", options.speech_extractor, options.speech_model,
                                  pool=pool, **_hidden(options.speech_hidden_states))
  text_ex = extractors.make_for("text", options.text_extractor, options.text_model,
                                **_hidden(options.text_hidden_states))
  name = lambda ex: f"ravdess_{ex.file_tag()}.npz"
  out = extract_aligned(
      manifest, {"speech": (speech_ex, os.path.join(fdir, name(speech_ex))),
                 "text": (text_ex, os.path.join(fdir, name(text_ex)))},
      os.path.join(fdir, "ravdess_split.csv"))
  extract_seconds = time.time() - t0
  split = recipes.load_corpus(out.paths["speech"], out.paths["text"], out.split_csv,
                              name="ravdess")
  exp = Experiment.create(config, manifest.class_names, train=split, mesh=mesh, log=log)
  folds = recipes.group_folds(split.groups, options.folds, options.val_speakers)
  summary = recipes.cross_validate(exp, split, folds, work_dir,
                                   analyse_folds=list(options.analyse_folds),
                                   write_summary=False)
  baselines = {}
  if options.baseline:
    try:
      x = recipes.cached_functionals(
          list(out.frame["path"]), list(out.frame["id"]),
          os.path.join(fdir, "ravdess_egemaps_functionals.npz"),
          lambda p: extractors.opensmile_functionals(audio.read_audio(p)))
      baselines["egemaps_functionals_lr"] = b = recipes.functionals_baseline(
          x, out.frame["label"].to_numpy(), list(out.frame["speaker"]), folds,
          len(manifest.class_names))
      log(f"eGeMAPS functionals + LR: accuracy {reports.cell(b['accuracy'])}, UAR "
          f"{reports.cell(b['uar'])}")
    except ImportError as e:
      log(f"Skipping the eGeMAPS + LR baseline: {e}")
  summary["baselines"] = baselines
  summary["extractors"] = dict(speech=speech_ex.fingerprint(), text=text_ex.fingerprint())
  summary["extract_seconds"] = extract_seconds
  summary["total_seconds"] = time.time() - t0
  return summary
