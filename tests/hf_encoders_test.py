"""The Hugging Face encoders (fusion_jax.encoders) against transformers' own hidden states.

The references are the committed fixtures (tests/fixtures/hf, scripts/make_hf_fixtures.py):
tiny random snapshots of every supported architecture and what transformers 5.23.0 computes
for them. No torch here."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from fusion_jax.encoders import bert, hub, speech, whisper
from fusion_jax.errors import ConfigError, DataError, MissingDependency
from tests.conftest import FIXTURES
from tests.binaries import extract_tone_corpus

HF = os.path.join(FIXTURES, "hf")
SPEECH = ["wav2vec2_base", "wav2vec2_large_lv60", "hubert_base", "hubert_large_bn",
          "wavlm_base", "wavlm_large", "data2vec_audio"]
TEXT = ["bert", "roberta", "xlm_roberta"]
TOL = 1e-4   # relative to the largest value, as the issue asks


def ref(name):
  return np.load(os.path.join(HF, name, "reference.npz"))


def rel_err(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def hf_states(r, i):
  """transformers' states of clip i as ``[T, N + 1, H]``; the last one ``last_hidden_state``
  (the same tensor for post-LN models, after the final LayerNorm for pre-LN ones)."""
  states = r[f"hidden{i}"].transpose(1, 0, 2).copy()
  states[:, -1] = r[f"last{i}"]
  return states


# ------------------------------------------------------------------ speech
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", SPEECH)
def test_speech_hidden_states_match_transformers(name, fmt):
  """Raw clip in (normalised as preprocessor_config.json says), every hidden state out."""
  enc = speech.SpeechEncoder.from_pretrained(os.path.join(HF, name), fmt=fmt)
  r = ref(name)
  got = enc.encode([r["clip0"], r["clip1"]], all_layers=True)
  last = enc.encode([r["clip1"]])
  for i in range(2):
    assert got[i].shape == hf_states(r, i).shape
    assert rel_err(got[i], hf_states(r, i)) < TOL, (name, fmt, i)
  np.testing.assert_allclose(last[0], got[1][:, -1], atol=1e-5)


@pytest.mark.parametrize("name", SPEECH)
def test_a_padded_batch_equals_each_clip_alone(name):
  """Even for base-style models, which transformers must not pad: the GroupNorm's statistics
  and attention see each clip's real frames only."""
  enc = speech.SpeechEncoder.from_pretrained(os.path.join(HF, name))
  r = ref(name)
  clips = [enc.prepare(r["clip0"]), enc.prepare(r["clip1"])]
  batch = np.zeros((2, 1800), np.float32)
  for j, c in enumerate(clips):
    batch[j, :c.size] = c
  batch[1, clips[1].size:] = 5.0   # loud padding: must change nothing
  states, frames = speech.SpeechModel(enc.cfg).apply(enc.params, batch,
                                                     jnp.array([c.size for c in clips]))
  assert list(np.asarray(frames)) == [r["hidden0"].shape[1], r["hidden1"].shape[1]]
  for j in range(2):
    assert rel_err(np.asarray(states)[j, :frames[j]], hf_states(r, j)) < TOL
  if "batch_hidden" in r and not (enc.cfg.conv_pos_batch_norm
                                  or enc.cfg.model_type == "data2vec-audio"):
    # transformers' own padded batch with its attention mask (with conv_pos_batch_norm, and
    # data2vec-audio's stack of positional convs, padded frames stop being zero before a
    # conv reads them: transformers is not padding-invariant there)
    for j in range(2):
      want = r["batch_hidden"][j, :, :frames[j]].transpose(1, 0, 2).copy()
      want[:, -1] = r["batch_last"][j, :frames[j]]
      assert rel_err(np.asarray(states)[j, :frames[j]], want) < TOL


def test_wavlm_buckets_follow_transformers_formula():
  b = speech.relative_buckets(200, 320, 800)
  rel = np.arange(200)[None] - np.arange(200)[:, None]
  assert b.shape == (200, 200) and b[0, 0] == 0 and b[5, 5] == 0
  assert np.all(b[rel > 0] >= 160) and np.all(b[rel < 0] < 160)   # direction: upper half
  assert b[0, 79] == 160 + 79 and b[0, 80] == 160 + 80   # exact below max_exact = 80...
  # ... then logarithmic, as transformers computes it (float32)
  n = 120
  large = 80 + np.log(np.float32(n) / np.float32(80)) / np.float32(np.log(800 / 80)) * 80
  assert b[0, n] == 160 + int(np.float32(large)) and b[n, 0] == int(np.float32(large))


def test_weight_norm_forms_give_one_weight():
  rng = np.random.default_rng(0)
  v = rng.standard_normal((4, 2, 3)).astype(np.float32)
  g = rng.standard_normal((1, 1, 3)).astype(np.float32)
  want = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
  name = "encoder.pos_conv_embed.conv.weight"
  for sd in ({name + "_g": g, name + "_v": v},
             {"encoder.pos_conv_embed.conv.parametrizations.weight.original0": g,
              "encoder.pos_conv_embed.conv.parametrizations.weight.original1": v},
             {name: want.astype(np.float32)}):
    np.testing.assert_allclose(hub.fold_weight_norm(sd, name), want, rtol=1e-6)


# ------------------------------------------------------------------ text
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", TEXT)
def test_text_token_ids_and_states_match_transformers(name, fmt):
  enc = bert.BertFeatureEncoder.from_pretrained(os.path.join(HF, name), fmt=fmt)
  r = ref(name)
  texts = [str(t) for t in r["texts"]]
  for i, t in enumerate(texts):
    assert enc.tokenizer.encode(t) == list(r[f"ids{i}"])
  got = enc.encode(texts, all_layers=True, batch_size=3)   # two batches, padded
  for i in range(len(texts)):
    n = len(r[f"ids{i}"])
    want = r[f"hidden{i}"].transpose(1, 0, 2).reshape(n, -1)
    assert rel_err(got[i], want) < TOL, (name, i)
  # transformers' padded batch (its padding, its positions) agrees on the real tokens
  states = enc.states(r["batch_ids"], r["batch_mask"], all_layers=True)
  for i in range(len(texts)):
    n = int(r["batch_mask"][i].sum())
    assert rel_err(states[i, :n], r["batch_hidden"][i, :, :n].transpose(1, 0, 2)) < TOL


def test_roberta_position_ids_start_after_the_configs_pad_id():
  for pad in (1, 0, 5):
    cfg = bert.BertConfig(model_type="roberta", pad_token_id=pad)
    ids = jnp.array([[7, 8, 9, pad, pad]])
    assert np.asarray(bert.position_ids(cfg, ids)).tolist() == [
        [pad + 1, pad + 2, pad + 3, pad, pad]]
  assert np.asarray(bert.position_ids(bert.BertConfig(), jnp.zeros((1, 3), int))).tolist() \
      == [[0, 1, 2]]


def test_tokenizer_pair_keeps_the_line_and_the_end_of_the_context():
  enc = bert.BertFeatureEncoder.from_pretrained(os.path.join(HF, "roberta"))
  tok = enc.tokenizer
  tok.max_length = 12
  line, context = tok.encode("Why?"), "the door " * 20 + "no"
  ids, types = tok.encode_pair("Why?", context)
  assert len(ids) == 12 and len(types) == 12
  assert ids[:len(line)] == line   # the whole line <s> … </s>, then </s> context </s>
  kept = ids[len(line) + 1:-1]
  assert len(kept) == 12 - len(line) - 2 and kept == tok._tok.encode(  # pylint: disable=protected-access
      context, add_special_tokens=False).ids[-len(kept):]
  long_line = tok.encode("I am so happy today! " * 3)
  ids, _ = tok.encode_pair("I am so happy today! " * 3, "no")   # the line takes every slot
  assert len(ids) == 12 and ids[:9] == long_line[:9] and tok.encode("no")[1] not in ids


# ------------------------------------------------------------------ loading and bad input
def copy_snapshot(tmp_path, name, **config_changes):
  d = tmp_path / name
  shutil.copytree(os.path.join(HF, name), d)
  if config_changes:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(config_changes)
    (d / "config.json").write_text(json.dumps(cfg))
  return d


def test_hub_ids_resolve_in_the_local_cache_and_missing_ones_say_where_and_how(
    tmp_path, monkeypatch):
  cache = tmp_path / "hub"
  repo = cache / "models--acme--tiny-wavlm"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text("abc123\n")
  shutil.copytree(os.path.join(HF, "wavlm_large"), repo / "snapshots" / "abc123")
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  snap = hub.resolve("acme/tiny-wavlm")
  assert (snap.name, snap.revision) == ("acme/tiny-wavlm", "abc123")
  enc = speech.SpeechEncoder.from_pretrained("acme/tiny-wavlm")
  r = ref("wavlm_large")
  assert rel_err(enc.encode([r["clip0"]], all_layers=True)[0], hf_states(r, 0)) < TOL
  assert hub.resolve("acme/tiny-wavlm@abc123").path == snap.path
  monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
  with pytest.raises(MissingDependency) as e:
    hub.resolve("facebook/wav2vec2-base")
  msg = str(e.value)
  assert "\n" not in msg and str(cache) in msg and str(tmp_path / "home" / "hub") in msg
  assert "hf download facebook/wav2vec2-base" in msg and "never downloads" in msg
  with pytest.raises(MissingDependency, match="no such folder"):
    hub.resolve(str(tmp_path / "no" / "such" / "dir"))


@pytest.mark.parametrize("change, error, pattern", [
    (dict(model_type="conformer"), ConfigError,
     r"model_type 'conformer' is not supported as a speech encoder; supported: wav2vec2, "
     r"hubert, wavlm, data2vec-audio"),
    (dict(model_type="roberta"), ConfigError, r"text encoder; give it as the text model"),
    (dict(feat_extract_norm="batch"), ConfigError, r"feat_extract_norm 'batch'"),
    (dict(add_adapter=True), ConfigError, r"add_adapter"),
    (dict(hidden_act="mish"), ConfigError, r"hidden_act 'mish'"),
    (dict(hidden_size=32, num_attention_heads=2), DataError,
     r"field 'encoder.layer_norm.bias': tensor 'encoder.layer_norm.bias' has shape \[16\] "
     r"where config.json gives \[32\]"),
])
def test_speech_config_problems_stop_with_one_line(tmp_path, change, error, pattern):
  d = copy_snapshot(tmp_path, "wav2vec2_base", **change)
  with pytest.raises(error, match=pattern) as e:
    speech.SpeechEncoder.from_pretrained(str(d))
  assert "\n" not in str(e.value) and str(d) in str(e.value)


def test_text_config_problems_stop_with_one_line(tmp_path):
  d = copy_snapshot(tmp_path, "roberta", model_type="wavlm")
  with pytest.raises(ConfigError, match="speech encoder; give it as the speech model"):
    bert.BertFeatureEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path, "bert", model_type="t5")
  with pytest.raises(ConfigError, match="'t5' is not supported as a text encoder; supported: "
                     "bert, roberta, xlm-roberta"):
    bert.BertFeatureEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path, "xlm_roberta")
  os.remove(d / "tokenizer.json")
  with pytest.raises(DataError, match="no tokenizer: none of tokenizer.json"):
    bert.BertFeatureEncoder.from_pretrained(str(d))


def test_missing_and_damaged_weights(tmp_path):
  d = copy_snapshot(tmp_path, "wavlm_large")
  os.remove(d / "model-00002-of-00002.safetensors")
  with pytest.raises(DataError, match=r"model-00002-of-00002.safetensors: shard named in the "
                     "index is missing"):
    speech.SpeechEncoder.from_pretrained(str(d))
  for f in ("model-00001-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin"):
    os.remove(d / f) if (d / f).exists() else None
  with pytest.raises(DataError, match="no weights: none of model.safetensors"):
    speech.SpeechEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path, "hubert_base")
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match="model.safetensors: unreadable safetensors file"):
    speech.SpeechEncoder.from_pretrained(str(d))
  os.remove(d / "config.json")
  with pytest.raises(DataError, match="config.json: file not found"):
    speech.SpeechEncoder.from_pretrained(str(d))


def test_audio_at_another_rate_is_refused(tmp_path):
  enc = speech.SpeechEncoder.from_pretrained(os.path.join(HF, "hubert_base"))
  with pytest.raises(ConfigError, match="clips at 8000 Hz; hubert_base takes 16000 Hz"):
    enc.encode([np.zeros(800, np.float32)], sample_rate=8000)
  with pytest.raises(ConfigError, match="clip 0 has 5 samples"):
    enc.encode([np.zeros(5, np.float32)])
  d = copy_snapshot(tmp_path, "hubert_base")
  pre = json.loads((d / "preprocessor_config.json").read_text())
  (d / "preprocessor_config.json").write_text(json.dumps({**pre, "sampling_rate": 8000}))
  with pytest.raises(ConfigError, match="sampling_rate 8000; fusion_jax's speech encoders "
                     "take 16000 Hz"):
    speech.SpeechEncoder.from_pretrained(str(d))


def test_a_crafted_bin_checkpoint_runs_nothing(tmp_path):
  import pickle
  import zipfile

  class Evil:
    def __reduce__(self):
      return (os.system, ("touch " + str(tmp_path / "pwned"),))

  d = copy_snapshot(tmp_path, "hubert_base")
  os.remove(d / "model.safetensors")
  with zipfile.ZipFile(d / "pytorch_model.bin", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
  with pytest.raises(DataError, match="refused"):
    speech.SpeechEncoder.from_pretrained(str(d))
  assert not (tmp_path / "pwned").exists()


def test_weights_digest_is_of_the_bytes(tmp_path):
  d = copy_snapshot(tmp_path, "roberta")
  a = hub.weights_digest(hub.resolve(str(d)))
  assert a == hub.weights_digest(hub.resolve(os.path.join(HF, "roberta"))) and len(a) == 64
  data = bytearray((d / "model.safetensors").read_bytes())
  data[-1] ^= 1
  (d / "model.safetensors").write_bytes(bytes(data))
  assert hub.weights_digest(hub.resolve(str(d))) != a


# ------------------------------------------------------------------ extraction to prediction
def test_hf_features_train_and_predict_and_only_the_same_weights_recompute_them(tmp_path):
  """wav → --speech_extractor hf / --text_extractor hf → train.py → predict.py on new wavs;
  the snapshot moved: predict.py --speech_model finds it; other weights: refused, one line."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from tests.binaries import TINY, run  # pylint: disable=import-outside-toplevel
  speech_dir = tmp_path / "snap" / "wavlm"
  shutil.copytree(os.path.join(HF, "wavlm_base"), speech_dir)
  extract = ["--speech_extractor=hf", f"--speech_model={speech_dir}", "--text_extractor=hf",
             f"--text_model={os.path.join(HF, 'roberta')}", "--speech_hidden_states=all",
             "--noprogress"]
  extract_tone_corpus(tmp_path, extract)
  side = json.loads((tmp_path / "f" / "train_speech.json").read_text())
  fp = side["extractor"] if "extractor" in side else side["preprocessing"]["extractor"]
  assert fp["options"]["sha256"] == hub.weights_digest(hub.resolve(str(speech_dir)))
  assert fp["options"]["stack"] == 3 and fp["dim"] == 48 and fp["location"] == str(speech_dir)
  f = tmp_path / "f"
  run("train.py", f"--train_speech_features={f}/train_speech.npz",
      f"--train_text_features={f}/train_text.npz", f"--val_speech_features={f}/val_speech.npz",
      f"--val_text_features={f}/val_text.npz", f"--csv_path={f}/train_split.csv",
      f"--config={TINY}", "--variants=gated", "--epochs=1", "--config.data.num_buckets=1",
      f"--model_dir={tmp_path}/m", f"--results_dir={tmp_path}/r", "--noexport_torch")
  moved = tmp_path / "elsewhere"
  shutil.move(str(speech_dir), moved)
  predict = ["predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
             f"--output={tmp_path}/p.csv", "--noprogress"]
  run(*predict, f"--speech_model={moved}")
  df = pd.read_csv(tmp_path / "p.csv")
  assert len(df) == 4 and np.allclose(df[["p_sad", "p_happy"]].sum(axis=1), 1.0, atol=1e-5)
  other = tmp_path / "other"
  shutil.copytree(moved, other)
  w = bytearray((other / "model.safetensors").read_bytes())
  w[-4:] = b"\x00\x00\x80\x3f"   # one weight changed
  (other / "model.safetensors").write_bytes(bytes(w))
  bad = run(*predict[:-2], f"--output={tmp_path}/q.csv", f"--speech_model={other}",
            check=False)
  assert bad.returncode == 2 and not (tmp_path / "q.csv").exists()
  line = bad.stderr.strip().splitlines()[-1]
  assert "is not the one the features were made with (wavlm" in line and \
      "give that snapshot (--speech_model)" in line


# ------------------------------------------------------------------ Whisper
WHISPER = ["whisper_tiny", "whisper_large_v3"]   # 80 and 128 mel bands


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", WHISPER)
def test_whisper_log_mel_and_hidden_states_match_transformers(name, fmt):
  """The snapshot's front end (its mel bands) and every encoder state over the clip's frames,
  from the encoder-only safetensors and from the whole generator's .bin (``model.`` prefix)."""
  enc = whisper.WhisperEncoder.from_pretrained(os.path.join(HF, name), fmt=fmt)
  r = ref(name)
  for i in range(2):
    mel = whisper.whisper_log_mel(r[f"clip{i}"], enc.n_mels)
    assert mel.shape == (enc.n_mels, 3000)
    np.testing.assert_allclose(mel[:, :r[f"mel{i}"].shape[1]], r[f"mel{i}"], atol=2e-4)
    got = enc.encode([r[f"clip{i}"]], all_layers=True)[0]
    want = r[f"hidden{i}"].transpose(1, 0, 2)
    assert got.shape == want.shape == (whisper.output_frames(r[f"clip{i}"].size), 3, 16)
    assert rel_err(got, want) < TOL, (name, fmt, i)
    np.testing.assert_allclose(enc.encode([r[f"clip{i}"]])[0], r[f"last{i}"],
                               atol=TOL * np.abs(r[f"last{i}"]).max())


def test_whisper_snapshot_problems_stop_with_one_line(tmp_path):
  d = copy_snapshot(tmp_path, "whisper_tiny")
  with pytest.raises(ConfigError, match="a Whisper snapshot: read it with "):
    speech.SpeechEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path / "wide", "whisper_tiny", d_model=32)
  with pytest.raises(DataError, match=r"tensor 'encoder.conv1.weight' has shape \[16, 80, 3\] "
                     r"where config.json gives \[32, 80, 3\]"):
    whisper.WhisperEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path, "wavlm_base")
  with pytest.raises(ConfigError, match="model_type 'wavlm', not a Whisper snapshot"):
    whisper.WhisperEncoder.from_pretrained(str(d))
  d = copy_snapshot(tmp_path, "whisper_large_v3")
  pre = json.loads((d / "preprocessor_config.json").read_text())
  (d / "preprocessor_config.json").write_text(json.dumps({**pre, "feature_size": 80}))
  with pytest.raises(ConfigError, match="feature_size 80; fusion_jax's Whisper front end "
                     "takes 128"):
    whisper.WhisperEncoder.from_pretrained(str(d))


def test_the_hf_extractor_runs_whisper_snapshots_too():
  """``--speech_extractor hf`` on a Whisper snapshot: its states at 50 frames/s (pooled), the
  snapshot's identity in the fingerprint, and the same numbers as the encoder."""
  from fusion_jax.features import extractors  # pylint: disable=import-outside-toplevel
  r = ref("whisper_large_v3")
  ex = extractors.make_extractor("hf", model=os.path.join(HF, "whisper_large_v3"), pool=2,
                                 hidden_states="all")
  assert (ex.dim, ex.frame_rate, ex.max_seconds) == (16 * 3, 25.0, 30.0)
  opts = ex.fingerprint()["options"]
  assert (opts["model_type"], opts["layers"], opts["pool"]) == ("whisper", 2, 2)
  assert opts["sha256"] == hub.weights_digest(hub.resolve(os.path.join(HF, "whisper_large_v3")))
  got = ex.compute([r["clip1"]])[0]
  want = r["hidden1"].transpose(1, 0, 2).reshape(-1, 48)
  assert got.shape == ((want.shape[0] + 1) // 2, 48)
  np.testing.assert_allclose(got[0], want[:2].mean(0), atol=1e-4 * np.abs(want).max())


# ------------------------------------------------------------------ the original's extraction
TESS = os.path.join(FIXTURES, "tess")


def dense_torchaudio_resample(x, orig, new):
  """torchaudio's sinc_interp_hann Resample as its source writes it (dense kernel, float64
  here, but -j/new rounded to float32: torch divides an integer arange in its default
  dtype), for small gcd-reduced rates."""
  import math  # pylint: disable=import-outside-toplevel
  g = math.gcd(orig, new)
  o, n = orig // g, new // g
  base = min(o, n) * 0.99
  width = math.ceil(6 * o / base)
  phase = (np.arange(0, -n, -1) / n).astype(np.float32).astype(np.float64)
  t = (phase[:, None] + np.arange(-width, width + o)[None] / o) * base
  t = np.clip(t, -6, 6)
  window = np.cos(t * math.pi / 12) ** 2
  t = t * math.pi
  with np.errstate(invalid="ignore", divide="ignore"):
    kernel = np.where(t == 0, 1.0, np.sin(t) / t) * window * base / o
  xp = np.pad(np.asarray(x, np.float64), (width, width + o))
  blocks = (xp.size - kernel.shape[1]) // o + 1
  y = np.stack([kernel @ xp[k * o:k * o + kernel.shape[1]] for k in range(blocks)]).ravel()
  return y[:math.ceil(n * len(x) / o)]


@pytest.mark.parametrize("orig,new", [(22050, 16000), (48000, 16000), (8000, 16000),
                                      (44100, 16000)])
def test_sinc_resampling_is_torchaudios(orig, new):
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(orig)
  x = (rng.standard_normal(orig // 20) * 0.3).astype(np.float32)
  got = audio.resample_sinc(x, orig, new)
  want = dense_torchaudio_resample(x, orig, new)
  assert got.shape == want.shape == (-(-new * x.size // orig),)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_trim_keeps_the_span_above_the_fraction_of_the_peak():
  from fusion_jax.features import audio  # pylint: disable=import-outside-toplevel
  x = np.array([0.001, -0.005, 0.3, -1.0, 0.02, 0.011, 0.004, 0.0], np.float32)
  np.testing.assert_array_equal(audio.trim_to_peak(x, 0.01), x[2:6])   # 0.011 > 0.01, 0.004 not
  np.testing.assert_array_equal(audio.trim_to_peak(np.zeros(4, np.float32), 0.01), np.zeros(4))


def test_tess_folders_and_the_originals_split_csvs():
  from fusion_jax.features import corpora  # pylint: disable=import-outside-toplevel
  whole = corpora.tess_manifest(os.path.join(TESS, "TESS"))
  f = whole.frame.set_index("id")
  assert len(f) == 10 and whole.class_names == list(corpora.TESS_EMOTIONS)
  assert f.loc["OAF_dip_ps", "emotion"] == "pleasant_surprise" == f.loc["YAF_moon_ps", "emotion"]
  assert f.loc["OAF_back_angry", "transcript"] == "Say the word back"
  assert (f.loc["YAF_near_sad", "speaker"], f.loc["YAF_near_sad", "label"]) == ("YAF", 6)
  splits = corpora.tess_manifests(os.path.join(TESS, "TESS"), os.path.join(TESS, "Data Split"))
  assert [len(m) for m in splits.values()] == [7, 2, 1]
  assert splits["val"].frame["id"].tolist() == ["OAF_dip_ps", "YAF_mob_angry"]   # CSV order
  assert all(os.path.exists(p) for m in splits.values() for p in m.frame["path"])
  ours = corpora.tess_manifests(os.path.join(TESS, "TESS"))
  assert sorted(sum((m.frame["id"].tolist() for m in ours.values()), [])) == sorted(f.index)


def test_a_split_csv_whose_label_disagrees_with_tess_names_the_row(tmp_path):
  from fusion_jax.features import corpora  # pylint: disable=import-outside-toplevel
  lines = (open(os.path.join(TESS, "Data Split", "train_split.csv")).read().splitlines())
  lines[-1] = lines[-1].replace(",6,sad", ",3,sad")
  (tmp_path / "train_split.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"train_split.csv.*row 6.*label '3' with emotion_name "
                     r"'sad' is not TESS's map \(angry 0, disgust 1"):
    corpora.tess_split_manifest(os.path.join(TESS, "TESS"), tmp_path / "train_split.csv")


def test_preset_original_writes_the_originals_files_and_train_reads_them(tmp_path):
  """--preset original --corpus tess: the .pt files equal what the original's extraction
  (transformers, torchaudio's resampling, the 1 % trim) made of the same wavs with the same
  snapshots (scripts/make_hf_fixtures.py), and train.py runs on them with the original's
  flags."""
  from fusion_jax.data import torch_pickle  # pylint: disable=import-outside-toplevel
  from tests.binaries import TINY, run  # pylint: disable=import-outside-toplevel
  out = tmp_path / "f"
  proc = run("extract_features.py", "--preset=original", "--corpus=tess",
             f"--corpus_dir={TESS}/TESS", f"--tess_splits={TESS}/Data Split",
             f"--speech_model={HF}/wav2vec2_base", f"--text_model={HF}/roberta",
             f"--out_dir={out}", "--noprogress")
  assert "train: 7 utterances" in proc.stdout and "test: 1 utterances" in proc.stdout
  r = ref_tess = np.load(os.path.join(TESS, "reference.npz"))
  for split in ("train", "val", "test"):
    for modality, name in (("speech", f"{split}_speech_features.pt"),
                           ("text", f"text_{split}_features.pt")):
      got = torch_pickle.load_torch_file(str(out / name))
      want_x, want_m = r[f"{split}_{modality}_x"], r[f"{split}_{modality}_m"]
      assert got["x"].shape == want_x.shape, (split, modality)
      np.testing.assert_array_equal(got["m"], want_m)
      assert rel_err(got["x"], want_x) < TOL, (split, modality)
      np.testing.assert_array_equal(got["y"], ref_tess[f"{split}_y"])
    csv = (out / f"{split}_split.csv").read_text().splitlines()
    assert csv[0].startswith("path,label,emotion_name")
  side = json.loads((out / "train_speech_features.json").read_text())
  fp = side["extractor"] if "extractor" in side else side["preprocessing"]["extractor"]
  assert (fp["options"]["trim"], fp["options"]["resampler"]) == (0.01, "sinc")
  run("train.py", f"--train_speech_features={out}/train_speech_features.pt",
      f"--train_text_features={out}/text_train_features.pt",
      f"--val_speech_features={out}/val_speech_features.pt",
      f"--val_text_features={out}/text_val_features.pt", f"--csv_path={out}/train_split.csv",
      f"--config={TINY}", "--variants=concatenation", "--epochs=1", "--batch_size=2",
      f"--model_dir={tmp_path}/m", f"--results_dir={tmp_path}/r", "--noexport_torch")
  assert (tmp_path / "r" / "fusion_variants_comparison.txt").exists()
  run("evaluate.py", f"--test_speech_features={out}/test_speech_features.pt",
      f"--test_text_features={out}/text_test_features.pt", f"--csv_path={out}/train_split.csv",
      f"--test_csv_path={out}/test_split.csv", f"--model_dir={tmp_path}/m",
      f"--results_dir={tmp_path}/e", f"--config={TINY}", "--variants=concatenation",
      "--noanalysis")
  assert (tmp_path / "e" / "test_results" / "test_metrics_comparison.txt").exists()


def test_the_recipes_take_your_snapshots(tmp_path):
  """recipe_ravdess.py --speech_extractor hf --speech_model … --text_extractor hf
  --text_model …: the features are named after the snapshots and the folds run on them."""
  from tests.binaries import TINY, run  # pylint: disable=import-outside-toplevel
  from tests.features_test import make_ravdess  # pylint: disable=import-outside-toplevel
  root = make_ravdess(tmp_path / "rav", actors=(1, 2, 3, 4), emotions=(1, 5), song=False)
  run("recipe_ravdess.py", f"--ravdess_dir={root}", f"--work_dir={tmp_path}/work",
      "--speech_extractor=hf", f"--speech_model={HF}/hubert_base", "--text_extractor=hf",
      f"--text_model={HF}/bert", "--folds=2", "--val_speakers=1", f"--config={TINY}",
      "--config.train.epochs=1", "--variants=concatenation", "--analyse_folds=",
      "--nobaseline")
  fdir = tmp_path / "work" / "features"
  side = json.loads((fdir / "ravdess_hf_hubert_base.json").read_text())
  fp = side["extractor"] if "extractor" in side else side["preprocessing"]["extractor"]
  assert (fp["options"]["model_type"], fp["options"]["pool"]) == ("hubert", 4)
  assert (fdir / "ravdess_hf_text_bert.npz").exists()
  summary = json.load(open(tmp_path / "work" / "cv_summary.json"))
  assert len(summary["variants"]["concatenation"]["runs"]) == 2
  bad = run("recipe_ravdess.py", f"--ravdess_dir={root}", f"--work_dir={tmp_path}/w2",
            "--speech_extractor=hf", f"--config={TINY}", check=False)
  assert bad.returncode == 2 and "--speech_extractor=hf needs --speech_model" in bad.stderr


# ------------------------------------------------------------------ fine-tuning a snapshot's top layers
@pytest.mark.parametrize("name", ["wav2vec2_base", "wavlm_large", "hubert_large_bn"])
def test_finetuned_speech_top_equals_the_snapshot_at_step_zero(name):
  """Post-LN, pre-LN (final LayerNorm after the top) and WavLM (the position bias from layer
  0's table): the top k layers run on stored state N - k give the stored last state."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from fusion_jax.models import encoders as model_encoders  # pylint: disable=import-outside-toplevel
  enc = speech.SpeechEncoder.from_pretrained(os.path.join(HF, name))
  digest = hub.weights_digest(enc.snapshot)
  hub.remember(digest, enc.snapshot.path)
  key = model_encoders.snapshot_key("hf", digest)
  r = ref(name)
  states = enc.encode([r["clip0"], r["clip1"]], all_layers=True)
  n = max(s.shape[0] for s in states)
  x = np.zeros((2, n, 3 * 16), np.float32)
  m = np.zeros((2, n), np.float32)
  for i, s in enumerate(states):
    x[i, :len(s)], m[i, :len(s)] = s.reshape(len(s), -1), 1
  for k in (1, 2):
    top = model_encoders.FineTunedTop(key, k, 3)
    p = top.init(jax.random.key(0), x, m, deterministic=True)["params"]
    p = model_encoders.load_pretrained({"speech_finetune": p}, key, k,
                                       "speech_finetune")["speech_finetune"]
    y = np.asarray(jax.jit(functools.partial(top.apply, deterministic=True))({"params": p}, x, m))
    for i, s in enumerate(states):
      assert rel_err(y[i, :len(s)], s[:, -1]) < TOL, (name, k, i)
      assert not y[i, len(s):].any()


def test_fine_tuning_a_speech_snapshot_trains_resumes_and_predicts(tmp_path):
  """hf features of every hidden state → --config.model.speech_finetune_layers=1: the layers
  start as the snapshot's and move at their own rate, a cut run resumes to the same weights,
  and predict.py recomputes features and runs the fine-tuned layers on new recordings."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from tests.binaries import TINY, run  # pylint: disable=import-outside-toplevel
  from fusion_jax import runs  # pylint: disable=import-outside-toplevel
  from fusion_jax.models import encoders as model_encoders  # pylint: disable=import-outside-toplevel
  snap = os.path.join(HF, "wavlm_base")
  extract = ["--speech_extractor=hf", f"--speech_model={snap}", "--speech_hidden_states=all",
             "--pool=1", "--text_extractor=hf", f"--text_model={HF}/bert", "--noprogress"]
  extract_tone_corpus(tmp_path, extract)
  f = tmp_path / "f"
  train = ["train.py", f"--train_speech_features={f}/train_speech.npz",
           f"--train_text_features={f}/train_text.npz",
           f"--val_speech_features={f}/val_speech.npz", f"--val_text_features={f}/val_text.npz",
           f"--csv_path={f}/train_split.csv", f"--config={TINY}", "--variants=speech_only",
           "--config.model.speech_finetune_layers=1", "--config.optim.finetune_warmup_steps=0",
           "--config.data.num_buckets=1", f"--results_dir={tmp_path}/r", "--noexport_torch"]
  run(*train, "--epochs=2", f"--model_dir={tmp_path}/m")
  got = runs.load_run(str(tmp_path / "m"), "speech_only", 0)
  mc = got.model_config
  digest = hub.weights_digest(hub.resolve(snap))
  assert (mc.speech_finetune_layers, mc.speech_encoder) == (1, f"hf@{digest}")
  assert mc.encoder_locations == f"{digest}={snap}"   # how this process found the snapshot
  pre = model_encoders.get(mc.speech_encoder).top_params(1)
  moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(
      jax_leaves(got.params["speech_finetune"]), jax_leaves(pre))]
  assert min(moved) >= 0 and max(moved) > 1e-6
  # cut after epoch 1, then resumed: the same weights as the uninterrupted run
  run(*train, "--epochs=1", f"--model_dir={tmp_path}/cut")
  run(*train, "--epochs=2", f"--model_dir={tmp_path}/cut")
  resumed = runs.load_run(str(tmp_path / "cut"), "speech_only", 0)
  for a, b in zip(jax_leaves(resumed.params), jax_leaves(got.params)):
    np.testing.assert_array_equal(a, b)
  run("predict.py", f"--run={tmp_path}/m", f"--inputs={tmp_path}/new.csv",
      f"--output={tmp_path}/p.csv", "--variants=speech_only", "--noprogress",
      f"--export={tmp_path}/ex")
  df = pd.read_csv(tmp_path / "p.csv")
  assert len(df) == 4 and np.allclose(df[["p_sad", "p_happy"]].sum(axis=1), 1.0, atol=1e-5)
  assert os.listdir(tmp_path / "ex")


def jax_leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("name", ["roberta", "xlm_roberta"])
def test_finetuned_text_top_of_a_snapshot_equals_it_at_step_zero(name):
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from fusion_jax.models import encoders as model_encoders  # pylint: disable=import-outside-toplevel
  enc = bert.BertFeatureEncoder.from_pretrained(os.path.join(HF, name))
  digest = hub.weights_digest(enc.snapshot)
  hub.remember(digest, enc.snapshot.path)
  key = model_encoders.snapshot_key("hf_text", digest)
  stacks = enc.encode(TEXT_LINES, all_layers=True)
  last = enc.encode(TEXT_LINES)
  n = max(len(s) for s in stacks)
  x = np.zeros((len(stacks), n, stacks[0].shape[1]), np.float32)
  m = np.zeros((len(stacks), n), np.float32)
  for i, s in enumerate(stacks):
    x[i, :len(s)], m[i, :len(s)] = s, 1
  top = model_encoders.FineTunedTop(key, 2, 3)
  p = top.init(jax.random.key(0), x, m, deterministic=True)["params"]
  p = model_encoders.load_pretrained({"text_finetune": p}, key, 2)["text_finetune"]
  y = np.asarray(jax.jit(functools.partial(top.apply, deterministic=True))({"params": p}, x, m))
  for i, want in enumerate(last):
    assert rel_err(y[i, :len(want)], want) < TOL
  other = hub.weights_digest(hub.resolve(os.path.join(HF, "bert")))
  hub.remember(other[::-1], os.path.join(HF, "bert"))   # a folder whose weights are not these
  with pytest.raises(ConfigError, match="these weights are not the fine-tuned encoder's"):
    model_encoders.get(model_encoders.snapshot_key("hf_text", other[::-1]))
  with pytest.raises(ConfigError, match=r"is not known to this process: give it \(--text_model\)"):
    model_encoders.get(model_encoders.snapshot_key("hf_text", "0" * 64))


TEXT_LINES = ["I am so happy today!", "no", "Kids are talking by the door."]
