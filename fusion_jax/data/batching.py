"""Fixed-shape batches from unpadded utterances.

Speech lengths fall into a few buckets (each a compiled shape); text is padded
to one length. Every batch is a dict of NumPy arrays::

  speech       [B, T_bucket, Ds] float32     speech_mask  [B, T_bucket] float32
  text         [B, L, Dt] float32            text_mask    [B, L] float32
  (speech / text float16 when the split holds float16 stacks of hidden states)
  label        [B] int32                     example_mask [B] float32 (0 = padding row)
  index        [B] int32 (row in the split, -1 for padding rows)

A batch that is not full is padded with masked examples, never dropped, so
every utterance appears exactly once per pass. Training order is a pure
function of ``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from fusion_jax.data.splits import Split
from fusion_jax.errors import ConfigError


def _round_up(n: int, multiple: int) -> int:
  """``n`` rounded up to a multiple, at least one multiple (an absent modality, 0 frames,
  still gets a padded frame: all its mask is zero)."""
  return int(-(-max(int(n), 1) // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class BatchShapes:
  """The compiled shapes: speech bucket lengths (ascending) and one text length.

  With ``text_buckets`` (text-only data: every utterance has one speech frame),
  the buckets are over text lengths instead: bucket ``b`` pads speech to
  ``speech_buckets[0]`` and text to ``text_buckets[b]``.
  """
  speech_buckets: tuple
  text_length: int
  text_buckets: tuple = ()

  @property
  def num_buckets(self) -> int:
    return len(self.text_buckets or self.speech_buckets)

  def lengths(self, b: int) -> tuple:
    """``(speech length, text length)`` of bucket ``b``."""
    if self.text_buckets:
      return self.speech_buckets[0], self.text_buckets[b]
    return self.speech_buckets[b], self.text_length

  def bucket_of(self, length: int) -> int:
    """The bucket of an utterance of this speech length (text length with ``text_buckets``)."""
    limits = self.text_buckets or self.speech_buckets
    for b, limit in enumerate(limits):
      if length <= limit:
        return b
    raise ConfigError(f"{'text' if self.text_buckets else 'speech'} length {length} exceeds "
                     f"the largest bucket {limits[-1]}")

  def largest(self, k: int) -> "BatchShapes":
    """The ``k`` longest buckets (all of them when ``k >= num_buckets``): the shapes a
    forward-only pass over data that fits these buckets compiles (``eval.num_buckets``)."""
    if k >= self.num_buckets:
      return self
    if self.text_buckets:
      return dataclasses.replace(self, text_buckets=self.text_buckets[-k:])
    return dataclasses.replace(self, speech_buckets=self.speech_buckets[-k:])

  def assign(self, split: Split) -> np.ndarray:
    """Each utterance's bucket ``[N]``."""
    lengths = split.text_lengths if self.text_buckets else split.speech_lengths
    return np.array([self.bucket_of(n) for n in lengths], np.int64)


def _best_buckets(lengths, longest: int, num_buckets: int, multiple: int,
                  batch_size: int) -> tuple:
  """Bucket lengths minimising padded batch slots × length (dynamic programming)."""
  rounded = np.array([_round_up(n, multiple) for n in lengths])
  cands = np.unique(np.append(rounded, longest))
  counts = np.array([(rounded == c).sum() for c in cands], np.int64)
  cum = np.concatenate([[0], np.cumsum(counts)])
  n, k = len(cands), max(1, min(num_buckets, len(cands)))
  # cost[i, j]: one bucket of length cands[j] holding candidates i..j.
  held = cum[None, 1:] - cum[:-1, None]
  cost = np.where(np.arange(n)[None] >= np.arange(n)[:, None],
                  np.ceil(held / batch_size) * batch_size * cands[None], np.inf)
  level_cost, level_start = [cost[0]], [np.zeros(n, np.int64)]
  for _ in range(1, k):  # level b: exactly b+1 buckets cover candidates 0..j
    total = np.concatenate([np.full((1, n), np.inf), level_cost[-1][:-1, None] + cost[1:]], 0)
    start = np.argmin(total, axis=0)  # where the last bucket begins
    level_cost.append(total[start, np.arange(n)])
    level_start.append(start)
  b = int(np.argmin([c[n - 1] for c in level_cost]))
  buckets, j = [], n - 1
  while b >= 0:
    buckets.append(int(cands[j]))
    j = int(level_start[b][j]) - 1
    b -= 1
  return tuple(sorted(set(buckets)))


def plan_shapes(splits: Sequence[Split], num_buckets: int = 4, multiple: int = 8,
                fit_on: int = 0, batch_size: int = 32) -> BatchShapes:
  """Chooses speech bucket lengths that minimise padded frames.

  Args:
    splits: every split that will be batched (all must fit the largest bucket).
    num_buckets: how many speech shapes to compile (1 = pad to one length).
    multiple: bucket lengths are multiples of this.
    fit_on: which split's lengths drive the choice (0 = the first, training).
    batch_size: batches are padded to this many rows, so a bucket holding few
      utterances costs a whole batch; the choice accounts for it.

  Returns:
    The bucket lengths minimising ``sum over buckets of ceil(n_b / batch) *
    batch * length_b`` on ``splits[fit_on]`` (dynamic programming over the
    rounded lengths), the last covering the longest utterance of any split.
    When every utterance has one speech frame (text-only data with a placeholder
    frame, or utterance-level speech vectors), the buckets are over text lengths
    (``text_buckets``).
  """
  longest = _round_up(max(int(s.speech_lengths.max()) for s in splits), multiple)
  text_length = _round_up(max(int(s.text_lengths.max()) for s in splits), multiple)
  # Text-only data (a one-frame placeholder, or one utterance-level speech vector each):
  # nothing to bucket on the speech side, so the buckets follow text lengths.
  speech_is_one_frame = all(int(s.speech_lengths.max()) == 1 for s in splits)
  if speech_is_one_frame and num_buckets > 1:
    return BatchShapes((longest,), text_length, _best_buckets(
        splits[fit_on].text_lengths, text_length, num_buckets, multiple, batch_size))
  return BatchShapes(_best_buckets(splits[fit_on].speech_lengths, longest, num_buckets,
                                   multiple, batch_size), text_length)


def batch_indices(split: Split, shapes: BatchShapes, batch_size: int, *, shuffle: bool,
                  seed: int = 0, epoch: int = 0) -> list:
  """Plans a pass: a list of ``(bucket, rows)`` with ``len(rows) <= batch_size``.

  With ``shuffle``, rows are permuted within buckets by
  ``numpy.random.default_rng([seed, epoch])``, and the batches are interleaved by a
  permutation that depends on the epoch only: every seed visits the buckets in the
  same order (with its own rows), so several seeds can train as one program.
  """
  buckets = shapes.assign(split)
  order = np.random.default_rng([seed, epoch]).permutation(len(split)) if shuffle else \
      np.arange(len(split))
  plan = []
  for b in range(shapes.num_buckets):
    rows = order[buckets[order] == b]
    plan += [(b, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
  if shuffle:
    schedule = np.random.default_rng([epoch, 0x5EED]).permutation(len(plan))
    plan = [plan[i] for i in schedule]
  return plan


def make_batch(split: Split, rows: Sequence[int], speech_length: int, text_length: int,
               batch_size: int) -> dict:
  """Pads the utterances ``rows`` of ``split`` into one fixed-shape batch."""
  ds, dt = split.speech[0].shape[1], split.text[0].shape[1]
  dtype = lambda x: np.float16 if x.dtype == np.float16 else np.float32   # stacks stay half
  batch = dict(
      speech=np.zeros((batch_size, speech_length, ds), dtype(split.speech[0])),
      speech_mask=np.zeros((batch_size, speech_length), np.float32),
      text=np.zeros((batch_size, text_length, dt), dtype(split.text[0])),
      text_mask=np.zeros((batch_size, text_length), np.float32),
      label=np.zeros((batch_size,), np.int32),
      example_mask=np.zeros((batch_size,), np.float32),
      index=np.full((batch_size,), -1, np.int32))
  for j, r in enumerate(rows):
    s, t = split.speech[r], split.text[r]
    batch["speech"][j, :s.shape[0]] = s
    batch["speech_mask"][j, :s.shape[0]] = 1
    batch["text"][j, :t.shape[0]] = t
    batch["text_mask"][j, :t.shape[0]] = 1
    batch["label"][j] = split.labels[r]
    batch["example_mask"][j] = 1
    batch["index"][j] = r
  return batch


def iterate_batches(split: Split, shapes: BatchShapes, batch_size: int, *, shuffle: bool,
                    seed: int = 0, epoch: int = 0) -> Iterator[dict]:
  """Yields every utterance of ``split`` exactly once, in fixed-shape batches."""
  for b, rows in batch_indices(split, shapes, batch_size, shuffle=shuffle, seed=seed,
                               epoch=epoch):
    yield make_batch(split, rows, *shapes.lengths(b), batch_size)


def padding_fraction(split: Split, shapes: BatchShapes, batch_size: int) -> dict:
  """Fraction of speech frames (text tokens, when the buckets follow text) that are
  padding, three ways.

  Returns:
    ``buckets`` (this module's batches), ``batch_max`` (pad each batch to its
    longest utterance, a DataLoader with a collate function) and ``global_max``
    (the original: every utterance padded to the longest of the file), each as
    padded / total frames, computed over one shuffled pass.
  """
  by_text = bool(shapes.text_buckets)   # the modality the buckets follow
  lengths = split.text_lengths if by_text else split.speech_lengths
  real = float(lengths.sum())
  total_buckets = total_batch_max = 0.0
  for b, rows in batch_indices(split, shapes, batch_size, shuffle=True):
    total_buckets += batch_size * shapes.lengths(b)[1 if by_text else 0]
  rng = np.random.default_rng(0)
  order = rng.permutation(len(split))
  for i in range(0, len(order), batch_size):
    chunk = lengths[order[i:i + batch_size]]
    total_batch_max += len(chunk) * chunk.max()
  total_global = len(lengths) * float(lengths.max())
  return dict(buckets=1 - real / total_buckets, batch_max=1 - real / total_batch_max,
              global_max=1 - real / total_global)
