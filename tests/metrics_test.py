"""Host metrics against scikit-learn / SciPy on fixed inputs."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from fusion_jax import metrics


@pytest.fixture
def preds():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, size=200)
  noisy = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 6, size=200))
  noisy[noisy == 5] = 4  # class 5 is never predicted: zero precision division
  return labels, noisy


def test_confusion_and_summary_equal_sklearn(preds):
  y, p = preds
  cm = metrics.confusion_matrix(y, p, 6)
  np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=range(6)))
  s = metrics.summary(cm)
  assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
  assert s["uar"] == pytest.approx(skm.balanced_accuracy_score(y, p))
  assert s["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
  assert s["weighted_f1"] == pytest.approx(
      skm.f1_score(y, p, average="weighted", zero_division=0))


def test_per_class_equal_sklearn(preds):
  y, p = preds
  pc = metrics.per_class(metrics.confusion_matrix(y, p, 6))
  pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=range(6), zero_division=0)
  np.testing.assert_allclose(pc["precision"], pr)
  np.testing.assert_allclose(pc["recall"], rc)
  np.testing.assert_allclose(pc["f1"], f1)
  np.testing.assert_array_equal(pc["support"], sup)


def test_ece_against_direct_computation():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((300, 4)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  labels = rng.integers(0, 4, size=300)
  ece, table = metrics.expected_calibration_error(probs, labels, bins=10)
  conf, correct = probs.max(1), probs.argmax(1) == labels
  want = 0.0
  for b in range(10):
    lo, hi = b / 10, (b + 1) / 10
    sel = (conf > lo) & (conf <= hi) if b else (conf <= hi)
    if sel.any():
      want += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
  assert ece == pytest.approx(want)
  assert sum(t["count"] for t in table) == 300


def test_paired_comparisons_equal_scipy():
  scores = {"a": [0.8, 0.82, 0.79, 0.81], "b": [0.75, 0.8, 0.74, 0.78], "c": [0.8] * 4}
  comps = {(c["a"], c["b"]): c for c in metrics.paired_comparisons(scores)}
  want = stats.ttest_rel(scores["a"], scores["b"]).pvalue
  assert comps[("a", "b")]["p_value"] == pytest.approx(want)
  assert comps[("a", "b")]["significant"] == (want < 0.05)
  assert comps[("a", "b")]["mean_diff"] == pytest.approx(0.0375)
  one = metrics.paired_comparisons({"a": [0.8], "b": [0.7]})
  assert one[0]["p_value"] is None and not one[0]["significant"]


def test_bootstrap_interval_contains_mean():
  lo, hi = metrics.bootstrap_ci([0.7, 0.72, 0.75, 0.71, 0.69])
  assert lo <= 0.714 <= hi and hi - lo < 0.1
