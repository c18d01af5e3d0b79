"""Multi-process training on jax.distributed, for real: two processes on this machine
(coordinator on localhost, CPU collectives over gloo), two CPU devices each, against one
process holding the same four devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from fusion_jax import data, runs, sharding
from fusion_jax.errors import ConfigError
from tests.binaries import OUTSIDE, ROOT, TINY
from tests.conftest import COMPILATION_CACHE

VARIANT, EPOCHS = "concatenation", 3


def _runtime(**kw):
  return types.SimpleNamespace(**dict(dict(distributed=False, coordinator_address="",
                                           num_processes=0, process_id=-1), **kw))


def test_process_flags_without_distributed_or_out_of_range_are_refused():
  with pytest.raises(ConfigError, match="--coordinator_address, --process_id given without "
                     "--distributed"):
    sharding.maybe_initialize_distributed(_runtime(coordinator_address="h:1", process_id=0))
  with pytest.raises(ConfigError, match=r"--process_id=2 is not below --num_processes=2"):
    sharding.maybe_initialize_distributed(_runtime(distributed=True, num_processes=2,
                                                   process_id=2))
  sharding.maybe_initialize_distributed(_runtime())   # (nothing asked: nothing done)
  assert sharding.is_primary()


def test_binaries_other_than_train_refuse_distributed(tmp_path):
  from tests.binaries import run  # pylint: disable=import-outside-toplevel
  proc = run("evaluate.py", f"--config={TINY}", f"--data_dir={tmp_path}", "--distributed",
             check=False)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      "error: --distributed: only train.py runs on several processes; run evaluate.py in one "
      "(it reads the checkpoints of a multi-process run like any other)"), proc.stderr


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_cmd(data_dir, out, *extra):
  return [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--config={TINY}",
          f"--data_dir={data_dir}", f"--model_dir={out}/models", f"--results_dir={out}/results",
          f"--variants={VARIANT}", "--seeds=0", f"--epochs={EPOCHS}",
          "--config.train.batch_size=8", "--config.train.checkpoint_every_seconds=0",
          f"--compilation_cache_dir={COMPILATION_CACHE}", *extra]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
      + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _start_two(data_dir, out, log_name):
  """Starts the two processes of one run; returns them with their log paths."""
  port = _free_port()
  procs = []
  for i in range(2):
    log = open(f"{out}/{log_name}.{i}.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(  # pylint: disable=consider-using-with
        _train_cmd(data_dir, out, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}"),
        stdout=log, stderr=subprocess.STDOUT, cwd=OUTSIDE, env=_env(2)), log))
  return procs


def _wait(procs, timeout=600):
  for p, log in procs:
    p.wait(timeout=timeout)
    log.close()
  return [p.returncode for p, _ in procs]


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _epochs(results_dir):
  rows = [json.loads(line) for line in _read(f"{results_dir}/metrics.jsonl").splitlines()]
  return sorted((r["epoch"], r["train_loss"], r["val_loss"], r["val_acc"]) for r in rows)


def test_two_processes_match_one_and_a_run_killed_in_every_process_resumes(tmp_path):
  """The 2-process run is killed (SIGKILL, both processes) as soon as its first epoch's
  checkpoint is on disk, i.e. mid-way through the next epoch, and rerun: its history and
  weights equal an uninterrupted 1-process run on the same 4 devices; its checkpoints
  restore in this (1-process) interpreter; the reports and the .pt are process 0's alone."""
  paths = data.make_demo_dataset(str(tmp_path / "data"),
                                 data.DemoSpec(speech_dim=8, text_dim=8, sizes=(
                                     ("train", 64), ("val", 32), ("test", 16)),
                                     speech_length=(10, 60), speech_median=30.0))
  data_dir = os.path.dirname(paths["train"]["csv"])
  one, two = tmp_path / "one", tmp_path / "two"
  one.mkdir(), two.mkdir()
  ref = subprocess.run(_train_cmd(data_dir, one), capture_output=True, text=True, cwd=OUTSIDE,
                       env=_env(4), timeout=600, check=False)
  assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
  assert "on 4 cpu device(s)" in ref.stdout

  procs = _start_two(data_dir, two, "killed")
  first = two / "models" / VARIANT / "seed_0" / "latest" / "1"
  deadline = time.time() + 300
  while not first.exists() and time.time() < deadline and all(
      p.poll() is None for p, _ in procs):
    time.sleep(0.02)
  for p, _ in procs:
    p.send_signal(signal.SIGKILL)
  assert _wait(procs) == [-signal.SIGKILL] * 2, _read(f"{two}/killed.0.log")[-3000:]
  assert first.exists(), _read(f"{two}/killed.0.log")[-3000:]

  procs = _start_two(data_dir, two, "resumed")
  codes = _wait(procs)
  log0, log1 = _read(f"{two}/resumed.0.log"), _read(f"{two}/resumed.1.log")
  assert codes == [0, 0], log0[-3000:] + log1[-3000:]
  assert "on 4 cpu device(s)" in log0
  resumed_at = [int(w.split("/")[0]) for w in log0.split("resuming after epoch ")[1:]]
  assert len(resumed_at) == 1 and 1 <= resumed_at[0] < EPOCHS, log0[-2000:]
  assert "epoch" not in log1.replace("Gloo", "")   # (one console: process 0's)

  # the same history, once (process 0 writes metrics.jsonl; a replayed epoch replaces its line)
  got, want = _epochs(two / "results"), _epochs(one / "results")
  assert [r[0] for r in got] == list(range(1, EPOCHS + 1))
  np.testing.assert_allclose(np.array(got)[:, 1:], np.array(want)[:, 1:], rtol=1e-5, atol=1e-6)
  best = [json.loads(_read(f"{d}/results/summary.json"))["variants"][VARIANT]["seeds"]["0"]
          for d in (one, two)]
  assert best[1]["best_epoch"] == best[0]["best_epoch"]
  assert best[1]["best_val_acc"] == pytest.approx(best[0]["best_val_acc"])
  assert os.path.exists(f"{two}/models/best_{VARIANT}_model.pt")

  # the checkpoints restore in one process and hold the same weights
  a, b = (runs.load_run(str(d / "models"), VARIANT, 0) for d in (one, two))
  assert a.state.best.epoch == b.state.best.epoch
  (names, x), (_, y) = (_leaves(r.params) for r in (a, b))
  for name, u, v in zip(names, x, y):
    if "['key']['bias']" in name:
      # An attention key bias moves every logit of a query alike, so softmax cancels it: its
      # gradient is zero but for rounding, which Adam turns into steps of arbitrary sign.
      # It stays near its zero start in both runs, and matches in neither order of sums.
      assert np.abs(u).max() < 1e-3 and np.abs(v).max() < 1e-3, name
      continue
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=name)   # (~1e-7 seen)


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  flat = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  return [jax.tree_util.keystr(p) for p, _ in flat], [np.asarray(x) for _, x in flat]
