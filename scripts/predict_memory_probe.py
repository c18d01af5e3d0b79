"""Peak memory of predict.py on one long recording among short ones.

  .venv/bin/python scripts/predict_memory_probe.py [WORK] [MINUTES] [-- predict.py flags]

Trains a speech_only model (configs/ravdess.py, 1 epoch) on log-mel features of tone clips,
then runs predict.py on 15 short clips (0.3-0.6 s) beside one MINUTES-long clip (10)
under /usr/bin/time -v, and prints its maximum resident set size. Extra flags after
``--`` go to predict.py (e.g. --max_frames=0 to turn segmentation off).
"""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.binaries import tone_clips  # pylint: disable=wrong-import-position
from fusion_jax.features import audio  # pylint: disable=wrong-import-position

args = sys.argv[1:]
extra = args[args.index("--") + 1:] if "--" in args else []
args = args[:args.index("--")] if "--" in args else args
work = pathlib.Path(args[0] if args else "/tmp/predict_memory_probe")
minutes = float(args[1]) if len(args) > 1 else 10.0
py = sys.executable
exp = lambda s: str(ROOT / "experiments" / s)
if not (work / "m").exists():
  for name, who, seed in (("train", ["a", "b", "c"], 0), ("val", ["d"], 1)):
    rows = tone_clips(work / name, [(l, s) for s in who for l in ("sad", "happy")
                                    for _ in range(4)], seed)
    pd.DataFrame(rows).to_csv(work / f"{name}.csv", index=False)
    subprocess.run([py, exp("extract_features.py"), f"--manifest={work}/{name}.csv",
                    "--speech_extractor=logmel", "--pool=8", f"--out_dir={work}/f",
                    f"--prefix={name}", "--class_names=sad,happy", "--noprogress"], check=True)
  f = work / "f"
  subprocess.run([py, exp("train.py"), f"--train_speech_features={f}/train_speech.npz",
                  f"--train_text_features={f}/train_speech.npz",
                  f"--val_speech_features={f}/val_speech.npz",
                  f"--val_text_features={f}/val_speech.npz", f"--csv_path={f}/train_split.csv",
                  f"--config={ROOT}/configs/ravdess.py", "--variants=speech_only",
                  "--epochs=1", f"--model_dir={work}/m", f"--results_dir={work}/r",
                  "--noexport_torch"], check=True, stdout=subprocess.DEVNULL)
rows = tone_clips(work / "new", [(l, "e") for l in ("sad", "happy") for _ in range(8)], 2)[:15]
rng = np.random.default_rng(0)
n = int(minutes * 60 * 16000)
t = np.arange(n) / 16000
audio.write_wav(work / "new" / "long.wav",
                0.3 * np.sin(2 * np.pi * 200 * t) + 0.02 * rng.standard_normal(n))
rows.insert(7, dict(path="new/long.wav"))
pd.DataFrame(rows)[["path"]].to_csv(work / "new.csv", index=False)
proc = subprocess.run(["/usr/bin/time", "-v", py, exp("predict.py"), f"--run={work}/m",
                       f"--inputs={work}/new.csv", f"--output={work}/p.csv", "--noprogress",
                       *extra], capture_output=True, text=True)
peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)
print(proc.stdout[-1500:])
if proc.returncode not in (0, 1):
  print(proc.stderr[-3000:])
print(f"predict.py on 15 short clips + one {minutes:g}-min clip: exit {proc.returncode}, "
      f"peak RSS {int(peak.group(1)) / 1e6:.2f} GB, wall {wall.group(1)}" if peak else
      proc.stderr[-2000:])
