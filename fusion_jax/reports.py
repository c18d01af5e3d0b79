"""Reports: the original's sections, plus seed statistics and honest comparisons.

:func:`summarize` turns trained runs into the JSON-serialisable ``summary.json``;
every other function takes the results that training, evaluation, analysis and the
recipes return, and returns text (or, :func:`write_training_reports`, writes the
training report set). Numbers are formatted by :func:`mean_std` and :func:`cell` only.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from fusion_jax import io_utils, metrics, plots, runs
from fusion_jax.data import batching
from fusion_jax.models import floor, registry

if TYPE_CHECKING:
  from fusion_jax.experiment import Experiment

RULE, THIN = "=" * 80, "-" * 80


# train.selection_metric → (short, long) names in reports; "mixed": runs chose differently
METRIC_NAMES = {**metrics.SELECTION_METRICS,
                "mixed": ("Score", "score (each run's own selection metric)")}


def mean_std(values: Sequence[float], digits: int = 4) -> str:
  """``"0.7143 ± 0.0123"`` for several values, ``"0.7143"`` for one."""
  mean, std = metrics.mean_std(list(values))
  return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def cell(summary: Optional[dict], digits: int = 3) -> str:
  """A ``{mean, std, n}`` summary as ``"0.714 ± 0.012"`` (``"-"`` when absent)."""
  if not summary:
    return "-"
  return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def seed_section(scores: dict, what: str) -> list:
  """Mean ± std, bootstrap interval per variant and paired tests between variants."""
  lines = [f"{'Variant':<20} {'Seeds':<6} {'Mean ± std':<18} {'95% bootstrap CI':<20} Per seed",
           THIN]
  for v, vals in scores.items():
    lo, hi = metrics.bootstrap_ci(vals)
    lines.append(f"{v:<20} {len(vals):<6} {mean_std(vals):<18} "
                 f"[{lo:.4f}, {hi:.4f}]".ljust(66) + " " + ", ".join(f"{x:.4f}" for x in vals))
  lines.append("")
  n_seeds = min(len(v) for v in scores.values()) if scores else 0
  if n_seeds < 2:
    lines.append(f"One seed per variant: differences in {what} cannot be told apart from seed "
                 "noise. Run several seeds (e.g. --seeds 0,1,2) for a paired test.")
    return lines
  lines.append(f"Paired t-tests over {n_seeds} seeds on {what} (alpha 0.05):")
  lines.append(f"{'A':<18} {'B':<18} {'mean(A-B)':>10} {'p-value':>9}  verdict")
  for c in metrics.paired_comparisons(scores):
    p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3f}"
    verdict = ("exceeds seed noise" if c["significant"] else "within seed noise")
    lines.append(f"{c['a']:<18} {c['b']:<18} {c['mean_diff']:>+10.4f} {p:>9}  {verdict}")
  return lines


# ------------------------------------------------------------------ training
def training_comparison(summary: dict) -> str:
  """``fusion_variants_comparison.txt`` from :func:`summarize`'s dict."""
  class_names = summary["class_names"]
  runs = {v: list(s["seeds"].values()) for v, s in summary["variants"].items()}
  short, what = METRIC_NAMES[summary["selection_metric"]]
  best = {v: [r.get("best_val_score", r["best_val_acc"]) for r in rs] for v, rs in runs.items()}
  ranked = summary["ranking"]
  # the third column: UAR at the best epoch, or its accuracy when UAR chose the epoch
  third, key = ("Best Val Acc", "accuracy") if short == "UAR" else ("Best Val UAR", "uar")
  out = [RULE, "MULTIMODAL FUSION VARIANTS COMPARISON REPORT", RULE, "",
         "Model selection uses the validation split only. Ranks are by mean best validation "
         f"{what} over seeds.", "", "1. OVERALL PERFORMANCE COMPARISON", THIN,
         f"{'Variant':<20} {'Best Val ' + short:<18} {'Final Val Acc':<18} {third:<18} "
         f"{'Rank':<5}", THIN]
  for rank, v in enumerate(ranked, 1):
    rs = runs[v]
    out.append(f"{v:<20} {mean_std(best[v]):<18} "
               f"{mean_std([r['final_val_acc'] for r in rs]):<18} "
               f"{mean_std([r['best_metrics'].get(key, 0.0) for r in rs]):<18} {rank:<5}")
  out += ["", RULE, "", "2. DETAILED ANALYSIS BY VARIANT", RULE]
  for v in ranked:
    out += _variant_detail(v, runs[v], summary, best[v], what, class_names)
  out += ["", RULE, f"3. SEED VARIATION AND SIGNIFICANCE (best validation {what})", RULE]
  out += seed_section(best, f"best validation {what}")
  out += ["", RULE, "4. KEY INSIGHTS", RULE, ""]
  out += _training_insights(summary, best, ranked)
  out += ["", RULE]
  return "\n".join(out) + "\n"


def _variant_detail(v: str, rs: list, summary: dict, best: list, what: str,
                    class_names: Sequence[str]) -> list:
  """Section 2 of the training comparison for one variant: its runs and per-class accuracy."""
  cm = sum(np.asarray(r["best_confusion"]) for r in rs)
  out = ["", f"{v.upper()}", THIN,
         f"Seeds: {', '.join(summary['variants'][v]['seeds'])}; parameters: "
         f"{summary['variants'][v]['param_count']:,}",
         f"Best Validation {what[0].upper() + what[1:]}: {mean_std(best)} (epochs "
         f"{', '.join(str(r['best_epoch']) for r in rs)})"]
  if what != "accuracy":
    out.append(f"Validation Accuracy at the best epoch: "
               f"{mean_std([r['best_val_acc'] for r in rs])}")
  out += [f"Final Training Accuracy: {mean_std([r['final_train_acc'] for r in rs])}",
          f"Final Validation Accuracy: {mean_std([r['final_val_acc'] for r in rs])}", "",
          "Per-Class Accuracy at the best epoch" + (" (summed over seeds)" if len(rs) > 1
                                                     else "") + ":",
          f"{'Emotion':<20} {'Accuracy':<10} {'Correct':<10} {'Total':<10}", "-" * 50]
  for i, name in enumerate(class_names):
    total = int(cm[i].sum())
    out.append(f"{name:<20} {cm[i, i] / total if total else 0:<10.4f} {int(cm[i, i]):<10} "
               f"{total:<10}")
  return out


def _training_insights(summary: dict, best: dict, ranked: list) -> list:
  """Section 4 of the training comparison: best and worst, fusion against one modality,
  against the original's best head, and whether the gaps exceed seed noise."""
  out = []
  top, bottom = ranked[0], ranked[-1]
  out.append(f"- Best variant on validation: {top.upper()} ({np.mean(best[top]):.4f})")
  out.append(f"- Worst variant on validation: {bottom.upper()} ({np.mean(best[bottom]):.4f})")
  out.append(f"- Performance gap: {np.mean(best[top]) - np.mean(best[bottom]):.4f}")
  fusion = [v for v in ranked if summary["variants"][v]["is_fusion"]]
  unimodal = [v for v in ranked if not summary["variants"][v]["is_fusion"]]
  if unimodal and fusion:
    bu = unimodal[0]
    gain = np.mean(best[fusion[0]]) - np.mean(best[bu])
    out.append(f"- Best fusion ({fusion[0]}) vs best single modality ({bu}): {gain:+.4f}")
  ref = summary.get("reference")
  others = [v for v in ranked if v != ref and summary["variants"][v]["is_fusion"]]
  if ref and others:
    out.append(f"- Against {ref} (the best of the original's heads on validation):")
    for v in others:
      c = summary["vs_reference"][v]
      p = f", paired t-test p {c['p_value']:.3f}" if c["p_value"] is not None else \
          " (one seed: no test)"
      out.append(f"    {v:<18} {c['mean_diff']:+.4f}{p}")
  comps = summary["comparisons"] if min(len(v) for v in best.values()) > 1 else []
  beats = [c for c in comps if top in (c["a"], c["b"]) and c["significant"]]
  if comps:
    out.append(f"- {top} differs beyond seed noise from {len(beats)} of {len(ranked) - 1} "
               "other variants (paired t-test, section 3).")
  else:
    out.append("- Single seed: treat gaps of a point or two as noise.")
  return out


def training_console_summary(summary: dict) -> str:
  """The original's ranked console summary."""
  short, what = METRIC_NAMES[summary["selection_metric"]]
  out = ["", RULE, f"SUMMARY OF ALL VARIANTS (ranked by validation {what})", RULE]
  for rank, v in enumerate(summary["ranking"], 1):
    s = summary["variants"][v]
    mean, std = s.get("best_val_score_mean", s["best_val_acc_mean"]), s.get(
        "best_val_score_std", s["best_val_acc_std"])
    spread = f" ± {std:.4f}" if len(s["seeds"]) > 1 else ""
    out.append(f"{rank}. {v.upper():<20} - Best Val {short}: {mean:.4f}{spread}")
  if summary.get("tie_break"):
    out.append(f"Tie: {summary['tie_break']}")
  out.append(RULE)
  return "\n".join(out)


# ------------------------------------------------------------------ evaluation
def _per_class_section(summary: dict, ranked: list, class_names: Sequence[str]) -> list:
  out = [RULE, "2. PER-CLASS METRICS (test; mean over seeds)", RULE]
  for v in ranked:
    pc = summary["per_class_mean"][v]
    out += ["", v.upper(), THIN,
            f"{'Emotion':<20} {'Precision':>10} {'Recall':>10} {'F1':>10} {'Support':>9}"]
    for i, name in enumerate(class_names):
      out.append(f"{name:<20} {pc['precision'][i]:>10.4f} {pc['recall'][i]:>10.4f} "
                 f"{pc['f1'][i]:>10.4f} {int(pc['support'][i]):>9}")
  return out


def test_metrics(summary: dict) -> str:
  """``test_metrics_comparison.txt`` from :func:`fusion_jax.evaluation.test_metrics`'s dict
  (with ``calibration`` when present)."""
  class_names = summary["class_names"]
  ranked = summary["ranking_on_validation"]
  variants = summary["variants"]
  test = lambda v, k: [t[k] for t in variants[v]["test"]]
  acc = lambda v: float(np.mean(test(v, "accuracy")))
  short, what = METRIC_NAMES[summary["selection_metric"]]
  out = [RULE, "TEST METRICS COMPARISON", RULE, "",
         f"Ranking is by VALIDATION {what} (each run's best checkpoint); test figures are "
"reported beside it and never choose the winner.", "",
         *([f"Tie: {summary['tie_break']}", ""] if summary.get("tie_break") else []),
         "1. RANKING (chosen on validation) WITH TEST FIGURES", THIN,
         f"{'Rank':<5} {'Variant':<18} {'Val ' + short:<17} {'Test Acc':<17} {'Test UAR':<17} "
         f"{'Macro F1':<17} {'Weighted F1':<17}", THIN]
  for rank, v in enumerate(ranked, 1):
    val = variants[v].get("val_score", variants[v]["val_acc"])
    out.append(f"{rank:<5} {v:<18} {mean_std(val):<17} "
               f"{mean_std(test(v, 'accuracy')):<17} {mean_std(test(v, 'uar')):<17} "
               f"{mean_std(test(v, 'macro_f1')):<17} {mean_std(test(v, 'weighted_f1')):<17}")
  out.append("")
  best, worst = ranked[0], ranked[-1]
  if summary["test_disagrees"]:
    out.append(f"Note: {summary['test_winner']} has the highest test accuracy; the selected "
               f"variant stays {best} (chosen on validation). Picking on test would be "
               "optimistic.")
  out += [f"Selected (best on validation): {best.upper()} — test accuracy {acc(best):.4f}",
          f"Worst on validation: {worst.upper()} — test accuracy {acc(worst):.4f}",
          f"Gap (test accuracy, selected − worst): {acc(best) - acc(worst):+.4f}", ""]
  if summary.get("layer_weights"):
    out += ["Learned layer weights (softmax; 0 = the encoder's input embeddings, last = its "
            "last layer):"]
    for run, ws in summary["layer_weights"].items():
      for m, w in ws.items():
        out.append(f"  {run:<22} {m:<7} " + " ".join(f"{x:.3f}" for x in w))
    out.append("")
  out += _per_class_section(summary, ranked, class_names)
  out += ["", RULE, "3. PER-EMOTION INSIGHTS (test F1)", RULE,
          f"{'Emotion':<20} {'Best variant':<28} {'Worst variant':<28} {'Mean F1':>8}"]
  pe = summary["per_emotion"]
  for name in class_names:
    e = pe[name]
    best_cell = f"{e['best']} ({e['best_f1']:.3f})"
    worst_cell = f"{e['worst']} ({e['worst_f1']:.3f})"
    out.append(f"{name:<20} {best_cell:<28} {worst_cell:<28} {e['mean_f1']:>8.3f}")
  order = sorted(class_names, key=lambda n: pe[n]["mean_f1"])
  out += ["", f"Easiest emotions: {', '.join(order[::-1][:2])}; hardest: "
          f"{', '.join(order[:2])} (mean F1 over variants)."]
  out += ["", RULE, "4. SEEDS (test accuracy)", RULE]
  out += seed_section({v: test(v, "accuracy") for v in ranked}, "test accuracy")
  out += ["", RULE]
  text = "\n".join(out) + "\n"
  cal = summary.get("calibration")
  if cal:
    bins = len(next(iter(cal.values()))["bins"])
    text += f"\nCALIBRATION (expected calibration error, {bins} bins)\n" + "\n".join(
        f"  {v:<18} ECE {c['ece']:.4f}" for v, c in cal.items()) + "\n"
  return text


def failure_cases(failures: dict) -> str:
  """``failure_cases_report.txt`` from :func:`fusion_jax.evaluation.failure_cases`'s dict."""
  out = [RULE, "FAILURE CASES REPORT (test)", RULE, ""]
  if not failures["named_files"]:
    out.append("No test CSV was given: files are named by row (sample_N). Pass "
               "--test_csv_path to see file names and transcripts.")
  for v, f in failures["variants"].items():
    seed_note = f" (seed {f['seed']})" if f["seeds"] > 1 or f["seed"] != "0" else ""
    out += ["", f"{v.upper()}{seed_note}: {f['misclassified']} of {f['total']} test utterances "
            f"misclassified ({f['misclassified'] / max(f['total'], 1):.1%})", THIN]
    for rank, pat in enumerate(f["patterns"], 1):
      out.append(f"{rank}. {pat['true']} → {pat['predicted']}: {pat['count']} case(s)")
      for c in pat["cases"]:
        transcript = f' | "{c["transcript"]}"' if c["transcript"] is not None else ""
        out.append(f"     {c['file']}{transcript} | true {pat['true']} | predicted "
                   f"{pat['predicted']} ({c['confidence']:.3f})")
  out += ["", RULE, "CROSS-VARIANT FAILURES", RULE]
  if failures["variants"]:
    out.append(f"Misclassified by every variant ({failures['shared_count']}):")
    for c in failures["shared"]:
      preds = ", ".join(f"{v}: {p}" for v, p in c["predictions"].items())
      out.append(f"  {c['file']} (true {c['true']}) — {preds}")
    for v, only in failures["only"].items():
      names = ", ".join(only["files"]) or "none"
      more = f" (+{only['count'] - len(only['files'])} more)" if only["count"] > len(
          only["files"]) else ""
      out.append(f"Only {v} misclassifies ({only['count']}): {names}{more}")
  out += ["", RULE]
  return "\n".join(out) + "\n"


def modality_ablation(abl: dict, class_names: Sequence[str]) -> str:
  """``modality_ablation.txt`` from :func:`fusion_jax.evaluation.modality_ablation`'s dict."""
  rows = abl["variants"]
  how = {"absent": "made absent (no frame: the model is told the modality is missing)",
         "mean": "replaced by one frame = the mean training frame of that modality",
         "zero": "replaced by one zero frame"}[abl["fill"]]
  out = [RULE, "WHEN DOES FUSION HELP? MODALITY REMOVAL AND UNIMODAL BASELINES (test)", RULE,
         "", f"A removed modality is, per utterance, {how}.", "",
         f"{'Variant':<18} {'Full':>8} {'No speech':>10} {'No text':>9} {'Δ speech':>9} "
         f"{'Δ text':>8}  Relies on", THIN]
  for v, r in rows.items():
    out.append(f"{v:<18} {r['full']:>8.4f} {r['no_speech']:>10.4f} {r['no_text']:>9.4f} "
               f"{r['drop_without_speech']:>+9.4f} {r['drop_without_text']:>+8.4f}  "
               f"{r['relies_on']}")
  for v, a in abl.get("unimodal_accuracy", {}).items():   # (they read one modality)
    only = "speech" if registry.get(v).reads("speech") else "text"
    out.append(f"{v:<18} {a:>8.4f} {'-' if only == 'speech' else f'{a:.4f}':>10} "
               f"{f'{a:.4f}' if only == 'speech' else '-':>9}")
  floors = {v: r["floor"] for v, r in rows.items() if r.get("floor")}
  if floors:
    out += ["", "Floor blends chosen on validation (fusion head + each modality's own head, "
            "per pattern; models/floor.py), per seed:"]
    out += [f"  {v}: " + " | ".join(floor.describe_all(b) for b in bs)
            for v, bs in floors.items()]
  gains = abl["per_class_gain"]
  if gains:
    out += ["", "Per-class recall gain of each fusion variant over the best single modality "
            f"(max of {', '.join(abl['unimodal'])} per class):",
            f"{'Emotion':<20}" + "".join(f"{v[:14]:>15}" for v in rows), THIN]
    for i, name in enumerate(class_names):
      out.append(f"{name:<20}" + "".join(f"{gains[v][i]:>+15.3f}" for v in rows))
    best = abl["best_unimodal"]
    out += ["", f"Best single-modality test accuracy: {best['accuracy']:.4f} "
            f"({best['variant']})"]
    for v in rows:
      out.append(f"  {v}: {abl['gain_over_best_unimodal'][v]:+.4f} vs the best single "
                 "modality")
  else:
    out += ["", "No unimodal baseline was evaluated: add --variants all for the gain over "
            "single modalities."]
  out += ["", RULE]
  return "\n".join(out) + "\n"


# ------------------------------------------------------------------ analysis
def separability(result: dict) -> str:
  """``separability_report.txt`` from :func:`fusion_jax.analysis.analyze`'s dict."""
  results = result["results"]
  out = [RULE, "SEPARABILITY REPORT", RULE, "",
         f"Split: {result['split']}; {result['subsample']}. Measured in each block's own space "
         f"(standardised): silhouette score, {result['knn_k']}-NN accuracy and a linear probe "
         "(logistic regression), both cross-validated (stratified folds). Chance is 1/K.", "",
         f"{'Variant':<18} {'Block':<12} {'Silhouette':>11} {'k-NN acc':>9} {'Probe acc':>10}",
         THIN]
  for v, blocks in results.items():
    for b, r in blocks.items():
      out.append(f"{v:<18} {b:<12} {r['silhouette']:>11.3f} {r['knn_accuracy']:>9.3f} "
                 f"{r['linear_probe_accuracy']:>10.3f}")
  out += ["", "Does fusion separate classes better than either block alone?"]
  for v, blocks in results.items():
    if "fusion" in blocks:
      f = blocks["fusion"]["knn_accuracy"]
      singles = {b: blocks[b]["knn_accuracy"] for b in ("temporal", "contextual") if b in blocks}
      verdict = "yes" if f > max(singles.values(), default=0.0) else "no"
      parts = ", ".join(f"{'speech' if b == 'temporal' else 'text'} {x:.3f}"
                        for b, x in singles.items())
      out.append(f"  {v}: fused k-NN {f:.3f} vs {parts} → {verdict}")
  if result["head_internals"]:
    out += ["", "Fusion head internals:"] + [f"  {line}" for line in result["head_internals"]]
  out += ["", RULE]
  return "\n".join(out) + "\n"


# ------------------------------------------------------------------ recipes
def cv_table(summary: dict, extra_rows: Optional[dict] = None) -> str:
  """Cross-validation: variant, accuracy, UAR, macro/weighted F1 (mean ± std, n runs)."""
  rows = dict(summary["variants"])
  rows.update(extra_rows or {})
  short, what = METRIC_NAMES[summary.get("selection_metric", "accuracy")]
  val = lambda r: r.get("val_score", r.get("val_acc"))   # the selection metric
  ranked = runs.rank_variants(
      {v: [val(r)["mean"]] if val(r) else [] for v, r in rows.items()},
      {v: [r["val_loss"]["mean"]] for v, r in rows.items() if r.get("val_loss")},
      metric=what).order
  ref, comps = summary.get("reference"), summary.get("comparisons", {})
  vs = f"Δ UAR vs {ref} (p)" if ref else ""
  head = (f"{'Variant':<22} {'Val ' + short.lower():>15} {'Test acc':>15} {'Test UAR':>15} "
          f"{'Macro F1':>15} {'Weighted F1':>15} {'runs':>5}  {vs}")
  lines = ["Speaker-independent cross-validation (mean ± std over folds × seeds; ranked by "
           f"validation {what})", head.rstrip(), "-" * len(head)]
  for v in ranked:
    r = rows[v]
    c = comps.get(v)
    test = "" if c is None else (f"{c['mean_diff']:+.3f} (p {c['p_value']:.3f})"
                                 if c["p_value"] is not None else f"{c['mean_diff']:+.3f}")
    lines.append((f"{v:<22} {cell(val(r)):>15} {cell(r['accuracy']):>15} "
                  f"{cell(r['uar']):>15} {cell(r['macro_f1']):>15} {cell(r['weighted_f1']):>15} "
                  f"{r['accuracy']['n']:>5}  {'reference' if v == ref else test}").rstrip())
  if ref:
    lines += ["", f"Paired t-tests over matched (fold, seed) runs against {ref}, the best of "
              "the original's fusion heads on validation."]
  mixes = [(v, m, w) for v in ranked for m, w in rows[v].get("layer_weights", {}).items()]
  if mixes:
    lines += ["", "Learned layer weights, mean over runs (0 = the encoder's input embeddings, "
              "last = its last layer):"]
    lines += [f"  {v:<20} {m:<7} " + " ".join(f"{x:.3f}" for x in w) for v, m, w in mixes]
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ training reports
def write_training_reports(plots_dir: str, out_dir: str, exp: Experiment, results: dict,
                           summary: dict) -> None:
  """The original's training plots (into ``plots_dir``) and report, ``summary.json`` and
  ``config.json`` (into ``out_dir``)."""
  names = exp.class_names
  for variant, rs in results.items():
    spec = registry.get(variant)
    plots.training_curves({r.seed: r.history for r in rs}, spec.title,
                          os.path.join(plots_dir, f"{variant}_training_curves.png"))
    plots.confusion_matrix(
        sum(r.best.confusion for r in rs), names,
        f"Confusion Matrix - {variant.upper()}" + (" Fusion" if spec.is_fusion else "")
        + (f" (validation, {len(rs)} seeds)" if len(rs) > 1 else " (validation)"),
        os.path.join(plots_dir, f"{variant}_confusion_matrix.png"))
  plots.variants_comparison({v: rs[0].history for v, rs in results.items()},
                            os.path.join(plots_dir, "fusion_variants_comparison.png"))
  io_utils.write_text(os.path.join(out_dir, "fusion_variants_comparison.txt"),
                      training_comparison(summary))
  io_utils.write_json(os.path.join(out_dir, "summary.json"), summary)
  io_utils.write_json(os.path.join(out_dir, "config.json"),
                      json.loads(exp.config.to_json_best_effort()))


def summarize(results: dict, class_names: Sequence[str], shapes: batching.BatchShapes,
              pad: dict, selection_metric: str) -> dict:
  """``summary.json``: per variant the best validation accuracy over seeds and the best
  ``selection_metric`` (``best_val_score_*``, what chose the checkpoints), per seed the
  best checkpoint, the ranking (validation, by the selection metric) and paired tests
  between variants on it."""
  variants = {}
  for v, rs in results.items():
    accs = [r.best.val_acc for r in rs]
    mean, std = metrics.mean_std(accs)
    lo, hi = metrics.bootstrap_ci(accs)
    score_mean, score_std = metrics.mean_std([r.best.score for r in rs])
    variants[v] = dict(
        best_val_acc_mean=mean, best_val_acc_std=std, best_val_acc_ci95=[lo, hi],
        best_val_score_mean=score_mean, best_val_score_std=score_std,
        param_count=rs[0].param_count, is_fusion=registry.get(v).is_fusion,
        seeds={str(r.seed): dict(
            best_val_acc=r.best.val_acc, best_val_score=r.best.score, best_epoch=r.best.epoch,
            final_val_acc=r.state.final_val_acc, final_train_acc=r.history["train_acc"][-1],
            best_metrics=r.best.metrics, checkpoint_dir=r.checkpoint_dir,
            compile_seconds=r.compile_seconds, train_seconds=r.train_seconds,
            resumed_from_epoch=r.resumed_from_epoch,
            best_confusion=r.best.confusion.tolist()) for r in rs})
  ranked = runs.rank_variants({v: [r.best.score for r in rs] for v, rs in results.items()},
                              {v: runs.run_losses(rs) for v, rs in results.items()},
                              metric=selection_metric)
  ranking = ranked.order
  scores = {v: [r.best.score for r in rs] for v, rs in results.items()}
  originals = [v for v in ranking if registry.get(v).original and registry.get(v).is_fusion]
  reference = originals[0] if originals else None
  return dict(class_names=list(class_names), ranking=ranking, tie_break=ranked.tie_break,
              variants=variants,
              comparisons=metrics.paired_comparisons(scores),
              reference=reference,
              vs_reference=metrics.against_reference(scores, reference) if reference else {},
              shapes=dict(speech_buckets=list(shapes.speech_buckets),
                          text_length=shapes.text_length,
                          text_buckets=list(shapes.text_buckets)),
              padding_fraction=pad, selected_on="validation", selection_metric=selection_metric)


# ------------------------------------------------------------------ corpus recipes
# Published figures, for orientation only (other protocols and splits: docs/original.md).
RAVDESS_PUBLISHED = [("EmoBox wav2vec2-base (UA)", 0.543), ("EmoBox HuBERT-base (UA)", 0.654),
                     ("EmoBox WavLM-large (UA)", 0.720),
                     ("EmoBox Whisper-large-v3 (UA)", 0.753),
                     ("eGeMAPS functionals + LR (acc)", 0.50)]
MELD_PUBLISHED = [("text-CNN (weighted F1)", 0.550), ("bc-LSTM (weighted F1)", 0.564),
                  ("DialogueRNN (weighted F1)", 0.570),
                  ("RoBERTa fine-tuned (weighted F1)", 0.625),
                  ("frozen MiniLM + LR (weighted F1)", 0.56)]


def _published(title: str, rows) -> list:
  return [title] + [f"  {n:<34} {v:.3f}" for n, v in rows]


def ravdess_table(summary: dict) -> str:
  """``cv_results.txt`` of :func:`fusion_jax.recipes.ravdess.run`'s summary."""
  speech, text = summary["extractors"]["speech"], summary["extractors"]["text"]
  lines = [cv_table(summary, summary.get("baselines") or {}).rstrip("\n"), ""]
  lines += _published("Published (other protocols, docs/original.md; for orientation):",
                      RAVDESS_PUBLISHED)
  lines += ["", f"Speech features: {speech['name']} ({speech['dim']}-d, "
            f"{speech['frame_rate']:g} frames/s); text: {text['name']} ({text['dim']}-d). "
            f"Total {summary['total_seconds'] / 60:.1f} min (extraction "
            f"{summary['extract_seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"


def meld_table(result: dict) -> str:
  """``meld_results.txt`` of :func:`fusion_jax.recipes.meld.run`'s result."""
  rows, metric, select_on = result["rows"], result["selection_metric"], result["select_on"]
  head = f"{'Model':<24} {'Dev acc':>15} {'Weighted F1':>15} {'Macro F1':>15} {'runs':>5}"
  lines = [f"MELD dev (checkpoints selected on {select_on}"
           + ("" if metric == "accuracy" else f" by {METRIC_NAMES[metric][1]}")
           + ("; dev figures are optimistic" if select_on == "dev" else "") + ")",
           head, "-" * len(head)]
  for v, r in rows.items():
    lines.append(f"{v:<24} {cell(r['accuracy']):>15} {cell(r['weighted_f1']):>15} "
                 f"{cell(r['macro_f1']):>15} {r['accuracy']['n']:>5}")
  with_classes = [v for v, r in rows.items() if "per_class_f1" in r]
  if with_classes:
    names = list(rows[with_classes[0]]["per_class_f1"])
    lines += ["", "Per-class F1 on dev (mean over runs):",
              f"{'Model':<24} " + " ".join(f"{c[:8]:>8}" for c in names)]
    lines += [f"{v:<24} " + " ".join(f"{rows[v]['per_class_f1'][c]['mean']:>8.3f}"
                                     for c in names) for v in with_classes]
  lines += [""] + _published("Published (docs/original.md; MELD test split, for orientation):",
                             MELD_PUBLISHED)
  ex, stack, context = result["extractor"], result["extractor_stack"], result["context"]
  lines += ["", f"Text features: {ex['name']} ({ex['dim']}-d token states"
            + (f", {stack} hidden states" if stack > 1 else "")
            + (f", previous {context} lines as context" if context else "")
            + f"). Total {result['seconds'] / 60:.1f} min (extraction "
            f"{result['extract_seconds']:.0f} s)."]
  return "\n".join(lines) + "\n"
