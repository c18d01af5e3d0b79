"""Running the binaries in experiments/ as a user would: in a subprocess, outside the
repository, sharing the test session's compilation cache."""

import os
import subprocess
import sys
import tempfile

import matplotlib.image

from tests.conftest import COMPILATION_CACHE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
