"""fusion_jax.encoders against the hidden states transformers wrote (``reference.npz``).

  .venv/bin/python scripts/hf_parity.py tests/fixtures/hf/*       # the committed fixtures
  .venv/bin/python scripts/hf_parity.py /tmp/hf_full/*            # make_hf_fixtures.py --full

For each snapshot folder and weight format present: the largest error of any hidden state,
relative to the largest value of that state, per clip / line and for the padded batch.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from fusion_jax.encoders import bert, speech


def rel(got, want) -> float:
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def speech_errors(folder: str, fmt: str) -> dict:
  enc = speech.SpeechEncoder.from_pretrained(folder, fmt=fmt)
  r = np.load(os.path.join(folder, "reference.npz"))
  n = sum(1 for k in r.files if k.startswith("clip"))
  got = enc.encode([r[f"clip{i}"] for i in range(n)], all_layers=True)
  worst = 0.0
  for i in range(n):
    want = r[f"hidden{i}"].transpose(1, 0, 2).copy()
    want[:, -1] = r[f"last{i}"]
    worst = max(worst, max(rel(got[i][:, j], want[:, j]) for j in range(want.shape[1])))
  return {"per clip": worst, "states": got[0].shape[1], "frames": [g.shape[0] for g in got]}


def text_errors(folder: str, fmt: str) -> dict:
  enc = bert.BertFeatureEncoder.from_pretrained(folder, fmt=fmt)
  r = np.load(os.path.join(folder, "reference.npz"))
  texts = [str(t) for t in r["texts"]]
  same_ids = all(enc.tokenizer.encode(t) == list(r[f"ids{i}"]) for i, t in enumerate(texts))
  got = enc.encode(texts, all_layers=True)
  worst = 0.0
  for i in range(len(texts)):
    want = r[f"hidden{i}"].transpose(1, 0, 2)
    g = got[i].reshape(want.shape)
    worst = max(worst, max(rel(g[:, j], want[:, j]) for j in range(want.shape[1])))
  states = enc.states(r["batch_ids"], r["batch_mask"], all_layers=True)
  batch = max(rel(states[i, :int(m.sum())], r["batch_hidden"][i, :, :int(m.sum())]
                  .transpose(1, 0, 2)) for i, m in enumerate(r["batch_mask"]))
  return {"per line": worst, "padded batch": batch, "token ids equal": same_ids}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("folders", nargs="+")
  args = parser.parse_args()
  for folder in args.folders:
    if not os.path.isfile(os.path.join(folder, "reference.npz")):
      continue
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
      kind = json.load(f)["model_type"]
    for fmt in ("safetensors", "bin"):
      if not any(n.endswith("." + fmt) for n in os.listdir(folder)):
        continue
      errs = (text_errors if kind in bert.TEXT_TYPES else speech_errors)(folder, fmt)
      shown = ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in errs.items())
      print(f"{os.path.basename(os.path.normpath(folder)):22s} {kind:15s} {fmt:12s} {shown}",
            flush=True)


if __name__ == "__main__":
  main()
