"""Speaker-independent folds, train-only standardisation, cross-validation, baselines."""

import json
import os

import numpy as np
import pytest

from fusion_jax import configs, data, experiment, recipes
from fusion_jax.data import Split


def test_group_folds_are_speaker_independent_and_cover_everyone():
  actors = [f"Actor_{a:02d}" for a in range(1, 17)]
  folds = recipes.group_folds(actors * 3, num_folds=4, val_groups=2)
  assert [f.test for f in folds] == [tuple(actors[4 * k:4 * k + 4]) for k in range(4)]
  assert sorted(a for f in folds for a in f.test) == actors
  for f in folds:
    assert not set(f.test) & set(f.val) and not set(f.train) & (set(f.test) | set(f.val))
    assert len(f.val) == 2 and len(f.train) == 10
    assert set(f.train) | set(f.val) | set(f.test) == set(actors)
    # two male (odd) and two female (even) actors in every test block
    assert sum(int(a[-2:]) % 2 for a in f.test) == 2
  assert folds[3].val == (actors[0], actors[1])   # the next block, cyclically
  with pytest.raises(ValueError, match="cannot make 4"):
    recipes.group_folds(["a", "b", "c", "d"], 4)


def make_split(n_speakers=6, per=8, dim=3, seed=0, signal=3.0):
  rng = np.random.default_rng(seed)
  labels = np.tile(np.arange(2), n_speakers * per // 2)
  groups = [f"spk{i // per}" for i in range(n_speakers * per)]
  speech = [(rng.standard_normal((int(rng.integers(2, 7)), dim)) + signal * y + 5.0)
            .astype(np.float32) * 2.0 for y in labels]
  text = [rng.standard_normal((3, dim)).astype(np.float32) for _ in labels]
  return Split("all", speech, text, labels, paths=[f"clip{i}.wav" for i in range(len(labels))],
               transcripts=["x"] * len(labels), groups=groups)


def test_split_fold_and_standardize_use_training_speakers_only():
  split = make_split()
  fold = recipes.group_folds(split.groups, 3, val_groups=1)[0]
  tr, va, te = recipes.split_fold(split, fold)
  assert set(tr.groups) == set(fold.train) and set(te.groups) == set(fold.test)
  assert len(tr) + len(va) + len(te) == len(split)
  s_tr, s_va, s_te = recipes.standardize(tr, va, te)
  frames = np.concatenate(s_tr.speech)
  np.testing.assert_allclose(frames.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(frames.std(0), 1, atol=1e-5)
  raw = np.concatenate(tr.speech).astype(np.float64)
  np.testing.assert_allclose(s_te.speech[0], (te.speech[0] - raw.mean(0)) / raw.std(0),
                             rtol=1e-5, atol=1e-5)
  assert s_te.paths == te.paths and list(s_te.labels) == list(te.labels)
  with pytest.raises(data.DataError, match="x, field 'speaker': no speaker column to build "
                     "speaker-independent folds"):
    recipes.split_fold(Split("x", split.speech, split.text, split.labels), fold)


def test_cross_validate_writes_table_and_summary(tmp_path):
  split = make_split(n_speakers=4, dim=4)
  folds = recipes.group_folds(split.groups, 2, val_groups=1)
  cfg = configs.tiny()
  cfg.train.epochs = 2
  cfg.train.variants, cfg.train.seeds = "concatenation", "0"
  cfg.analysis.methods = "pca"
  exp = experiment.Experiment.create(cfg, ["a", "b"], train=split, log=lambda s: None)
  out = recipes.cross_validate(exp, split, folds, str(tmp_path), analyse_folds=(1,))
  saved = json.load(open(tmp_path / "cv_summary.json"))
  assert saved["variants"].keys() == out["variants"].keys() == {"concatenation"}
  for v in out["variants"].values():
    assert v["accuracy"]["n"] == 2 and sorted(r["fold"] for r in v["runs"]) == [0, 1]
    accs = [r["accuracy"] for r in v["runs"]]
    assert v["accuracy"]["mean"] == pytest.approx(np.mean(accs))
  table = (tmp_path / "cv_results.txt").read_text()
  assert "concatenation" in table and "Test UAR" in table
  assert os.path.isdir(tmp_path / "fold_1" / "results" / "separability")
  assert not os.path.exists(tmp_path / "fold_0" / "results" / "separability")


def test_baselines_learn_signal_and_not_noise():
  rng = np.random.default_rng(0)
  labels = np.tile(np.arange(3), 40)
  groups = [f"g{i % 8}" for i in range(len(labels))]
  folds = recipes.group_folds(groups, 4, val_groups=1)
  x = rng.standard_normal((len(labels), 5)) + 3.0 * np.eye(3, 5)[labels]
  good = recipes.functionals_baseline(x, labels, groups, folds, 3)
  assert good["accuracy"]["mean"] > 0.9 and good["accuracy"]["n"] == 4
  noise = recipes.functionals_baseline(rng.standard_normal((len(labels), 5)), labels, groups,
                                       folds, 3)
  assert noise["accuracy"]["mean"] < 0.6
  text = [np.stack([rng.standard_normal(4) + 4.0 * np.eye(4)[y]] * 3).astype(np.float32)
          for y in labels]
  tr = Split("t", text, text, labels)
  res = recipes.sentence_vector_baseline(tr.take(range(90)), tr.take(range(90, 120)), 3)
  assert res["accuracy"]["mean"] > 0.9 and set(res) == {"accuracy", "uar", "macro_f1",
                                                         "weighted_f1"}


def test_holdout_split_moves_whole_groups_reproducibly():
  split = make_split(n_speakers=10, per=3)
  train, val = recipes.holdout_split(split, 0.2)
  assert len(train) + len(val) == len(split) and val.name == "val"
  assert len(set(val.groups)) == 2 and not set(val.groups) & set(train.groups)
  again_train, again_val = recipes.holdout_split(split, 0.2)
  assert again_val.paths == val.paths and again_train.paths == train.paths
  _, other = recipes.holdout_split(split, 0.2, seed=1)
  assert len(set(other.groups)) == 2
  with pytest.raises(data.DataError, match="x, field 'group': no group column to hold out "
                     "whole groups"):
    recipes.holdout_split(Split("x", split.speech, split.text, split.labels), 0.2)


def test_truncate_text_and_without_speech():
  split = make_split(n_speakers=2, per=2)
  split.text = [np.ones((n, 3), np.float32) for n in (1, 5, 2, 7)]
  assert recipes.truncate_text([split], 4) == 2
  assert [t.shape[0] for t in split.text] == [1, 4, 2, 4]
  text_only = recipes.without_speech(split)
  assert all(s.shape == (1, 1) and not s.any() for s in text_only.speech)
  assert text_only.text is split.text and "none" in text_only.sources["speech"]


def test_cached_functionals_reuse_only_the_same_clips(tmp_path):
  calls = []

  def compute(path):
    calls.append(path)
    return np.array([len(path), 1.0])

  cache = str(tmp_path / "f.npz")
  x = recipes.cached_functionals(["a.wav", "bb.wav"], ["a", "b"], cache, compute,
                                 progress=False)
  np.testing.assert_array_equal(x, [[5, 1], [6, 1]])
  again = recipes.cached_functionals(["a.wav", "bb.wav"], ["a", "b"], cache, compute,
                                     progress=False)
  assert len(calls) == 2 and (again == x).all()   # reused, not recomputed
  other = recipes.cached_functionals(["bb.wav"], ["b"], cache, compute, progress=False)
  assert len(calls) == 3 and other.shape == (1, 2)   # other clips: recomputed, not mixed


def test_cross_validate_holds_one_folds_programs_at_a_time(tmp_path):
  """Fold after fold in one process (every fold has shapes of its own: speaker k's clips are
  2 + 3k frames long), the process' live executables and memory mappings stay flat: each fold
  releases its programs before the next compiles its own."""
  rng = np.random.default_rng(0)
  n_speakers, per = 6, 6
  labels = np.tile(np.arange(2), n_speakers * per // 2)
  groups = [f"spk{i // per}" for i in range(len(labels))]
  speech = [(rng.standard_normal((2 + 3 * (i // per), 4)) + 2.0 * y).astype(np.float32)
            for i, y in enumerate(labels)]
  text = [rng.standard_normal((1 + i // per, 4)).astype(np.float32) for i in range(len(labels))]
  split = Split("all", speech, text, labels, paths=[f"c{i}.wav" for i in range(len(labels))],
                transcripts=["x"] * len(labels), groups=groups)
  folds = recipes.group_folds(split.groups, 3, val_groups=1)
  cfg = configs.tiny()
  cfg.train.epochs = 1
  cfg.train.variants, cfg.train.seeds = "concatenation,speech_only", "0"
  cfg.data.num_buckets = 1
  lines = []
  exp = experiment.Experiment.create(cfg, ["a", "b"], train=split, log=lines.append)
  recipes.cross_validate(exp, split, folds, str(tmp_path), analyse_folds=())
  done = [l for l in lines if l.startswith("Fold ") and " done: " in l]
  assert len(done) == 3, lines
  live = [int(l.rsplit(", ", 1)[1].split()[0]) for l in done]
  maps = [int(l.split("the process holds ")[1].split()[0].replace(",", "")) for l in done]
  # Without releasing, every fold adds its variants' train/eval/predict programs (dozens).
  assert max(live[1:]) <= live[0] + 3, (live, maps)
  assert max(maps[1:]) <= maps[0] + 400, (live, maps)
  assert len(exp.ledger) == 0
