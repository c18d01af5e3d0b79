"""A synthetic dataset in exactly the original pipeline's on-disk format.

Writes ``{split}_speech.pt`` and ``{split}_text.pt`` (``torch.save`` dicts
``{'x': [N, T, D], 'm': [N, T], 'y': [N]}``, written without torch) and
``{split}_split.csv`` (``path,label,emotion_name,transcript``) for train, val
and test, with TESS's 7 classes. Which modality carries the class is a knob:

* ``both``: speech and text each identify the class (noisily);
* ``speech``: only speech does, text is class-independent (like TESS, where
  every emotion reads the same words);
* ``text``: only text does;
* ``complementary``: speech tells the class's pair (c // 2), text its parity
  (c % 2): neither alone can do better than about half, together they can.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from fusion_jax.data.features import save_original_layout
from fusion_jax.errors import ConfigError

TESS_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "pleasant_surprise", "sad")
SIGNALS = ("both", "speech", "text", "complementary")
_WORDS = ("back", "bar", "base", "bath", "bean", "beg", "bite", "boat", "bone", "book",
          "burn", "cab", "calm", "came", "cause", "chain", "chair", "chalk", "chat", "check")
_CUE_WORDS = {  # text-bearing transcripts get a class-typical word
    "angry": "furious", "disgust": "gross", "fear": "scared", "happy": "great",
    "neutral": "okay", "pleasant_surprise": "wow", "sad": "lonely"}


@dataclasses.dataclass(frozen=True)
class DemoSpec:
  """What to generate. Defaults finish the whole demo in minutes on 2 CPU cores."""
  signal: str = "both"
  speech_dim: int = 64
  text_dim: int = 64
  sizes: tuple = (("train", 280), ("val", 105), ("test", 105))
  speech_length: tuple = (50, 400)   # min, max frames
  text_length: tuple = (5, 60)       # min, max tokens
  speech_median: float = 100.0       # lengths are lognormal around these, clipped to the range
  text_median: float = 18.0
  strength: float = 0.1              # class-signal amplitude per frame (noise std 1)
  seed: int = 0
  class_names: tuple = TESS_CLASSES


def _lengths(rng, n, lo, hi, median):
  raw = rng.lognormal(np.log(median), 0.45, size=n)
  return np.clip(np.round(raw), lo, hi).astype(np.int64)


def _sequences(rng, lengths, dim, protos, keys, strength, active):
  out = []
  for n, k in zip(lengths, keys):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    offset = rng.standard_normal(dim).astype(np.float32) * 0.3  # speaker/channel offset
    x += offset
    if active:
      # The cue is present in a random 60% of frames, so pooling must average it.
      present = rng.random(n) < 0.6
      x[present] += strength * protos[k]
    out.append(x)
  return out


def make_demo_dataset(out_dir, spec: DemoSpec = DemoSpec()) -> dict:
  """Writes the demo files. Returns their paths: ``{split: {speech, text, csv}}``."""
  if spec.signal not in SIGNALS:
    raise ConfigError(f"signal must be one of {SIGNALS}, got {spec.signal!r}")
  rng = np.random.default_rng(spec.seed)
  k = len(spec.class_names)
  n_keys = (k + 1) // 2 if spec.signal == "complementary" else k
  speech_protos = rng.standard_normal((n_keys, spec.speech_dim)).astype(np.float32)
  text_protos = rng.standard_normal((k if spec.signal != "complementary" else 2,
                                     spec.text_dim)).astype(np.float32)
  speech_on = spec.signal in ("both", "speech", "complementary")
  text_on = spec.signal in ("both", "text", "complementary")
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for split, n in spec.sizes:
    labels = np.arange(n) % k
    rng.shuffle(labels)
    if spec.signal == "complementary":
      s_keys, t_keys = labels // 2, labels % 2
    else:
      s_keys = t_keys = labels
    s_len = _lengths(rng, n, *spec.speech_length, median=spec.speech_median)
    t_len = _lengths(rng, n, *spec.text_length, median=spec.text_median)
    speech = _sequences(rng, s_len, spec.speech_dim, speech_protos, s_keys, spec.strength,
                        speech_on)
    # Text tokens are fewer than frames: a stronger per-token cue keeps the two
    # modalities comparably informative after pooling.
    text = _sequences(rng, t_len, spec.text_dim, text_protos, t_keys, spec.strength * 2.0,
                      text_on)
    speakers = rng.choice(["OAF", "YAF"], size=n)
    rows = []
    for i, label in enumerate(labels):
      name = spec.class_names[label]
      word = _WORDS[rng.integers(len(_WORDS))]
      transcript = f"Say the word {word}."
      if text_on:
        transcript = f"Say the word {word}, {_CUE_WORDS.get(name, name)}."
      rows.append(dict(path=f"demo_audio/{split}/{speakers[i]}_{word}_{name}_{i:04d}.wav",
                       label=int(label), emotion_name=name, transcript=transcript,
                       speaker=speakers[i]))
    files = {
        "speech": os.path.join(out_dir, f"{split}_speech.pt"),
        "text": os.path.join(out_dir, f"{split}_text.pt"),
        "csv": os.path.join(out_dir, f"{split}_split.csv"),
    }
    save_original_layout(files["speech"], speech, labels)
    save_original_layout(files["text"], text, labels)
    pd.DataFrame(rows).to_csv(files["csv"], index=False)
    paths[split] = files
  return paths
