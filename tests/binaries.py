"""Running the binaries in experiments/ as a user would: in a process of their own,
outside the repository, sharing the test session's compilation cache.

A binary is forked from a server that has already imported the library and its
dependencies (``tests/binary_server.py``: ≈ 2 s less per run), unless the call sets its own
environment or ``FUSION_JAX_TEST_FORK_SERVER=0``: then it is a fresh ``python script.py``.
The child gets the caller's whole environment; only the variables that are read while
modules import (:data:`IMPORT_TIME`) must equal the server's, and a change there starts a
new server.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading

import matplotlib.image
import numpy as np
import pandas as pd

from tests.conftest import COMPILATION_CACHE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
OUTSIDE = tempfile.mkdtemp(prefix="fusion_jax_cwd_")   # binaries run outside the repository


# Variables read at interpreter start or module import (JAX's config, XLA, matplotlib):
# the server's imports were made with its own values. Everything else (HF_HOME, what
# pytest or a library sets in the test process later) is passed to each child.
IMPORT_TIME = ("JAX_", "XLA_", "PYTHON", "MPL", "LD_", "HOME")


def import_time(env: dict) -> dict:
  return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME)}


class _ForkServer:
  """One ``tests/binary_server.py`` per test process, started at its first use."""

  def __init__(self):
    self.lock, self.proc, self.env, self.served = threading.Lock(), None, None, 0
    self.started = 0

  def usable(self, env: dict) -> bool:
    """Whether ``env``'s call may be forked; (re)starts the server when its import-time
    variables differ from ``env``'s or it has exited."""
    if os.environ.get("FUSION_JAX_TEST_FORK_SERVER", "1") == "0":
      return False
    if self.proc is not None and (import_time(env) != self.env or self.proc.poll() is not None):
      self.proc.stdin.close()
      self.proc.wait()
      self.proc = None
    if self.proc is None:
      self.env, self.started = import_time(env), self.started + 1
      self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
          [sys.executable, os.path.join(ROOT, "tests", "binary_server.py")], cwd=OUTSIDE,
          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
      assert json.loads(self.proc.stdout.readline()).get("ready"), "fork server did not start"
    return True

  def run(self, argv: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    out = tempfile.mkdtemp(prefix="fusion_jax_binary_")
    paths = [os.path.join(out, name) for name in ("stdout", "stderr")]
    self.proc.stdin.write(json.dumps(dict(argv=argv[1:], cwd=OUTSIDE, env=env,
                                          stdout=paths[0], stderr=paths[1])) + "\n")
    self.proc.stdin.flush()
    pid = json.loads(self.proc.stdout.readline())["pid"]
    timer = threading.Timer(timeout, lambda: os.kill(pid, 9))
    timer.start()
    try:
      code = json.loads(self.proc.stdout.readline())["returncode"]
    finally:
      timer.cancel()
    stdout, stderr = (open(p, encoding="utf-8", errors="replace").read() for p in paths)
    for p in paths:
      os.remove(p)
    os.rmdir(out)
    self.served += 1
    return subprocess.CompletedProcess(argv, code, stdout, stderr)


_SERVER = _ForkServer()


def run(script, *args, check=True, env=None):
  if not any(a.startswith("--compilation_cache_dir") for a in args) and script not in (
      "make_demo_data.py", "convert_features.py", "padding_stats.py", "extract_features.py"):
    args += (f"--compilation_cache_dir={COMPILATION_CACHE}",)   # shared with the session
  argv = [sys.executable, os.path.join(ROOT, "experiments", script), *args]
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  with _SERVER.lock:
    proc = _SERVER.run(argv, full_env, 900) if not env and _SERVER.usable(full_env) else None
  if proc is None:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=OUTSIDE, timeout=900,
                          env=full_env)
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
  return proc


def assert_png(path):
  assert os.path.exists(path), path
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
  # something is drawn: not one colour, and more than empty axes (about 1% of the pixels)
  rgb = img[..., :3].reshape(-1, 3)
  assert rgb.std(0).max() > 0.02, f"{path}: blank image"
  assert (np.abs(rgb - np.median(rgb, 0)).max(1) > 0.1).mean() > 0.02, f"{path}: nearly empty"


def tone_clips(root, rows, seed):
  """Writes a tone clip per ``(label, speaker)`` row under ``root`` (sad ≈ 180 Hz, else ≈
  420 Hz, 0.3–0.6 s); returns manifest rows (path relative to ``root``'s parent)."""
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


def extract_tone_corpus(tmp_path, extract_flags, speakers=(["a", "b"], ["c"], ["d"]),
                        per_class=2):
  """Tone clips of two emotions, ``per_class`` per speaker: train, val and new with the
  ``speakers`` given; train and val extracted with ``extract_flags`` into ``tmp_path/f``
  ({train,val}_{speech,text}.npz, _split.csv), ``new`` left as a manifest,
  ``tmp_path/new.csv``, for predict.py."""
  for (name, seed), who in zip((("train", 0), ("val", 1), ("new", 2)), speakers):
    rows = tone_clips(tmp_path / name, [(l, s) for s in who for l in ("sad", "happy")
                                        for _ in range(per_class)], seed)
    pd.DataFrame(rows).to_csv(tmp_path / f"{name}.csv", index=False)
    if name != "new":
      run("extract_features.py", f"--manifest={tmp_path}/{name}.csv", *extract_flags,
          f"--out_dir={tmp_path}/f", f"--prefix={name}", "--class_names=sad,happy")
