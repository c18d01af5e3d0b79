"""Shared test helpers. Tests read nothing outside the repository: data is generated or a fixture.

One persistent XLA compilation cache serves the whole session (this process and the
binaries it starts): many tests compile the same tiny programs, and a cache hit is
bit-identical to a fresh compile, so only time changes. Compiles use XLA's lowest
backend optimisation level and its older CPU emitters (set below, inherited by the binaries).
"""

import importlib.util
import os
import sys
import tempfile

import jax
import numpy as np
import pandas as pd
import pytest

from fusion_jax import data

# XLA's backend optimisations cost more than half of every compile and buy nothing for
# models this small, and its CPU fusion emitters (MLIR) compile slower than the older
# elemental ones (a tiny model's gradient: 0.6x the compile time without them; two test
# files, alternated: 0.75x; BUILD_NOTES, Tests and CI). Semantics are unchanged (every
# comparison below is within one setting, or against a reference with a tolerance).
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
COMPILATION_CACHE = os.environ.setdefault(
    "FUSION_JAX_TEST_XLA_CACHE", tempfile.mkdtemp(prefix="fusion_jax_test_xla_"))
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TORCH_SKIP = ("needs torch: a venv with torch==2.13.0 named by FUSION_JAX_TORCH_PYTHON="
              "/path/to/python (.ci/run makes one: scripts/torch_env.sh)")


def torch_python():
  """The Python that has torch for the reference checks (never the library's own), or None."""
  if os.environ.get("FUSION_JAX_TORCH_PYTHON"):
    return os.environ["FUSION_JAX_TORCH_PYTHON"]
  return sys.executable if importlib.util.find_spec("torch") else None


CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "pleasant_surprise", "sad"]


def write_split(tmp_path, name="train", n=6, ds=4, dt=3, seed=0, labels=None,
                speech_lengths=None, text_lengths=None):
  """Writes a small split in the original layout. Returns (speech, text, csv) paths."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % len(CLASSES) if labels is None else np.asarray(labels)
  s_len = speech_lengths or list(rng.integers(1, 9, size=n))
  t_len = text_lengths or list(rng.integers(1, 5, size=n))
  speech = [rng.standard_normal((k, ds)).astype(np.float32) for k in s_len]
  text = [rng.standard_normal((k, dt)).astype(np.float32) for k in t_len]
  paths = (tmp_path / f"{name}_speech.pt", tmp_path / f"{name}_text.pt",
           tmp_path / f"{name}_split.csv")
  data.save_original_layout(paths[0], speech, labels)
  data.save_original_layout(paths[1], text, labels)
  pd.DataFrame(dict(path=[f"audio/{name}_{i:03d}.wav" for i in range(n)], label=labels,
                    emotion_name=[CLASSES[k] if k < len(CLASSES) else f"class{k}" for k in labels],
                    transcript=[f"say the word {i}" for i in range(n)])).to_csv(paths[2],
                                                                              index=False)
  return tuple(str(p) for p in paths)


def demo_splits(directory, spec, splits=("train", "val")):
  """Writes ``data.make_demo_dataset(directory, spec)`` and loads it: ``(paths, class names,
  {split: Split})`` for ``splits``."""
  p = data.make_demo_dataset(directory, spec)
  names = data.class_names_from_csv(p["train"]["csv"])
  return p, names, {s: data.load_split(s, p[s]["speech"], p[s]["text"], p[s]["csv"],
                                       class_names=names) for s in splits}


@pytest.fixture
def split_files(tmp_path):
  return write_split(tmp_path)
