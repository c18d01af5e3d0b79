"""Log-mel filterbank frames in NumPy or JAX (no extra dependency).

One implementation serves both: every function takes ``xp`` (``numpy`` or
``jax.numpy``). Frames are not centred: frame ``t`` covers samples
``[t * hop, t * hop + n_fft)``, the last frame zero-padded, so a clip of
``n`` samples gives ``num_frames(n)`` frames and frame boundaries never
depend on the clip's length (padding invariance).

  >>> cfg = LogMelConfig()                    # 25 ms window, 10 ms hop, 80 mels
  >>> feats = log_mel(np.zeros(16000) + 0.1, cfg)   # [98, 80] float32
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusion_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
  """Log-mel settings.

  Attributes:
    sample_rate: Hz of the input samples.
    n_fft: window (= FFT) length in samples (400 = 25 ms at 16 kHz).
    hop: frame shift in samples (160 = 10 ms, 100 frames/s).
    n_mels: mel bands (the feature dim).
    fmin, fmax: band edges in Hz (``fmax`` None = Nyquist).
    floor: power floor before the log.
    pool: average this many consecutive frames (2 = 50 frames/s); the last
      group may be shorter.
  """
  sample_rate: int = 16000
  n_fft: int = 400
  hop: int = 160
  n_mels: int = 80
  fmin: float = 20.0
  fmax: Optional[float] = None
  floor: float = 1e-10
  pool: int = 1

  @property
  def frame_rate(self) -> float:
    return self.sample_rate / self.hop / self.pool


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: LogMelConfig) -> np.ndarray:
  """Triangular HTK-mel filters, ``[n_fft // 2 + 1, n_mels]`` float64, peak 1."""
  fmax = cfg.sample_rate / 2 if cfg.fmax is None else cfg.fmax
  if not 0 <= cfg.fmin < fmax <= cfg.sample_rate / 2:
    raise ConfigError(f"need 0 <= fmin < fmax <= Nyquist, got fmin={cfg.fmin}, fmax={fmax}")
  edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(fmax), cfg.n_mels + 2))
  freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  up = (freqs[None] - lo) / (mid - lo)
  down = (hi - freqs[None]) / (hi - mid)
  return np.maximum(0.0, np.minimum(up, down)).T


def hann(n: int) -> np.ndarray:
  """Periodic Hann window (as torch.hann_window / scipy's ``sym=False``)."""
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def num_frames(num_samples, cfg: LogMelConfig, xp=np):
  """Frames (before pooling) of a clip of ``num_samples``: at least one."""
  extra = xp.maximum(xp.asarray(num_samples) - cfg.n_fft, 0)
  return 1 + -(-extra // cfg.hop)


def num_output_frames(num_samples, cfg: LogMelConfig, xp=np):
  """Frames after pooling by ``cfg.pool``."""
  return -(-num_frames(num_samples, cfg, xp) // cfg.pool)


def log_mel(samples, cfg: LogMelConfig = LogMelConfig(), xp=np):
  """Log-mel frames of one clip.

  Args:
    samples: ``[num_samples]`` float, mono at ``cfg.sample_rate``.
    cfg: settings.
    xp: ``numpy`` (float32 result) or ``jax.numpy`` (traceable; static length).

  Returns:
    ``[num_output_frames(num_samples), n_mels]`` float32.
  """
  n = samples.shape[0]
  frames_n = int(num_frames(n, cfg))
  total = (frames_n - 1) * cfg.hop + cfg.n_fft
  x = xp.pad(xp.asarray(samples, xp.float32), (0, max(total - n, 0)))
  idx = np.arange(cfg.n_fft)[None, :] + cfg.hop * np.arange(frames_n)[:, None]
  frames = x[idx] * xp.asarray(hann(cfg.n_fft), xp.float32)
  spec = xp.fft.rfft(frames, n=cfg.n_fft, axis=-1)
  power = xp.real(spec) ** 2 + xp.imag(spec) ** 2
  mel = power @ xp.asarray(mel_filterbank(cfg), xp.float32)
  out = xp.log(xp.maximum(mel, cfg.floor)).astype(xp.float32)
  return pool_frames(out, cfg.pool, xp)


def pool_frames(frames, pool: int, xp=np):
  """Means of ``pool`` consecutive frames ``[T, D] → [ceil(T / pool), D]``."""
  if pool <= 1:
    return frames
  t, d = frames.shape
  groups = -(-t // pool)
  padded = xp.pad(frames, ((0, groups * pool - t), (0, 0)))
  counts = np.minimum(pool, t - pool * np.arange(groups)).astype(np.float32)
  return padded.reshape(groups, pool, d).sum(axis=1) / xp.asarray(counts)[:, None]


def log_mel_batch(samples, lengths, cfg: LogMelConfig = LogMelConfig()):
  """Log-mel frames of a padded batch in JAX (jit-friendly, for accelerators).

  Args:
    samples: ``[B, N]`` float, zero past each clip's length.
    lengths: ``[B]`` samples per clip.

  Returns:
    ``(frames [B, F, n_mels], mask [B, F])`` with ``F = num_output_frames(N)``;
    ``frames[b, :num_output_frames(lengths[b])]`` equals :func:`log_mel` of the
    unpadded clip, the rest is zero and masked out.
  """
  samples = jnp.asarray(samples, jnp.float32)
  n = samples.shape[1]
  # The last frame of a shorter clip is zero-padded past its end: zero the samples there.
  keep = jnp.arange(n)[None, :] < jnp.asarray(lengths)[:, None]
  raw = jax.vmap(lambda s: log_mel(s, dataclasses.replace(cfg, pool=1), xp=jnp))(
      jnp.where(keep, samples, 0.0))
  valid_raw = jnp.arange(raw.shape[1])[None, :] < num_frames(lengths, cfg, jnp)[:, None]
  if cfg.pool > 1:
    b, t, d = raw.shape
    groups = -(-t // cfg.pool)
    pad = groups * cfg.pool - t
    summed = jnp.pad(raw * valid_raw[..., None], ((0, 0), (0, pad), (0, 0))).reshape(
        b, groups, cfg.pool, d).sum(2)
    counts = jnp.pad(valid_raw, ((0, 0), (0, pad))).reshape(b, groups, cfg.pool).sum(2)
    raw = summed / jnp.maximum(counts, 1)[..., None]
    valid = counts > 0
  else:
    valid = valid_raw
  return jnp.where(valid[..., None], raw, 0.0), valid.astype(jnp.float32)
