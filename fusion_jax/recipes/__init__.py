"""Corpus recipes: speaker-independent cross-validation around train → evaluate → analyse.

The machinery is here; each corpus' whole recipe is one library function that returns its
result for :mod:`fusion_jax.reports` to render (:func:`fusion_jax.recipes.ravdess.run`,
:func:`fusion_jax.recipes.meld.run`); the binaries only read flags.

  from fusion_jax import experiment, recipes
  split = recipes.load_corpus("ravdess_whisper.npz", "ravdess_minilm.npz", "ravdess.csv")
  folds = recipes.group_folds(split.groups, num_folds=4)
  exp = experiment.Experiment.create(config, class_names, train=split)
  summary = recipes.cross_validate(exp, split, folds, "work/ravdess")

Folds never share a speaker (``split.groups``). Inside each fold, validation
speakers (held out of training too) choose the checkpoint; test speakers are
only ever used to report. Features are standardised with statistics of the
fold's training speakers only.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from typing import Callable, Sequence

import numpy as np

from fusion_jax import analysis, configs, evaluation, io_utils, ledger, metrics, reports
from fusion_jax import runs as run_records, training
from fusion_jax.errors import ConfigError, DataError
from fusion_jax.data.splits import Split, load_split
from fusion_jax.experiment import Experiment
from fusion_jax.features.extract import Progress
from fusion_jax.models import registry


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
    raise ConfigError(f"{len(speakers)} speakers cannot make {num_folds} speaker-independent "
                     "folds with validation speakers; use fewer folds")
  blocks = [list(b) for b in np.array_split(np.array(speakers, dtype=object), num_folds)]
  folds = []
  for k in range(num_folds):
    nxt = blocks[(k + 1) % num_folds]
    val = tuple(nxt[:val_groups])
    test = tuple(blocks[k])
    train = tuple(s for s in speakers if s not in test and s not in val)
    if not train:
      raise ConfigError("no training speakers left; use fewer validation speakers")
    folds.append(Fold(k, train, val, test))
  return folds


def split_fold(split: Split, fold: Fold) -> tuple:
  """``(train, val, test)`` Splits of one fold (rows kept in corpus order)."""
  g = np.array(split_groups(split))
  parts = []
  for name, speakers in (("train", fold.train), ("val", fold.val), ("test", fold.test)):
    rows = np.flatnonzero(np.isin(g, list(speakers)))
    parts.append(split.take(rows, name=name))
  return tuple(parts)


def fold_splits(corpus: Split, fold: int, num_folds: int, val_speakers: int = 2) -> tuple:
  """``(train, val, test)`` of fold ``fold`` of ``corpus``, as :func:`cross_validate` makes it.

  The :func:`group_folds` folds over ``corpus.groups`` (its speakers), standardised with
  the fold's training speakers' statistics (:func:`standardize`, recorded in each split's
  ``preprocessing``): one fold trained alone (``train.py --fold K``, a sweep's trial)
  sees exactly the data the recipe's fold does.

  Raises:
    ConfigError: ``fold`` outside ``0 .. num_folds - 1``, or too few speakers.
    DataError: the corpus has no speaker column.
  """
  groups = split_groups(corpus)
  if not 0 <= fold < num_folds:
    raise ConfigError(f"fold {fold} does not exist: give 0 .. {num_folds - 1} "
                      f"(--num_folds={num_folds})")
  folds = group_folds(groups, num_folds, val_speakers)
  return standardize(*split_fold(corpus, folds[fold]))


def split_groups(split: Split):
  """``split.groups``, or a DataError naming its CSV when it has no speaker column."""
  if split.groups is None:
    raise DataError(split.sources.get("csv") or split.name, "no speaker column to build "
                    "speaker-independent folds", field="speaker",
                    hint="add a 'speaker' (or 'group', 'actor') column to the CSV")
  return split.groups


def standardize(train: Split, *others: Split) -> tuple:
  """Per-dimension standardisation with the training split's frame statistics.

  Returns new Splits (train first); the statistics never see the other splits.
  """
  def stats(seqs):   # float64 sums, one utterance at a time (stacks of layers are large)
    n, total, squares = 0, 0.0, 0.0
    for x in seqs:
      x = np.asarray(x, np.float64)
      n, total, squares = n + x.shape[0], total + x.sum(0), squares + np.square(x).sum(0)
    mean = total / n
    return mean, np.maximum(np.sqrt(np.maximum(squares / n - mean ** 2, 0.0)), 1e-6)

  def apply(seqs, mu, sd):   # float16 stacks stay float16, everything else float32
    mu32, sd32 = mu.astype(np.float32), sd.astype(np.float32)
    return [((np.asarray(x, np.float32) - mu32) / sd32).astype(
        np.float16 if x.dtype == np.float16 else np.float32) for x in seqs]

  s_mu, s_sd = stats(train.speech)
  t_mu, t_sd = stats(train.text)
  out = []
  for sp in (train,) + others:
    prep = copy.deepcopy(sp.preprocessing)
    for m, mu, sd in (("speech", s_mu, s_sd), ("text", t_mu, t_sd)):
      prep.setdefault(m, {})["standardize"] = dict(mean=mu.tolist(), std=sd.tolist())
    out.append(dataclasses.replace(sp, speech=apply(sp.speech, s_mu, s_sd),
                                   text=apply(sp.text, t_mu, t_sd), preprocessing=prep))
  return tuple(out)


def load_corpus(speech_path, text_path, csv_path, name: str = "corpus") -> Split:
  """Speech and text feature files of one corpus aligned by the split CSV."""
  return load_split(name, speech_path, text_path, csv_path)


def summarise(values: Sequence[float]) -> dict:
  """``{mean, std, n}`` of a list of scores (std with ddof=1; 0 for one value)."""
  mean, std = metrics.mean_std(list(values))
  return dict(mean=mean, std=std, n=len(values))


def cross_validate(exp: Experiment, split: Split, folds: Sequence[Fold], work_dir: str, *,
                   analyse_folds: Sequence[int] = (0,), ablation: str = "absent",
                   write_summary: bool = True) -> dict:
  """Trains, evaluates (and analyses) every variant × seed of ``exp`` on every fold.

  Writes under ``work_dir/fold_{k}/``: ``models/``, ``results/`` (the original's
  training plots and reports), ``results/test_results/`` (test reports) and, for
  folds in ``analyse_folds``, ``results/separability/``. Writes
  ``work_dir/cv_summary.json`` and ``work_dir/cv_results.txt`` (unless
  ``write_summary`` is False: a caller adding baselines writes them once, together).

  Returns:
    ``{"variants": {v: {"accuracy": {mean, std, n}, "uar": …, "macro_f1": …,
    "weighted_f1": …, "runs": [{fold, seed, …}]}}, …}``.
  """
  t0 = time.perf_counter()
  runs: dict = {}
  for fold in folds:
    tr, va, te = standardize(*split_fold(split, fold))
    exp.log(f"\n=== Fold {fold.index}: train {len(tr)} ({', '.join(fold.train)}), "
            f"validation {len(va)} ({', '.join(fold.val)}), test {len(te)} "
            f"({', '.join(fold.test)}) ===")
    fdir = os.path.join(work_dir, f"fold_{fold.index}")
    fexp = exp.with_data(tr, va).with_dirs(os.path.join(fdir, "models"),
                                           os.path.join(fdir, "results"))
    training.train_and_evaluate(fexp, tr, va)
    summary = evaluation.evaluate(fexp, te, variants=fexp.variants, seeds=fexp.seeds,
                                  train=tr, ablation=ablation)
    for v, rows in _fold_runs(fold.index, summary).items():
      runs.setdefault(v, []).extend(rows)
    if fold.index in analyse_folds:
      loaded = evaluation.load_runs(fexp, list(summary["variants"]), fexp.seeds[:1])
      analysis.analyze(fexp, loaded, te)
    exp.release(tr, va, te)   # the next fold's data replaces this one's on the device
    exp.forget()              # and its shapes need programs of their own
    exp.log(f"Fold {fold.index} done: the process holds "
            f"{ledger.process_resources().describe()}, "
            f"{ledger.live_executables()} live executables")
  out = dict(folds=[dataclasses.asdict(f) for f in folds], class_names=list(exp.class_names),
             seconds=time.perf_counter() - t0, variants={},
             selection_metric=configs.selection_metric(exp.config))
  for v, rs in runs.items():
    out["variants"][v] = {k: summarise([r[k] for r in rs]) for k in (
        "val_acc", "val_score", "val_loss", "accuracy", "uar", "macro_f1", "weighted_f1")}
    out["variants"][v]["runs"] = rs
    mixed = [r["layer_weights"] for r in rs if "layer_weights" in r]
    if mixed:   # where emotion lives in each encoder, on average over the runs
      out["variants"][v]["layer_weights"] = {
          m: np.mean([w[m] for w in mixed], axis=0).tolist() for m in mixed[0]}
  out.update(compare_to_reference(runs))
  if write_summary:
    with io_utils.staged_files(work_dir) as tmp:
      io_utils.write_json(os.path.join(tmp, "cv_summary.json"), out)
      io_utils.write_text(os.path.join(tmp, "cv_results.txt"), reports.cv_table(out))
  exp.log("\n" + reports.cv_table(out))
  return out


def _fold_runs(fold: int, summary: dict) -> dict:
  """One fold's evaluation summary as ``{variant: [{fold, seed, val_*, test metrics}]}``."""
  out = {}
  for v, s in summary["variants"].items():
    for seed, t, val, score, loss in zip(s["seeds"], s["test"], s["val_acc"], s["val_score"],
                                         s["val_loss"]):
      w = summary.get("layer_weights", {}).get(f"{v}/{seed}")
      out.setdefault(v, []).append(dict(
          fold=fold, seed=seed, val_acc=val, val_score=score, val_loss=loss,
          accuracy=t["accuracy"], uar=t["uar"], macro_f1=t["macro_f1"],
          weighted_f1=t["weighted_f1"], **({"layer_weights": w} if w else {})))
  return out


def compare_to_reference(runs: dict, metric: str = "uar") -> dict:
  """Each variant against the best of the original's fusion heads (chosen on validation).

  Runs are paired by (fold, seed), so the test sees the same speakers on both sides.
  Returns ``{"reference": name, "comparisons": {variant: paired test on ``metric``}}``
  (empty when no original fusion head ran).
  """
  originals = [v for v in runs if registry.get(v).original and registry.get(v).is_fusion]
  if not originals:
    return {}
  reference = run_records.rank_variants(
      {v: [r.get("val_score", r["val_acc"]) for r in runs[v]] for v in originals},
      {v: [r.get("val_loss", np.nan) for r in runs[v]] for v in originals}).order[0]
  key = lambda r: (r["fold"], str(r["seed"]))
  ref = {key(r): r[metric] for r in runs[reference]}
  scores = {}
  for v, rs in runs.items():
    shared = [r for r in rs if key(r) in ref]
    scores[v] = [r[metric] for r in sorted(shared, key=key)]
  ref_scores = [ref[k] for k in sorted(ref)]
  comparisons = {v: metrics.paired_test(x, ref_scores) for v, x in scores.items()
                 if v != reference}
  return dict(reference=reference, reference_metric=metric, comparisons=comparisons)


def functionals_baseline(features: np.ndarray, labels: np.ndarray, groups: Sequence[str],
                         folds: Sequence[Fold], num_classes: int, *, C: float = 1.0,
                         seed: int = 0) -> dict:
  """Standardised functionals + logistic regression on the same folds (train+val speakers).

  The published reference point (eGeMAPS functionals + LR ≈ 0.50 accuracy; docs/original.md,
  "Published figures").
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
  (mean pooling over real tokens, then normalisation) under a linear classifier (of the
  last layer when the features stack every hidden state).
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel

  def vectors(split):   # of the last hidden state when the file holds all of them
    stack = int(split.preprocessing.get("text", {}).get("stack", 1))
    last = lambda t: np.asarray(t[:, -(t.shape[1] // stack):], np.float64)
    v = np.stack([last(t).mean(0) for t in split.text])
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

  clf = LogisticRegression(C=C, max_iter=5000, random_state=seed)
  clf.fit(vectors(train), train.labels)
  pred = clf.predict(vectors(test))
  s = metrics.summary(metrics.confusion_matrix(test.labels, pred, num_classes))
  one = lambda x: dict(mean=float(x), std=0.0, n=1)
  return {k: one(s[k]) for k in ("accuracy", "uar", "macro_f1", "weighted_f1")}


def holdout_split(split: Split, fraction: float, seed: int = 0) -> tuple:
  """``(train, val)``: ``fraction`` of ``split``'s groups (speakers, dialogues) held out.

  Whole groups move, so no speaker or dialogue is on both sides; the choice is a
  function of the sorted group ids and ``seed``.
  """
  if split.groups is None:
    raise DataError(split.sources.get("csv") or split.name, "no group column to hold out "
                    "whole groups", field="group")
  groups = sorted(set(split.groups))
  if len(groups) < 2:
    raise ConfigError(f"{split.name}: {len(groups)} group(s) cannot be split into train and "
                     "validation")
  rng = np.random.default_rng(seed)
  n = min(len(groups) - 1, max(1, int(len(groups) * fraction)))
  held = set(rng.choice(np.array(groups, dtype=object), n, replace=False))
  rows = np.array([g in held for g in split.groups])
  return split.take(np.flatnonzero(~rows)), split.take(np.flatnonzero(rows), "val")


def truncate_text(splits: Sequence[Split], max_tokens: int) -> int:
  """Keeps at most ``max_tokens`` token states per line (in place); returns lines cut."""
  cut = 0
  for sp in splits:
    cut += sum(int(t.shape[0] > max_tokens) for t in sp.text)
    sp.text = [t[:max_tokens] for t in sp.text]
    sp.preprocessing.setdefault("text", {})["max_tokens"] = int(max_tokens)
  return cut


def without_speech(split: Split) -> Split:
  """A text-only split: every utterance gets one zero speech frame (1-d) that text-only
  variants never read."""
  prep = {k: v for k, v in split.preprocessing.items() if k != "speech"}
  prep["speech"] = {"zero_frame": 1}
  return dataclasses.replace(split, speech=[np.zeros((1, 1), np.float32)] * len(split),
                             sources=dict(split.sources, speech="<none: one zero frame>"),
                             preprocessing=prep)


def cached_functionals(paths: Sequence[str], ids: Sequence[str], cache_path: str,
                       compute: Callable[[str], np.ndarray], progress: bool = True) -> np.ndarray:
  """Per-clip functionals ``[N, F]``, cached in ``cache_path`` for exactly these ``ids``.

  ``compute(path)`` gives one clip's vector (e.g. eGeMAPS functionals with
  :func:`fusion_jax.features.extractors.opensmile_functionals`). A cache holding other
  clips (or another order) is recomputed, never mixed.
  """
  ids = [str(i) for i in ids]
  if os.path.exists(cache_path):
    with np.load(cache_path, allow_pickle=False) as z:
      if [str(i) for i in z["ids"]] == ids:
        return z["x"]
  bar = Progress(len(paths), "functionals", enabled=progress)
  rows = []
  for p in paths:
    rows.append(np.asarray(compute(p)))
    bar.update(1)
  x = np.stack(rows)
  with io_utils.atomic_open(cache_path, "wb") as f:
    np.savez(f, x=x, ids=np.array(ids))
  return x
