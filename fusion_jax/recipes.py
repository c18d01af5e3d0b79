"""Corpus recipes: speaker-independent cross-validation around train → evaluate → analyse.

  from fusion_jax import recipes
  split = recipes.load_corpus("ravdess_whisper.npz", "ravdess_minilm.npz", "ravdess.csv")
  folds = recipes.group_folds(split.groups, num_folds=4)
  summary = recipes.cross_validate(config, split, folds, "work/ravdess", class_names)

Folds never share a speaker (``split.groups``). Inside each fold, validation
speakers (held out of training too) choose the checkpoint; test speakers are
only ever used to report. Features are standardised with statistics of the
fold's training speakers only.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import numpy as np

from fusion_jax import io_utils, metrics
from fusion_jax.data.errors import DataError
from fusion_jax.data.splits import Split, load_split


@dataclasses.dataclass(frozen=True)
class Fold:
  """One speaker-independent fold: disjoint train / validation / test speakers."""
  index: int
  train: tuple
  val: tuple
  test: tuple


def group_folds(groups: Sequence[str], num_folds: int, val_groups: int = 2) -> list:
  """Speaker-independent folds over the sorted speakers, in contiguous blocks.

  Fold ``k`` tests on block ``k``; its validation speakers are the first
  ``val_groups`` of block ``k + 1`` (cyclically); the rest train. With RAVDESS
  actors 01–16 and 4 folds, each test block holds two male and two female actors.

  Raises:
    ValueError: too few speakers for the folds asked for.
  """
  speakers = sorted(set(groups))
  if num_folds < 2 or len(speakers) < num_folds + 1:
    raise ValueError(f"{len(speakers)} speakers cannot make {num_folds} speaker-independent "
                     "folds with validation speakers; use fewer folds")
  blocks = [list(b) for b in np.array_split(np.array(speakers, dtype=object), num_folds)]
  folds = []
  for k in range(num_folds):
    nxt = blocks[(k + 1) % num_folds]
    val = tuple(nxt[:val_groups])
    test = tuple(blocks[k])
    train = tuple(s for s in speakers if s not in test and s not in val)
    if not train:
      raise ValueError("no training speakers left; use fewer validation speakers")
    folds.append(Fold(k, train, val, test))
  return folds


def split_fold(split: Split, fold: Fold) -> tuple:
  """``(train, val, test)`` Splits of one fold (rows kept in corpus order)."""
  if split.groups is None:
    raise DataError(split.sources.get("csv") or split.name, "no speaker column to build "
                    "speaker-independent folds", field="group")
  g = np.array(split.groups)
  parts = []
  for name, speakers in (("train", fold.train), ("val", fold.val), ("test", fold.test)):
    rows = np.flatnonzero(np.isin(g, list(speakers)))
    parts.append(split.take(rows, name=name))
  return tuple(parts)


def standardize(train: Split, *others: Split) -> tuple:
  """Per-dimension standardisation with the training split's frame statistics.

  Returns new Splits (train first); the statistics never see the other splits.
  """
  def stats(seqs):
    x = np.concatenate(seqs, 0).astype(np.float64)
    return x.mean(0), np.maximum(x.std(0), 1e-6)

  s_mu, s_sd = stats(train.speech)
  t_mu, t_sd = stats(train.text)
  out = []
  for sp in (train,) + others:
    out.append(dataclasses.replace(
        sp, speech=[((s - s_mu) / s_sd).astype(np.float32) for s in sp.speech],
        text=[((t - t_mu) / t_sd).astype(np.float32) for t in sp.text]))
  return tuple(out)


def load_corpus(speech_path, text_path, csv_path, name: str = "corpus") -> Split:
  """Speech and text feature files of one corpus aligned by the split CSV."""
  return load_split(name, speech_path, text_path, csv_path)


def summarise(values: Sequence[float]) -> dict:
  """``{mean, std, n}`` of a list of scores (std with ddof=1; 0 for one value)."""
  mean, std = metrics.mean_std(list(values))
  return dict(mean=mean, std=std, n=len(values))


def cross_validate(config, split: Split, folds: Sequence[Fold], work_dir: str,
                   class_names: Sequence[str], *, variants: Optional[Sequence[str]] = None,
                   seeds: Optional[Sequence[int]] = None, analyse_folds: Sequence[int] = (0,),
                   ablation: str = "mean", mesh=None, log=print) -> dict:
  """Trains, evaluates (and analyses) every variant × seed on every fold.

  ``mesh``: the device mesh (:func:`fusion_jax.sharding.make_mesh`); None = one device.

  Writes under ``work_dir/fold_{k}/``: ``models/``, ``results/`` (the original's
  training plots and reports), ``results/test_results/`` (test reports) and, for
  folds in ``analyse_folds``, ``results/separability/``. Writes
  ``work_dir/cv_summary.json`` and ``work_dir/cv_results.txt``.

  Returns:
    ``{"variants": {v: {"accuracy": {mean, std, n}, "uar": …, "macro_f1": …,
    "weighted_f1": …, "runs": [{fold, seed, …}]}}, …}``.
  """
  from fusion_jax import analysis, evaluation, training  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  runs: dict = {}
  for fold in folds:
    tr, va, te = standardize(*split_fold(split, fold))
    log(f"\n=== Fold {fold.index}: train {len(tr)} ({', '.join(fold.train)}), "
        f"validation {len(va)} ({', '.join(fold.val)}), test {len(te)} "
        f"({', '.join(fold.test)}) ===")
    fdir = os.path.join(work_dir, f"fold_{fold.index}")
    model_dir, results_dir = os.path.join(fdir, "models"), os.path.join(fdir, "results")
    training.train_and_evaluate(config, tr, va, class_names, model_dir, results_dir,
                                variants=variants, seeds=seeds, mesh=mesh, log=log)
    summary = evaluation.evaluate(config, te, class_names, model_dir, results_dir,
                                  variants=variants, seeds=seeds, train=tr, ablation=ablation,
                                  mesh=mesh, log=log)
    for v, s in summary["variants"].items():
      for seed, t, val in zip(s["seeds"], s["test"], s["val_acc"]):
        runs.setdefault(v, []).append(dict(
            fold=fold.index, seed=seed, val_acc=val, accuracy=t["accuracy"], uar=t["uar"],
            macro_f1=t["macro_f1"], weighted_f1=t["weighted_f1"]))
    if fold.index in analyse_folds:
      loaded = evaluation.load_runs(model_dir, list(summary["variants"]), seeds[:1] if seeds
                                    else None, len(class_names), config, log)
      analysis.analyze(config, loaded, te, class_names, results_dir,
                       methods=[m for m in str(config.analysis.methods).split(",") if m],
                       max_per_class=config.analysis.max_per_class, mesh=mesh, log=log)
  out = dict(folds=[dataclasses.asdict(f) for f in folds], class_names=list(class_names),
             seconds=time.perf_counter() - t0, variants={})
  for v, rs in runs.items():
    out["variants"][v] = {k: summarise([r[k] for r in rs])
                          for k in ("val_acc", "accuracy", "uar", "macro_f1", "weighted_f1")}
    out["variants"][v]["runs"] = rs
  io_utils.write_json(os.path.join(work_dir, "cv_summary.json"), out)
  io_utils.write_text(os.path.join(work_dir, "cv_results.txt"), cv_table(out))
  log("\n" + cv_table(out))
  return out


def cv_table(summary: dict, extra_rows: Optional[dict] = None) -> str:
  """A plain-text table: variant, accuracy, UAR, macro/weighted F1 (mean ± std, n runs)."""
  rows = dict(summary["variants"])
  rows.update(extra_rows or {})
  ranked = sorted(rows, key=lambda v: -rows[v]["val_acc"]["mean"]
                  if "val_acc" in rows[v] else 1.0)
  head = (f"{'Variant':<22} {'Val acc':>15} {'Test acc':>15} {'Test UAR':>15} "
          f"{'Macro F1':>15} {'Weighted F1':>15} {'runs':>5}")
  lines = ["Speaker-independent cross-validation (mean ± std over folds × seeds; ranked by "
           "validation accuracy)", head, "-" * len(head)]
  fmt = lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}" if d else "-"
  for v in ranked:
    r = rows[v]
    lines.append(f"{v:<22} {fmt(r.get('val_acc')):>15} {fmt(r['accuracy']):>15} "
                 f"{fmt(r['uar']):>15} {fmt(r['macro_f1']):>15} {fmt(r['weighted_f1']):>15} "
                 f"{r['accuracy']['n']:>5}")
  return "\n".join(lines) + "\n"


def functionals_baseline(features: np.ndarray, labels: np.ndarray, groups: Sequence[str],
                         folds: Sequence[Fold], num_classes: int, *, C: float = 1.0,
                         seed: int = 0) -> dict:
  """Standardised functionals + logistic regression on the same folds (train+val speakers).

  The reference point of DESIGN.md §3 (eGeMAPS functionals + LR ≈ 0.50).
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  g = np.asarray(groups)
  runs = []
  for fold in folds:
    test = np.isin(g, list(fold.test))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000,
                                                             random_state=seed))
    clf.fit(features[~test], labels[~test])
    pred = clf.predict(features[test])
    s = metrics.summary(metrics.confusion_matrix(labels[test], pred, num_classes))
    runs.append(dict(fold=fold.index, seed=seed, accuracy=s["accuracy"], uar=s["uar"],
                     macro_f1=s["macro_f1"], weighted_f1=s["weighted_f1"]))
  out = {k: summarise([r[k] for r in runs]) for k in ("accuracy", "uar", "macro_f1",
                                                         "weighted_f1")}
  out["runs"] = runs
  return out


def sentence_vector_baseline(train: Split, test: Split, num_classes: int, *, C: float = 1.0,
                             seed: int = 0) -> dict:
  """Mean-pooled, L2-normalised token states + logistic regression (train → test).

  With MiniLM token states this is all-MiniLM-L6-v2's own sentence embedding
  (mean pooling over real tokens, then normalisation) under a linear classifier.
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel

  def vectors(split):
    v = np.stack([t.mean(0) for t in split.text]).astype(np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

  clf = LogisticRegression(C=C, max_iter=5000, random_state=seed)
  clf.fit(vectors(train), train.labels)
  pred = clf.predict(vectors(test))
  s = metrics.summary(metrics.confusion_matrix(test.labels, pred, num_classes))
  one = lambda x: dict(mean=float(x), std=0.0, n=1)
  return {k: one(s[k]) for k in ("accuracy", "uar", "macro_f1", "weighted_f1")}
