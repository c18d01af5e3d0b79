"""Makes the committed PyTorch fixtures (needs torch; the tests do not).

  python scripts/make_torch_fixtures.py   # in any environment with torch==2.13.0

Writes, under tests/fixtures/:

* ``parity.npz``: for every variant, a small model built in PyTorch as
  docs/original.md ("Model") describes it (the original's module names, so
  state_dict keys match), its weights, padded inputs with garbage in the padded
  positions, and the eval-mode logits / pooled vectors PyTorch computes;
* ``torch_checkpoints/best_{variant}_model.pt``: the same weights saved as the
  original ``train.py`` saves them (with optimizer state and a NumPy
  confusion matrix), for the converter and ``evaluate.py``'s migration path;
* ``torch_save/*.pt``: tiny feature files written by real ``torch.save``
  (the original's ``{'x','m','y'}`` dict, a per-utterance dict, a bfloat16
  and a non-contiguous tensor), with ``torch_save/expected.npz``.

Licence of the fixtures: generated data, Apache-2.0 like the code.
"""

import collections
import os

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")

# A small instance of the original architecture (docs/original.md's dims, shrunk).
CFG = dict(speech_dim=16, text_dim=24, hidden=8, layers=2, heads=4, f_hidden=16,
           classifier_hidden=12, classes=5, dropout=0.4)
VARIANTS = ("cross_attention", "concatenation", "gated", "weighted", "speech_only", "text_only")


class Encoder(nn.Module):
  """Post-LN transformer encoder at the input width, then dropout on the sequence."""

  def __init__(self, dim, c):
    super().__init__()
    layer = nn.TransformerEncoderLayer(d_model=dim, nhead=c["heads"],
                                       dim_feedforward=4 * c["hidden"], dropout=c["dropout"],
                                       batch_first=True, activation="gelu")
    self.transformer = nn.TransformerEncoder(layer, num_layers=c["layers"])
    self.dropout = nn.Dropout(c["dropout"])

  def forward(self, x, m):
    return self.dropout(self.transformer(x, src_key_padding_mask=~m.bool()))


def pool(x, m):
  m = m.unsqueeze(-1)
  return (x * m).sum(1) / m.sum(1)


def fp(width_in, width, p):
  return nn.Sequential(nn.Linear(width_in, width), nn.GELU(), nn.Dropout(p), nn.LayerNorm(width))


class CrossAttention(nn.Module):
  def __init__(self, c):
    super().__init__()
    f = c["f_hidden"]
    self.speech_proj = nn.Linear(c["speech_dim"], f)
    self.text_proj = nn.Linear(c["text_dim"], f)
    self.s_to_t_attn = nn.MultiheadAttention(f, c["heads"], dropout=c["dropout"],
                                             batch_first=True)
    self.t_to_s_attn = nn.MultiheadAttention(f, c["heads"], dropout=c["dropout"],
                                             batch_first=True)
    self.ln_s, self.ln_t = nn.LayerNorm(f), nn.LayerNorm(f)
    self.fusion_proj = fp(2 * f, f, c["dropout"])

  def forward(self, s, t, sm, tm):
    sp, tp = self.speech_proj(s), self.text_proj(t)
    sa, _ = self.s_to_t_attn(sp, tp, tp, key_padding_mask=~tm.bool())
    ta, _ = self.t_to_s_attn(tp, sp, sp, key_padding_mask=~sm.bool())
    return self.fusion_proj(torch.cat([pool(self.ln_s(sa + sp), sm),
                                       pool(self.ln_t(ta + tp), tm)], -1))


class Concatenation(nn.Module):
  def __init__(self, c):
    super().__init__()
    f = c["f_hidden"]
    self.speech_proj = nn.Linear(c["speech_dim"], f // 2)
    self.text_proj = nn.Linear(c["text_dim"], f // 2)
    self.fusion_proj = fp(f, f, c["dropout"])

  def forward(self, s, t, sm, tm):
    return self.fusion_proj(torch.cat([self.speech_proj(pool(s, sm)),
                                       self.text_proj(pool(t, tm))], -1))


class Gated(nn.Module):
  def __init__(self, c):
    super().__init__()
    f = c["f_hidden"]
    self.speech_proj = nn.Linear(c["speech_dim"], f)
    self.text_proj = nn.Linear(c["text_dim"], f)
    gate = lambda: nn.Sequential(nn.Linear(f, f), nn.Tanh(), nn.Linear(f, f), nn.Sigmoid())
    self.speech_gate, self.text_gate = gate(), gate()
    self.fusion_proj = fp(f, f, c["dropout"])

  def forward(self, s, t, sm, tm):
    sp, tp = self.speech_proj(pool(s, sm)), self.text_proj(pool(t, tm))
    return self.fusion_proj(self.speech_gate(sp) * sp + self.text_gate(tp) * tp)


class Weighted(nn.Module):
  def __init__(self, c):
    super().__init__()
    f = c["f_hidden"]
    self.speech_proj = nn.Linear(c["speech_dim"], f)
    self.text_proj = nn.Linear(c["text_dim"], f)
    self.attention = nn.Sequential(nn.Linear(f, f // 2), nn.Tanh(), nn.Linear(f // 2, 1))
    self.fusion_proj = fp(f, f, c["dropout"])

  def forward(self, s, t, sm, tm):
    sp, tp = self.speech_proj(pool(s, sm)), self.text_proj(pool(t, tm))
    w = torch.softmax(torch.cat([self.attention(sp), self.attention(tp)], -1), -1)
    return self.fusion_proj(w[:, 0:1] * sp + w[:, 1:2] * tp)


HEADS = dict(cross_attention=CrossAttention, concatenation=Concatenation, gated=Gated,
             weighted=Weighted)


class Classifier(nn.Module):
  def __init__(self, c):
    super().__init__()
    h = c["classifier_hidden"]
    self.classifier = nn.Sequential(nn.Linear(c["f_hidden"], h), nn.LayerNorm(h), nn.GELU(),
                                    nn.Dropout(c["dropout"]), nn.Linear(h, c["classes"]))

  def forward(self, x):
    return self.classifier(x)


class Fusion(nn.Module):
  def __init__(self, c, variant):
    super().__init__()
    self.temporal_model = Encoder(c["speech_dim"], c)
    self.contextual_model = Encoder(c["text_dim"], c)
    self.fusion = HEADS[variant](c)
    self.classifier = Classifier(c)

  def forward(self, s, t, sm, tm):
    sf, tf = self.temporal_model(s, sm), self.contextual_model(t, tm)
    fused = self.fusion(sf, tf, sm, tm)
    return self.classifier(fused), pool(sf, sm), pool(tf, tm), fused


class Unimodal(nn.Module):
  """Same encoder, masked mean pooling, Linear → ReLU → Dropout → Linear."""

  def __init__(self, c, variant):
    super().__init__()
    self.speech = variant == "speech_only"
    enc = Encoder(c["speech_dim"] if self.speech else c["text_dim"], c)
    if self.speech:
      self.temporal_model = enc
    else:
      self.contextual_model = enc
    width = c["speech_dim"] if self.speech else c["text_dim"]
    self.classifier = nn.Sequential(nn.Linear(width, c["classifier_hidden"]), nn.ReLU(),
                                    nn.Dropout(c["dropout"]),
                                    nn.Linear(c["classifier_hidden"], c["classes"]))

  def forward(self, s, t, sm, tm):
    if self.speech:
      pooled = pool(self.temporal_model(s, sm), sm)
    else:
      pooled = pool(self.contextual_model(t, tm), tm)
    return self.classifier(pooled), pooled


def make_inputs(rng):
  b, ts, tt = 4, 9, 6
  s_len, t_len = [9, 5, 1, 3], [6, 2, 4, 1]  # includes one-frame and one-token utterances
  s = rng.standard_normal((b, ts, CFG["speech_dim"])).astype(np.float32)
  t = rng.standard_normal((b, tt, CFG["text_dim"])).astype(np.float32)
  sm = (np.arange(ts)[None] < np.array(s_len)[:, None]).astype(np.float32)
  tm = (np.arange(tt)[None] < np.array(t_len)[:, None]).astype(np.float32)
  # Padded positions hold garbage: a correct model ignores it.
  s[sm == 0] = 1e3 * rng.standard_normal(((sm == 0).sum(), CFG["speech_dim"]))
  t[tm == 0] = 1e3 * rng.standard_normal(((tm == 0).sum(), CFG["text_dim"]))
  return s, t, sm, tm


def parity_fixture():
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  s, t, sm, tm = make_inputs(rng)
  out = dict(speech=s, text=t, speech_mask=sm, text_mask=tm,
             config=np.array(str(CFG)))
  ckpt_dir = os.path.join(OUT, "torch_checkpoints")
  os.makedirs(ckpt_dir, exist_ok=True)
  for variant in VARIANTS:
    model = (Unimodal if variant.endswith("_only") else Fusion)(CFG, variant)
    # Move LayerNorm params off their (1, 0) init so the test checks them too.
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "norm" in name or "ln_" in name or ".1." in name or "fusion_proj.3" in name:
          p.add_(0.1 * torch.randn_like(p))
    model.eval()
    with torch.no_grad():
      res = model(*(torch.from_numpy(a) for a in (s, t, sm, tm)))
    out[f"{variant}/logits"] = res[0].numpy()
    if variant.endswith("_only"):
      out[f"{variant}/pooled"] = res[1].numpy()
    else:
      out[f"{variant}/temporal_pooled"] = res[1].numpy()
      out[f"{variant}/contextual_pooled"] = res[2].numpy()
      out[f"{variant}/fused"] = res[3].numpy()
    for key, value in model.state_dict().items():
      out[f"{variant}/state/{key}"] = value.numpy().copy()  # not a view: the step below
    # The original's checkpoint, as its train.py writes it (one Adam step taken
    # so the optimizer state is not empty).
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()
    loss = model(*(torch.from_numpy(a) for a in (s, t, sm, tm)))[0].sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.load_state_dict({k: torch.from_numpy(out[f"{variant}/state/{k}"])
                           for k in model.state_dict()})
    torch.save({
        "epoch": 3,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "val_acc": 0.75,
        "confusion_matrix": np.eye(CFG["classes"], dtype=np.int64) * 2,
        "class_names": ["angry", "disgust", "fear", "happy", "neutral"],
        "fusion_type": variant,
    }, os.path.join(ckpt_dir, f"best_{variant}_model.pt"))
  out.update(optimization_references())
  np.savez_compressed(os.path.join(OUT, "parity.npz"), **out)


def optimization_references():
  """Adam with L2 weight decay, label-smoothed cross-entropy, ReduceLROnPlateau."""
  rng = np.random.default_rng(1)
  ref = {}
  p0 = rng.standard_normal(6).astype(np.float32)
  grads = rng.standard_normal((4, 6)).astype(np.float32)
  param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  opt = torch.optim.Adam([param], lr=1e-3, weight_decay=1e-4)
  for g in grads:
    param.grad = torch.from_numpy(g.copy())
    opt.step()
  ref.update({"optim/p0": p0, "optim/grads": grads, "optim/p_final": param.detach().numpy().copy()})
  logits = rng.standard_normal((5, 7)).astype(np.float32)
  labels = rng.integers(0, 7, size=5)
  ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1, reduction="none")
  ref.update({"loss/logits": logits, "loss/labels": labels,
              "loss/per_example": ce(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()})
  metric = np.concatenate([np.linspace(0.2, 0.6, 5), np.full(6, 0.6), [0.61, 0.6000001],
                           np.full(9, 0.55), [0.7, 0.7, 0.70005, 0.71]])
  sched_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(sched_opt, mode="max", factor=0.5,
                                                     patience=3)
  lrs = []
  for m in metric:
    lrs.append(sched_opt.param_groups[0]["lr"])
    sched.step(float(m))
  lrs.append(sched_opt.param_groups[0]["lr"])
  ref.update({"plateau/metric": metric, "plateau/lr": np.array(lrs)})
  return ref


def torch_save_fixtures():
  d = os.path.join(OUT, "torch_save")
  os.makedirs(d, exist_ok=True)
  g = torch.Generator().manual_seed(1)
  x = torch.randn(3, 5, 4, generator=g)
  m = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
  y = torch.tensor([2, 0, 1])
  torch.save({"x": x, "m": m, "y": y}, os.path.join(d, "padded.pt"))
  per = collections.OrderedDict((f"utt_{i}", torch.randn(n, 4, generator=g))
                                for i, n in enumerate([3, 1, 2]))
  torch.save(per, os.path.join(d, "per_utterance.pt"))
  big = torch.randn(4, 6, generator=g)
  torch.save({"noncontig": big[:, ::2], "transposed": big.t(), "bf16": big.bfloat16(),
              "half": big.half(), "int32": torch.arange(5, dtype=torch.int32),
              "bool": big > 0},
             os.path.join(d, "dtypes.pt"))
  np.savez(os.path.join(d, "expected.npz"), x=x.numpy(), m=m.numpy(), y=y.numpy(),
           **{f"per/{k}": v.numpy() for k, v in per.items()},
           noncontig=big[:, ::2].contiguous().numpy(), transposed=big.t().contiguous().numpy(),
           bf16_as_f32=big.bfloat16().float().numpy(), half=big.half().numpy(),
           int32=np.arange(5, dtype=np.int32), bool=(big > 0).numpy())


if __name__ == "__main__":
  print("torch", torch.__version__)
  parity_fixture()
  torch_save_fixtures()
  for root, _, files in os.walk(OUT):
    for f in sorted(files):
      print(os.path.relpath(os.path.join(root, f), OUT), os.path.getsize(os.path.join(root, f)))
