"""No input, kill or race corrupts results: run identity, locks, checksums, report sets.

(Crafted pickles and zips are in torch_pickle_test.py; the binaries' one-line errors in
experiments_test.py and experiments_standalone_test.py.)
"""

import dataclasses
import json
import os
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pandas as pd
import pytest

from fusion_jax import checkpoint, configs, data, experiment, io_utils, runs, training
from fusion_jax.features import audio
from tests.conftest import write_split


# ------------------------------------------------------------------ a tiny training setup
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("reliability")
  spec = data.DemoSpec(sizes=(("train", 24), ("val", 14)), speech_dim=8, text_dim=8,
                       speech_length=(4, 12), text_length=(2, 5), strength=0.5,
                       speech_median=8, text_median=3)
  return tiny_from_files(data.make_demo_dataset(d, spec))


def tiny_from_files(p):
  """The tiny setup from the demo files ``p`` (also what a killed subprocess trains)."""
  names = data.class_names_from_csv(p["train"]["csv"])
  train, val = (data.load_split(s, p[s]["speech"], p[s]["text"], p[s]["csv"],
                                class_names=names) for s in ("train", "val"))
  cfg = configs.tiny()
  cfg.train.epochs, cfg.train.checkpoint_every_seconds, cfg.data.num_buckets = 4, 0.0, 1
  exp = experiment.Experiment.create(cfg, names, train=train, val=val, log=lambda m: None)
  return dict(exp=exp, train=train, val=val, paths=p, names=names)


def _exp(tiny, model_dir, **config_changes):
  cfg = experiment.resolve_dims(tiny["exp"].config, tiny["train"])   # a copy
  for key, value in config_changes.items():
    section, field = key.split(".")
    cfg[section][field] = value
  return dataclasses.replace(tiny["exp"], config=cfg, model_dir=str(model_dir))


def _train(tiny, model_dir, after_epoch=None, **changes):
  return training.train_run(_exp(tiny, model_dir, **changes), "concatenation", 0,
                            tiny["train"], tiny["val"], after_epoch=after_epoch)


class _Kill(Exception):
  pass


def _kill_after(n):
  def stop(epoch):
    if epoch == n:
      raise _Kill()
  return stop


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
  d = tmp_path_factory.mktemp("ref")
  return _train(tiny, d), d


def _same(a, b):
  strip = lambda h: {k: v for k, v in h.items() if k not in ("epoch_seconds",
                                                              "samples_per_second")}
  assert strip(a.history) == strip(b.history) and a.best.epoch == b.best.epoch


# ------------------------------------------------------------------ kill -9 (SIGKILL)
KILLED = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests import reliability_test as rt
from fusion_jax import checkpoint, experiment
from orbax.checkpoint._src.path import atomicity
moment, model_dir = sys.argv[2], sys.argv[3]
tiny = rt.tiny_from_files(json.loads(sys.argv[4]))
calls, opened = {"step": 0}, []

def kill(what, resumes_from):
  print("KILLED", what, "RESUMES", resumes_from, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)

init = checkpoint.RunCheckpoints.__init__
def recorded_init(self, *a, **kw):
  init(self, *a, **kw)
  opened.append(self)
checkpoint.RunCheckpoints.__init__ = recorded_init

indices = experiment.DeviceSplit.indices
def counted_indices(self, rows, batch_size):   # 3 steps an epoch: call 8 is epoch 3, step 2
  calls["step"] += 1
  if moment == "mid_epoch" and calls["step"] == 8:
    for c in opened:   # epochs 1-2's queued saves on disk (the writer thread goes on)
      c.wait()
    kill("in epoch 3 at step 2", 2)
  return indices(self, rows, batch_size)
experiment.DeviceSplit.indices = counted_indices

finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def counted_finalize(self):   # in the writer thread: arrays written, not committed
  if moment == "during_save" and "latest/3" in str(self._final_path):
    kill("while committing " + str(self._final_path.relative_to(model_dir)), 2)
  return await finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = counted_finalize

save = checkpoint.RunCheckpoints.save
def between(self, kind, step, state, meta, **kw):
  if moment == "between_best_and_latest" and kind == "latest" and step >= 2 and (
      self.steps("best") or [0])[0] == step:   # steps() waited: best and latest - 1 on disk
    kill(f"after best {step}, before latest {step}", step - 1)
  return save(self, kind, step, state, meta, **kw)
checkpoint.RunCheckpoints.save = between

rt._train(tiny, model_dir)
print("NOT KILLED", calls, flush=True)
"""


def _final_state(model_dir):
  """The arrays of the last epoch's ``latest`` checkpoint, as orbax reads them."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.join(runs.run_dir(str(model_dir), "concatenation", 0), "latest", "4", "state")
  return ocp.StandardCheckpointer().restore(path)


@pytest.mark.parametrize("moment", ["mid_epoch", "during_save", "between_best_and_latest"])
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tiny, reference,
                                                                       tmp_path, moment):
  """A real process killed (SIGKILL: no handler, no flush) mid-epoch, while a background
  checkpoint is being committed, or between an epoch's best and latest; rerun, it resumes
  from the newest whole checkpoint and ends with the uninterrupted run's history, best and
  final weights."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", KILLED, repo, moment, str(tmp_path),
                         json.dumps(tiny["paths"])], capture_output=True, text=True,
                        timeout=300, cwd=repo)
  assert proc.returncode == -9 and "KILLED" in proc.stdout, proc.stdout + proc.stderr[-3000:]
  ckpts = checkpoint.RunCheckpoints(runs.run_dir(str(tmp_path), "concatenation", 0))
  on_disk = ckpts.latest_step("latest")
  ckpts.close()
  assert on_disk == int(proc.stdout.split("RESUMES")[1]), (on_disk, proc.stdout)
  result = _train(tiny, tmp_path)
  assert result.resumed_from_epoch == on_disk
  _same(result, reference[0])
  jax.tree_util.tree_map(np.testing.assert_array_equal, _final_state(tmp_path),
                         _final_state(reference[1]))


# ------------------------------------------------------------------ identity (cases 3, 5)
def test_a_killed_run_rerun_with_another_config_is_refused(tiny, tmp_path):
  """Killed after epoch 2 with no 'latest' yet (long cadence): only 'best' is on disk."""
  with pytest.raises(_Kill):
    _train(tiny, tmp_path, _kill_after(2), **{"train.checkpoint_every_seconds": 1e9})
  ckpts = checkpoint.RunCheckpoints(runs.run_dir(str(tmp_path), "concatenation", 0))
  assert ckpts.latest_step("latest") is None and ckpts.latest_step("best") is not None
  ckpts.close()
  with pytest.raises(runs.RunMismatch, match=r"concatenation/seed_0: holds another run than "
                     r"this one: fingerprint.optim.learning_rate: 0.003 → 0.01"):
    _train(tiny, tmp_path, **{"optim.learning_rate": 0.01})


def test_the_same_killed_run_rerun_gives_the_uninterrupted_result(tiny, reference, tmp_path):
  with pytest.raises(_Kill):
    _train(tiny, tmp_path, _kill_after(2), **{"train.checkpoint_every_seconds": 1e9})
  _same(_train(tiny, tmp_path), reference[0])


def test_other_data_in_the_same_model_dir_is_refused(tiny, reference):
  _, ref_dir = reference
  other = tiny["train"].take(range(len(tiny["train"]) - 1))
  exp = _exp(tiny, ref_dir)
  with pytest.raises(runs.RunMismatch, match=r"train.content: .* → .*train.utterances: 24 → 23"):
    training.train_run(exp, "concatenation", 0, other, tiny["val"])
  # the same data again: reused, not retrained
  assert training.train_run(exp, "concatenation", 0, tiny["train"],
                            tiny["val"]).resumed_from_epoch == 4


def test_identity_covers_file_and_content(tmp_path):
  s, t, c = write_split(tmp_path)
  split = data.load_split("train", s, t, c)
  ident = runs.data_identity(split)
  assert ident["files"]["speech"]["path"] == os.path.abspath(s) and ident["utterances"] == 6
  changed = dataclasses.replace(split, speech=[x + 1e-3 for x in split.speech])
  assert runs.data_identity(changed)["content"] != ident["content"]
  assert runs.data_identity(split) == ident


# ------------------------------------------------------------------ checksums (case 4)
def _flip_a_byte(directory):
  """Flips one byte in the middle of the largest array file of an orbax checkpoint."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs
           if r.endswith(os.path.join("state", "d"))]   # the array data orbax reads
  target = max(files, key=os.path.getsize)
  raw = bytearray(open(target, "rb").read())
  raw[len(raw) // 2] ^= 0x40
  open(target, "wb").write(bytes(raw))


def test_a_flipped_byte_in_best_is_an_error_naming_the_checkpoint(tiny, reference, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  run_dir = runs.run_dir(str(tmp_path), "concatenation", 0)
  shutil.copytree(runs.run_dir(str(reference[1]), "concatenation", 0), run_dir)
  best = reference[0].best.epoch
  _flip_a_byte(os.path.join(run_dir, "best", str(best)))
  with pytest.raises(checkpoint.CorruptCheckpoint, match=rf"seed_0/best/{best}: checkpoint is "
                     "damaged: its arrays (differ from those saved|are unreadable)"):
    runs.load_run(str(tmp_path), "concatenation", 0)


def test_arrays_that_differ_from_the_recorded_checksum_are_refused(tmp_path):
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  tree = {"w": np.arange(6, dtype=np.float32)}
  ckpts.save("best", 1, tree, {"note": "x"})
  meta = os.path.join(tmp_path, "best", "1", "meta", "metadata")
  text = open(meta).read()
  recorded = json.loads(text)["checksum"]
  open(meta, "w").write(text.replace(recorded, "0" * len(recorded)))
  with pytest.raises(checkpoint.CorruptCheckpoint, match="best/1: checkpoint is damaged: its "
                     "arrays differ from those saved"):
    ckpts.restore("best", checkpoint.abstract_like(tree))
  ckpts.close()


def test_one_changed_value_under_an_untouched_digest_is_refused(tmp_path):
  """The checksum covers the values: the arrays of a save of the same shapes with one value
  changed, put in place of the saved ones while the recorded digest stays as it was."""
  tree = {"w": np.arange(6, dtype=np.float32), "b": np.ones((2, 3), np.float32)}
  changed = {"w": tree["w"].copy(), "b": tree["b"]}
  changed["w"][4] += 1.0
  assert checkpoint.tree_checksum(changed) != checkpoint.tree_checksum(tree)
  first, second = (checkpoint.RunCheckpoints(str(tmp_path / n)) for n in ("a", "b"))
  first.save("best", 1, tree, {"note": "x"})
  second.save("best", 1, changed, {"note": "x"})
  second.close()
  state = lambda d: os.path.join(d, "best", "1", "state")
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(state(tmp_path / "a"))
  shutil.copytree(state(tmp_path / "b"), state(tmp_path / "a"))
  meta = json.loads(open(tmp_path / "a" / "best" / "1" / "meta" / "metadata").read())
  assert meta["checksum"] == checkpoint.tree_checksum(tree)    # the digest was not touched
  with pytest.raises(checkpoint.CorruptCheckpoint, match="best/1: checkpoint is damaged: its "
                     r"arrays differ from those saved \(checksum mismatch"):
    first.restore("best", checkpoint.abstract_like(tree))
  first.close()


def test_a_damaged_latest_falls_back_to_the_older_one_with_the_same_result(
    tiny, reference, tmp_path):
  with pytest.raises(_Kill):
    _train(tiny, tmp_path, _kill_after(3))
  run_dir = runs.run_dir(str(tmp_path), "concatenation", 0)
  assert sorted(os.listdir(os.path.join(run_dir, "latest"))) == ["2", "3"]
  _flip_a_byte(os.path.join(run_dir, "latest", "3"))
  os.makedirs(os.path.join(run_dir, "latest", "4"))   # and an empty step directory
  lines = []
  exp = dataclasses.replace(_exp(tiny, tmp_path), log=lines.append)
  result = training.train_run(exp, "concatenation", 0, tiny["train"], tiny["val"])
  assert result.resumed_from_epoch == 2
  assert any("latest/3: checkpoint is damaged" in l for l in lines)
  _same(result, reference[0])
  # the last epoch's checkpoint damaged: replayed and saved anew (a step that exists is
  # never saved again, so it must be removed), and the next rerun has nothing to train
  _flip_a_byte(os.path.join(run_dir, "latest", "4"))
  lines.clear()
  assert training.train_run(exp, "concatenation", 0, tiny["train"], tiny["val"]
                            ).resumed_from_epoch == 3
  assert any("latest/4: checkpoint is damaged" in l for l in lines)
  lines.clear()
  again = training.train_run(exp, "concatenation", 0, tiny["train"], tiny["val"])
  assert again.resumed_from_epoch == 4 and not any("damaged" in l for l in lines)


# ------------------------------------------------------------------ locks (races)
def test_a_second_process_on_the_same_run_stops_with_one_line(tiny, tmp_path):
  run_dir = runs.run_dir(str(tmp_path), "concatenation", 0)
  with runs.RunLock(run_dir):
    with pytest.raises(runs.RunInUse, match=rf"seed_0: in use by pid {os.getpid()} on "):
      _train(tiny, tmp_path)
  holder = textwrap.dedent(f"""
      import time
      from fusion_jax import runs
      with runs.RunLock({run_dir!r}):
        print("HELD", flush=True)
        time.sleep(30)
  """)
  proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "HELD"
    with pytest.raises(runs.RunInUse, match=f"in use by pid {proc.pid}"):
      _train(tiny, tmp_path)
  finally:
    proc.kill()
    proc.wait()
  _train(tiny, tmp_path)   # the killed holder left no stale lock


def test_two_report_writers_on_one_results_dir(tiny, tmp_path):
  exp = dataclasses.replace(_exp(tiny, tmp_path / "m"), results_dir=str(tmp_path / "r"))
  with runs.RunLock(str(tmp_path / "r"), "training report"):
    with pytest.raises(runs.RunInUse, match="another process is writing this training report"):
      training.train_and_evaluate(exp, tiny["train"], tiny["val"], variants=["concatenation"],
                                  seeds=[0])
  assert not (tmp_path / "r" / "summary.json").exists()


# ------------------------------------------------------------------ report sets, torn lines
def test_reports_replace_as_a_set_or_not_at_all(tmp_path):
  out = tmp_path / "test_results"
  with io_utils.replaced_dir(out) as d:
    open(os.path.join(d, "a.txt"), "w").write("old")
    open(os.path.join(d, "b.txt"), "w").write("old")
  with pytest.raises(RuntimeError):
    with io_utils.replaced_dir(out) as d:
      open(os.path.join(d, "a.txt"), "w").write("new")
      raise RuntimeError("failed half way")
  assert sorted(os.listdir(out)) == ["a.txt", "b.txt"] and (out / "a.txt").read_text() == "old"
  with io_utils.replaced_dir(out) as d:
    open(os.path.join(d, "a.txt"), "w").write("new")
  assert os.listdir(out) == ["a.txt"] and (out / "a.txt").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["test_results"]   # nothing left behind


def test_a_torn_last_metrics_line_is_dropped_and_rewritten(tiny, reference, tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps(dict(variant="x", seed=0, epoch=1)) + '\n{"variant": "conc')
  lines = []
  exp = dataclasses.replace(_exp(tiny, reference[1]), results_dir=str(tmp_path),
                            log=lines.append)
  training.train_run(exp, "concatenation", 0, tiny["train"], tiny["val"])
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [(r["variant"], r["epoch"]) for r in rows] == [("x", 1)] + [
      ("concatenation", e) for e in range(1, 5)]
  assert any("dropped an incomplete last line" in l for l in lines)
  path.write_text('{"broken\n' + json.dumps(dict(variant="x")) + "\n")
  with pytest.raises(ValueError, match="metrics.jsonl, line 1: not JSON"):
    io_utils.JsonLines(path).read()


def test_divergence_is_a_clear_error(tiny, tmp_path):
  with pytest.raises(FloatingPointError, match="training loss became nan in epoch 1; lower "
                     "optim.learning_rate"):
    _train(tiny, tmp_path, **{"optim.learning_rate": 1e30})


# ------------------------------------------------------------------ bad inputs
def test_directories_given_as_files(tmp_path):
  (tmp_path / "d.csv").mkdir()
  (tmp_path / "d.npz").mkdir()
  with pytest.raises(data.DataError, match="d.csv: is a directory"):
    data.class_names_from_csv(tmp_path / "d.csv")
  with pytest.raises(data.DataError, match="d.npz: is a directory"):
    data.load_features(tmp_path / "d.npz")
  from fusion_jax import features  # pylint: disable=import-outside-toplevel
  with pytest.raises(data.DataError, match="d.csv: is a directory"):
    features.read_manifest(tmp_path / "d.csv")
  (tmp_path / "file").write_text("x")
  with pytest.raises(data.DataError, match="file: is a file; --model_dir must be a directory"):
    experiment.Experiment.create(configs.tiny(), ["a"], model_dir=str(tmp_path / "file"))


def test_unclear_messages_made_clear(tmp_path):
  pd.DataFrame(dict(path=["a", "b"], label=[-1, 0], emotion_name=["x", "y"])).to_csv(
      tmp_path / "neg.csv", index=False)
  with pytest.raises(data.DataError, match=r"neg.csv, field 'label', row 0: label -1 is "
                     "negative"):
    data.class_names_from_csv(tmp_path / "neg.csv")
  np.savez(tmp_path / "short.npz", features=np.zeros((24, 3), np.float32),
           lengths=np.ones(24, np.int64), labels=np.zeros(20, np.int64))
  with pytest.raises(data.DataError, match=r"short.npz, field 'labels', row 20: 20 labels for "
                     "24 utterances"):
    data.load_features(tmp_path / "short.npz")
  data.save_torch_file({}, tmp_path / "empty.pt")
  with pytest.raises(data.DataError, match="empty.pt: holds no utterances"):
    data.load_features(tmp_path / "empty.pt")


def test_bad_wavs_get_their_reason(tmp_path):
  audio.write_wav(tmp_path / "ok.wav", np.sin(np.arange(1600) / 5.0) * 0.3)
  raw = (tmp_path / "ok.wav").read_bytes()
  (tmp_path / "cut.wav").write_bytes(raw[:-1])   # ends mid-sample
  with pytest.raises(data.DataError, match=r"cut.wav, field 'data': truncated: the audio "
                     "data ends mid-sample"):
    audio.read_audio(tmp_path / "cut.wav")
  samples = np.full(1600, np.nan, np.float32)
  body = samples.tobytes()
  header = (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 3, 1, 16000, 64000, 4, 32) + b"data" +
            struct.pack("<I", len(body)))
  (tmp_path / "nan.wav").write_bytes(header + body)
  from tests.features_test import has  # pylint: disable=import-outside-toplevel
  if not has("soundfile"):
    with pytest.raises(data.DataError, match="nan.wav: only PCM .wav"):
      audio.read_audio(tmp_path / "nan.wav")
    return
  with pytest.raises(data.DataError, match=r"nan.wav, field 'samples': NaN or Inf samples"):
    audio.read_audio(tmp_path / "nan.wav")


def test_corrupt_checkpoint_metadata_is_named(tiny, reference, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  run_dir = runs.run_dir(str(tmp_path), "concatenation", 0)
  shutil.copytree(runs.run_dir(str(reference[1]), "concatenation", 0), run_dir)
  best = reference[0].best.epoch
  meta_files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(run_dir, "best"))
                for f in fs if "meta" in r]
  for f in meta_files:
    open(f, "w").write("{not json")
  with pytest.raises(checkpoint.CorruptCheckpoint, match=rf"best/{best}: checkpoint is "
                     "damaged: its metadata is unreadable"):
    runs.load_run(str(tmp_path), "concatenation", 0)


def test_fewer_epochs_than_a_finished_run_is_refused(tiny, reference):
  with pytest.raises(runs.RunMismatch, match="has trained 4 epochs, more than the 2 asked for"):
    _train(tiny, reference[1], **{"train.epochs": 2})


def test_a_training_report_replaces_the_previous_one_as_a_whole(tiny, tmp_path):
  exp = dataclasses.replace(_exp(tiny, tmp_path / "m", **{"train.epochs": 1}),
                            results_dir=str(tmp_path / "r"))
  training.train_and_evaluate(exp, tiny["train"], tiny["val"], variants=["concatenation"],
                              seeds=[0])
  training.train_and_evaluate(exp, tiny["train"], tiny["val"], variants=["speech_only"],
                              seeds=[0])
  plots = sorted(os.listdir(tmp_path / "r" / "plots"))
  assert not [p for p in plots if p.startswith("concatenation")] and plots
  rows = io_utils.JsonLines(tmp_path / "r" / "metrics.jsonl").read()
  assert {r["variant"] for r in rows} == {"speech_only"}
  assert list(json.loads((tmp_path / "r" / "summary.json").read_text())["variants"]) == [
      "speech_only"]


def test_settings_that_cannot_work_are_refused_by_name(tmp_path):
  from fusion_jax import models  # pylint: disable=import-outside-toplevel
  for field, value, want in (("train.epochs", 0, "at least 1"),
                             ("train.batch_size", -3, "at least 1"),
                             ("optim.learning_rate", -1.0, "positive"),
                             ("runtime.num_devices", -1, "0 \\(all\\) or more"),
                             ("model.mult_layers", 0, "at least 1"),
                             ("model.bottleneck_tokens", -1, "0 or more"),
                             ("model.rank", 0, "at least 1")):
    cfg = configs.tiny()
    section, name = field.split(".")
    cfg[section][name] = value
    with pytest.raises(ValueError, match=rf"config.{field} = .* must be {want}"):
      experiment.Experiment.create(cfg, ["a"])
  with pytest.raises(ValueError, match="no variant given"):
    models.parse_variants(" , ")
  with pytest.raises(ValueError, match=r"seeds must be comma-separated integers >= 0, got '-1'"):
    experiment.parse_seeds("-1")


def test_class_names_must_be_those_a_run_was_trained_on(tiny, reference):
  run = runs.load_run(str(reference[1]), "concatenation", 0)
  runs.check_classes(run, len(tiny["names"]), tiny["names"])
  renamed = list(tiny["names"])
  renamed[3] = "joy"
  with pytest.raises(ValueError, match="was trained on the classes .* but the class list"):
    runs.check_classes(run, len(renamed), renamed)


def test_csv_names_and_wav_lengths_are_checked(tmp_path):
  pd.DataFrame(dict(path=list("abc"), label=[0, 99, 1], emotion_name=list("xyz"))).to_csv(
      tmp_path / "gap.csv", index=False)
  with pytest.raises(data.DataError, match=r"gap.csv, field 'label', row 1: labels must be "
                     r"0..K-1; label\(s\) \[2, 3, 4, 5, 6\] and 92 more never appear below "
                     "label 99"):
    data.class_names_from_csv(tmp_path / "gap.csv")
  pd.DataFrame(dict(path=["a", "b"], label=[0, 1], emotion_name=["x", ""])).to_csv(
      tmp_path / "blank.csv", index=False)
  with pytest.raises(data.DataError, match="blank.csv, field 'emotion_name', row 1: label 1 "
                     "has no emotion_name"):
    data.class_names_from_csv(tmp_path / "blank.csv")
  audio.write_wav(tmp_path / "full.wav", np.sin(np.arange(16000) / 5.0) * 0.3)
  raw = (tmp_path / "full.wav").read_bytes()
  (tmp_path / "half.wav").write_bytes(raw[:44 + 16000])   # header says 1 s, data is 0.5 s
  with pytest.raises(data.DataError, match="half.wav, field 'data': truncated: the header "
                     "declares 16000 frames but the file holds 8000"):
    audio.read_audio(tmp_path / "half.wav")
  (tmp_path / "header.wav").write_bytes(raw[:20])   # cut inside the header
  with pytest.raises(data.DataError, match="header.wav: not a readable WAV file \\(truncated "
                     "header"):
    audio.read_audio(tmp_path / "header.wav")
  (tmp_path / "text.wav").write_text("not audio at all")
  with pytest.raises(data.DataError, match="text.wav: (not a readable WAV file|unreadable audio "
                     ".*Format not recognised|only PCM)"):
    audio.read_audio(tmp_path / "text.wav")


def test_moved_data_is_the_same_run_but_other_content_is_not(tmp_path):
  ident = {"variant": "gated", "train": {"files": {"speech": {"path": "/old/a.pt", "bytes": 10}},
                                         "content": "abc", "utterances": 6}}
  runs.check_identity(str(tmp_path), ident)
  moved = json.loads(json.dumps(ident))
  moved["train"]["files"]["speech"] = {"path": "/new/a.npz", "bytes": 12}
  runs.check_identity(str(tmp_path), moved)           # same content elsewhere: accepted
  moved["train"]["content"] = "abd"
  with pytest.raises(runs.RunMismatch, match=r"train.content: abc → abd"):
    runs.check_identity(str(tmp_path), moved)


def test_seeds_are_read_from_the_run_folder_names_only(tmp_path):
  root = tmp_path / "sweep" / "seed_3" / "models"
  for seed in ("seed_0", "seed_12", "seed_old"):
    (root / "gated" / seed / "best").mkdir(parents=True)
  assert runs.available_seeds(str(root), "gated") == [0, 12]


def test_a_head_knob_changes_only_the_runs_of_heads_that_read_it(tmp_path):
  cfg = configs.tiny()
  ident = lambda variant, c: dict(variant=variant, seed=0, fingerprint=runs.fingerprint(c))
  for v in ("gated", "tensor"):
    runs.check_identity(str(tmp_path / v), ident(v, cfg))
  cfg.model.tensor_dim += 1
  runs.check_identity(str(tmp_path / "gated"), ident("gated", cfg))    # gated reads no tensor_dim
  with pytest.raises(runs.RunMismatch, match="fingerprint.model.tensor_dim"):
    runs.check_identity(str(tmp_path / "tensor"), ident("tensor", cfg))
