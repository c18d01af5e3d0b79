"""PyTorch baseline for experiments/benchmark.py: the same model, a standard DataLoader loop.

  .venv/bin/python experiments/benchmark.py --feature_dim 256 --dump_data /tmp/lengths.npz
  python scripts/torch_throughput.py --data /tmp/lengths.npz --variant cross_attention

Straightforward on purpose: DataLoader(shuffle=True) with a collate function that pads each
batch to its longest utterance, Adam(lr 1e-4, weight_decay 1e-4), label smoothing 0.1, the
original architecture (scripts/make_torch_fixtures.py) at the original sizes. Same lengths as
the JAX benchmark (features are random: only shapes matter for speed). Prints samples/s:
the median over --repeats timed epochs after one warm-up epoch. Needs torch (not a
dependency of fusion_jax).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_torch_fixtures as ref  # pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True, help=".npz from benchmark.py --dump_data")
  p.add_argument("--variant", default="cross_attention", choices=ref.VARIANTS)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
  p.add_argument("--bf16", action="store_true", help="CPU autocast to bfloat16")
  args = p.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  z = np.load(args.data)
  dim = int(z["feature_dim"])
  cfg = dict(ref.CFG, speech_dim=dim, text_dim=dim, hidden=256, layers=2, heads=8, f_hidden=512,
             classifier_hidden=256, classes=7, dropout=0.4)
  torch.manual_seed(0)
  g = torch.Generator().manual_seed(0)
  data = [(torch.randn(int(s), dim, generator=g), torch.randn(int(t), dim, generator=g),
           int(y)) for s, t, y in zip(z["speech_lengths"], z["text_lengths"], z["labels"])]

  def collate(items):
    s = torch.nn.utils.rnn.pad_sequence([i[0] for i in items], batch_first=True)
    t = torch.nn.utils.rnn.pad_sequence([i[1] for i in items], batch_first=True)
    sm = torch.zeros(s.shape[:2])
    tm = torch.zeros(t.shape[:2])
    for j, (a, b, _) in enumerate(items):
      sm[j, :a.shape[0]] = 1
      tm[j, :b.shape[0]] = 1
    return s, sm, t, tm, torch.tensor([i[2] for i in items])

  loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True,
                                       collate_fn=collate)
  model = (ref.Unimodal if args.variant.endswith("_only") else ref.Fusion)(cfg, args.variant)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
  crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  model.train()

  def epoch():
    t0 = time.perf_counter()
    for s, sm, t, tm, y in loader:
      opt.zero_grad()
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        logits = model(s, t, sm, tm)[0]
      loss = crit(logits.float(), y)
      loss.backward()
      opt.step()
    return len(data) / (time.perf_counter() - t0)

  epoch()  # warm-up
  rates = [epoch() for _ in range(args.repeats)]
  print(json.dumps(dict(variant=args.variant, samples_per_s=float(np.median(rates)),
                        rates=rates, threads=torch.get_num_threads(), bf16=args.bf16,
                        torch=torch.__version__, feature_dim=dim, host_cpu=_host_cpu(),
                        torch_cpu_capability=torch.backends.cpu.get_cpu_capability())))


def _host_cpu():
  """The CPU's name and the ISA flags that change PyTorch's paths (oneDNN's AVX-512, AMX),
  as experiments/benchmark.py records them (fusion_jax.benchmark.host_cpu)."""
  try:
    info = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
  except OSError:
    return {}
  model = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                if l.startswith("model name")), "unknown")
  flags = set(next((l.split(":", 1)[1].split() for l in info.splitlines()
                    if l.startswith("flags")), []))
  return dict(model=model, cores=info.count("processor\t:"), avx512="avx512f" in flags,
              amx={"amx_tile", "amx_bf16"} <= flags)


if __name__ == "__main__":
  main()
