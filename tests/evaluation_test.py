"""Evaluation: migration from PyTorch checkpoints, honest ranking, modality removal."""

import ast
import dataclasses
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from fusion_jax import configs, data, evaluation, experiment, metrics, models, reports, runs
from fusion_jax import training
from tests.conftest import FIXTURES, demo_splits

PARITY = np.load(os.path.join(FIXTURES, "parity.npz"))
PCFG = ast.literal_eval(str(PARITY["config"]))
NAMES5 = ["angry", "disgust", "fear", "happy", "neutral"]


def test_original_pytorch_checkpoints_reproduce_pytorch_predictions(tmp_path):
  model_dir = tmp_path / "models"
  model_dir.mkdir()
  original = models.variant_names(original=True)
  for v in original:
    shutil.copy(os.path.join(FIXTURES, "torch_checkpoints", f"best_{v}_model.pt"), model_dir)
  labels = np.array([0, 3, 1, 4])
  test = data.split_from_arrays("test", PARITY["speech"], PARITY["speech_mask"],
                                PARITY["text"], PARITY["text_mask"], labels,
                                paths=[f"clip_{i}.wav" for i in range(4)])
  cfg = configs.tiny()
  cfg.model.heads = PCFG["heads"]  # what the weights cannot tell
  exp = experiment.Experiment.create(cfg, NAMES5, model_dir=str(model_dir),
                                     results_dir=str(tmp_path / "res"), log=lambda m: None)
  summary = evaluation.evaluate(exp, test, ablation="none")
  assert set(summary["ranking_on_validation"]) == set(original)
  for v in original:
    df = pd.read_csv(tmp_path / "res" / "test_results" / f"{v}_predictions.csv")
    probs = df[[f"p_{n}" for n in NAMES5]].to_numpy()
    logits = PARITY[f"{v}/logits"]
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    assert list(df["file"]) == [f"clip_{i}.wav" for i in range(4)]
    assert summary["variants"][v]["val_acc"] == [0.75]  # the checkpoint's own val_acc


def _pred(variant, val_acc, correct_frac, labels, k=3, seed="0"):
  rng = np.random.default_rng(int(val_acc * 100))
  n = len(labels)
  preds = labels.copy()
  wrong = rng.permutation(n)[: int(round((1 - correct_frac) * n))]
  preds[wrong] = (labels[wrong] + 1) % k
  probs = np.full((n, k), 0.1)
  probs[np.arange(n), preds] = 0.8
  run = runs.Run(variant, seed, {}, None, val_acc, "test")
  return evaluation.Predictions(run, probs, labels)


def _state(variant, score, loss):
  from fusion_jax import optim
  st = runs.RunState.new(variant, 0, optim.Plateau(lr=0.0))
  st.best = runs.Best(epoch=1, val_acc=score, confusion=np.eye(3, dtype=np.int64),
                      metrics={} if loss is None else {"loss": loss}, score=score)
  return st


def test_one_ranking_rule_breaks_ties_by_validation_loss_then_registry_order(monkeypatch):
  r = runs.rank_variants({"gated": [0.75], "concatenation": [0.75], "weighted": [0.5]},
                         {"gated": [0.40], "concatenation": [0.55]}, metric="accuracy")
  assert r.order == ["gated", "concatenation", "weighted"]
  assert r.tie_break == ("gated and concatenation tie on validation accuracy (0.7500); lower "
                         "validation loss (0.4000 vs 0.5500) puts gated first")
  # equal losses (or none recorded): the registry's order (concatenation before gated)
  r = runs.rank_variants({"gated": [0.75], "concatenation": [0.75]})
  assert r.order == ["concatenation", "gated"] and "registry's order" in r.tie_break
  assert runs.rank_variants({"gated": [0.9], "concatenation": [0.75]}).tie_break is None
  # means that differ by float rounding only are a tie (0.1 + 0.2 vs 0.3)
  assert runs.rank_variants({"gated": [0.1 + 0.2], "concatenation": [0.3]},
                            {"gated": [0.1], "concatenation": [0.2]}).order[0] == "gated"
  # evaluate's ranking and predict's choice of variant follow the same rule on tied runs
  labels = np.arange(30) % 3
  preds = [_pred(v, 0.75, 0.7, labels) for v in ("concatenation", "gated")]
  for p, loss in zip(preds, (0.55, 0.40)):
    p.run.state = _state(p.run.variant, 0.75, loss)
  summary = evaluation.test_metrics(preds, ["a", "b", "c"])
  assert summary["selected"] == "gated" and "lower validation loss" in summary["tie_break"]
  assert "Tie: gated and concatenation tie" in reports.test_metrics(summary)
  states = {"concatenation": _state("concatenation", 0.75, 0.55),
            "gated": _state("gated", 0.75, 0.40)}
  monkeypatch.setattr(runs, "available_variants", lambda d: list(states))
  monkeypatch.setattr(runs, "available_seeds", lambda d, v: [0])
  monkeypatch.setattr(runs, "best_meta", lambda d, v, s: {"run": states[v].to_json()})
  from fusion_jax import predict
  heard = []
  assert predict.choose_variant(["m"], heard.append) == "gated"
  assert heard and "lower validation loss" in heard[0]


def test_winner_is_chosen_on_validation_even_when_test_disagrees():
  labels = np.arange(60) % 3
  preds = [_pred("gated", 0.90, 0.70, labels), _pred("weighted", 0.80, 0.85, labels),
           _pred("concatenation", 0.70, 0.60, labels)]
  summary = evaluation.test_metrics(preds, ["a", "b", "c"])
  text = reports.test_metrics(summary)
  assert summary["ranking_on_validation"] == ["gated", "weighted", "concatenation"]
  assert summary["selected"] == "gated" and summary["test_winner"] == "weighted"
  assert "Selected (best on validation): GATED" in text
  assert "weighted has the highest test accuracy; the selected variant stays gated" in text
  assert summary["selection_metric"] == "accuracy" and "by VALIDATION accuracy" in text
  # runs chosen on macro F1 rank by it, not by their accuracy; a mix of metrics says so
  for p, f1 in zip(preds, (0.5, 0.6, 0.7)):
    p.run.selection_metric, p.run.val_score = "macro_f1", f1
  summary = evaluation.test_metrics(preds, ["a", "b", "c"])
  assert summary["ranking_on_validation"] == ["concatenation", "weighted", "gated"]
  assert "by VALIDATION macro F1" in reports.test_metrics(summary)
  preds[0].run.selection_metric = "accuracy"
  assert evaluation.test_metrics(preds, ["a", "b", "c"])["selection_metric"] == "mixed"
  # per-class figures in the summary equal sklearn-checked metrics on the same predictions
  pc = metrics.per_class(preds[1].confusion())
  np.testing.assert_allclose(summary["variants"]["weighted"]["test"][0]["per_class"]["f1"],
                             pc["f1"])


def test_failure_report_names_real_files_and_transcripts():
  labels = np.arange(30) % 3
  split = data.Split("test", [np.zeros((2, 2), np.float32)] * 30,
                     [np.zeros((1, 2), np.float32)] * 30, labels,
                     paths=[f"actor{i % 2}/clip_{i:03d}.wav" for i in range(30)],
                     transcripts=[f"words {i}" for i in range(30)])
  preds = [_pred("gated", 0.9, 0.6, labels), _pred("weighted", 0.8, 0.7, labels)]
  text = reports.failure_cases(evaluation.failure_cases(preds, split, ["a", "b", "c"]))
  assert "sample_" not in text
  wrong = np.flatnonzero(preds[0].preds != labels)
  assert f"actor{wrong[0] % 2}/clip_{wrong[0]:03d}.wav" in text
  assert f'"words {wrong[0]}"' in text
  assert "Misclassified by every variant" in text and "Only weighted misclassifies" in text
  counts = pd.Series([f"{l}→{p}" for l, p in zip(labels[wrong], preds[0].preds[wrong])])
  top = counts.value_counts().index[0].split("→")
  assert f"1. {['a', 'b', 'c'][int(top[0])]} → {['a', 'b', 'c'][int(top[1])]}" in text


@pytest.mark.parametrize("signal,carrier", [("speech", "speech"), ("text", "text")])
def test_removing_the_modality_that_carries_the_signal_hurts(tmp_path, signal, carrier):
  spec = data.DemoSpec(signal=signal, sizes=(("train", 210), ("val", 35), ("test", 70)),
                       speech_dim=16, text_dim=16, speech_length=(6, 20), text_length=(3, 8),
                       speech_median=10, text_median=5, strength=0.6)
  _, names, splits = demo_splits(tmp_path / "d", spec, ("train", "val", "test"))
  train, val, test = splits["train"], splits["val"], splits["test"]
  cfg = configs.tiny()
  cfg.train.epochs = 8
  exp = experiment.Experiment.create(cfg, names, train=train, val=val,
                                     model_dir=str(tmp_path / "m"),
                                     results_dir=str(tmp_path / "r"), log=lambda m: None)
  training.train_run(exp, "concatenation", 0, train, val)
  summary = evaluation.evaluate(exp, test, variants=["concatenation"], train=train)
  row = summary["modality_ablation"]["variants"]["concatenation"]
  other = "text" if carrier == "speech" else "speech"
  assert row["full"] > 0.5
  assert row[f"drop_without_{carrier}"] > 0.25
  assert row[f"drop_without_{carrier}"] > row[f"drop_without_{other}"] + 0.2
  assert row["relies_on"] == carrier, row
  report = (tmp_path / "r" / "test_results" / "modality_ablation.txt").read_text()
  assert "made absent (no frame" in report
  if carrier == "speech":   # training features of another width: refused before any scoring
    narrow = data.Split("train", [x[:, :8] for x in train.speech], train.text, train.labels,
                        sources={"speech": "train_speech_32d.npz"})
    lines = []
    with pytest.raises(ValueError, match=r"train_speech_32d.npz: speech features are 8-d but "
                       r".*concatenation.* was trained on 16-d"):
      evaluation.evaluate(dataclasses.replace(exp, log=lines.append), test,
                          variants=["concatenation"], train=narrow, ablation="mean")
    assert not [l for l in lines if "test acc" in l]
    assert (tmp_path / "r" / "test_results" / "modality_ablation.txt").read_text() == report


def test_missing_checkpoints_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no best checkpoint for gated seed\(s\) \[3\]"):
    runs.load_runs(str(tmp_path), ["gated"], [3], 7)


def test_feature_dim_mismatch_names_the_file():
  mc = models.ModelConfig(speech_dim=768, text_dim=768)
  trained = [runs.Run("gated", "0", {}, mc, 0.9, "models/gated/seed_0")]
  split = data.Split("test", [np.zeros((3, 64), np.float32)], [np.zeros((2, 768), np.float32)],
                     np.zeros(1, int), sources={"speech": "test_speech.pt"})
  with pytest.raises(ValueError, match=r"test_speech.pt: speech features are 64-d but "
                     r"models/gated/seed_0 was trained on 768-d"):
    runs.check_dims(trained, split)
  runs.check_dims([runs.Run("text_only", "0", {}, mc, 0.9, "x")], split)
