"""Sweeps on Optuna (fusion_jax.sweeps, experiments/sweep.py): the search space, the study
folder's identity, dead workers' trials retried, and a two-worker sweep end to end."""

import csv
import importlib.util
import json
import os
import time

import pytest

from fusion_jax import data, sweeps
from fusion_jax.errors import ConfigError
from tests.binaries import TINY, assert_png, run

optuna = pytest.importorskip("optuna")


POSTGRES_URL = os.environ.get("FUSION_JAX_TEST_POSTGRES_URL", "")
POSTGRES_SKIP = ("needs a PostgreSQL server: FUSION_JAX_TEST_POSTGRES_URL=postgresql://user@"
                 "host:port/db (.ci/run starts a throwaway one: scripts/postgres.sh)")


def _fresh_postgres_database(name: str) -> str:
  """A new, empty database on the test server (each test its own study); returns its URL."""
  import sqlalchemy  # pylint: disable=import-outside-toplevel
  engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
  with engine.connect() as c:
    c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
    c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
  engine.dispose()
  return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


def _rdb_url(tmp_path, name: str, postgres: bool = bool(POSTGRES_URL)) -> str:
  """An RDB for a study: a fresh PostgreSQL database ``name`` (by default where the suite
  has a server, as CI does), otherwise SQLite (also an RDBStorage: Optuna's heartbeat and
  retry)."""
  if postgres:
    return _fresh_postgres_database(f"{name}_{os.getpid()}")
  return f"sqlite:///{tmp_path / 'study.db'}"


def _space_file(tmp_path, body, name="space.py"):
  p = tmp_path / name
  p.write_text("import ml_collections\n\ndef get_config():\n  c = ml_collections.ConfigDict()\n"
               + "".join(f"  {line}\n" for line in body) + "  return c\n")
  return str(p)


SPACE = ['c.params = dict(train=dict(variants=dict(type="categorical", choices=["gated", '
         '"weighted"])),',
         '                optim=dict(learning_rate=dict(type="float", low=1e-3, high=1e-2, '
         'log=True)))']
# a grid: every field categorical (6 points)
GRID = ['c.params = dict(train=dict(variants=dict(type="categorical", choices=["gated", '
        '"weighted", "concatenation"])),',
        '                optim=dict(learning_rate=dict(type="categorical", choices=[1e-3, '
        '3e-3])))']


def test_search_space_is_flattened_checked_and_refused_with_one_line(tmp_path):
  space = sweeps.load_space(_space_file(tmp_path, SPACE))
  assert space["params"] == {
      "train.variants": {"type": "categorical", "choices": ["gated", "weighted"]},
      "optim.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
  assert space["direction"] == "maximize" and space["metric"] == ""
  with pytest.raises(ConfigError, match=r"params\['model.dropout'\]: type 'uniform' is not"):
    sweeps.load_space(_space_file(tmp_path, [
        'c.params = dict(model=dict(dropout=dict(type="uniform", low=0.1, high=0.5)))'], "b.py"))
  with pytest.raises(ConfigError, match="log=True needs low > 0"):
    sweeps.load_space(_space_file(tmp_path, [
        'c.params = dict(optim=dict(learning_rate=dict(type="float", low=0.0, high=1.0, '
        'log=True)))'], "c.py"))
  with pytest.raises(ConfigError, match="--grid needs categorical params only; "
                                        "optim.learning_rate are ranges"):
    sweeps.grid(space)
  assert sweeps.override_flags({"optim.learning_rate": 0.1 + 0.2, "train.variants": "gated"}) \
      == ["--config.optim.learning_rate=0.30000000000000004", "--config.train.variants=gated"]


def test_the_objective_is_a_validation_figure_never_a_test_one():
  summary = {"variants": {"gated": {"best_val_score_mean": 0.5, "best_val_acc_mean": 0.7},
                          "weighted": {"best_val_score_mean": 0.6, "best_val_acc_mean": 0.4}}}
  assert sweeps.objective_value(summary) == (0.6, "weighted")
  assert sweeps.objective_value(summary, "best_val_acc_mean") == (0.7, "gated")
  with pytest.raises(ConfigError, match="must be a validation figure"):
    sweeps.objective_value(summary, "test_accuracy")


def test_over_folds_a_variant_is_chosen_on_its_mean_never_fold_by_fold():
  fold = lambda g, w: {"variants": {"gated": {"best_val_score_mean": g},
                                    "weighted": {"best_val_score_mean": w}}}
  # each fold's best (0.9, 0.8) would claim 0.85; the best variant's mean over folds is 0.6
  assert sweeps.objective_value([fold(0.2, 0.9), fold(0.8, 0.3)]) == (
      pytest.approx(0.6), "weighted")
  assert sweeps.objective_value([fold(0.6, 0.5), fold(0.5, 0.5)]) == (
      pytest.approx(0.55), "gated")


def test_a_study_folder_refuses_another_search_space(tmp_path):
  space = sweeps.load_space(_space_file(tmp_path, SPACE))
  sweeps.open_study(str(tmp_path / "study"), space)
  sweeps.open_study(str(tmp_path / "study"), space)   # the same space continues
  other = sweeps.load_space(_space_file(tmp_path, SPACE[:1] + [
      '                optim=dict(learning_rate=dict(type="float", low=1e-4, high=1e-2)))'],
      "other.py"))
  with pytest.raises(ConfigError, match="made for another search space"):
    sweeps.open_study(str(tmp_path / "study"), other)
  grid_space = sweeps.load_space(_space_file(tmp_path, [SPACE[0][:-1] + ")"], "grid.py"))
  sweeps.open_study(str(tmp_path / "g"), grid_space, use_grid=True)
  with pytest.raises(ConfigError, match="made for another search space"):
    sweeps.open_study(str(tmp_path / "g"), grid_space, use_grid=False)


def test_a_dead_workers_trial_is_retried_with_its_values(tmp_path):
  space = sweeps.load_space(_space_file(tmp_path, SPACE))
  study_dir = str(tmp_path / "s")
  study = sweeps.open_study(study_dir, space, seed=0)
  dead = study.ask()                         # a worker took it, then died: no heartbeat
  values = sweeps._trial_values(dead, space)  # pylint: disable=protected-access
  alive = study.ask()                        # a worker that still beats
  sweeps._trial_values(alive, space)  # pylint: disable=protected-access
  assert sweeps.reap_dead_trials(study, study_dir, stale_seconds=60) == []
  time.sleep(1.0)
  beat = tmp_path / "s" / "heartbeats" / str(alive.number)
  beat.parent.mkdir(parents=True, exist_ok=True)
  beat.write_text("alive\n")
  assert sweeps.reap_dead_trials(study, study_dir, stale_seconds=0.5) == [dead.number]
  states = {t.number: t.state for t in study.get_trials()}
  assert states[dead.number] == optuna.trial.TrialState.FAIL
  assert states[alive.number] == optuna.trial.TrialState.RUNNING
  waiting = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
  assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [
      (values, {"retry_of": dead.number, "retries": 1})]
  # the retry samples nothing new: the same values, hence the same run folder (checkpoints)
  again = study.ask()
  assert sweeps._trial_values(again, space) == values  # pylint: disable=protected-access
  assert sweeps.trial_key(values) == sweeps.trial_key(dict(reversed(list(values.items()))))
  # the retry's worker dies too; two workers reaping it retry it only once
  time.sleep(1.0)
  beat.write_text("alive\n")
  assert sweeps.reap_dead_trials(study, study_dir, stale_seconds=0.5) == [again.number]
  assert sweeps.reap_dead_trials(study, study_dir, stale_seconds=0.5) == []
  assert len([t for t in study.get_trials() if t.user_attrs.get("retry_of") == dead.number]) == 2


RDB_STORAGES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not POSTGRES_URL, reason=POSTGRES_SKIP))]


@pytest.mark.parametrize("storage", RDB_STORAGES)
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_an_rdb_dead_workers_trial_is_retried_once_with_its_values_and_takes_no_slot(
    tmp_path, storage, monkeypatch):
  """RDB studies: Optuna's heartbeat marks a dead worker's trial failed, its retry reuses
  its values (hence its run folder), and work() ends with exactly --trials complete trials.
  (The end-to-end kill of a whole sweep, train.py runs and all, is the journal test below.)"""
  space = sweeps.load_space(_space_file(tmp_path, SPACE))
  url = _rdb_url(tmp_path, "dead_worker", postgres=storage == "postgresql")
  study_dir = str(tmp_path / "s")
  study = sweeps.open_study(study_dir, space, storage_url=url, seed=0, stale_seconds=1)
  dead = study.ask()                           # a worker took it, beat once, then died
  values = sweeps._trial_values(dead, space)  # pylint: disable=protected-access
  study._storage.record_heartbeat(dead._trial_id)  # pylint: disable=protected-access
  time.sleep(2.5)   # (> the 1 s grace period with room: SQLite's CURRENT_TIMESTAMP has 1 s steps)
  ran = []

  def fake_run_trial(study_dir_, values_, base_args, folds=(), log=print):
    del study_dir_, base_args, folds, log
    ran.append(dict(values_))
    score = 0.5 + 0.1 * len(ran)
    return [{"variants": {values_["train.variants"]: {"best_val_score_mean": score}}}]

  monkeypatch.setattr(sweeps, "run_trial", fake_run_trial)
  work = lambda n: sweeps.work(study_dir, space, [], trials=n, storage_url=url, seed=0,
                               stale_seconds=1, log=lambda *_: None)
  states = optuna.trial.TrialState
  # --trials=1, its one slot held by the dead trial: the worker must still retry it
  assert work(1) == 1 and ran == [values]
  trials = optuna.load_study(study_name=sweeps.STUDY_NAME, storage=url).get_trials()
  assert [t.state for t in trials if t.number == dead.number] == [states.FAIL]
  retries = [t for t in trials if sweeps.retry_of(t) == dead.number]
  assert len(retries) == 1 and retries[0].state == states.COMPLETE
  assert retries[0].params == values and retries[0].user_attrs["run"] == sweeps.trial_key(
      values)
  # --trials=2 later: one new trial, since the retry took no slot
  assert work(2) == 1 and len(ran) == 2
  trials = optuna.load_study(study_name=sweeps.STUDY_NAME, storage=url).get_trials()
  assert len([t for t in trials if t.state == states.COMPLETE]) == 2
  assert sweeps.taken_slots(trials) == 2


def test_an_rdb_url_holds_the_study_and_its_identity(tmp_path):
  space = sweeps.load_space(_space_file(tmp_path, SPACE))
  url = f"sqlite:///{tmp_path / 'study.db'}"
  study = sweeps.open_study(str(tmp_path / "s"), space, storage_url=url)
  study.enqueue_trial({"train.variants": "gated", "optim.learning_rate": 2e-3})
  again = sweeps.open_study(str(tmp_path / "elsewhere"), space, storage_url=url)
  assert [t.system_attrs["fixed_params"] for t in again.get_trials()] == [
      {"train.variants": "gated", "optim.learning_rate": 2e-3}]
  with pytest.raises(ConfigError, match=f"{url}: this study was made for another"):
    sweeps.open_study(str(tmp_path / "s"), sweeps.load_space(_space_file(
            tmp_path, [SPACE[0][:-1] + ")"], "g.py")), storage_url=url)


def test_two_workers_sweep_report_and_the_best_trial_on_test(tmp_path):
  """End to end on an RDB (PostgreSQL where the suite has one, as in CI; else SQLite); the
  journal storage end to end is the kill test below."""
  spec = data.DemoSpec(sizes=(("train", 21), ("val", 14), ("test", 14)), speech_dim=8,
                       text_dim=8, speech_length=(4, 10), text_length=(2, 5), strength=0.5,
                       speech_median=7, text_median=3)
  data.make_demo_dataset(str(tmp_path / "d"), spec)
  study = tmp_path / "study"
  proc = run("sweep.py", f"--config={TINY}", f"--sweep={_space_file(tmp_path, SPACE)}",
             f"--study_dir={study}", "--workers=2", "--trials=2", f"--data_dir={tmp_path / 'd'}",
             "--epochs=1", "--config.data.num_buckets=1", "--noanalysis",
             f"--storage={_rdb_url(tmp_path, 'two_workers')}")
  rows = list(csv.DictReader(open(study / "trials.csv", encoding="utf-8")))
  complete = [r for r in rows if r["state"] == "COMPLETE"]
  assert len(complete) == 2, rows
  for r in complete:   # each value is its own run's validation figure, read back here
    summary = json.load(open(study / "trials" / r["run"] / "results" / "summary.json"))
    variant = r["train.variants"]
    assert list(summary["variants"]) == [variant] == [r["variant"]]
    assert float(r["value"]) == pytest.approx(summary["variants"][variant]["best_val_score_mean"])
    lr = json.load(open(study / "trials" / r["run"] / "results" / "config.json"))["optim"][
        "learning_rate"]
    assert lr == pytest.approx(float(r["optim.learning_rate"]))
  best = json.load(open(study / "best_trial.json"))
  assert best["value"] == max(float(r["value"]) for r in complete)
  assert f"best trial {best['number']}" in proc.stdout
  spec_ = importlib.util.spec_from_file_location("best", study / "best_config.py")
  module = importlib.util.module_from_spec(spec_)
  spec_.loader.exec_module(module)
  cfg = module.get_config()
  assert cfg.train.variants == best["values"]["train.variants"]
  assert cfg.optim.learning_rate == best["values"]["optim.learning_rate"]
  assert cfg.data.num_buckets == 1   # the sweep's own overrides are part of the best config
  assert os.path.exists(study / "trials" / best["run"] / "results" / "test_results" /
                        "test_summary.json")
  assert_png(str(study / "optimization_history.png"))


def test_a_failed_trial_names_its_binary_exit_code_last_line_and_log(tmp_path):
  with pytest.raises(sweeps.UserError) as e:
    sweeps.run_trial(str(tmp_path), {"train.variants": "gated"}, ["--data_dir=/nonexistent"])
  key = sweeps.trial_key({"train.variants": "gated"})
  msg = str(e.value)
  assert msg.startswith(f"trial {key}: train.py exited 2: error: ")
  assert msg.endswith(f"(log: {tmp_path / 'trials' / key / 'train.log'})")


def test_every_worker_killed_mid_trial_then_the_same_command_completes_the_study(tmp_path):
  """SIGKILL to the whole sweep (its workers and their train.py runs) once a trial's first
  checkpoint is on disk; the same command again: the dead trials are retried with their
  values, resume their runs, and the study ends with exactly --trials complete trials.
  Journal storage (our heartbeat files and reaper). An RDB's retry (Optuna's heartbeat) is
  the RDB test above, and a PostgreSQL sweep end to end is the two-worker test."""
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from tests.binaries import OUTSIDE, ROOT  # pylint: disable=import-outside-toplevel
  from tests.conftest import COMPILATION_CACHE  # pylint: disable=import-outside-toplevel
  spec = data.DemoSpec(sizes=(("train", 28), ("val", 14), ("test", 14)), speech_dim=8,
                       text_dim=8, speech_length=(4, 10), text_length=(2, 5),
                       speech_median=7, text_median=3)
  data.make_demo_dataset(str(tmp_path / "d"), spec)
  study = tmp_path / "study"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), f"--config={TINY}",
         f"--sweep={_space_file(tmp_path, SPACE)}", f"--study_dir={study}", "--workers=2",
         "--trials=3", f"--data_dir={tmp_path / 'd'}", "--epochs=4",
         "--config.train.checkpoint_every_seconds=0", "--config.train.batch_size=4",
         "--config.data.num_buckets=1", "--heartbeat_timeout=2", "--noevaluate_best",
         f"--compilation_cache_dir={COMPILATION_CACHE}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  first = subprocess.Popen(cmd, cwd=OUTSIDE, env=env, start_new_session=True,  # pylint: disable=consider-using-with
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  started = []
  while not started and time.time() < deadline and first.poll() is None:
    started = list((study / "trials").glob("*/models/*/seed_0/latest/1"))
    time.sleep(0.05)
  os.killpg(first.pid, signal.SIGKILL)
  first.wait()
  assert started, "no trial reached its first checkpoint"
  killed_run = started[0].parts[-6]
  assert not (study / "trials" / killed_run / "results" / "summary.json").exists()

  again = subprocess.run(cmd, cwd=OUTSIDE, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
  assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
  rows = list(csv.DictReader(open(study / "trials.csv", encoding="utf-8")))
  complete = [r for r in rows if r["state"] == "COMPLETE"]
  failed = [r for r in rows if r["state"] == "FAIL"]
  assert len(complete) == 3, rows   # (3 > the 2 killed: a retry must not take a slot)
  assert 1 <= len(failed) <= 2 and killed_run in {r["run"] for r in failed}, rows
  assert {r["run"] for r in failed} <= {r["run"] for r in complete}   # each retried, done
  log = (study / "trials" / killed_run / "train.log").read_text(encoding="utf-8")
  assert "resuming after epoch" in log   # the retry picked up the killed run's checkpoints


def _corpus(directory, speakers=6, per_speaker=8, seed=0):
  """A corpus in one set of files with a speaker column (as a recipe's features folder)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import pandas as pd  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  n = speakers * per_speaker
  labels = np.arange(n) % 3
  feats = lambda lo, hi: [(rng.standard_normal((int(rng.integers(lo, hi)), 8)) + 0.7 * k)
                          .astype(np.float32) for k in labels]
  data.save_original_layout(directory / "corpus_speech.pt", feats(4, 10), labels)
  data.save_original_layout(directory / "corpus_text.pt", feats(2, 5), labels)
  pd.DataFrame(dict(path=[f"clips/{i}.wav" for i in range(n)], label=labels,
                    emotion_name=[["angry", "happy", "sad"][k] for k in labels],
                    speaker=[f"spk{i // per_speaker}" for i in range(n)])).to_csv(
                        directory / "corpus.csv", index=False)
  return [f"--train_speech_features={directory / 'corpus_speech.pt'}",
          f"--train_text_features={directory / 'corpus_text.pt'}",
          f"--csv_path={directory / 'corpus.csv'}"]


def test_a_sweep_over_folds_averages_their_validation_and_tests_each_fold(tmp_path):
  corpus = _corpus(tmp_path / "corpus")
  study = tmp_path / "study"
  proc = run("sweep.py", f"--config={TINY}", f"--sweep={_space_file(tmp_path, SPACE)}",
             f"--study_dir={study}", "--trials=1", "--folds=0,2", "--num_folds=3",
             *corpus, "--epochs=1", "--config.data.num_buckets=1", "--noanalysis")
  best = json.load(open(study / "best_trial.json"))
  values = []
  for k, speakers in ((0, ("spk0", "spk1")), (2, ("spk4", "spk5"))):
    fdir = study / "trials" / best["run"] / f"fold_{k}"
    summary = json.load(open(fdir / "results" / "summary.json"))
    values.append(summary["variants"][best["variant"]]["best_val_score_mean"])
    log = (fdir / "train.log").read_text(encoding="utf-8")
    # the fold's own speakers: test ones never in training or validation
    assert f"Fold {k} of 3" in log and f"test 16 ({', '.join(speakers)})" in log, log[-1500:]
    test = json.load(open(fdir / "results" / "test_results" / "test_summary.json"))
    assert best["variant"] in json.dumps(test)
  assert best["value"] == pytest.approx(sum(values) / 2)
  assert best["fold_values"] == pytest.approx(values)
  assert "best trial on test" in proc.stdout
  with pytest.raises(ConfigError, match="made for another search space"):   # folds are part
    sweeps.open_study(str(study), sweeps.load_space(_space_file(tmp_path, SPACE)))   # of it
  bad = run("sweep.py", f"--config={TINY}", f"--sweep={_space_file(tmp_path, SPACE)}",
            f"--study_dir={tmp_path / 's2'}", "--folds=0,0", *corpus, check=False)
  assert bad.returncode == 2 and "--folds=0,0 names a fold twice" in bad.stderr


def test_the_grid_is_queued_once_in_a_seeded_order(tmp_path):
  space = sweeps.load_space(_space_file(tmp_path, GRID))
  study = sweeps.open_study(str(tmp_path / "s"), space, use_grid=True, seed=0)
  assert sweeps.enqueue_grid(study, space, trials=4, seed=0) == 4
  assert sweeps.enqueue_grid(study, space, trials=4, seed=0) == 0      # idempotent
  assert sweeps.enqueue_grid(study, space, trials=0, seed=7) == 2      # the rest of the 6
  queued = [t.system_attrs["fixed_params"] for t in study.get_trials()]
  assert len({sweeps.trial_key(v) for v in queued}) == 6               # every point once
  other = sweeps.open_study(str(tmp_path / "o"), space, use_grid=True, seed=0)
  sweeps.enqueue_grid(other, space, trials=4, seed=0)
  assert [t.system_attrs["fixed_params"] for t in other.get_trials()] == queued[:4]
  # a retry of a dead worker's point does not stand for the point
  study.enqueue_trial(queued[0], user_attrs=dict(retry_of=0, retries=1), skip_if_exists=False)
  assert sweeps.enqueue_grid(study, space, trials=0) == 0


def test_two_workers_take_distinct_grid_points(tmp_path, monkeypatch):
  """Two workers at once on a 6-point grid (threads sharing one journal): each point runs
  exactly once (Optuna's GridSampler let both draw one point, and the second waited on the
  first's run), and a worker finding the queue empty stops."""
  import threading   # pylint: disable=import-outside-toplevel
  space = sweeps.load_space(_space_file(tmp_path, GRID))
  study_dir = str(tmp_path / "s")
  sweeps.enqueue_grid(sweeps.open_study(study_dir, space, use_grid=True, seed=0), space)
  ran, lock = [], threading.Lock()

  def fake_run(study_dir_, values, base_args, folds=(), log=print):
    with lock:
      ran.append(sweeps.trial_key(values))
    time.sleep(0.2)
    return [{"variants": {values["train.variants"]: {"best_val_score_mean":
                                                     values["optim.learning_rate"]}}}]

  monkeypatch.setattr(sweeps, "run_trial", fake_run)
  done = []
  workers = [threading.Thread(target=lambda i=i: done.append(sweeps.work(
      study_dir, space, [], 0, use_grid=True, seed=1000 * (i + 1), log=lambda *_: None)))
             for i in range(2)]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  assert sorted(ran) == sorted(set(ran)) and len(ran) == 6
  assert sum(done) == 6
  trials = sweeps.open_study(study_dir, space, use_grid=True).get_trials()
  assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 6
  assert max(t.value for t in trials) == 3e-3


@pytest.mark.parametrize("flags_, message", [
    (["--folds=0,a"], "--folds=0,a: give comma-separated fold numbers, e.g. 0,1,2,3"),
    (["--folds=0,4"], "--folds=0,4: fold 4 does not exist with --num_folds=4 (give 0 .. 3)"),
    (["--folds=0,1", "--fold=1"], "--fold and --folds: give --folds (every trial runs each "
     "of them)"),
    (["--heartbeat_timeout=0"], "--heartbeat_timeout=0.0: give a positive number of seconds"),
])
def test_bad_fold_and_heartbeat_flags_are_one_line_before_any_trial(tmp_path, flags_, message):
  proc = run("sweep.py", f"--config={TINY}", f"--sweep={_space_file(tmp_path, SPACE)}",
             f"--study_dir={tmp_path / 's'}", *flags_, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == f"error: {message}", proc.stderr
  assert not (tmp_path / "s").exists()


def test_one_fold_of_a_corpus_is_the_recipes_fold_and_a_missing_fold_is_refused(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from fusion_jax import recipes  # pylint: disable=import-outside-toplevel
  _corpus(tmp_path / "c")
  c = tmp_path / "c"
  corpus = data.load_split("corpus", str(c / "corpus_speech.pt"), str(c / "corpus_text.pt"),
                           str(c / "corpus.csv"))
  train, val, test = recipes.fold_splits(corpus, 1, 3)
  fold = recipes.group_folds(corpus.groups, 3)[1]
  want = recipes.standardize(*recipes.split_fold(corpus, fold))
  for got, ref, speakers in zip((train, val, test), want, (fold.train, fold.val, fold.test)):
    assert sorted(set(got.groups)) == sorted(speakers)
    np.testing.assert_array_equal(np.concatenate(got.speech), np.concatenate(ref.speech))
  with pytest.raises(ConfigError, match=r"fold 3 does not exist: give 0 \.\. 2 "
                     r"\(--num_folds=3\)"):
    recipes.fold_splits(corpus, 3, 3)
