"""Frozen feature extraction, fusion_jax.encoders (JAX) against transformers + torch, on the
same clips / lines: seconds for the first pass (JAX: compiles included), seconds for a second
pass, and peak resident memory. Prints one JSON line.

  .venv/bin/python scripts/bench_encoders.py --impl jax --model /tmp/hf_full/wav2vec2_base_full
  /tmp/torchenv/bin/python scripts/bench_encoders.py --impl torch --model /tmp/hf_full/wav2vec2_base_full

(The model folders come from ``scripts/make_hf_fixtures.py --full``: random-initialised
wav2vec2-base and roberta-base, so no weights are needed.) The torch side imports neither
jax nor fusion_jax. Speech: each clip alone, as the original pipeline runs base-style models
(they take no attention mask); fusion_jax batches them padded, which for it changes nothing.
Text: batches of 32 lines with transformers' padding and attention mask.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

WORDS = ("i am so happy today kids are talking by the door dogs sitting what a wonderful day "
         "why because it is not fair that you never listen to me anymore").split()


def clips(n: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  return [(0.1 * rng.standard_normal(int(16000 * rng.uniform(2.0, 5.0)))).astype(np.float32)
          for _ in range(n)]


def lines(n: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, int(rng.integers(4, 40)))) for _ in range(n)]


def run_jax(model: str, kind: str, n: int, batch_seconds=None):
  from fusion_jax.encoders import bert, speech  # pylint: disable=import-outside-toplevel
  if kind == "speech":
    kw = {} if batch_seconds is None else {"batch_seconds": batch_seconds}
    enc = speech.SpeechEncoder.from_pretrained(model, **kw)
    data = clips(n)
    return lambda: enc.encode(data)
  enc = bert.BertFeatureEncoder.from_pretrained(model)
  data = lines(n)
  return lambda: enc.encode(data, batch_size=32)


def run_torch(model: str, kind: str, n: int, batch_seconds=None):
  del batch_seconds
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_grad_enabled(False)
  if kind == "speech":
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(model)
    net = transformers.AutoModel.from_pretrained(model).eval()
    data = clips(n)

    def go():
      return [net(fe(c, sampling_rate=16000, return_tensors="pt").input_values)
              .last_hidden_state[0].numpy() for c in data]
    return go
  tok = transformers.AutoTokenizer.from_pretrained(model)
  net = transformers.AutoModel.from_pretrained(model, add_pooling_layer=False).eval()
  data = lines(n)

  def go():
    out = []
    for s in range(0, len(data), 32):
      enc = tok(data[s:s + 32], return_tensors="pt", padding=True, truncation=True)
      h = net(**enc).last_hidden_state.numpy()
      out += [h[i, :int(m.sum())] for i, m in enumerate(enc.attention_mask)]
    return out
  return go


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--impl", choices=["jax", "torch"], required=True)
  parser.add_argument("--model", required=True, help="snapshot folder")
  parser.add_argument("--n", type=int, default=None, help="clips (16) or lines (256)")
  parser.add_argument("--batch_seconds", type=float, default=None,
                      help="JAX speech: audio per batch (default: the encoder's)")
  args = parser.parse_args()
  with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
    kind = "text" if json.load(f)["model_type"] in ("bert", "roberta", "xlm-roberta") \
        else "speech"
  n = args.n or (16 if kind == "speech" else 256)
  t0 = time.perf_counter()
  go = (run_jax if args.impl == "jax" else run_torch)(args.model, kind, n, args.batch_seconds)
  t1 = time.perf_counter()
  out = go()
  t2 = time.perf_counter()
  go()
  t3 = time.perf_counter()
  print(json.dumps(dict(impl=args.impl, kind=kind, n=n, load_s=round(t1 - t0, 2),
                        first_s=round(t2 - t1, 2), second_s=round(t3 - t2, 2),
                        frames=int(sum(o.shape[0] for o in out)),
                        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                          / 1024))), flush=True)


if __name__ == "__main__":
  main()
