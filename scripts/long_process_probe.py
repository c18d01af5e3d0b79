"""Trains and evaluates several tiny variants fold after fold in one process and prints the
process' memory mappings, resident memory and live executables after each fold.

  .venv/bin/python scripts/long_process_probe.py            # releasing (the default)
  NOFIX=1 .venv/bin/python scripts/long_process_probe.py    # never releasing, to compare

Env: FOLDS (4), VARIANTS (six), NOFIX=1, TRIM=1 (an extra malloc_trim per fold).
"""
import os, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import conftest
from fusion_jax import configs, data, experiment, training, evaluation, ledger
from fusion_jax.data.demo import DemoSpec
NOFIX = os.environ.get("NOFIX") == "1"
if NOFIX:
  experiment.Experiment.forget = lambda self, *a, **k: 0
d = tempfile.mkdtemp()
cfg = configs.tiny()
cfg.train.epochs = 2
cfg.train.variants = os.environ.get("VARIANTS", "concatenation,gated,cross_attention,tensor,speech_only,text_only")
cfg.train.seeds = "0"
exp0 = None
for fold in range(int(os.environ.get("FOLDS", "4"))):
  spec = DemoSpec(sizes=(("train", 40), ("val", 16), ("test", 16)), speech_dim=8, text_dim=8,
                  speech_length=(5, 40 + 8 * fold), text_length=(2, 10 + fold), seed=fold)
  _, names, sp = conftest.demo_splits(os.path.join(d, f"data{fold}"), spec, ("train", "val", "test"))
  if exp0 is None:
    exp0 = experiment.Experiment.create(cfg, names, train=sp["train"], val=sp["val"], log=lambda s: None)
  exp = exp0.with_data(sp["train"], sp["val"]).with_dirs(os.path.join(d, f"m{fold}"), os.path.join(d, f"r{fold}"))
  training.train_and_evaluate(exp, sp["train"], sp["val"])
  evaluation.evaluate(exp, sp["test"], train=sp["train"])
  exp0.release(*sp.values())
  if not NOFIX: exp0.forget()
  if os.environ.get("TRIM"): import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0)
  r = ledger.process_resources()
  print(f"fold {fold}: maps {r.mappings} rss {r.rss_bytes/1e6:.0f} MB exec {ledger.live_executables()} entries {len(exp0.ledger)}", flush=True)
