"""Test-set evaluation: metrics, failure cases with file names, modality ablation, calibration.

What the original's ``test.py`` reports, made honest:

* the ranking is the **validation** ranking (each run's best-checkpoint
  validation accuracy); test figures sit beside it and never pick the winner;
* failure cases name the real file and transcript from the test CSV;
* every fusion variant is also run with one modality removed, and compared
  with the unimodal baselines, per class;
* several seeds give mean ± std and bootstrap intervals.

Removing a modality (``ablation="mean"``): each utterance's speech (or text) is
replaced by a single frame equal to the mean training frame of that modality,
so the model sees a valid input that carries no utterance-specific
information. ``ablation="zero"`` uses a zero frame instead.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
from typing import Optional, Sequence

import jax
import numpy as np
import pandas as pd

from fusion_jax import io_utils, metrics, plots, reports, training
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.models import convert
from fusion_jax.models import model as model_lib


@dataclasses.dataclass
class Run:
  """One trained model to evaluate: a variant × seed (or an original .pt checkpoint)."""
  variant: str
  seed: str
  params: dict
  model_config: model_lib.ModelConfig
  val_acc: float
  source: str


@dataclasses.dataclass
class Predictions:
  """Per-utterance outputs of a run on a split, in split order."""
  run: Run
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


# ------------------------------------------------------------------ loading runs
def torch_checkpoint_path(model_dir: str, variant: str) -> str:
  return os.path.join(model_dir, f"best_{variant}_model.pt")


def available_variants(model_dir: str) -> list:
  """Variants with an orbax run directory or an original ``best_{variant}_model.pt``."""
  found = []
  for v in model_lib.VARIANTS:
    if os.path.isdir(os.path.join(model_dir, v)) or os.path.exists(
        torch_checkpoint_path(model_dir, v)):
      found.append(v)
  return found


def available_seeds(model_dir: str, variant: str) -> list:
  dirs = glob.glob(os.path.join(model_dir, variant, "seed_*", "best"))
  return sorted(int(re.search(r"seed_(\d+)", d).group(1)) for d in dirs)


def load_runs(model_dir: str, variants: Sequence[str], seeds: Optional[Sequence[int]],
              num_classes: int, config=None, log=training.default_log) -> list:
  """Best checkpoints of every variant × seed; an original ``.pt`` is converted.

  Raises:
    FileNotFoundError: naming what is missing and what exists.
  """
  runs = []
  for v in variants:
    pt = torch_checkpoint_path(model_dir, v)
    have = available_seeds(model_dir, v)
    if not have and os.path.exists(pt):
      base = model_lib.ModelConfig.from_config(config.model) if config is not None else None
      ckpt = convert.load_torch_checkpoint(pt, base_config=base, variant=v)
      if ckpt["num_classes"] != num_classes:
        raise ValueError(f"{pt} has {ckpt['num_classes']} classes but the class list has "
                         f"{num_classes}")
      log(f"[{v}] converted the original PyTorch checkpoint {pt} (epoch "
          f"{ckpt.get('epoch')}, val acc {ckpt.get('val_acc')})")
      runs.append(Run(v, "torch", ckpt["params"], ckpt["model_config"],
                      float(ckpt.get("val_acc", float("nan"))), pt))
      continue
    wanted = list(seeds) if seeds is not None else have
    missing = [s for s in wanted if s not in have]
    if not have or missing:
      raise FileNotFoundError(
          f"no best checkpoint for {v} seed(s) {missing or wanted} in {model_dir} "
          f"(found seeds {have}; variants present: {available_variants(model_dir)}); "
          "train them first or pass --variants/--seeds")
    for s in wanted:
      params, meta = training.restore_best(model_dir, v, s, num_classes)
      runs.append(Run(v, str(s), params, model_lib.ModelConfig.from_config(
          meta["config"]["model"]), float(meta["best_val_acc"]),
          training.run_dir(model_dir, v, s)))
  return runs


def check_dims(runs: Sequence[Run], split: Split) -> None:
  """Raises ``ValueError`` naming the feature file whose dim a checkpoint cannot take."""
  dims = {"speech": split.speech[0].shape[1], "text": split.text[0].shape[1]}
  for run in runs:
    want = {"speech": run.model_config.speech_dim, "text": run.model_config.text_dim}
    unused = {"speech_only": "text", "text_only": "speech"}.get(run.variant)
    for m in ("speech", "text"):
      if m != unused and dims[m] != want[m]:
        raise ValueError(
            f"{split.sources.get(m) or split.name}: {m} features are {dims[m]}-d but "
            f"{run.source} was trained on {want[m]}-d {m} features")


# ------------------------------------------------------------------ prediction
def predict(run: Run, split: Split, shapes: batching.BatchShapes, batch_size: int,
            num_classes: int, mesh=None, aux_keys: Sequence[str] = (),
            trainer: Optional[training.Trainer] = None):
  """Softmax probabilities ``[N, K]`` (and requested ``aux`` arrays) in split order."""
  if trainer is None:
    model = model_lib.build_model(run.model_config, run.variant, num_classes)
    trainer = training.Trainer(model, mesh=mesh)
  n = len(split)
  probs = np.zeros((n, num_classes), np.float32)
  aux_out: dict = {}
  for batch in batching.iterate_batches(split, shapes, batch_size, shuffle=False):
    logits, aux = jax.device_get(trainer.predict_step(run.params, batch, aux_keys))
    rows = batch["index"] >= 0
    idx = batch["index"][rows]
    probs[idx] = jax.nn.softmax(logits[rows], axis=-1)
    for k, v in aux.items():
      if k not in aux_out:
        aux_out[k] = np.zeros((n,) + v.shape[1:], np.float32)
      aux_out[k][idx] = v[rows]
  return probs, aux_out


def modality_fill(train: Optional[Split], split: Split, modality: str, how: str) -> np.ndarray:
  """The single frame that replaces a removed modality: training mean or zeros."""
  seqs = getattr(train if train is not None else split, modality)
  dim = seqs[0].shape[1]
  if how == "zero":
    return np.zeros((1, dim), np.float32)
  total = sum(s.sum(0, dtype=np.float64) for s in seqs)
  count = sum(s.shape[0] for s in seqs)
  return (total / max(count, 1)).astype(np.float32)[None]


def remove_modality(split: Split, modality: str, fill: np.ndarray) -> Split:
  """A copy of ``split`` whose ``modality`` ("speech"/"text") is one ``fill`` frame each."""
  out = dataclasses.replace(split, name=f"{split.name}-no-{modality}")
  setattr(out, modality, [fill] * len(split))
  return out


# ------------------------------------------------------------------ reports
def _group(preds: list) -> dict:
  by = collections.OrderedDict()
  for p in preds:
    by.setdefault(p.run.variant, []).append(p)
  return by


def _fmt(values) -> str:
  m, s = metrics.mean_std(values)
  return f"{m:.4f} ± {s:.4f}" if len(values) > 1 else f"{m:.4f}"


def test_metrics_report(preds: list, class_names: Sequence[str]) -> tuple:
  """``test_metrics_comparison.txt`` text and a JSON-able summary."""
  by = _group(preds)
  val = {v: [p.run.val_acc for p in ps] for v, ps in by.items()}
  test = {v: [metrics.summary(p.confusion()) for p in ps] for v, ps in by.items()}
  ranked = sorted(by, key=lambda v: -np.nanmean(val[v]))
  test_rank = sorted(by, key=lambda v: -np.mean([t["accuracy"] for t in test[v]]))
  rule, thin = reports.RULE, reports.THIN
  out = [rule, "TEST METRICS COMPARISON", rule, "",
         "Ranking is by VALIDATION accuracy (each run's best checkpoint); test figures are "
         "reported beside it and never choose the winner.", "",
         "1. RANKING (chosen on validation) WITH TEST FIGURES", thin,
         f"{'Rank':<5} {'Variant':<18} {'Val Acc':<17} {'Test Acc':<17} {'Test UAR':<17} "
         f"{'Macro F1':<17} {'Weighted F1':<17}", thin]
  for rank, v in enumerate(ranked, 1):
    t = test[v]
    out.append(f"{rank:<5} {v:<18} {_fmt(val[v]):<17} {_fmt([x['accuracy'] for x in t]):<17} "
               f"{_fmt([x['uar'] for x in t]):<17} {_fmt([x['macro_f1'] for x in t]):<17} "
               f"{_fmt([x['weighted_f1'] for x in t]):<17}")
  out.append("")
  acc = lambda v: float(np.mean([x["accuracy"] for x in test[v]]))
  if acc(test_rank[0]) > acc(ranked[0]):
    out.append(f"Note: on test, {test_rank[0]} scores highest; the selected variant stays "
               f"{ranked[0]} (chosen on validation). Picking on test would be optimistic.")
  best, worst = ranked[0], ranked[-1]
  out += [f"Selected (best on validation): {best.upper()} — test accuracy {acc(best):.4f}",
          f"Worst on validation: {worst.upper()} — test accuracy {acc(worst):.4f}",
          f"Gap (test accuracy, selected − worst): {acc(best) - acc(worst):+.4f}", ""]
  # per-class
  out += [rule, "2. PER-CLASS METRICS (test; mean over seeds)", rule]
  per_class = {}
  for v in ranked:
    pcs = [metrics.per_class(p.confusion()) for p in by[v]]
    pc = {k: np.mean([x[k] for x in pcs], axis=0) for k in ("precision", "recall", "f1")}
    pc["support"] = pcs[0]["support"]
    per_class[v] = pc
    out += ["", v.upper(), thin,
            f"{'Emotion':<20} {'Precision':>10} {'Recall':>10} {'F1':>10} {'Support':>9}"]
    for i, name in enumerate(class_names):
      out.append(f"{name:<20} {pc['precision'][i]:>10.4f} {pc['recall'][i]:>10.4f} "
                 f"{pc['f1'][i]:>10.4f} {int(pc['support'][i]):>9}")
  # per-emotion insights
  out += ["", rule, "3. PER-EMOTION INSIGHTS (test F1)", rule,
          f"{'Emotion':<20} {'Best variant':<28} {'Worst variant':<28} {'Mean F1':>8}"]
  mean_f1 = {}
  for i, name in enumerate(class_names):
    f1s = {v: per_class[v]["f1"][i] for v in ranked}
    b = max(f1s, key=f1s.get)
    w = min(f1s, key=f1s.get)
    mean_f1[name] = float(np.mean(list(f1s.values())))
    out.append(f"{name:<20} {f'{b} ({f1s[b]:.3f})':<28} {f'{w} ({f1s[w]:.3f})':<28} "
               f"{mean_f1[name]:>8.3f}")
  order = sorted(mean_f1, key=mean_f1.get)
  out += ["", f"Easiest emotions: {', '.join(order[::-1][:2])}; hardest: "
          f"{', '.join(order[:2])} (mean F1 over variants)."]
  out += ["", rule, "4. SEEDS (test accuracy)", rule]
  out += reports.seed_section({v: [x["accuracy"] for x in test[v]] for v in ranked},
                              "test accuracy")
  out += ["", rule]
  summary = dict(
      ranking_on_validation=ranked, selected=ranked[0], test_winner=test_rank[0], class_names=list(class_names),
      variants={v: dict(val_acc=val[v], seeds=[p.run.seed for p in by[v]],
                        test=[dict(t, **{"per_class": {
                            k: metrics.per_class(p.confusion())[k].tolist()
                            for k in ("precision", "recall", "f1", "support")}})
                              for t, p in zip(test[v], by[v])])
                for v in ranked})
  return "\n".join(out) + "\n", summary


def failure_report(preds: list, split: Split, class_names: Sequence[str],
                   top_patterns: int = 5, cases: int = 5) -> str:
  """``failure_cases_report.txt``: top error patterns with real file names and transcripts."""
  rule, thin = reports.RULE, reports.THIN
  by = _group(preds)
  out = [rule, "FAILURE CASES REPORT (test)", rule, ""]
  if not split.paths:
    out.append("No test CSV was given: files are named by row (sample_N). Pass "
               "--test_csv_path to see file names and transcripts.")
  wrong_sets = {}
  for v, ps in by.items():
    p = ps[0]  # first seed: cases are per model
    wrong = np.flatnonzero(p.preds != p.labels)
    wrong_sets[v] = set(wrong.tolist())
    seed_note = f" (seed {p.run.seed})" if len(ps) > 1 or p.run.seed != "0" else ""
    out += ["", f"{v.upper()}{seed_note}: {len(wrong)} of {len(p.labels)} test utterances "
            f"misclassified ({len(wrong) / max(len(p.labels), 1):.1%})", thin]
    pairs = collections.Counter((int(p.labels[i]), int(p.preds[i])) for i in wrong)
    for rank, ((t, q), count) in enumerate(pairs.most_common(top_patterns), 1):
      out.append(f"{rank}. {class_names[t]} → {class_names[q]}: {count} case(s)")
      idx = [i for i in wrong if p.labels[i] == t and p.preds[i] == q]
      idx.sort(key=lambda i: -p.confidence[i])
      for i in idx[:cases]:
        transcript = f' | "{split.transcripts[i]}"' if split.transcripts else ""
        out.append(f"     {split.file_name(i)}{transcript} | true {class_names[t]} | predicted "
                   f"{class_names[q]} ({p.confidence[i]:.3f})")
  out += ["", rule, "CROSS-VARIANT FAILURES", rule]
  if wrong_sets:
    shared = set.intersection(*wrong_sets.values())
    out.append(f"Misclassified by every variant ({len(shared)}):")
    first = next(iter(by.values()))[0]
    for i in sorted(shared, key=lambda i: -first.confidence[i])[:15]:
      preds_i = ", ".join(f"{v}: {class_names[int(ps[0].preds[i])]}" for v, ps in by.items())
      out.append(f"  {split.file_name(i)} (true {class_names[int(split.labels[i])]}) — "
                 f"{preds_i}")
    for v, w in wrong_sets.items():
      only = w - set.union(set(), *(o for u, o in wrong_sets.items() if u != v))
      names = ", ".join(split.file_name(i) for i in sorted(only)[:8]) or "none"
      more = f" (+{len(only) - 8} more)" if len(only) > 8 else ""
      out.append(f"Only {v} misclassifies ({len(only)}): {names}{more}")
  out += ["", rule]
  return "\n".join(out) + "\n"


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


def ablation_report(full: dict, removed: dict, class_names: Sequence[str], how: str) -> tuple:
  """Modality reliance of every fusion variant, and per-class gain over single modalities.

  Args:
    full: ``{variant: [Predictions]}`` on the intact test split.
    removed: ``{(variant, modality): [Predictions]}`` with "speech"/"text" removed.
  """
  rule, thin = reports.RULE, reports.THIN
  acc = lambda ps: float(np.mean([metrics.summary(p.confusion())["accuracy"] for p in ps]))
  recall = lambda ps: np.mean([metrics.per_class(p.confusion())["recall"] for p in ps], 0)
  out = [rule, "WHEN DOES FUSION HELP? MODALITY REMOVAL AND UNIMODAL BASELINES (test)", rule,
         "", f"A removed modality is replaced, per utterance, by one frame = the "
         f"{'mean training frame' if how == 'mean' else 'zero vector'} of that modality.", "",
         f"{'Variant':<18} {'Full':>8} {'No speech':>10} {'No text':>9} {'Δ speech':>9} "
         f"{'Δ text':>8}  Relies on", thin]
  rows = {}
  for v, ps in full.items():
    if (v, "speech") not in removed:
      continue
    a, ns, nt = acc(ps), acc(removed[(v, "speech")]), acc(removed[(v, "text")])
    ds, dt = a - ns, a - nt
    relies = ("both" if min(ds, dt) > 0.05 else "speech" if ds > dt else "text")
    if max(ds, dt) < 0.02:
      relies = "neither (chance-level or modality-invariant)"
    rows[v] = dict(full=a, no_speech=ns, no_text=nt, drop_without_speech=ds,
                   drop_without_text=dt, relies_on=relies)
    out.append(f"{v:<18} {a:>8.4f} {ns:>10.4f} {nt:>9.4f} {ds:>+9.4f} {dt:>+8.4f}  {relies}")
  uni = {v: ps for v, ps in full.items() if v in model_lib.UNIMODAL_VARIANTS}
  gains = {}
  if uni:
    best_uni = np.max(np.stack([recall(ps) for ps in uni.values()]), axis=0)
    out += ["", f"Per-class recall gain of each fusion variant over the best single modality "
            f"(max of {', '.join(uni)} per class):",
            f"{'Emotion':<20}" + "".join(f"{v[:14]:>15}" for v in rows), thin]
    for v in rows:
      gains[v] = (recall(full[v]) - best_uni).tolist()
    for i, name in enumerate(class_names):
      out.append(f"{name:<20}" + "".join(f"{gains[v][i]:>+15.3f}" for v in rows))
    best_uni_acc = max(acc(ps) for ps in uni.values())
    out += ["", f"Best single-modality test accuracy: {best_uni_acc:.4f} ("
            f"{max(uni, key=lambda v: acc(uni[v]))})"]
    for v in rows:
      out.append(f"  {v}: {rows[v]['full'] - best_uni_acc:+.4f} vs the best single modality")
  else:
    out += ["", "No unimodal baseline was evaluated: add --variants all for the gain over "
            "single modalities."]
  out += ["", rule]
  return "\n".join(out) + "\n", dict(variants=rows, per_class_gain=gains, fill=how)


# ------------------------------------------------------------------ driver
def evaluate(config, test: Split, class_names: Sequence[str], model_dir: str,
             results_dir: str, *, variants: Optional[Sequence[str]] = None,
             seeds: Optional[Sequence[int]] = None, train: Optional[Split] = None,
             ablation: str = "mean", mesh=None, log=training.default_log) -> dict:
  """Evaluates the best checkpoints on ``test`` and writes ``results_dir/test_results/``.

  Args:
    config: the ConfigDict (``eval.batch_size``, ``data``; the model config of each run
      comes from its checkpoint).
    test: the test split (with ``paths``/``transcripts`` from the test CSV, if any).
    class_names: from the training CSV.
    model_dir: orbax runs (``{variant}/seed_{s}``) or the original's ``best_{v}_model.pt``.
    results_dir: outputs go to ``results_dir/test_results``.
    variants, seeds: default: every variant / seed found in ``model_dir``.
    train: the training split, for the "mean" modality fill (else the test split's mean).
    ablation: "mean", "zero" or "none".

  Returns:
    The summary written to ``test_results/test_summary.json``.
  """
  out_dir = os.path.join(results_dir, "test_results")
  k = len(class_names)
  variants = list(variants or available_variants(model_dir))
  if not variants:
    raise FileNotFoundError(f"no trained variants in {model_dir}")
  runs = load_runs(model_dir, variants, seeds, k, config, log)
  check_dims(runs, test)
  bs = config.eval.batch_size
  shapes = batching.plan_shapes([test], config.data.num_buckets, config.data.bucket_multiple,
                                batch_size=bs)
  fills = {}
  if ablation != "none":
    fills = {m: modality_fill(train, test, m, ablation) for m in ("speech", "text")}
  ablated = {m: remove_modality(test, m, f) for m, f in fills.items()}
  abl_shapes = {m: batching.plan_shapes([s], config.data.num_buckets,
                                        config.data.bucket_multiple, batch_size=bs)
                for m, s in ablated.items()}
  preds, removed = [], collections.defaultdict(list)
  trainers: dict = {}
  for run in runs:
    key = (run.variant, run.model_config)
    if key not in trainers:
      model = model_lib.build_model(run.model_config, run.variant, k)
      trainers[key] = training.Trainer(model, mesh=mesh)
    tr = trainers[key]
    probs, _ = predict(run, test, shapes, bs, k, trainer=tr)
    p = Predictions(run, probs, test.labels)
    preds.append(p)
    s = metrics.summary(p.confusion())
    log(f"[{run.variant} seed {run.seed}] test acc {s['accuracy']:.4f} uar {s['uar']:.4f} "
        f"macro F1 {s['macro_f1']:.4f} (val acc {run.val_acc:.4f})")
    if run.variant in model_lib.FUSION_VARIANTS:
      for m, split in ablated.items():
        probs_m, _ = predict(run, split, abl_shapes[m], bs, k, trainer=tr)
        removed[(run.variant, m)].append(Predictions(run, probs_m, test.labels))
  by = _group(preds)
  os.makedirs(out_dir, exist_ok=True)
  bins = config.eval.get("calibration_bins", 15)
  calibration = {}
  for v, ps in by.items():
    cm = sum(p.confusion() for p in ps)
    title = f"Test Confusion Matrix - {v.upper()}" + (f" ({len(ps)} seeds)" if len(ps) > 1
                                                       else "")
    plots.confusion_matrix(cm, class_names, title,
                           os.path.join(out_dir, f"{v}_test_confusion_matrix.png"))
    probs = np.concatenate([p.probs for p in ps])
    labels = np.concatenate([p.labels for p in ps])
    ece, table = metrics.expected_calibration_error(probs, labels, bins)
    calibration[v] = dict(ece=ece, bins=table)
    plots.reliability_diagram(table, ece, f"Reliability - {v}",
                              os.path.join(out_dir, f"{v}_reliability_diagram.png"))
    predictions_frame(ps, test, class_names).to_csv(
        os.path.join(out_dir, f"{v}_predictions.csv"), index=False)
  text, summary = test_metrics_report(preds, class_names)
  text += "\nCALIBRATION (expected calibration error, %d bins)\n" % bins + "\n".join(
      f"  {v:<18} ECE {c['ece']:.4f}" for v, c in calibration.items()) + "\n"
  io_utils.write_text(os.path.join(out_dir, "test_metrics_comparison.txt"), text)
  io_utils.write_text(os.path.join(out_dir, "failure_cases_report.txt"),
                      failure_report(preds, test, class_names))
  summary["calibration"] = {v: c["ece"] for v, c in calibration.items()}
  if removed:
    abl_text, abl = ablation_report(by, removed, class_names, ablation)
    io_utils.write_text(os.path.join(out_dir, "modality_ablation.txt"), abl_text)
    summary["modality_ablation"] = abl
    rows = abl["variants"]
    plots.bar_groups({"full": [rows[v]["full"] for v in rows],
                      "speech removed": [rows[v]["no_speech"] for v in rows],
                      "text removed": [rows[v]["no_text"] for v in rows]},
                     list(rows), "Which modality does each fusion variant rely on? (test)",
                     "Accuracy", os.path.join(out_dir, "modality_reliance.png"), ylim=(0, 1))
    if abl["per_class_gain"]:
      plots.bar_groups(abl["per_class_gain"], list(class_names),
                       "Per-class recall gain of fusion over the best single modality",
                       "Recall gain", os.path.join(out_dir, "fusion_gain_per_class.png"))
  io_utils.write_json(os.path.join(out_dir, "test_summary.json"), summary)
  log("\n" + text.split("\n2. ")[0].strip())
  log(f"Test results saved to: {out_dir}")
  return summary
