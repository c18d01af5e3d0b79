"""The floor: a fusion model blended with its own unimodal heads, the blend chosen on
validation, so that fusion never does worse there than either modality alone.

With ``model.unimodal_heads`` a fusion variant also classifies each pooled block alone
(the original's baseline MLP: ``speech_head_*``, ``text_head_*``, trained with an
auxiliary loss, ``optim.unimodal_loss_weight``). Its output is then

  ``log p = w_f log softmax(z_fusion) + w_s log softmax(z_speech) + w_t log softmax(z_text)``

with ``w = params["floor_blend"] [3]``, renormalised per utterance over the modalities
present (an absent modality's head has weight 0; if nothing is left, the fusion head
alone). ``w`` is not trained by the optimizer: after every validation pass each run's
blend is the one of :data:`BLENDS` that scores best on validation (ties keep the earlier
one, fusion alone first), and the best checkpoint keeps the blend it was chosen with.
Since the candidates include each head alone, on validation the chosen model scores at
least as well as its own speech and text heads.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# (fusion, speech, text) weights on a 0.25 grid of the simplex (15), by fusion weight, most
# first: fusion alone is the blend a run starts with, and ties go to more fusion.
_GRID = [w for w in itertools.product(range(5), repeat=3) if sum(w) == 4]
BLENDS = np.asarray(sorted(_GRID, key=lambda w: (-w[0], -max(w), w[1] < w[2])),
                    np.float32) / 4.0
FUSION_ONLY = BLENDS[0]
NAMES = ("fusion", "speech", "text")


def effective_weights(blend, speech_present, text_present):
  """``blend [..., 3]`` (fusion, speech, text) and presence ``[B]`` → per-utterance weights
  ``[..., B, 3]`` summing to one over the heads whose modality is present."""
  one = jnp.ones_like(speech_present)
  keep = jnp.stack([one, speech_present, text_present], axis=-1)        # [B, 3]
  w = blend[..., None, :] * keep
  total = jnp.sum(w, axis=-1, keepdims=True)
  return jnp.where(total > 0, w / jnp.maximum(total, 1e-12),
                   jnp.asarray([1.0, 0.0, 0.0], w.dtype))


def blend_logits(blend, fusion, speech, text, speech_present, text_present):
  """The floor's log-probabilities ``[..., B, K]`` from the three heads' logits ``[B, K]``
  (``blend [3]``, or ``[C, 3]`` for C candidates at once)."""
  w = effective_weights(blend, speech_present, text_present)
  heads = jnp.stack([jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
                     for z in (fusion, speech, text)], axis=-1)          # [B, K, 3]
  return jnp.einsum("bkh,...bh->...bk", heads, w)


def choose(scores: Sequence[float]) -> int:
  """The index in :data:`BLENDS` of the best validation score (the first of equals)."""
  return int(np.argmax(np.asarray(scores, np.float64)))


def describe(blend) -> str:
  """``"fusion 0.50 + speech 0.50"``: the nonzero weights of a blend."""
  return " + ".join(f"{n} {float(w):.2f}" for n, w in zip(NAMES, np.asarray(blend)) if w > 0)
