"""The train → evaluate → analyse binaries end to end on demo data (tiny config), sharing one
trained and evaluated run; the binaries that make their own data (extraction, recipes,
prediction and export, benchmark, --help) are in experiments_standalone_test.py."""

import html
import html.parser
import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest

from fusion_jax import data, hooks, models
from tests.binaries import TINY, assert_png, run

VARIANTS = models.variant_names(original=True)   # the new heads: models_test, analysis_test


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
  table = ablation.split("Relies on")[1].split("\n\n")[0].splitlines()
  # the baseline is a row beside the heads, never ablated: no "No speech" figure
  assert any(l.startswith("toy_sum ") for l in table)
  assert [l.split()[2] for l in table if l.startswith("speech_only ")] == ["-"]
  run("analyze_embeddings.py", *common, "--methods=pca", env=env)
  sep = tmp_path / "r" / "separability"
  for block in ("temporal", "contextual", "fusion"):
    assert_png(sep / f"toy_sum_{block}_pca.png")
  assert_png(sep / "toy_sum_modality_weights_by_class.png")
  assert "toy_sum: mean speech weight" in (sep / "separability_report.txt").read_text()
  bad = run("train.py", *common, "--variants=toy_sum", env=env | {"PYTHONPATH": ""},
            check=False)
  assert bad.returncode == 2 and "--module_import=toy_head" in bad.stderr


BUGGY_HEAD = TOY_HEAD.replace("w = jax.nn.softmax", "{}['missing_knob']\n    w = jax.nn.softmax")


def test_a_bug_in_a_head_keeps_its_traceback_and_a_user_error_is_one_line(trained, tmp_path):
  """The binaries' one error boundary: a KeyError raised inside a head is a bug (the
  traceback reaches the user), a bad setting is the user's (one ``error:`` line, exit 2)."""
  d, _ = trained
  (tmp_path / "buggy_head.py").write_text(BUGGY_HEAD.replace('"toy_sum"', '"buggy_sum"'))
  common = [f"--data_dir={d}/data", f"--config={TINY}", "--module_import=buggy_head",
            f"--model_dir={tmp_path}/m", f"--results_dir={tmp_path}/r", "--epochs=1",
            "--config.data.num_buckets=1"]
  env = {"PYTHONPATH": str(tmp_path)}
  bug = run("train.py", *common, "--variants=buggy_sum", check=False, env=env)
  assert bug.returncode not in (0, 2), bug.stderr[-2000:]
  assert "Traceback (most recent call last)" in bug.stderr
  assert "KeyError: 'missing_knob'" in bug.stderr and "buggy_head.py" in bug.stderr
  user = run("train.py", *common, "--variants=buggy_sum", "--seeds=one", check=False, env=env)
  assert user.returncode == 2 and "Traceback" not in user.stderr
  assert user.stderr.strip().splitlines()[-1].startswith("error: seeds must be")


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


class _Page(html.parser.HTMLParser):
  """The tables (id → rows of cell text) and image sources of an HTML page."""

  def __init__(self):
    super().__init__()
    self.tables, self.images, self._table, self._row = {}, [], None, None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "table":
      self._table = self.tables.setdefault(attrs.get("id"), [])
    elif tag == "tr" and self._table is not None:
      self._row = []
      self._table.append(self._row)
    elif tag == "img":
      self.images.append(attrs["src"])

  def handle_endtag(self, tag):
    if tag == "table":
      self._table = None

  def handle_data(self, text):
    if self._row is not None and text.strip():
      self._row.append(text.strip())


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                                     .map(i => i.getAttribute('src'));
  const out = document.createElement('pre'); out.id = 'browser-check';
  out.textContent = JSON.stringify({images: document.images.length, broken: broken,
      tables: [...document.querySelectorAll('table')].map(t => [t.id, t.rows.length])});
  document.body.appendChild(out);
});
</script></body>"""


def test_report_html_shows_every_table_and_figure(evaluated, tmp_path):
  d, stdout = evaluated
  res = d / "results"
  page = _Page()
  page.feed((res / "report.html").read_text())
  # every table, with a row per variant (and a header)
  summary = json.loads((res / "summary.json").read_text())
  assert set(page.tables) == {"validation-table", "test-table", "per-class-table",
                              "separability-table"}
  for name in ("validation-table", "test-table", "per-class-table"):
    assert sorted(r[0] for r in page.tables[name][1:]) == sorted(VARIANTS), name
  assert [r[0] for r in page.tables["validation-table"][1:]] == summary["ranking"]
  blocks = sum(len(models.get_variant(v).blocks) for v in VARIANTS)
  assert len(page.tables["separability-table"]) == 1 + blocks
  # every figure the three folders hold, once, by a relative link that resolves
  pngs = sorted(str(p.relative_to(res)) for p in res.glob("*/*.png"))
  assert len(pngs) > 3 * len(VARIANTS) and sorted(page.images) == pngs
  text = (res / "report.html").read_text()
  assert "failure_cases_report.txt" in text and "modality_ablation.txt" in text
  # the same in a browser: every image loads, every table is there, and a screenshot
  browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
      "google-chrome")
  if browser is None:
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium); the page's "
                "structure was checked above")
  check = res / "report_browser_check.html"   # beside the page: the same relative links
  check.write_text(text.replace("</body>", CHECK_SCRIPT))
  flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}"]
  try:
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=30000", "--dump-dom",
                          check.as_uri()], capture_output=True, text=True, timeout=180)
  finally:
    check.unlink()
  found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom.stdout, re.S)
  assert found, dom.stderr[-2000:]
  result = json.loads(html.unescape(found.group(1)))
  assert result["broken"] == [] and result["images"] == len(pngs)
  assert {t for t, rows in result["tables"] if rows > 1} == set(page.tables)
  shot = tmp_path / "report.png"
  subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1300,2400",
                  (res / "report.html").as_uri()], capture_output=True, timeout=180, check=True)
  assert_png(shot)


def test_train_writes_tensorboard_events_for_every_run(trained):
  d, _ = trained
  rows = [json.loads(l) for l in (d / "results" / "metrics.jsonl").read_text().splitlines()]
  for v in VARIANTS:
    scalars = hooks.read_scalars(hooks.tensorboard_dir(str(d / "results" / "tensorboard"), v, 0))
    mine = [r for r in rows if r["variant"] == v]
    for key, tag in hooks.TENSORBOARD_TAGS.items():
      assert [s for s, _ in scalars[tag]] == [1, 2], (v, tag)
      assert [x for _, x in scalars[tag]] == pytest.approx([r[key] for r in mine], rel=1e-6)


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
