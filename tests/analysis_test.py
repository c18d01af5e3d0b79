"""Embedding analysis: the plotted vectors are the model's aux; numbers track the signal."""

import jax
import numpy as np
import pytest

from fusion_jax import analysis, configs, data, evaluation, experiment, models, runs, training
from tests.binaries import assert_png
from tests.conftest import demo_splits


def _split(n=12, seed=0):
  rng = np.random.default_rng(seed)
  return data.Split("x", [rng.standard_normal((int(k), 16)).astype(np.float32)
                          for k in rng.integers(1, 20, n)],
                    [rng.standard_normal((int(k), 16)).astype(np.float32)
                     for k in rng.integers(1, 6, n)], np.arange(n) % 3,
                    paths=[f"f{i}.wav" for i in range(n)])


@pytest.mark.parametrize("variant", ["gated", "speech_only"])
def test_embeddings_equal_the_models_aux(variant):
  cfg = configs.tiny()
  mc = models.ModelConfig.from_config(cfg.model)
  model = models.build_model(mc, variant, 3)
  params = models.init_params(model, jax.random.key(0))
  run = runs.Run(variant, "0", params, mc, 0.0, "test")
  split = _split()
  shapes = data.plan_shapes([split], 2, batch_size=4)
  cfg.eval.batch_size = 4
  exp = experiment.Experiment.create(cfg, ["a", "b", "c"], log=lambda m: None)
  emb = analysis.extract(exp, run, split, shapes)
  apply = jax.jit(model.apply)   # (op by op, one call took ~20 s)
  for i in (0, 5, 11):  # each utterance alone, unpadded
    s, t = split.speech[i][None], split.text[i][None]
    _, aux = apply({"params": params}, s, np.ones(s.shape[:2], np.float32), t,
                         np.ones(t.shape[:2], np.float32))
    for block in models.get_variant(variant).blocks:
      np.testing.assert_allclose(emb[block][i], aux[models.registry.BLOCKS[block][0]][0],
                                 rtol=1e-5, atol=1e-5)
    if variant == "gated":
      np.testing.assert_allclose(emb["fusion/speech_gate"][i], aux["fusion/speech_gate"][0],
                                 rtol=1e-5, atol=1e-6)


def test_subsample_per_class_is_seeded_and_capped():
  labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
  rows = analysis.subsample(labels, 4)
  assert np.bincount(labels[rows]).tolist() == [4, 3, 4]
  np.testing.assert_array_equal(rows, analysis.subsample(labels, 4))
  assert len(analysis.subsample(labels, 0)) == 20


def test_separability_tracks_the_modality_that_carries_the_signal(tmp_path):
  spec = data.DemoSpec(signal="speech", sizes=(("train", 84), ("val", 42)), speech_dim=16,
                       text_dim=16, speech_length=(6, 20), text_length=(3, 8),
                       speech_median=10, text_median=5, strength=0.6)
  _, names, splits = demo_splits(tmp_path / "d", spec)
  train, val = splits["train"], splits["val"]
  cfg = configs.tiny()
  cfg.train.epochs = 6
  exp = experiment.Experiment.create(cfg, names, train=train, val=val,
                                     model_dir=str(tmp_path / "m"),
                                     results_dir=str(tmp_path / "r"), log=lambda m: None)
  training.train_run(exp, "concatenation", 0, train, val)
  trained = evaluation.load_runs(exp, ["concatenation"], [0])
  res = analysis.analyze(exp, trained, val, methods=["pca"],
                         max_per_class=5)["results"]["concatenation"]
  assert res["temporal"]["knn_accuracy"] > res["contextual"]["knn_accuracy"] + 0.2
  assert res["temporal"]["linear_probe_accuracy"] > res["contextual"][
      "linear_probe_accuracy"] + 0.2
  assert res["temporal"]["silhouette"] > res["contextual"]["silhouette"]
  assert res["temporal"]["n"] == 35  # 5 per class, 7 classes
  report = (tmp_path / "r" / "separability" / "separability_report.txt").read_text()
  assert "subsampled to at most 5 per class: 35 of 42" in report


def test_unknown_projection_is_refused():
  with pytest.raises(ValueError, match="valid: .*tsne"):
    analysis.project(np.zeros((5, 2)), "isomap")


def test_every_new_head_is_analysed_without_head_specific_code(tmp_path):
  """Attention maps (MulT, MBT's bottleneck), weights (late) and blocks (MBT's own
  encoders) are found by their aux names."""
  cfg = configs.tiny()
  cfg.analysis.methods = "pca"
  split = _split(n=12)
  exp = experiment.Experiment.create(cfg, ["a", "b", "c"], results_dir=str(tmp_path),
                                     log=lambda m: None)
  new = [v for v in models.variant_names("fusion") if not models.get_variant(v).original]
  trained = []
  for v in new:
    mc = models.ModelConfig.from_config(cfg.model)
    model = models.build_model(mc, v, 3)
    rng = np.random.default_rng(0)   # random weights without compiling an initialiser
    params = jax.tree_util.tree_map(
        lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32),
        jax.eval_shape(lambda: models.init_params(model, jax.random.key(0))))
    trained.append(runs.Run(v, "0", params, mc, 0.5, "memory"))
  res = analysis.analyze(exp, trained, split)
  out = tmp_path / "separability"
  for v in new:
    assert set(res["results"][v]) == {"temporal", "contextual", "fusion"}
    assert_png(out / f"{v}_fusion_pca.png")
  for name in ("mult_attention_map.png", "bottleneck_attention_map.png",
               "late_modality_weights_by_class.png", "fusion_comparison_all.png"):
    assert_png(out / name)
  assert any(l.startswith("bottleneck: speech_to_bottleneck_attention") for l in
             res["head_internals"])
