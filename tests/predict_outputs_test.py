"""Prediction outputs are never silently wrong: one set written as a unit, inputs and outputs
checked before any work (issue: predictions and exports that are never silently wrong)."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from fusion_jax import io_utils, predict, runs
from fusion_jax.data import DataError


def _preds(tag, n=3):
  return [predict.Prediction(name=f"{tag}{i}.wav", transcript="", emotion="sad",
                             confidence=0.75, probabilities={"sad": 0.75, "happy": 0.25},
                             relied_on={}, modalities="speech") for i in range(n)]


def _names(path):
  return list(pd.read_csv(path)["file"])


def test_predictions_are_one_set_with_a_manifest_written_last(tmp_path):
  out = tmp_path / "p.csv"
  jsonl = predict.write_predictions(_preds("a"), str(out))
  assert jsonl == str(tmp_path / "p.jsonl")
  manifest = io_utils.verify_set(tmp_path, "p.manifest.json")
  assert manifest["rows"] == 3 and set(manifest["files"]) == {"p.csv", "p.jsonl"}
  df = pd.read_csv(out)
  assert list(df["speech_present"]) == [1, 1, 1] and list(df["text_present"]) == [0, 0, 0]
  assert [json.loads(l)["name"] for l in open(jsonl)] == _names(out)
  # nothing but the three files (and the writers' lock) is left beside them
  assert sorted(os.listdir(tmp_path)) == [".p.lock", "p.csv", "p.jsonl", "p.manifest.json"]


def test_a_write_killed_between_the_two_files_is_refused_not_mixed(tmp_path, monkeypatch):
  out = tmp_path / "p.csv"
  predict.write_predictions(_preds("old"), str(out))
  real, calls = os.replace, []

  def dies_on_second(src, dst):   # the process dies after the CSV is in place
    calls.append(dst)
    if len(calls) == 2:
      raise KeyboardInterrupt("killed")
    real(src, dst)
  monkeypatch.setattr(os, "replace", dies_on_second)
  with pytest.raises(KeyboardInterrupt):
    predict.write_predictions(_preds("new"), str(out))
  monkeypatch.setattr(os, "replace", real)
  assert _names(out)[0] == "new0.wav" and "old0.wav" in (tmp_path / "p.jsonl").read_text()
  with pytest.raises(DataError, match=r"p.manifest.json: missing: the files beside it are not "
                     r"a complete set"):
    io_utils.verify_set(tmp_path, "p.manifest.json")
  # another program rewriting one file is caught by its checksum
  predict.write_predictions(_preds("new"), str(out))
  (tmp_path / "p.jsonl").write_text("{}\n")
  with pytest.raises(DataError, match=r"p.jsonl: does not match p.manifest.json"):
    io_utils.verify_set(tmp_path, "p.manifest.json")


def test_a_failed_write_keeps_the_previous_set_whole(tmp_path, monkeypatch):
  out = tmp_path / "p.csv"
  predict.write_predictions(_preds("old"), str(out))
  monkeypatch.setattr(predict.Prediction, "to_json", lambda self: 1 / 0)   # fails mid-way
  with pytest.raises(ZeroDivisionError):
    predict.write_predictions(_preds("new"), str(out))
  assert _names(out)[0] == "old0.wav"
  io_utils.verify_set(tmp_path, "p.manifest.json")
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".staged")]
  with pytest.raises(ValueError, match="no predictions to write"):
    predict.write_predictions([], str(out))


def test_two_writers_of_one_output_cannot_interleave(tmp_path):
  with runs.RunLock(str(tmp_path), "prediction set", ".p.lock"):
    with pytest.raises(runs.RunInUse, match="another process is writing this prediction set"):
      predict.write_predictions(_preds("b"), str(tmp_path / "p.csv"))
  assert not (tmp_path / "p.csv").exists()


def test_outputs_that_are_inputs_or_read_only_are_refused_by_name(tmp_path):
  manifest = tmp_path / "m.csv"
  manifest.write_text("path\na.wav\n")
  with pytest.raises(DataError, match=r"m.csv: is one of the inputs; writing there would "
                     r"overwrite it \(give --output another path\)"):
    predict.write_predictions(_preds("a"), str(manifest), inputs=[str(manifest)])
  assert manifest.read_text() == "path\na.wav\n"
  wav = tmp_path / "a.wav"
  wav.write_bytes(b"RIFF")
  with pytest.raises(DataError, match="a.wav: is one of the inputs"):   # p.wav → p.jsonl too
    predict.check_outputs([str(tmp_path / "x.csv"), str(wav)], [str(wav)])
  locked = tmp_path / "ro.csv"
  locked.write_text("keep\n")
  locked.chmod(0o444)   # refused even for root, who could write it
  with pytest.raises(DataError, match=r"ro.csv: is read-only; refusing to replace it"):
    predict.write_predictions(_preds("a"), str(locked))
  assert locked.read_text() == "keep\n"


def test_folders_are_searched_for_every_audio_format_in_any_case(tmp_path):
  for name in ("A.WAV", "b.wav", "c.Wav", "sub/d.flac", "e.OGG", "notes.txt", "f.wav.bak"):
    (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "in" / name).write_bytes(b"")
  paths, texts = predict.read_inputs([str(tmp_path / "in")])
  assert [os.path.relpath(p, tmp_path / "in") for p in paths] == [
      "A.WAV", "b.wav", "c.Wav", "e.OGG", "sub/d.flac"] and texts is None
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"empty: holds no audio files \(.wav, .flac, .ogg\)"):
    predict.read_inputs([str(tmp_path / "in"), str(tmp_path / "empty")])


def test_batch_sizes_must_be_positive():
  p = predict.Predictor.__new__(predict.Predictor)
  for bad in (0, -1):
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad}"):
      p.predict([np.zeros(160, np.float32)], batch_size=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
      p.predict_files(["a.wav"], batch_size=bad)


# ------------------------------------------------------------------ bounded memory
def test_frame_groups_stay_within_the_budget_and_cover_every_row():
  rng = np.random.default_rng(0)
  cost = list(rng.integers(8, 400, size=37)) + [5000]   # one long row among short ones
  groups = predict.frame_groups(cost, budget=1024, max_rows=16)
  seen = sorted(i for g, _ in groups for i in g)
  assert seen == list(range(len(cost)))
  for g, capacity in groups:
    assert capacity & (capacity - 1) == 0 and len(g) <= capacity <= 16
    assert capacity * max(cost[i] for i in g) <= 1024 or len(g) == 1
  assert ([37], 1) in [(list(g), c) for g, c in groups]   # the long row alone
  assert [len(g) for g, _ in predict.frame_groups([10] * 20, 0, 8)] == [8, 8, 4]


def _random_predictor(variant="speech_only", **limits):
  from fusion_jax import configs, experiment, models  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  names = ["sad", "happy", "calm"]
  cfg = configs.tiny()
  mc = models.ModelConfig.from_config(cfg.model)
  params = models.init_params(models.build_model(mc, variant, 3), jax.random.key(1))
  exp = experiment.Experiment.create(cfg, names, log=lambda m: None)
  return predict.Predictor([runs.Run(variant, "0", params, mc, 0.5, "m", names)], exp,
                           **limits), mc


def test_long_speech_is_segmented_and_batching_does_not_change_a_prediction():
  whole, mc = _random_predictor(max_frames=0, batch_frames=0)
  rng = np.random.default_rng(3)
  speech = [rng.standard_normal((n, mc.speech_dim)).astype(np.float32) for n in (37, 5, 12, 3)]
  text = [None] * 4
  ref = whole.predict_features(speech, text, ["long", "a", "b", "c"])
  # a budget that puts every row in a batch of its own gives the same numbers
  alone, _ = _random_predictor(max_frames=0, batch_frames=1)
  for p, q in zip(ref, alone.predict_features(speech, text, ["long", "a", "b", "c"])):
    np.testing.assert_allclose(list(p.probabilities.values()), list(q.probabilities.values()),
                               atol=1e-5)
  # max_frames=10: the 37-frame clip is 4 segments (10, 9, 9, 9), averaged by frames
  cut, _ = _random_predictor(max_frames=10, batch_frames=64)
  got = cut.predict_features(speech, text, ["long", "a", "b", "c"])
  assert [p.segments for p in got] == [4, 1, 2, 1]
  pieces = np.array_split(speech[0], 4)
  parts = whole.predict_features(pieces, [None] * 4, [f"s{i}" for i in range(4)])
  want = sum(len(x) * np.array(list(p.probabilities.values())) for x, p in zip(pieces, parts))
  np.testing.assert_allclose(list(got[0].probabilities.values()), want / 37, atol=1e-5)
  np.testing.assert_allclose(list(got[1].probabilities.values()),
                             list(ref[1].probabilities.values()), atol=1e-5)
  with pytest.raises(ValueError, match="must be ≥ 0"):
    _random_predictor(max_frames=-1)
