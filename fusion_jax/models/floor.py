"""The floor: a fusion model blended with its own unimodal heads, the blends chosen on
validation, so that fusion never does worse there than either modality alone — with
both modalities, and with either one absent.

With ``model.unimodal_heads`` a fusion variant also classifies each pooled block alone
(the original's baseline MLP: ``speech_head_*``, ``text_head_*``, trained with an
auxiliary loss, ``optim.unimodal_loss_weight``). Its output is then

  ``log p = w_f log softmax(z_fusion) + w_s log softmax(z_speech) + w_t log softmax(z_text)``

with ``w`` the row of ``params["floor_blend"] [3, 3]`` for the utterance's
:data:`PATTERNS` (both modalities, speech absent, text absent; nothing at all: the
fusion head alone). An absent modality's head never has weight: its row's candidates
(:data:`CANDIDATES`) mix the fusion head with the present modality's head only.

The blends are not trained by the optimizer: after every validation pass each run takes,
per pattern, the candidate that scores best on validation — the split as it is for
"both", and the split with speech (text) made absent for the other two — ties keeping
the earlier candidate (more fusion first); the best checkpoint keeps the blends it was
chosen with. Since the candidates include each head alone, on validation the chosen
model scores at least as well as its own speech and text heads, for each pattern.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

NAMES = ("fusion", "speech", "text")
PATTERNS = ("both", "no_speech", "no_text")

# (fusion, speech, text) weights on a 0.25 grid of the simplex (15), by fusion weight, most
# first; with a modality absent, the fusion head and the other modality's head (5).
_GRID = [w for w in itertools.product(range(5), repeat=3) if sum(w) == 4]
BLENDS = np.asarray(sorted(_GRID, key=lambda w: (-w[0], -max(w), w[1] < w[2])),
                    np.float32) / 4.0
_MIX = np.linspace(1.0, 0.0, 5, dtype=np.float32)
CANDIDATES = {
    "both": BLENDS,
    "no_speech": np.stack([_MIX, np.zeros(5, np.float32), 1.0 - _MIX], axis=1),
    "no_text": np.stack([_MIX, 1.0 - _MIX, np.zeros(5, np.float32)], axis=1),
}
FUSION_ONLY = np.tile(np.asarray([1.0, 0.0, 0.0], np.float32), (len(PATTERNS), 1))


def effective_weights(blend, speech_present, text_present):
  """``blend [3, 3]`` (one row per pattern) and presence ``[B]`` → per-utterance weights
  ``[B, 3]`` (fusion, speech, text), summing to one over heads whose modality is present."""
  s, t = speech_present > 0, text_present > 0
  row = jnp.where(s & t, 0, jnp.where(t, 1, 2))
  w = blend[row] * jnp.stack([jnp.ones_like(speech_present), speech_present, text_present], -1)
  total = jnp.sum(w, axis=-1, keepdims=True)
  return jnp.where((total > 0) & (s | t)[:, None], w / jnp.maximum(total, 1e-12),
                   jnp.asarray([1.0, 0.0, 0.0], w.dtype))


def blend_logits(weights, fusion, speech, text):
  """The floor's log-probabilities ``[..., B, K]`` from the three heads' logits ``[B, K]``
  and per-utterance weights ``[..., B, 3]`` (:func:`effective_weights`; or ``[C, 1, 3]``
  for C candidates applied to every row)."""
  heads = jnp.stack([jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
                     for z in (fusion, speech, text)], axis=-1)          # [B, K, 3]
  return jnp.einsum("bkh,...bh->...bk", heads, weights)


def choose(scores: Sequence[float]) -> int:
  """The index of the best validation score among candidates (the first of equals)."""
  return int(np.argmax(np.asarray(scores, np.float64)))


def describe(weights) -> str:
  """``"fusion 0.50 + speech 0.50"``: the nonzero weights of one blend row."""
  return " + ".join(f"{n} {float(w):.2f}" for n, w in zip(NAMES, np.asarray(weights)) if w > 0)


def describe_all(blend) -> str:
  """``"both: fusion 1.00; no speech: text 1.00; no text: …"``: every pattern's row."""
  return "; ".join(f"{p.replace('_', ' ')}: {describe(w)}"
                   for p, w in zip(PATTERNS, np.asarray(blend)))
