"""Separability of the temporal, contextual and fusion blocks: drawn and measured.

For each variant, the masked-mean temporal (speech) and contextual (text)
vectors and the fused vector come from the model's ``aux`` in one jitted pass
(:func:`extract`). Each block is projected with t-SNE, UMAP and/or PCA and
drawn with one colour per class, as the original does, and — what the original
lacks — measured: silhouette score, cross-validated k-NN accuracy and
cross-validated linear-probe accuracy in the block's own space (standardised).
The fusion heads' internals are summarised per class (gates, modality weights,
an attention map).
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from fusion_jax import io_utils, plots, reports
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.evaluation import Run, check_dims, predict
from fusion_jax.models import model as model_lib

BLOCKS = {  # name -> (aux key, the original's title)
    "temporal": ("temporal/pooled", "Temporal Modeling Block (Speech)"),
    "contextual": ("contextual/pooled", "Contextual Modeling Block (Text)"),
    "fusion": ("fusion/fused", "Fusion Block"),
}
HEAD_KEYS = ("fusion/speech_gate", "fusion/text_gate", "fusion/modality_weights")
METHODS = ("tsne", "umap", "pca")
METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}


def blocks_of(variant: str) -> list:
  if variant == "speech_only":
    return ["temporal"]
  if variant == "text_only":
    return ["contextual"]
  return ["temporal", "contextual", "fusion"]


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


def extract(run: Run, split: Split, shapes: batching.BatchShapes, batch_size: int,
            num_classes: int, mesh=None, trainer=None) -> dict:
  """The block vectors (and head internals) of every utterance, in split order.

  Returns:
    ``{block: [N, D]}`` for the variant's blocks, plus present head keys
    (e.g. ``fusion/speech_gate [N, F]``) and ``probs [N, K]``.
  """
  keys = [BLOCKS[b][0] for b in blocks_of(run.variant)] + list(HEAD_KEYS)
  probs, aux = predict(run, split, shapes, batch_size, num_classes, mesh=mesh,
                       aux_keys=keys, trainer=trainer)
  out = {b: aux[BLOCKS[b][0]] for b in blocks_of(run.variant)}
  out.update({k: v for k, v in aux.items() if k in HEAD_KEYS})
  out["probs"] = probs
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
  raise ValueError(f"unknown projection {method!r}; valid: {list(METHODS)}")


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


def _scatter(ax, xy, labels, class_names, title):
  for k, name in enumerate(class_names):
    sel = labels == k
    if sel.any():
      ax.scatter(xy[sel, 0], xy[sel, 1], s=14, alpha=0.75, label=name,
                 color=plots.COLORS[k % len(plots.COLORS)])
  ax.set_title(title, fontsize=11, fontweight="bold")
  ax.set_xticks([])
  ax.set_yticks([])


def _head_figures(variant, emb, labels, class_names, split, rows, out_dir) -> list:
  """One figure per head's internals and a few summary lines."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  lines = []
  if variant == "gated":
    gs = emb["fusion/speech_gate"].mean(1)
    gt = emb["fusion/text_gate"].mean(1)
    fig, ax = plt.subplots(figsize=(max(8, len(class_names) * 1.3), 5))
    pos = np.arange(len(class_names))
    ax.boxplot([gs[labels == k] for k in range(len(class_names))], positions=pos - 0.18,
               widths=0.3, patch_artist=True, boxprops=dict(facecolor="tab:blue", alpha=0.5))
    ax.boxplot([gt[labels == k] for k in range(len(class_names))], positions=pos + 0.18,
               widths=0.3, patch_artist=True, boxprops=dict(facecolor="tab:orange", alpha=0.5))
    ax.set_xticks(pos, class_names, rotation=30, ha="right")
    ax.set_ylabel("mean gate value")
    ax.set_title("Gated fusion: mean gate per modality and class (blue speech, orange text)",
                 fontweight="bold")
    plots.save(fig, os.path.join(out_dir, "gated_gates_by_class.png"))
    lines.append("gated: mean gate speech {:.3f}, text {:.3f}; by class: {}".format(
        gs.mean(), gt.mean(), ", ".join(f"{n} {gs[labels == k].mean():.2f}/"
                                        f"{gt[labels == k].mean():.2f}"
                                        for k, n in enumerate(class_names)
                                        if (labels == k).any())))
  elif variant == "weighted":
    ws = emb["fusion/modality_weights"][:, 0]
    fig, ax = plt.subplots(figsize=(max(8, len(class_names) * 1.3), 5))
    ax.boxplot([ws[labels == k] for k in range(len(class_names))], patch_artist=True)
    ax.set_xticks(np.arange(1, len(class_names) + 1), class_names, rotation=30, ha="right")
    ax.axhline(0.5, color="k", ls="--", lw=0.8)
    ax.set_ylabel("speech weight w_s (text = 1 - w_s)")
    ax.set_title("Weighted fusion: modality weight per class", fontweight="bold")
    plots.save(fig, os.path.join(out_dir, "weighted_modality_weights_by_class.png"))
    lines.append("weighted: mean speech weight {:.3f}; by class: {}".format(
        ws.mean(), ", ".join(f"{n} {ws[labels == k].mean():.2f}"
                             for k, n in enumerate(class_names) if (labels == k).any())))
  elif variant == "cross_attention" and "attention_example" in emb:
    att, i, s_len, t_len = emb["attention_example"]
    fig, ax = plt.subplots(figsize=(7, 5))
    im = ax.imshow(att[:s_len, :t_len].T, aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax, label="attention weight")
    ax.set_xlabel("speech frame (query)")
    ax.set_ylabel("text token (key)")
    name = split.file_name(int(rows[i]))
    ax.set_title(f"Speech→text cross-attention\n{name} (true "
                 f"{class_names[int(labels[i])]})", fontsize=10, fontweight="bold")
    plots.save(fig, os.path.join(out_dir, "cross_attention_attention_map.png"))
    ent = -(att[:s_len, :t_len] * np.log(att[:s_len, :t_len] + 1e-12)).sum(1).mean()
    lines.append(f"cross_attention: example {name}: {s_len} frames × {t_len} tokens; mean "
                 f"attention entropy {ent:.2f} nats (uniform: {np.log(t_len):.2f})")
  return lines


def _attention_example(run, split, rows, shapes, batch_size, num_classes, mesh, trainer):
  """Speech→text attention of the first analysed utterance (one extra small batch)."""
  r = int(rows[0])
  one = split.take([r])
  one_shapes = batching.BatchShapes((shapes.speech_buckets[-1],), shapes.text_length)
  _, aux = predict(run, one, one_shapes, batch_size, num_classes, mesh=mesh,
                   aux_keys=("fusion/speech_to_text_attention",), trainer=trainer)
  return (aux["fusion/speech_to_text_attention"][0], 0, int(one.speech_lengths[0]),
          int(one.text_lengths[0]))


def analyze(config, runs: Sequence[Run], split: Split, class_names: Sequence[str],
            results_dir: str, *, methods: Sequence[str] = ("tsne", "umap", "pca"),
            max_per_class: int = 0, mesh=None, log=print) -> dict:
  """Writes ``results_dir/separability/`` for every run (first seed of each variant).

  Returns:
    ``{variant: {block: {silhouette, knn_accuracy, linear_probe_accuracy, ...}}}``,
    also written to ``separability/separability.json`` with the report text in
    ``separability_report.txt``.
  """
  from fusion_jax import training  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  out_dir = os.path.join(results_dir, "separability")
  os.makedirs(out_dir, exist_ok=True)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"unknown projection {m!r}; valid: {list(METHODS)}")
  k = len(class_names)
  an = config.analysis
  check_dims(runs, split)
  rows = subsample(split.labels, max_per_class)
  sub = split.take(rows)
  labels = sub.labels
  note = (f"subsampled to at most {max_per_class} per class: {len(rows)} of {len(split)} "
          "utterances" if len(rows) < len(split) else f"all {len(split)} utterances")
  log(f"Analysing split '{split.name}': {note}")
  bs = config.eval.batch_size
  shapes = batching.plan_shapes([sub], config.data.num_buckets, config.data.bucket_multiple,
                                batch_size=bs)
  seen, results, fused, fused_tsne, head_lines = set(), {}, {}, {}, []
  for run in runs:
    if run.variant in seen:
      continue  # one seed per variant: pictures of one model
    seen.add(run.variant)
    model = model_lib.build_model(run.model_config, run.variant, k)
    trainer = training.Trainer(model, mesh=mesh)
    t0 = time.perf_counter()
    emb = extract(run, sub, shapes, bs, k, mesh=mesh, trainer=trainer)
    log(f"[{run.variant}] embeddings of {len(sub)} utterances in "
        f"{time.perf_counter() - t0:.1f}s")
    results[run.variant] = {}
    if "fusion" in emb:
      fused[run.variant] = emb["fusion"]
    for block in blocks_of(run.variant):
      x = emb[block]
      results[run.variant][block] = separability(x, labels, an.knn_k, an.cv_folds)
      for method in methods:
        t0 = time.perf_counter()
        xy = project(x, method, perplexity=an.tsne_perplexity)
        fig, ax = plt.subplots(figsize=(8, 6.5))
        _scatter(ax, xy, labels, class_names, f"{BLOCKS[block][1]} - "
                 f"{METHOD_TITLES[method]}\n{run.variant} ({split.name} split)")
        ax.legend(fontsize=8, markerscale=1.5, loc="best")
        plots.save(fig, os.path.join(out_dir, f"{run.variant}_{block}_{method}.png"))
        if block == "fusion" and method == "tsne":
          fused_tsne[run.variant] = xy
        log(f"  {run.variant} {block} {METHOD_TITLES[method]}: "
            f"{time.perf_counter() - t0:.1f}s")
    if run.variant == "cross_attention":
      emb["attention_example"] = _attention_example(run, sub, rows, shapes, bs, k, mesh,
                                                    trainer)
    head_lines += _head_figures(run.variant, emb, labels, class_names, split, rows, out_dir)
  fusion_variants = [v for v in results if "fusion" in results[v]]
  if fusion_variants:
    n = len(fusion_variants)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 5), squeeze=False)
    for ax, v in zip(axes[0], fusion_variants):
      xy = fused_tsne.get(v)
      if xy is None:  # t-SNE was not among --methods: this figure is t-SNE by definition
        xy = project(fused[v], "tsne", perplexity=an.tsne_perplexity)
      _scatter(ax, xy, labels, class_names, f"{v}\nsilhouette "
               f"{results[v]['fusion']['silhouette']:.2f}, k-NN "
               f"{results[v]['fusion']['knn_accuracy']:.2f}")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.suptitle("Fusion Block (t-SNE) - all variants", fontsize=14, fontweight="bold", y=1.04)
    plots.save(fig, os.path.join(out_dir, "fusion_comparison_all.png"))
  text = _report(results, split, note, head_lines, an)
  io_utils.write_text(os.path.join(out_dir, "separability_report.txt"), text)
  io_utils.write_json(os.path.join(out_dir, "separability.json"),
                      dict(split=split.name, subsample=note, results=results,
                           head_internals=head_lines))
  log(text)
  return results


def _report(results, split, note, head_lines, an) -> str:
  rule, thin = reports.RULE, reports.THIN
  out = [rule, "SEPARABILITY REPORT", rule, "",
         f"Split: {split.name}; {note}. Measured in each block's own space (standardised): "
         f"silhouette score, {an.knn_k}-NN accuracy and a linear probe (logistic "
         "regression), both cross-validated (stratified folds). Chance is 1/K.", "",
         f"{'Variant':<18} {'Block':<12} {'Silhouette':>11} {'k-NN acc':>9} {'Probe acc':>10}",
         thin]
  for v, blocks in results.items():
    for b, r in blocks.items():
      out.append(f"{v:<18} {b:<12} {r['silhouette']:>11.3f} {r['knn_accuracy']:>9.3f} "
                 f"{r['linear_probe_accuracy']:>10.3f}")
  out += ["", "Does fusion separate classes better than either block alone?"]
  for v, blocks in results.items():
    if "fusion" in blocks:
      f, s, t = (blocks[b]["knn_accuracy"] for b in ("fusion", "temporal", "contextual"))
      verdict = "yes" if f > max(s, t) else "no"
      out.append(f"  {v}: fused k-NN {f:.3f} vs speech {s:.3f}, text {t:.3f} → {verdict}")
  if head_lines:
    out += ["", "Fusion head internals:"] + [f"  {line}" for line in head_lines]
  out += ["", rule]
  return "\n".join(out) + "\n"
