"""Separability of the temporal, contextual and fusion blocks: drawn and measured.

For each variant, the masked-mean temporal (speech) and contextual (text)
vectors and the fused vector come from the model's ``aux`` in one jitted pass
(:func:`extract`). Each block is projected with t-SNE, UMAP and/or PCA and
drawn with one colour per class, as the original does, and — what the original
lacks — measured: silhouette score, cross-validated k-NN accuracy and
cross-validated linear-probe accuracy in the block's own space (standardised).

Fusion heads' internals are found by their ``aux`` names, whatever the head
(see :mod:`fusion_jax.models.heads`): gates (``fusion/*_gate``), modality
weights (``fusion/modality_weights``) and attention maps (``fusion/*_attention``)
are drawn per class, so a new head that emits them is analysed with no change here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import time
from typing import Optional, Sequence

import numpy as np

from fusion_jax import html_report, io_utils, plots, reports, runs
from fusion_jax.data.splits import Split
from fusion_jax.experiment import Experiment
from fusion_jax.models import registry
from fusion_jax.errors import ConfigError

# Per-utterance head internals drawn by class; attention maps are taken for one utterance.
GATES = "fusion/*_gate"
MODALITY_WEIGHTS = "fusion/modality_weights"
ATTENTION_MAPS = "fusion/*_attention"
METHODS = ("tsne", "umap", "pca")
METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}


def subsample(labels: np.ndarray, max_per_class: int, seed: int = 0) -> np.ndarray:
  """Row indices keeping at most ``max_per_class`` per class (all when 0), sorted."""
  if not max_per_class:
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  keep = []
  for k in np.unique(labels):
    rows = np.flatnonzero(labels == k)
    keep.append(rng.choice(rows, size=min(max_per_class, len(rows)), replace=False))
  return np.sort(np.concatenate(keep))


def extract(exp: Experiment, run: runs.Run, split: Split, shapes=None) -> dict:
  """The block vectors (and per-utterance head internals) of every utterance, in split order.

  Returns:
    ``{block: [N, D]}`` for the variant's blocks (``temporal``, ``contextual``,
    ``fusion``), present gates / modality weights (e.g. ``fusion/speech_gate [N, F]``)
    and ``probs [N, K]``.
  """
  blocks = registry.get(run.variant).blocks
  keys = [registry.BLOCKS[b][0] for b in blocks] + [GATES, MODALITY_WEIGHTS]
  steps = exp.steps(run.variant, run.model_config)
  probs, aux = exp.predict(steps, run.params, split, keys, shapes)
  out = {b: aux.pop(registry.BLOCKS[b][0]) for b in blocks}
  out.update(aux)
  out["probs"] = probs
  return out


def attention_maps(exp: Experiment, run: runs.Run, split: Split, row: int) -> dict:
  """``{aux key: [Tq, Tk]}`` attention maps of utterance ``row``, cropped to its lengths."""
  steps = exp.steps(run.variant, run.model_config)
  if not any(fnmatch.fnmatchcase(k, ATTENTION_MAPS) for k in steps.aux_keys()):
    return {}
  one = split.take([row])
  _, aux = exp.predict(steps, run.params, one, (ATTENTION_MAPS,))
  lengths = {"speech": int(one.speech_lengths[0]), "text": int(one.text_lengths[0])}
  out = {}
  for key, att in sorted(aux.items()):
    if att.ndim == 3:   # [1, Tq, Tk]; "fusion/speech_to_text_attention": queries are speech
      q, _, k = key.split("/")[1][:-len("_attention")].partition("_to_")
      out[key] = att[0][:lengths.get(q, att.shape[1]), :lengths.get(k, att.shape[2])]
  return out


def project(x: np.ndarray, method: str, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
  """``[N, D] → [N, 2]`` with t-SNE (scikit-learn ≥ 1.7 API), UMAP or PCA."""
  from sklearn.decomposition import PCA  # pylint: disable=import-outside-toplevel
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  if method == "pca":
    return PCA(n_components=2, random_state=seed).fit_transform(x)
  if method == "tsne":
    from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
    # perplexity must be < n; the original's n_iter= argument no longer exists.
    return TSNE(n_components=2, perplexity=min(perplexity, max(2.0, (n - 1) / 3)),
                init="pca", random_state=seed).fit_transform(x)
  if method == "umap":
    import umap  # pylint: disable=import-outside-toplevel
    return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed,
                     n_jobs=1).fit_transform(x)
  raise ConfigError(f"unknown projection {method!r}; valid: {list(METHODS)}")


def separability(x: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5,
                 seed: int = 0) -> dict:
  """Silhouette, cross-validated k-NN and linear-probe accuracy of standardised ``x``."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.metrics import silhouette_score  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import StratifiedKFold, cross_val_score  # pylint: disable=import-outside-toplevel
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  x = np.asarray(x, np.float64)
  labels = np.asarray(labels)
  _, counts = np.unique(labels, return_counts=True)
  folds = int(max(2, min(folds, counts.min())))
  cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  z = StandardScaler().fit_transform(x)
  knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, len(x) - 1)))
  probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
  return dict(
      silhouette=float(silhouette_score(z, labels)) if len(counts) > 1 else 0.0,
      knn_accuracy=float(cross_val_score(knn, x, labels, cv=cv).mean()),
      linear_probe_accuracy=float(cross_val_score(probe, x, labels, cv=cv).mean()),
      folds=folds, n=int(len(x)))


def head_internals(emb: dict, labels: np.ndarray, class_names: Sequence[str]) -> dict:
  """Per-class means of the head's gates and modality weights (JSON-able)."""
  present = [k for k in range(len(class_names)) if (labels == k).any()]
  out = {}
  for key, x in emb.items():
    if key.startswith("fusion/") and x.ndim == 2:
      v = x.mean(1) if key.endswith("_gate") else x[:, 0]   # gate mean / speech weight
      out[key] = dict(mean=float(v.mean()),
                      by_class={class_names[k]: float(v[labels == k].mean()) for k in present})
  return out


def _internals_lines(variant: str, internals: dict, maps: dict) -> list:
  lines = []
  gates = {k: v for k, v in internals.items() if k.endswith("_gate")}
  if gates:
    mods = [k.split("/")[1].replace("_gate", "") for k in gates]
    by = ", ".join(f"{n} " + "/".join(f"{g['by_class'][n]:.2f}" for g in gates.values())
                   for n in next(iter(gates.values()))["by_class"])
    lines.append(f"{variant}: mean gate " + ", ".join(
        f"{m} {g['mean']:.3f}" for m, g in zip(mods, gates.values())) + f"; by class: {by}")
  if MODALITY_WEIGHTS in internals:
    w = internals[MODALITY_WEIGHTS]
    lines.append(f"{variant}: mean speech weight {w['mean']:.3f}; by class: " + ", ".join(
        f"{n} {x:.2f}" for n, x in w["by_class"].items()))
  for key, (att, name) in maps.items():
    q, k = att.shape
    ent = -(att * np.log(att + 1e-12)).sum(1).mean()
    lines.append(f"{variant}: {key.split('/')[1]} of {name}: {q} queries × {k} keys; mean "
                 f"entropy {ent:.2f} nats (uniform: {np.log(k):.2f})")
  return lines


def _head_figures(variant, emb, labels, class_names, maps, out_dir) -> None:
  """Gates and modality weights per class; the attention maps of one utterance."""
  k = len(class_names)
  pos = np.arange(k)
  gates = {key: x.mean(1) for key, x in emb.items() if key.startswith("fusion/")
           and key.endswith("_gate")}
  if gates:
    fig, ax = plots.plt.subplots(figsize=(max(8, k * 1.3), 5))
    width = 0.6 / len(gates)
    for i, ((key, g), color) in enumerate(zip(gates.items(), ("tab:blue", "tab:orange",
                                                                "tab:green"))):
      ax.boxplot([g[labels == c] for c in range(k)], widths=width, patch_artist=True,
                 positions=pos + (i - (len(gates) - 1) / 2) * (width + 0.05),
                 boxprops=dict(facecolor=color, alpha=0.5))
    ax.set_xticks(pos, class_names, rotation=30, ha="right")
    ax.set_ylabel("mean gate value")
    legend = ", ".join(f"{c} {key.split('/')[1].replace('_gate', '')}"
                       for key, c in zip(gates, ("blue", "orange", "green")))
    ax.set_title(f"{variant}: mean gate per modality and class ({legend})", fontweight="bold")
    plots.save(fig, os.path.join(out_dir, f"{variant}_gates_by_class.png"))
  if MODALITY_WEIGHTS in emb:
    ws = emb[MODALITY_WEIGHTS][:, 0]
    fig, ax = plots.plt.subplots(figsize=(max(8, k * 1.3), 5))
    ax.boxplot([ws[labels == c] for c in range(k)], patch_artist=True)
    ax.set_xticks(np.arange(1, k + 1), class_names, rotation=30, ha="right")
    ax.axhline(0.5, color="k", ls="--", lw=0.8)
    ax.set_ylabel("speech weight w_s (text = 1 - w_s)")
    ax.set_title(f"{variant}: modality weight per class", fontweight="bold")
    plots.save(fig, os.path.join(out_dir, f"{variant}_modality_weights_by_class.png"))
  if maps:
    fig, axes = plots.plt.subplots(1, len(maps), figsize=(7 * len(maps), 5), squeeze=False)
    for ax, (key, (att, name)) in zip(axes[0], maps.items()):
      im = ax.imshow(att.T, aspect="auto", cmap="viridis", origin="lower")
      fig.colorbar(im, ax=ax, label="attention weight")
      src, dst = key.split("/")[1].replace("_attention", "").split("_to_")
      ax.set_xlabel(f"{src} position (query)")
      ax.set_ylabel(f"{dst} position (key)")
      ax.set_title(f"{src}→{dst} attention\n{name}", fontsize=10, fontweight="bold")
    plots.save(fig, os.path.join(out_dir, f"{variant}_attention_map.png"))


def analyze(exp: Experiment, runs_: Sequence[runs.Run], split: Split, *,
            methods: Optional[Sequence[str]] = None,
            max_per_class: Optional[int] = None) -> dict:
  """Writes ``exp.results_dir/separability/`` for every run (first seed of each variant).

  Args:
    methods: projections (default ``config.analysis.methods``).
    max_per_class: subsample each class (default ``config.analysis.max_per_class``; 0 = all).

  Returns:
    ``{"split", "subsample", "knn_k", "results": {variant: {block: {silhouette,
    knn_accuracy, linear_probe_accuracy, ...}}}, "head_internals": [...], "internals":
    {variant: {aux key: {mean, by_class}}}}``, also written to
    ``separability/separability.json`` (the text in ``separability_report.txt``).
  """
  an = exp.config.analysis
  if methods is None:
    methods = [m.strip() for m in str(an.methods).split(",") if m.strip()]
  max_per_class = an.max_per_class if max_per_class is None else max_per_class
  for m in methods:
    if m not in METHODS:
      raise ConfigError(f"unknown projection {m!r}; valid: {list(METHODS)}")
  runs.check_dims(runs_, split)
  # Written as one set: a failed or concurrent run never leaves a mix of pictures.
  with runs.RunLock(exp.results_dir, "separability report", ".separability.lock"), \
      io_utils.replaced_dir(os.path.join(exp.results_dir, "separability")) as out_dir:
    result = _analyze(exp, runs_, split, methods, max_per_class, out_dir)
  html_report.write(exp.results_dir)
  return result


def _fusion_comparison(results: dict, fused: dict, fused_tsne: dict, labels, class_names,
                       perplexity: float, out_dir: str) -> None:
  """``fusion_comparison_all.png``: every fusion variant's fusion block in t-SNE, side by
  side, titled with its silhouette and k-NN accuracy."""
  fusion_variants = [v for v in results if "fusion" in results[v]]
  if not fusion_variants:
    return
  n = len(fusion_variants)
  fig, axes = plots.plt.subplots(1, n, figsize=(5.5 * n, 5), squeeze=False)
  for ax, v in zip(axes[0], fusion_variants):
    xy = fused_tsne.get(v)
    if xy is None:  # t-SNE was not among --methods: this figure is t-SNE by definition
      xy = project(fused[v], "tsne", perplexity=perplexity)
    _scatter(ax, xy, labels, class_names, f"{v}\nsilhouette "
             f"{results[v]['fusion']['silhouette']:.2f}, k-NN "
             f"{results[v]['fusion']['knn_accuracy']:.2f}")
  axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
  fig.suptitle("Fusion Block (t-SNE) - all variants", fontsize=14, fontweight="bold", y=1.04)
  plots.save(fig, os.path.join(out_dir, "fusion_comparison_all.png"))


def _analyze(exp, runs_, split, methods, max_per_class, out_dir) -> dict:
  an, log = exp.config.analysis, exp.log
  class_names = exp.class_names
  rows = subsample(split.labels, max_per_class)
  sub = split.take(rows)
  labels = sub.labels
  note = (f"subsampled to at most {max_per_class} per class: {len(rows)} of {len(split)} "
          "utterances" if len(rows) < len(split) else f"all {len(split)} utterances")
  log(f"Analysing split '{split.name}': {note}")
  shapes = exp.plan(sub)
  seen, results, fused, fused_tsne, lines, internals = set(), {}, {}, {}, [], {}
  for run in runs_:
    if run.variant in seen:
      continue  # one seed per variant: pictures of one model
    seen.add(run.variant)
    t0 = time.perf_counter()
    emb = extract(exp, run, sub, shapes)
    log(f"[{run.variant}] embeddings of {len(sub)} utterances in "
        f"{time.perf_counter() - t0:.1f}s")
    results[run.variant] = {}
    if "fusion" in emb:
      fused[run.variant] = emb["fusion"]
    for block in registry.get(run.variant).blocks:
      x = emb[block]
      results[run.variant][block] = separability(x, labels, an.knn_k, an.cv_folds)
      for method in methods:
        t0 = time.perf_counter()
        xy = project(x, method, perplexity=an.tsne_perplexity)
        fig, ax = plots.plt.subplots(figsize=(8, 6.5))
        _scatter(ax, xy, labels, class_names, f"{registry.BLOCKS[block][1]} - "
                 f"{METHOD_TITLES[method]}\n{run.variant} ({split.name} split)")
        ax.legend(fontsize=8, markerscale=1.5, loc="best")
        plots.save(fig, os.path.join(out_dir, f"{run.variant}_{block}_{method}.png"))
        if block == "fusion" and method == "tsne":
          fused_tsne[run.variant] = xy
        log(f"  {run.variant} {block} {METHOD_TITLES[method]}: "
            f"{time.perf_counter() - t0:.1f}s")
    name = f"{sub.file_name(0)} (true {class_names[int(labels[0])]})"
    maps = {k: (m, name) for k, m in attention_maps(exp, run, sub, 0).items()}
    internals[run.variant] = head_internals(emb, labels, class_names)
    lines += _internals_lines(run.variant, internals[run.variant], maps)
    _head_figures(run.variant, emb, labels, class_names, maps, out_dir)
  _fusion_comparison(results, fused, fused_tsne, labels, class_names, an.tsne_perplexity,
                     out_dir)
  result = dict(split=split.name, subsample=note, knn_k=an.knn_k, results=results,
                head_internals=lines, internals=internals,
                model_configs={r.variant: dataclasses.asdict(exp.compute_config(r.model_config))
                               for r in runs_ if r.variant in results})
  text = reports.separability(result)
  io_utils.write_text(os.path.join(out_dir, "separability_report.txt"), text)
  io_utils.write_json(os.path.join(out_dir, "separability.json"), result)
  log(text)
  return result


def _scatter(ax, xy, labels, class_names, title):
  for k, name in enumerate(class_names):
    sel = labels == k
    if sel.any():
      ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.75, label=name,
                 color=plots.COLORS[k % len(plots.COLORS)])
  ax.set_title(title, fontsize=11, fontweight="bold")
  ax.set_xticks([])
  ax.set_yticks([])
