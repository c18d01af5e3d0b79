"""The MELD text recipe: transcripts → MiniLM token states → the contextual block.

  from fusion_jax.recipes import meld
  result = meld.run(config, "data/meld", "runs/meld", meld.Options(select_on="train_holdout"))
  print(reports.meld_table(result))

Checkpoints are chosen on dev (as MELD papers do; dev figures are then optimistic) or on a
held-out fraction of the training dialogues (dev stays a test). With speech features of
MELD's clips every fusion variant can run too; without them each utterance gets a
one-frame zero speech input that ``text_only`` never reads.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

from fusion_jax import evaluation, recipes, training
from fusion_jax.data.splits import load_split
from fusion_jax.errors import ConfigError
from fusion_jax.experiment import Experiment
from fusion_jax.features import corpora, extractors
from fusion_jax.features.extract import extract_aligned
from fusion_jax.models import registry

SCORES = ("accuracy", "uar", "macro_f1", "weighted_f1")


@dataclasses.dataclass(frozen=True)
class Options:
  """The recipe's choices (``experiments/recipe_meld.py``'s flags)."""
  text_extractor: str = "minilm"
  text_model: Optional[str] = None       # hf: the snapshot; minilm: another BERT folder
  context: int = 0                       # previous lines of the dialogue as context
  text_hidden_states: str = "last"       # or "all" (implied by text fine-tuning)
  train_speech_features: Optional[str] = None
  dev_speech_features: Optional[str] = None
  select_on: str = "dev"                 # or "train_holdout"
  holdout_fraction: float = 0.1
  baseline: bool = True                  # mean-pooled sentence vectors + LR
  max_tokens: int = 48                   # 0 = keep all token states
  limit: int = 0                         # > 0: the first N lines of each split


def _prepare(options: Options, meld_dir: str, work_dir: str, tag: str, csv_name: str,
             extractor) -> tuple:
  manifest = corpora.meld_manifest(os.path.join(meld_dir, csv_name))
  if options.limit:
    manifest.frame = manifest.frame.iloc[:options.limit].reset_index(drop=True)
  manifest.frame["context"] = corpora.dialogue_context(manifest.frame, options.context)
  fdir = os.path.join(work_dir, "features")
  name = f"meld_{tag}_{extractor.file_tag(f'_ctx{options.context}' if options.context else '')}.npz"
  out = extract_aligned(manifest, {"text": (extractor, os.path.join(fdir, name))},
                        os.path.join(fdir, f"meld_{tag}_split.csv"), batch_size=256)
  return manifest, out.paths["text"], out.split_csv


def _load(name, names, text_path, speech_path, csv_path):
  if speech_path:
    return load_split(name, speech_path, text_path, csv_path, class_names=names)
  return recipes.without_speech(load_split(name, text_path, text_path, csv_path,
                                           class_names=names))


def variants_for(config, options: Options, explicit: bool,
                 log: Callable[[str], None]) -> Optional[str]:
  """``config.train.variants`` to use instead of the config's, or None to keep it: without
  speech features, ``text_only`` unless the user asked for variants (``explicit``), which
  must then read text only."""
  has_speech = bool(options.train_speech_features)
  variants = registry.parse(config.train.variants)
  if not has_speech and not explicit and variants != ["text_only"]:
    log(f"No speech features: training text_only (the config lists {variants}).")
    return "text_only"
  needs_speech = [v for v in variants if registry.get(v).reads("speech")]
  if needs_speech and not has_speech:
    raise ConfigError(f"variants {needs_speech} need speech features: give "
                      "--train_speech_features and --dev_speech_features, or "
                      "--variants=text_only")
  return None


def run(config, meld_dir: str, work_dir: str, options: Options = Options(), *,
        mesh=None, log: Callable[[str], None] = print) -> dict:
  """The whole recipe; returns what ``meld_summary.json`` holds (per model the dev
  scores over runs, per-class F1; the options, sizes and times that the table states).

  ``config.train.variants`` must already be what to train (:func:`variants_for`).
  Writes features under ``work_dir/features``, models under ``work_dir/models`` and the
  training and dev reports under ``work_dir/results``.
  """
  if bool(options.train_speech_features) != bool(options.dev_speech_features):
    raise ConfigError("give both --train_speech_features and --dev_speech_features, or "
                      "neither")
  t0 = time.time()
  has_speech = bool(options.train_speech_features)
  hidden = "all" if config.model.text_finetune_layers else options.text_hidden_states
  extractor = extractors.make_for(
      "text", options.text_extractor, options.text_model,
      **({"hidden_states": hidden} if hidden != "last" else {}),
      **({"context": options.context} if options.context else {}))
  train_m, train_text, train_csv = _prepare(options, meld_dir, work_dir, "train",
                                            "train_sent_emo.csv", extractor)
  _, dev_text, dev_csv = _prepare(options, meld_dir, work_dir, "dev", "dev_sent_emo.csv",
                                  extractor)
  extract_seconds = time.time() - t0
  names = train_m.class_names
  train = _load("train", names, train_text, options.train_speech_features, train_csv)
  dev = _load("dev", names, dev_text, options.dev_speech_features, dev_csv)
  if options.max_tokens:
    cut = recipes.truncate_text([train, dev], options.max_tokens)
    log(f"--max_tokens={options.max_tokens}: {cut} of {len(train) + len(dev)} lines "
        "truncated")
  if options.select_on == "train_holdout":
    train, val = recipes.holdout_split(train, options.holdout_fraction)
  else:
    val = dev
  exp = Experiment.create(config, names, train=train, val=val, mesh=mesh,
                          model_dir=os.path.join(work_dir, "models"),
                          results_dir=os.path.join(work_dir, "results"), log=log)
  training.train_and_evaluate(exp, train, val)
  summary = evaluation.evaluate(exp, dev, variants=exp.variants, seeds=exp.seeds,
                                train=train, ablation="absent" if has_speech else "none")
  rows = {}
  for v, s in summary["variants"].items():
    rows[v] = {k: recipes.summarise([t[k] for t in s["test"]]) for k in SCORES}
    rows[v]["val_acc"] = recipes.summarise(s["val_acc"])
    rows[v]["val_score"] = recipes.summarise(s["val_score"])   # the selection metric
    rows[v]["per_class_f1"] = {c: recipes.summarise([t["per_class"]["f1"][i]
                                                     for t in s["test"]])
                               for i, c in enumerate(names)}
  if options.baseline:
    rows["minilm_mean_pool_lr"] = recipes.sentence_vector_baseline(train, dev, len(names))
  return dict(rows=rows, class_names=names, select_on=options.select_on,
              selection_metric=summary["selection_metric"], seeds=exp.seeds,
              extractor=extractor.fingerprint(), extractor_stack=extractor.stack,
              context=options.context, seconds=time.time() - t0,
              extract_seconds=extract_seconds, train_size=len(train), val_size=len(val),
              dev_size=len(dev))
