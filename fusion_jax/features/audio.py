"""Reading audio without extra dependencies: PCM ``.wav`` through the standard library.

Other containers (flac, mp3, mp4 …) are read through ``soundfile`` when it is
installed (it comes with the ``features`` extra); the core never needs it.
"""

from __future__ import annotations

import math
import os
import wave

import numpy as np

from fusion_jax.data.errors import DataError

SILENCE_RMS = 1e-4   # below this root-mean-square amplitude (full scale = 1) a clip is silent


def _read_pcm_wav(path: str):
  with wave.open(path, "rb") as w:
    channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
    raw = w.readframes(n)
  if len(raw) < n * width * channels and len(raw) % (width * channels) == 0:
    raise DataError(path, f"truncated: the header declares {n} frames but the file holds "
                    f"{len(raw) // (width * channels)}", field="data",
                    hint="re-copy or re-export the recording")
  if len(raw) % (width * channels):
    raise DataError(path, f"truncated: the audio data ends mid-sample ({len(raw)} bytes, "
                    f"{width * channels}-byte frames)", field="data",
                    hint="re-copy or re-export the recording")
  if width == 1:
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 2:
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
  elif width == 3:
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    v = np.where(v >= 1 << 23, v - (1 << 24), v)
    x = v.astype(np.float32) / float(1 << 23)
  elif width == 4:
    x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
  else:
    raise DataError(path, f"unsupported sample width {width} bytes", field="sampwidth")
  return x.reshape(-1, channels), rate


RESAMPLERS = ("polyphase", "sinc")


def read_audio(path, sample_rate: int = 16000, *, min_seconds: float = 0.05,
               resampler: str = "polyphase", upsample: bool = True) -> np.ndarray:
  """Reads a clip as mono float32 in [-1, 1] at ``sample_rate``.

  Args:
    path: a PCM ``.wav`` (any other format needs ``soundfile``).
    sample_rate: the rate the extractor expects; other rates are resampled:
      ``resampler="polyphase"`` (scipy's ``resample_poly``) or ``"sinc"`` (torchaudio's
      default ``Resample``, :func:`resample_sinc`: what the original pipeline used).
    min_seconds: shorter clips are an error.
    upsample: whether a recording at a lower rate (8 kHz telephone audio) is resampled up;
      False: it is an error (the model never heard audio without its upper band).

  Returns:
    ``[num_samples]`` float32.

  Raises:
    DataError: unreadable file, unsupported format, empty, too short or silent clip.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(path, "audio file not found", hint="check the path; a manifest's "
                    "paths are relative to the manifest's folder")
  try:
    if path.lower().endswith(".wav"):
      try:
        x, rate = _read_pcm_wav(path)
      except wave.Error:  # float or extensible wav: let soundfile try
        x, rate = _read_soundfile(path)
    else:
      x, rate = _read_soundfile(path)
  except DataError:
    raise
  except (EOFError, wave.Error) as e:
    raise DataError(path, f"not a readable WAV file (truncated header, or another format: "
                    f"{type(e).__name__} {e})", hint="convert it to 16-bit PCM wav") from None
  except (OSError, ValueError, RuntimeError) as e:
    raise DataError(path, f"unreadable audio ({type(e).__name__}: {e})") from None
  x = x.mean(axis=1) if x.ndim == 2 else x
  if rate < sample_rate and not upsample:
    raise DataError(path, f"recorded at {rate} Hz, below the {sample_rate} Hz the model's "
                    "features were made at (no content above "
                    f"{rate // 2000} kHz)", field="sample_rate",
                    hint="use a recording at the model's rate, or predict.py "
                    "--allow_upsampling to predict from it anyway")
  if not np.isfinite(x).all():
    bad = int(np.flatnonzero(~np.isfinite(x))[0])
    raise DataError(path, f"NaN or Inf samples (first at {bad / rate:.3f} s)", field="samples",
                    hint="a float wav with invalid values; re-export the recording")
  if rate != sample_rate and resampler == "sinc":
    x = resample_sinc(x, int(rate), int(sample_rate))
  elif rate != sample_rate:
    from scipy import signal  # pylint: disable=import-outside-toplevel
    g = np.gcd(int(rate), int(sample_rate))
    x = signal.resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
  if x.size < min_seconds * sample_rate:
    raise DataError(path, f"clip is {x.size / sample_rate:.3f} s long, shorter than "
                    f"{min_seconds} s", field="duration")
  rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
  if not np.isfinite(rms) or rms < SILENCE_RMS:
    raise DataError(path, f"clip is silent (RMS {rms:.2e} < {SILENCE_RMS:g} of full scale)",
                    field="samples", hint="drop it from the manifest or check the recording")
  return np.ascontiguousarray(x, np.float32)


def resample_sinc(x: np.ndarray, orig: int, new: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99) -> np.ndarray:
  """Band-limited sinc resampling with a Hann-windowed kernel, as torchaudio's
  ``transforms.Resample(orig, new)`` with its defaults (``sinc_interp_hann``, 6 zero
  crossings, roll-off 0.99): ``[N]`` → ``[ceil(N · new / orig)]`` float32.

  torchaudio convolves with a dense ``[new, 2·width + orig]`` kernel (after dividing both
  rates by their gcd; 391 MB for TESS's 24 414 Hz → 16 kHz) whose taps are zero beyond
  ``lowpass_filter_width`` crossings; here each output sample sums its ≈ 2·width taps only,
  from the same float64 formula rounded to a float32 kernel.
  """
  g = math.gcd(orig, new)
  o, n = orig // g, new // g
  base = min(o, n) * rolloff
  width = math.ceil(lowpass_filter_width * o / base)
  x = np.asarray(x, np.float32)
  out = np.arange(math.ceil(n * x.size / o))
  block, phase = out // n, out % n                   # torchaudio's conv stride and kernel row
  taps = np.arange(2 * width + o)                     # the kernel's columns
  # t as torchaudio builds it: float32 -j/new plus float64 (i - width)/orig, times base.
  # Only the columns near the row's centre can be non-zero: |t| < lowpass_filter_width.
  centre = np.floor(phase * o / n).astype(np.int64) + width
  span = np.arange(-width - 1, width + 2)
  cols = np.clip(centre[:, None] + span[None], 0, taps.size - 1)
  t = ((cols - width) / o + (-phase / n).astype(np.float32)[:, None].astype(np.float64)) * base
  t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
  window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
  t = t * math.pi
  with np.errstate(invalid="ignore", divide="ignore"):
    kernel = np.where(t == 0, 1.0, np.sin(t) / t) * window * (base / o)
  kernel = kernel.astype(np.float32)
  # duplicate columns (clipped at the kernel's edges) must count once
  first = np.concatenate([np.ones((cols.shape[0], 1), bool), np.diff(cols, axis=1) != 0], 1)
  src = block[:, None] * o + cols - width             # the input sample each tap reads
  inside = (src >= 0) & (src < x.size) & first
  samples = np.where(inside, x[np.clip(src, 0, max(x.size - 1, 0))], 0.0).astype(np.float32)
  return (samples.astype(np.float64) * kernel).sum(axis=1).astype(np.float32)


def trim_to_peak(x: np.ndarray, fraction: float) -> np.ndarray:
  """The span from the first to the last sample whose magnitude exceeds ``fraction`` of the
  clip's peak (the original pipeline's silence trim at ``fraction=0.01``); the clip itself
  when none does."""
  x = np.asarray(x)
  loud = np.flatnonzero(np.abs(x) > np.abs(x).max() * fraction) if x.size else []
  return x[loud[0]:loud[-1] + 1] if len(loud) else x


def speech_segments(x: np.ndarray, sample_rate: int = 16000, *, max_seconds: float = 8.0,
                    min_seconds: float = 0.5, min_silence_seconds: float = 0.3,
                    range_db: float = 35.0, floor_db: float = 10.0,
                    pad_seconds: float = 0.1) -> list:
  """Where a long recording speaks: ``[(start, end)]`` sample indices, in order, each
  ``min_seconds``–``max_seconds`` long (an energy segmenter; no model, no dependency).

  Frames of 25 ms every 10 ms are voiced when their level is within ``range_db`` of the
  recording's loud frames (99th percentile), at least ``floor_db`` above its noise floor
  (10th percentile: so a recording that is mostly room noise is not all "speech") and
  above silence (:data:`SILENCE_RMS`); pauses shorter than ``min_silence_seconds`` do not
  split; each region is padded by ``pad_seconds``. A region longer than ``max_seconds`` is
  cut at its quietest frame in the second half of each ``max_seconds`` window (never
  leaving a remainder under ``min_seconds``), and a region shorter than ``min_seconds``
  joins the one before it when the union fits and the pause is short, else is dropped (a
  click, a breath).

  Args:
    x: ``[num_samples]`` mono samples in [-1, 1].

  Returns:
    A list of ``(start, end)`` (end exclusive); empty when nothing is voiced.
  """
  x = np.asarray(x, np.float32)
  hop, win = int(round(0.010 * sample_rate)), int(round(0.025 * sample_rate))
  if x.size < win:
    return []
  n = 1 + (x.size - win) // hop
  frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n]
  rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
  db = 20 * np.log10(np.maximum(rms, 1e-10))
  threshold = max(np.percentile(db, 99) - range_db, np.percentile(db, 10) + floor_db,
                  20 * np.log10(SILENCE_RMS))
  voiced = db > threshold
  gap = int(round(min_silence_seconds / 0.010))
  runs = _runs(voiced)
  merged = []   # voiced runs with the short pauses between them closed
  for a, b in runs:
    if merged and a - merged[-1][1] < gap:
      merged[-1] = (merged[-1][0], b)
    else:
      merged.append((a, b))
  max_f, min_f = int(max_seconds / 0.010), int(min_seconds / 0.010)
  pad = int(round(pad_seconds / 0.010))
  pieces = []
  for a, b in merged:
    a, b = max(0, a - pad), min(n, b + pad)
    while b - a > max_f:   # cut at the quietest frame of the window's second half
      hi = min(a + max_f, b - min_f)     # the remainder is never a too-short tail
      lo = max(a + 1, min(a + max_f // 2, hi - 1))
      cut = lo + int(np.argmin(db[lo:hi]))
      pieces.append((a, cut))
      a = cut
    pieces.append((a, b))
  kept = []
  for a, b in pieces:
    if b - a >= min_f:
      kept.append((a, b))
    elif kept and b - kept[-1][0] <= max_f and a - kept[-1][1] < gap + 2 * pad:
      kept[-1] = (kept[-1][0], b)   # a short tail joins the region before it
  return [(a * hop, min(x.size, b * hop)) for a, b in kept]


def _runs(mask: np.ndarray) -> list:
  """``[(start, end)]`` of the True runs of a boolean vector (end exclusive)."""
  edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
  return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _read_soundfile(path: str):
  try:
    import soundfile  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(path, "only PCM .wav is read without extra packages",
                    hint="pip install soundfile, or convert to 16-bit PCM wav") from None
  x, rate = soundfile.read(path, dtype="float32", always_2d=True)
  return x, rate


def write_wav(path, samples: np.ndarray, sample_rate: int = 16000) -> None:
  """Writes mono float samples in [-1, 1] as 16-bit PCM (tests, fixtures)."""
  pcm = np.clip(np.round(np.asarray(samples, np.float64) * 32767.0), -32768, 32767)
  with wave.open(os.fspath(path), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.astype("<i2").tobytes())
