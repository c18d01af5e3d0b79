"""Text reports: the original's sections, plus seed statistics and honest comparisons."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fusion_jax import metrics

RULE, THIN = "=" * 80, "-" * 80


def _fmt_ms(values) -> str:
  mean, std = metrics.mean_std(values)
  return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def seed_section(scores: dict, what: str) -> list:
  """Mean ± std, bootstrap interval per variant and paired tests between variants."""
  lines = [f"{'Variant':<20} {'Seeds':<6} {'Mean ± std':<18} {'95% bootstrap CI':<20} Per seed",
           THIN]
  for v, vals in scores.items():
    lo, hi = metrics.bootstrap_ci(vals)
    lines.append(f"{v:<20} {len(vals):<6} {_fmt_ms(vals):<18} "
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


def training_comparison(results: dict, class_names: Sequence[str]) -> str:
  """``fusion_variants_comparison.txt``.

  Args:
    results: ``{variant: [RunResult per seed]}``.
  """
  best = {v: [r.best_val_acc for r in rs] for v, rs in results.items()}
  ranked = sorted(results, key=lambda v: -np.mean(best[v]))
  out = [RULE, "MULTIMODAL FUSION VARIANTS COMPARISON REPORT", RULE, "",
         "Model selection uses the validation split only. Ranks are by mean best validation "
         "accuracy over seeds.", "", "1. OVERALL PERFORMANCE COMPARISON", THIN,
         f"{'Variant':<20} {'Best Val Acc':<18} {'Final Val Acc':<18} {'Best Val UAR':<18} "
         f"{'Rank':<5}", THIN]
  for rank, v in enumerate(ranked, 1):
    rs = results[v]
    out.append(f"{v:<20} {_fmt_ms(best[v]):<18} {_fmt_ms([r.final_val_acc for r in rs]):<18} "
               f"{_fmt_ms([r.best_metrics.get('uar', 0.0) for r in rs]):<18} {rank:<5}")
  out += ["", RULE, "", "2. DETAILED ANALYSIS BY VARIANT", RULE]
  for v in ranked:
    rs = results[v]
    cm = sum(np.asarray(r.best_confusion) for r in rs)
    seeds = ", ".join(str(r.seed) for r in rs)
    out += ["", f"{v.upper()}", THIN,
            f"Seeds: {seeds}; parameters: {rs[0].param_count:,}",
            f"Best Validation Accuracy: {_fmt_ms(best[v])} (epochs "
            f"{', '.join(str(r.best_epoch) for r in rs)})",
            f"Final Training Accuracy: {_fmt_ms([r.history['train_acc'][-1] for r in rs])}",
            f"Final Validation Accuracy: {_fmt_ms([r.final_val_acc for r in rs])}", "",
            "Per-Class Accuracy at the best epoch" + (" (summed over seeds)" if len(rs) > 1
                                                       else "") + ":",
            f"{'Emotion':<20} {'Accuracy':<10} {'Correct':<10} {'Total':<10}", "-" * 50]
    for i, name in enumerate(class_names):
      total = int(cm[i].sum())
      out.append(f"{name:<20} {cm[i, i] / total if total else 0:<10.4f} {int(cm[i, i]):<10} "
                 f"{total:<10}")
  out += ["", RULE, "3. SEED VARIATION AND SIGNIFICANCE (best validation accuracy)", RULE]
  out += seed_section(best, "best validation accuracy")
  out += ["", RULE, "4. KEY INSIGHTS", RULE, ""]
  top, bottom = ranked[0], ranked[-1]
  out.append(f"- Best variant on validation: {top.upper()} ({np.mean(best[top]):.4f})")
  out.append(f"- Worst variant on validation: {bottom.upper()} ({np.mean(best[bottom]):.4f})")
  out.append(f"- Performance gap: {np.mean(best[top]) - np.mean(best[bottom]):.4f}")
  unimodal = [v for v in results if v.endswith("_only")]
  fusion = [v for v in ranked if not v.endswith("_only")]
  if unimodal and fusion:
    bu = max(unimodal, key=lambda v: np.mean(best[v]))
    gain = np.mean(best[fusion[0]]) - np.mean(best[bu])
    out.append(f"- Best fusion ({fusion[0]}) vs best single modality ({bu}): {gain:+.4f}")
  comps = metrics.paired_comparisons(best) if min(len(v) for v in best.values()) > 1 else []
  beats = [c for c in comps if top in (c["a"], c["b"]) and c["significant"]]
  if comps:
    out.append(f"- {top} differs beyond seed noise from {len(beats)} of {len(results) - 1} "
               "other variants (paired t-test, section 3).")
  else:
    out.append("- Single seed: treat gaps of a point or two as noise.")
  out += ["", RULE]
  return "\n".join(out) + "\n"
