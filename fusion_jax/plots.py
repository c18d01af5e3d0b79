"""Figures with the original's names, titles and content (matplotlib, Agg backend).

Every figure is written atomically: a reader never sees a truncated PNG.
"""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from fusion_jax import io_utils  # pylint: disable=wrong-import-position

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def save(fig, path, dpi: int = 120) -> None:
  with io_utils.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
  plt.close(fig)


def training_curves(histories: dict, title: str, path) -> None:
  """Loss, accuracy and learning rate per epoch; one line style per seed.

  Args:
    histories: ``{seed: history}``, history with ``train_loss, val_loss,
      train_acc, val_acc, learning_rate`` lists.
    title: e.g. "GATED Fusion" (the figure says "GATED Fusion Training").
  """
  fig, axes = plt.subplots(1, 3, figsize=(18, 5))
  fig.suptitle(f"{title} Training", fontsize=16, fontweight="bold")
  multi = len(histories) > 1
  for k, (seed, h) in enumerate(sorted(histories.items())):
    epochs = np.arange(1, len(h["train_loss"]) + 1)
    tag = f" (seed {seed})" if multi else ""
    alpha = 1.0 if k == 0 else 0.5
    axes[0].plot(epochs, h["train_loss"], "b-", label="Train Loss" + tag, lw=2, alpha=alpha)
    axes[0].plot(epochs, h["val_loss"], "r-", label="Val Loss" + tag, lw=2, alpha=alpha)
    axes[1].plot(epochs, h["train_acc"], "b-", label="Train Acc" + tag, lw=2, alpha=alpha)
    axes[1].plot(epochs, h["val_acc"], "r-", label="Val Acc" + tag, lw=2, alpha=alpha)
    axes[2].plot(epochs, h["learning_rate"], "g-", lw=2, alpha=alpha,
                 label=f"seed {seed}" if multi else None)
  for ax, ylabel, title in zip(axes, ("Loss", "Accuracy", "Learning Rate"),
                               ("Training and Validation Loss",
                                "Training and Validation Accuracy", "Learning Rate Schedule")):
    ax.set_xlabel("Epoch", fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.set_title(title, fontsize=14)
    ax.grid(True, alpha=0.3)
    if ax is not axes[2] or multi:
      ax.legend(fontsize=8 if multi else 10)
  axes[2].set_yscale("log")
  fig.tight_layout()
  save(fig, path)


def confusion_matrix(cm: np.ndarray, class_names: Sequence[str], title: str, path) -> None:
  """Heatmap with counts and row percentages in each cell."""
  cm = np.asarray(cm)
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * k + 2), max(5, 1.0 * k + 1.5)))
  im = ax.imshow(cm, cmap="Blues")
  fig.colorbar(im, ax=ax, label="Count")
  rows = cm.sum(1, keepdims=True)
  pct = np.divide(cm * 100.0, rows, out=np.zeros(cm.shape), where=rows > 0)
  thresh = cm.max() / 2 if cm.size and cm.max() else 0.5
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{cm[i, j]}\n({pct[i, j]:.1f}%)", ha="center", va="center", fontsize=8,
              color="white" if cm[i, j] > thresh else "black")
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("Predicted Label", fontsize=12)
  ax.set_ylabel("True Label", fontsize=12)
  ax.set_title(title, fontsize=14, fontweight="bold")
  fig.tight_layout()
  save(fig, path)


def variants_comparison(histories: dict, path, title: str = "Fusion Variants Comparison"):
  """Validation loss and accuracy of every variant (``{variant: history}``)."""
  fig, axes = plt.subplots(1, 2, figsize=(15, 5))
  fig.suptitle(title, fontsize=16, fontweight="bold")
  for (variant, h), color in zip(histories.items(), COLORS):
    epochs = np.arange(1, len(h["val_loss"]) + 1)
    axes[0].plot(epochs, h["val_loss"], color=color, label=variant.capitalize(), lw=2)
    axes[1].plot(epochs, h["val_acc"], color=color, label=variant.capitalize(), lw=2)
  for ax, name in zip(axes, ("Loss", "Accuracy")):
    ax.set_xlabel("Epoch", fontsize=12)
    ax.set_ylabel(f"Validation {name}", fontsize=12)
    ax.set_title(f"Validation {name} Comparison", fontsize=14)
    ax.legend()
    ax.grid(True, alpha=0.3)
  fig.tight_layout()
  save(fig, path)


def reliability_diagram(table: Sequence[dict], ece: float, title: str, path) -> None:
  """Accuracy vs confidence per bin, with counts; the diagonal is perfect calibration."""
  fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6, 7), sharex=True,
                                gridspec_kw=dict(height_ratios=(3, 1)))
  lo = np.array([b["lower"] for b in table])
  width = np.array([b["upper"] - b["lower"] for b in table])
  acc = np.array([b["accuracy"] for b in table])
  count = np.array([b["count"] for b in table])
  ax.bar(lo, acc, width=width, align="edge", edgecolor="k", alpha=0.7, label="Accuracy")
  ax.plot([0, 1], [0, 1], "k--", label="Perfect calibration")
  ax.set_ylabel("Accuracy")
  ax.set_title(f"{title} (ECE = {ece:.3f})", fontweight="bold")
  ax.legend(loc="upper left")
  ax2.bar(lo, count, width=width, align="edge", edgecolor="k", color="gray")
  ax2.set_xlabel("Confidence")
  ax2.set_ylabel("Count")
  fig.tight_layout()
  save(fig, path)


def bar_groups(values: dict, labels: Sequence[str], title: str, ylabel: str, path,
               ylim: Optional[tuple] = None) -> None:
  """Grouped bars: ``values = {series: [value per label]}``."""
  fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(labels) * max(1, len(values)) / 2), 5))
  n = len(values)
  x = np.arange(len(labels))
  for i, ((name, vals), color) in enumerate(zip(values.items(), COLORS)):
    ax.bar(x + (i - (n - 1) / 2) * 0.8 / n, vals, 0.8 / n, label=name, color=color)
  ax.set_xticks(x, labels, rotation=30, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontweight="bold")
  if ylim:
    ax.set_ylim(*ylim)
  ax.axhline(0, color="k", lw=0.8)
  ax.legend(fontsize=8)
  ax.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  save(fig, path)


def timeline(segments: Sequence[dict], class_names: Sequence[str], title: str, path) -> None:
  """A long recording's emotion over time: every class's probability per speech segment
  (steps over each segment's span, gaps where no one speaks) above a band coloured by the
  predicted emotion.

  Args:
    segments: ``[{start, end, emotion, probabilities: {class: p}}]`` (seconds), in order.
  """
  fig, (ax, band) = plt.subplots(2, 1, figsize=(12, 4.8), sharex=True,
                                 gridspec_kw=dict(height_ratios=[4, 0.6]))
  for k, name in enumerate(class_names):
    color = COLORS[k % len(COLORS)]
    for j, s in enumerate(segments):
      ax.plot([s["start"], s["end"]], [s["probabilities"][name]] * 2, color=color, lw=2.2,
              label=name if j == 0 else None)
  for s in segments:
    k = list(class_names).index(s["emotion"])
    band.axvspan(s["start"], s["end"], color=COLORS[k % len(COLORS)], alpha=0.85)
    if s["end"] - s["start"] > 0.04 * (segments[-1]["end"] - segments[0]["start"]):
      band.text((s["start"] + s["end"]) / 2, 0.5, s["emotion"], ha="center", va="center",
                fontsize=8, color="white", fontweight="bold")
  ax.set_ylim(0, 1)
  ax.set_ylabel("Probability")
  ax.set_title(title, fontsize=12, fontweight="bold")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
  band.set_yticks([])
  band.set_xlabel("Time (s)")
  band.set_xlim(0, max(s["end"] for s in segments))
  save(fig, path)
