"""Test-set evaluation: metrics, failure cases with file names, modality removal, calibration.

What the original's ``test.py`` reports, made honest:

* the ranking is the **validation** ranking (each run's best-checkpoint validation
  ``train.selection_metric``, accuracy by default); test figures sit beside it and never
  pick the winner;
* failure cases name the real file and transcript from the test CSV;
* every variant that reads both modalities is also run with one modality
  removed, and compared with the unimodal baselines, per class;
* several seeds give mean ± std and bootstrap intervals.

Every function here returns JSON-serialisable data; :mod:`fusion_jax.reports`
turns it into the text files.

Removing a modality (``ablation="absent"``, the default): each utterance's speech (or
text) is made absent, no frame at all (an all-zero mask), which every head takes as a
missing modality (:mod:`fusion_jax.models.heads`). ``ablation="mean"`` replaces it by a
single frame equal to the mean training frame of that modality instead (a valid input
that carries no utterance-specific information), ``"zero"`` by a zero frame.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from fusion_jax import html_report, io_utils, metrics, plots, reports, runs
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import model as model_lib
from fusion_jax.models import registry


@dataclasses.dataclass
class Predictions:
  """Per-utterance outputs of a run on a split, in split order."""
  run: runs.Run
  probs: np.ndarray          # [N, K]
  labels: np.ndarray         # [N]

  @property
  def preds(self) -> np.ndarray:
    return self.probs.argmax(1)

  @property
  def confidence(self) -> np.ndarray:
    return self.probs.max(1)

  def confusion(self) -> np.ndarray:
    return metrics.confusion_matrix(self.labels, self.preds, self.probs.shape[1])


def predict(exp: Experiment, run: runs.Run, split: Split, aux_keys: Sequence[str] = (),
            shapes=None):
  """Softmax probabilities ``[N, K]`` (and requested ``aux`` arrays) of ``run`` on ``split``."""
  return exp.predict(exp.steps(run.variant, run.model_config), run.params, split, aux_keys,
                     shapes)


ABLATIONS = ("absent", "mean", "zero", "none")


def modality_fill(train: Optional[Split], split: Split, modality: str, how: str) -> np.ndarray:
  """What replaces a removed modality: no frame (``[0, D]``, "absent"), or the single
  training-mean ("mean") or zero ("zero") frame ``[1, D]``."""
  seqs = getattr(train if train is not None else split, modality)
  dim = seqs[0].shape[1]
  if how == "absent":
    return np.zeros((0, dim), np.float32)
  if how == "zero":
    return np.zeros((1, dim), np.float32)
  total = sum(s.sum(0, dtype=np.float64) for s in seqs)
  count = sum(s.shape[0] for s in seqs)
  return (total / max(count, 1)).astype(np.float32)[None]


def remove_modality(split: Split, modality: str, fill: np.ndarray) -> Split:
  """A copy of ``split`` whose ``modality`` ("speech"/"text") is ``fill`` (frames ``[n, D]``,
  n = 0: absent) for every utterance."""
  out = dataclasses.replace(split, name=f"{split.name}-no-{modality}")
  setattr(out, modality, [fill] * len(split))
  return out


# ------------------------------------------------------------------ results as data
def _model(run: runs.Run) -> tuple:
  return run.variant, run.model_config


def _group(preds: list) -> dict:
  by = collections.OrderedDict()
  for p in preds:
    by.setdefault(p.run.variant, []).append(p)
  return by


def _per_class(cm) -> dict:
  pc = metrics.per_class(cm)
  return {k: pc[k].tolist() for k in ("precision", "recall", "f1", "support")}


def test_metrics(preds: list, class_names: Sequence[str]) -> dict:
  """Ranking on validation with test metrics beside it, per class and per emotion.

  Returns:
    ``ranking_on_validation``, ``selected`` (best on validation), ``test_winner``,
    ``test_disagrees`` (the test winner scores above the selected variant),
    ``selection_metric`` (what chose the checkpoints and ranks the variants; "mixed" when
    the runs were chosen on different metrics),
    ``variants`` (per variant: ``val_acc``, ``val_score`` (the selection metric's
    validation value), ``seeds`` and per seed ``test`` metrics
    with ``per_class``), ``per_class_mean`` (over seeds) and ``per_emotion``
    (best / worst variant and mean F1 per class).
  """
  by = _group(preds)
  val = {v: [p.run.val_acc for p in ps] for v, ps in by.items()}
  score = {v: [p.run.val_score for p in ps] for v, ps in by.items()}   # what chose (and ranks)
  chosen_by = {p.run.selection_metric for p in preds}   # (an original .pt: accuracy)
  metric = chosen_by.pop() if len(chosen_by) == 1 else "mixed"
  test = {v: [dict(metrics.summary(p.confusion()), per_class=_per_class(p.confusion()))
              for p in ps] for v, ps in by.items()}
  acc = lambda v: float(np.mean([t["accuracy"] for t in test[v]]))
  loss = {v: runs.run_losses([p.run.state for p in ps]) for v, ps in by.items()}
  ranking = runs.rank_variants(score, loss, metric=metric)
  ranked = ranking.order
  test_winner = sorted(by, key=lambda v: -acc(v))[0]
  per_class_mean = {}
  for v in ranked:
    pcs = [t["per_class"] for t in test[v]]
    per_class_mean[v] = {k: np.mean([x[k] for x in pcs], axis=0).tolist()
                         for k in ("precision", "recall", "f1")}
    per_class_mean[v]["support"] = pcs[0]["support"]
  per_emotion = {}
  for i, name in enumerate(class_names):
    f1s = {v: per_class_mean[v]["f1"][i] for v in ranked}
    best, worst = max(f1s, key=f1s.get), min(f1s, key=f1s.get)
    per_emotion[name] = dict(best=best, best_f1=f1s[best], worst=worst, worst_f1=f1s[worst],
                             mean_f1=float(np.mean(list(f1s.values()))))
  return dict(
      ranking_on_validation=ranked, selected=ranked[0], tie_break=ranking.tie_break,
      test_winner=test_winner,
      test_disagrees=acc(test_winner) > acc(ranked[0]), class_names=list(class_names),
      selection_metric=metric,
      variants={v: dict(val_acc=val[v], val_score=score[v], val_loss=loss[v], seeds=[p.run.seed for p in by[v]],
                        test=test[v]) for v in ranked},
      per_class_mean=per_class_mean, per_emotion=per_emotion)


def failure_cases(preds: list, split: Split, class_names: Sequence[str],
                  top_patterns: int = 5, cases: int = 5, shared_cases: int = 15,
                  only_cases: int = 8) -> dict:
  """The most frequent (true → predicted) errors of each variant, with file names.

  Cases are those of the variant's first seed, most confident first; ``shared``
  lists utterances every variant gets wrong; ``only`` those one variant alone does.
  """
  by = _group(preds)
  out = dict(named_files=bool(split.paths), variants={}, shared=[], shared_count=0, only={})
  wrong_sets = {}
  name = lambda i: split.file_name(int(i))
  transcript = lambda i: split.transcripts[int(i)] if split.transcripts else None
  for v, ps in by.items():
    p = ps[0]
    wrong = np.flatnonzero(p.preds != p.labels)
    wrong_sets[v] = set(wrong.tolist())
    pairs = collections.Counter((int(p.labels[i]), int(p.preds[i])) for i in wrong)
    patterns = []
    for (t, q), count in pairs.most_common(top_patterns):
      idx = sorted((i for i in wrong if p.labels[i] == t and p.preds[i] == q),
                   key=lambda i: -p.confidence[i])
      patterns.append(dict(true=class_names[t], predicted=class_names[q], count=count,
                           cases=[dict(file=name(i), transcript=transcript(i),
                                       confidence=float(p.confidence[i])) for i in idx[:cases]]))
    out["variants"][v] = dict(seed=p.run.seed, seeds=len(ps), misclassified=int(len(wrong)),
                              total=int(len(p.labels)), patterns=patterns)
  if wrong_sets:
    shared = set.intersection(*wrong_sets.values())
    first = next(iter(by.values()))[0]
    out["shared_count"] = len(shared)
    out["shared"] = [dict(file=name(i), true=class_names[int(split.labels[i])],
                          predictions={v: class_names[int(ps[0].preds[i])]
                                       for v, ps in by.items()})
                     for i in sorted(shared, key=lambda i: -first.confidence[i])[:shared_cases]]
    for v, w in wrong_sets.items():
      only = sorted(w - set.union(set(), *(o for u, o in wrong_sets.items() if u != v)))
      out["only"][v] = dict(count=len(only), files=[name(i) for i in only[:only_cases]])
  return out


def relies_on(drop_without_speech: float, drop_without_text: float) -> str:
  """Which modality a fusion variant needs, from the accuracy lost without each.

  "both" when removing either costs more than 5 points and the smaller loss is at least
  a third of the larger; otherwise the modality whose removal costs more (a model that
  loses 35 points without speech and 6 without text relies on speech).
  """
  small, large = sorted((drop_without_speech, drop_without_text))
  if large < 0.02:
    return "neither (chance-level or modality-invariant)"
  if small > 0.05 and small >= large / 3:
    return "both"
  return "speech" if drop_without_speech > drop_without_text else "text"


def modality_ablation(full: dict, removed: dict, how: str) -> dict:
  """Modality reliance of every bimodal variant, and per-class gain over single modalities.

  Args:
    full: ``{variant: [Predictions]}`` on the intact test split.
    removed: ``{(variant, modality): [Predictions]}`` with "speech"/"text" removed.
    how: how a modality was removed (:data:`ABLATIONS`).

  Each row also has ``floor``: the blends its seeds' best checkpoints chose on
  validation (:mod:`fusion_jax.models.floor`; absent without unimodal heads).
  """
  acc = lambda ps: float(np.mean([metrics.summary(p.confusion())["accuracy"] for p in ps]))
  recall = lambda ps: np.mean([metrics.per_class(p.confusion())["recall"] for p in ps], 0)
  rows = {}
  for v, ps in full.items():
    if (v, "speech") not in removed:
      continue
    a, ns, nt = acc(ps), acc(removed[(v, "speech")]), acc(removed[(v, "text")])
    rows[v] = dict(full=a, no_speech=ns, no_text=nt, drop_without_speech=a - ns,
                   drop_without_text=a - nt, relies_on=relies_on(a - ns, a - nt))
    blends = [p.run.state.best.metrics.get("floor_blend") for p in ps if p.run.state]
    if any(b is not None for b in blends):
      rows[v]["floor"] = [b for b in blends if b is not None]
  uni = {v: ps for v, ps in full.items() if not registry.get(v).is_fusion}
  out = dict(variants=rows, per_class_gain={}, fill=how, unimodal=list(uni),
             unimodal_accuracy={v: acc(ps) for v, ps in uni.items()})
  if uni:
    best_uni = np.max(np.stack([recall(ps) for ps in uni.values()]), axis=0)
    out["per_class_gain"] = {v: (recall(full[v]) - best_uni).tolist() for v in rows}
    best = max(uni, key=lambda v: acc(uni[v]))
    out["best_unimodal"] = dict(variant=best, accuracy=acc(uni[best]))
    out["gain_over_best_unimodal"] = {v: rows[v]["full"] - acc(uni[best]) for v in rows}
  return out


def calibration(preds: list, bins: int) -> dict:
  """ECE and the reliability table per variant (seeds pooled)."""
  out = {}
  for v, ps in _group(preds).items():
    probs = np.concatenate([p.probs for p in ps])
    labels = np.concatenate([p.labels for p in ps])
    ece, table = metrics.expected_calibration_error(probs, labels, bins)
    out[v] = dict(ece=ece, bins=table)
  return out


def predictions_frame(preds: list, split: Split, class_names: Sequence[str]) -> pd.DataFrame:
  """One row per utterance and seed: file, transcript, true, predicted, probabilities."""
  frames = []
  for p in preds:
    df = pd.DataFrame({
        "seed": p.run.seed, "file": [split.file_name(i) for i in range(len(split))],
        "transcript": split.transcripts if split.transcripts else "",
        "true": [class_names[int(k)] for k in p.labels],
        "predicted": [class_names[int(k)] for k in p.preds],
        "confidence": p.confidence, "correct": p.preds == p.labels})
    for k, name in enumerate(class_names):
      df[f"p_{name}"] = p.probs[:, k]
    frames.append(df)
  return pd.concat(frames, ignore_index=True)


def _write_test_files(out_dir, summary, by, test, names, failures, text) -> None:
  for v, ps in by.items():
    title = f"Test Confusion Matrix - {v.upper()}" + (f" ({len(ps)} seeds)" if len(ps) > 1
                                                       else "")
    plots.confusion_matrix(sum(p.confusion() for p in ps), names, title,
                           os.path.join(out_dir, f"{v}_test_confusion_matrix.png"))
    cal = summary["calibration"][v]
    plots.reliability_diagram(cal["bins"], cal["ece"], f"Reliability - {v}",
                              os.path.join(out_dir, f"{v}_reliability_diagram.png"))
    with io_utils.atomic_open(os.path.join(out_dir, f"{v}_predictions.csv"), "w",
                              encoding="utf-8", newline="") as f:
      predictions_frame(ps, test, names).to_csv(f, index=False)
  io_utils.write_text(os.path.join(out_dir, "test_metrics_comparison.txt"), text)
  io_utils.write_text(os.path.join(out_dir, "failure_cases_report.txt"),
                      reports.failure_cases(failures))
  abl = summary.get("modality_ablation")
  if abl:
    io_utils.write_text(os.path.join(out_dir, "modality_ablation.txt"),
                        reports.modality_ablation(abl, names))
    rows = abl["variants"]
    plots.bar_groups({"full": [rows[v]["full"] for v in rows],
                      "speech removed": [rows[v]["no_speech"] for v in rows],
                      "text removed": [rows[v]["no_text"] for v in rows]},
                     list(rows), "Which modality does each fusion variant rely on? (test)",
                     "Accuracy", os.path.join(out_dir, "modality_reliance.png"), ylim=(0, 1))
    if abl["per_class_gain"]:
      plots.bar_groups(abl["per_class_gain"], list(names),
                       "Per-class recall gain of fusion over the best single modality",
                       "Recall gain", os.path.join(out_dir, "fusion_gain_per_class.png"))
  io_utils.write_json(os.path.join(out_dir, "test_summary.json"), summary)


# ------------------------------------------------------------------ driver
def _score(exp: Experiment, runs_: list, test: Split, ablated: dict) -> tuple:
  """Every run on ``test`` and, for two-modality variants, on each ``ablated`` copy of it.
  Returns ``(predictions, {(variant, modality): [predictions without it]})``; each model's
  compiled programs are released after its last run."""
  shapes = exp.plan(test)
  abl_shapes = {m: exp.plan(s) for m, s in ablated.items()}
  preds, removed = [], collections.defaultdict(list)
  for i, run in enumerate(runs_):
    probs, _ = predict(exp, run, test, shapes=shapes)
    p = Predictions(run, probs, test.labels)
    preds.append(p)
    s = metrics.summary(p.confusion())
    exp.log(f"[{run.variant} seed {run.seed}] test acc {s['accuracy']:.4f} uar {s['uar']:.4f} "
            f"macro F1 {s['macro_f1']:.4f} (val acc {run.val_acc:.4f}"
            + ("" if run.selection_metric == "accuracy" else
               f", val {run.selection_metric} {run.val_score:.4f}") + ")")
    if len(registry.get(run.variant).modalities) == 2:
      for m, split in ablated.items():
        probs_m, _ = predict(exp, run, split, shapes=abl_shapes[m])
        removed[(run.variant, m)].append(Predictions(run, probs_m, test.labels))
    if i + 1 == len(runs_) or _model(runs_[i + 1]) != _model(run):
      exp.forget(run.variant, run.model_config)   # its last run: release its programs
  return preds, removed



def load_runs(exp: Experiment, variants: Optional[Sequence[str]] = None,
              seeds: Optional[Sequence[int]] = None) -> list:
  """The best checkpoints in ``exp.model_dir`` (default: every variant found there)."""
  variants = list(variants or runs.available_variants(exp.model_dir))
  if not variants:
    raise FileNotFoundError(f"no trained variants in {exp.model_dir}")
  return runs.load_runs(exp.model_dir, variants, seeds, exp.num_classes, exp.model_config,
                        exp.log, exp.class_names)


def evaluate(exp: Experiment, test: Split, *, variants: Optional[Sequence[str]] = None,
             seeds: Optional[Sequence[int]] = None, train: Optional[Split] = None,
             ablation: str = "absent") -> dict:
  """Evaluates the best checkpoints on ``test`` and writes ``results_dir/test_results/``.

  Args:
    exp: the experiment (``eval.batch_size``, ``data``; the model config of each
      run comes from its checkpoint; ``exp.model_config`` only fills what an
      original ``.pt`` checkpoint cannot tell, e.g. heads).
    test: the test split (with ``paths``/``transcripts`` from the test CSV, if any).
    variants, seeds: default: every variant / seed found in ``exp.model_dir``.
    train: the training split, for the "mean" modality fill (else the test split's mean).
    ablation: how a modality is removed (:data:`ABLATIONS`): "absent", "mean", "zero", or
      "none" (no modality-removal table).

  Returns:
    The summary written to ``test_results/test_summary.json``: :func:`test_metrics`
    plus ``calibration`` (ECE per variant) and ``modality_ablation``.
  """
  log = exp.log
  out_dir = os.path.join(exp.results_dir, "test_results")
  names = exp.class_names
  runs_ = load_runs(exp, variants, seeds)
  for split in (test, train):   # every split's widths, before any variant is scored
    if split is not None:
      runs.check_dims(runs_, split)
  ablated = {}
  if ablation != "none":
    ablated = {m: remove_modality(test, m, modality_fill(train, test, m, ablation))
               for m in registry.MODALITIES}
  preds, removed = _score(exp, runs_, test, ablated)
  by = _group(preds)
  summary = test_metrics(preds, names)
  summary["layer_weights"] = {f"{p.run.variant}/{p.run.seed}": w for p in preds
                              if (w := model_lib.layer_weights(p.run.params))}
  summary["model_configs"] = {f"{r.variant}/{r.seed}": dataclasses.asdict(
      exp.compute_config(r.model_config)) for r in runs_}
  summary["calibration"] = calibration(preds, exp.config.eval.calibration_bins)
  if removed:
    summary["modality_ablation"] = modality_ablation(by, removed, ablation)
  failures = failure_cases(preds, test, names)
  # -- files: written as one set (a failed or concurrent run never leaves a mix)
  text = reports.test_metrics(summary)
  summary["failure_cases"] = failures
  with runs.RunLock(exp.results_dir, "test report", ".test_results.lock"), \
      io_utils.replaced_dir(out_dir) as tmp:
    _write_test_files(tmp, summary, by, test, names, failures, text)
  html_report.write(exp.results_dir)
  log("\n" + text.split("\n2. ")[0].strip())
  log(f"Test results saved to: {out_dir}")
  return summary
