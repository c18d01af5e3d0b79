"""Builds tiny random Hugging Face snapshots of every encoder fusion_jax runs, and the
hidden states transformers computes for them: the committed fixtures under
``tests/fixtures/hf/`` that hold fusion_jax.encoders to transformers without torch.

Needs torch and transformers (never run by the tests, never a dependency of fusion_jax)::

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 \
      transformers==5.23.0 --index-url https://download.pytorch.org/whl/cpu  # or PyPI
  /tmp/torchenv/bin/python scripts/make_hf_fixtures.py tests/fixtures/hf

Each snapshot folder holds ``config.json``, the weights (``model.safetensors``, sharded with
an index for one model, and ``pytorch_model.bin`` with the same tensors: old
``weight_g``/``weight_v`` names and a task-head prefix for some, as real Hub checkpoints
have them), ``preprocessor_config.json`` or tokenizer files, and ``reference.npz``: the
inputs and every hidden state transformers gives for them, one clip or line at a time and
as a padded batch with an attention mask.

``--full OUT`` instead writes random-initialised full-size ``wav2vec2-base`` and
``roberta-base`` snapshots with their references (hundreds of MB: not committed), for
``python scripts/hf_parity.py OUT/*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers as T

SR = 16000
# Two clips of different length (0.1 s and 0.075 s): the batch is padded to the longer one.
CLIP_SAMPLES = (1600, 1200)
TEXTS = ["I am so happy today!", "Kids are talking by the door.",
         "Dogs are sitting by the door, aren't they?", "no"]
CORPUS = TEXTS + ["Say the word back.", "The quick brown fox jumps over the lazy dog.",
                  "She said: what a wonderful, wonderful day!", "Why? Because I can."]

SMALL_SPEECH = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3),
                    conv_stride=(5, 2, 2), num_conv_pos_embeddings=4,
                    num_conv_pos_embedding_groups=2, vocab_size=12)
SMALL_TEXT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=40)


def perturb(model: torch.nn.Module, seed: int) -> None:
  """Random weights everywhere (fresh models start with LayerNorm = 1/0, zero biases)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.2
      p.copy_(p + noise if p.ndim > 1 else 1.0 + noise if "weight" in name or "const" in name
              else noise)
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=g) * 0.1)
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=g))


def old_weight_norm_names(sd: dict) -> dict:
  """The pre-parametrization names most Hub checkpoints (wav2vec2-base-960h…) carry."""
  return {k.replace("parametrizations.weight.original0", "weight_g")
           .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}


def save(folder: str, model, config, sd: dict, bin_sd: dict | None = None,
         shards: int = 1) -> None:
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  config.save_pretrained(folder)
  sd = {k: v.contiguous() for k, v in sd.items()}
  if shards == 1:
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  else:
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
      name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
      part = keys[i::shards]
      save_file({k: sd[k] for k in part}, os.path.join(folder, name), metadata={"format": "pt"})
      weight_map.update({k: name for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
  if bin_sd is not False:
    torch.save(bin_sd if bin_sd is not None else sd, os.path.join(folder, "pytorch_model.bin"))


def speech_model(kind: str, seed: int, **cfg):
  cls_cfg, cls = {"wav2vec2": (T.Wav2Vec2Config, T.Wav2Vec2Model),
                  "hubert": (T.HubertConfig, T.HubertModel),
                  "wavlm": (T.WavLMConfig, T.WavLMModel),
                  "data2vec-audio": (T.Data2VecAudioConfig, T.Data2VecAudioModel)}[kind]
  torch.manual_seed(seed)
  config = cls_cfg(**{**SMALL_SPEECH, **cfg})
  model = cls(config).eval()
  perturb(model, seed)
  return config, model


def speech_reference(model, fe, folder: str, seed: int) -> None:
  """Hidden states per clip (unpadded) and, where the snapshot's feature extractor gives an
  attention mask, of the padded batch."""
  rng = np.random.default_rng(seed)
  clips = [(0.3 * rng.standard_normal(n) + 0.1 * np.sin(np.arange(n) / 7)).astype(np.float32)
           for n in CLIP_SAMPLES]
  out = {f"clip{i}": c for i, c in enumerate(clips)}
  with torch.no_grad():
    for i, c in enumerate(clips):
      inputs = fe(c, sampling_rate=SR, return_tensors="pt")
      o = model(inputs.input_values, output_hidden_states=True)
      out[f"input{i}"] = inputs.input_values[0].numpy()
      out[f"hidden{i}"] = np.stack([h[0].numpy() for h in o.hidden_states])
      out[f"last{i}"] = o.last_hidden_state[0].numpy()
    if fe.return_attention_mask:
      inputs = fe(clips, sampling_rate=SR, return_tensors="pt", padding=True,
                  return_attention_mask=True)
      o = model(inputs.input_values, attention_mask=inputs.attention_mask,
                output_hidden_states=True)
      out["batch_input"] = inputs.input_values.numpy()
      out["batch_mask"] = inputs.attention_mask.numpy()
      out["batch_hidden"] = np.stack([h.numpy() for h in o.hidden_states], axis=1)
      out["batch_last"] = o.last_hidden_state.numpy()
  np.savez_compressed(os.path.join(folder, "reference.npz"), **out)


def make_speech(root: str) -> None:
  specs = [
      # name, kind, config, feature extractor (normalise, mask), .bin form, shards
      ("wav2vec2_base", "wav2vec2", dict(feat_extract_norm="group", do_stable_layer_norm=False),
       (True, False), "ctc", 1),
      ("wav2vec2_large_lv60", "wav2vec2",
       dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
       (True, True), "old", 1),
      ("hubert_base", "hubert", dict(feat_extract_norm="group", do_stable_layer_norm=False,
                                     feat_proj_layer_norm=False), (False, False), "old", 1),
      ("hubert_large_bn", "hubert", dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                         feat_proj_layer_norm=True, conv_pos_batch_norm=True),
       (True, True), "same", 1),
      ("wavlm_base", "wavlm", dict(feat_extract_norm="group", do_stable_layer_norm=False,
                                   num_buckets=32, max_bucket_distance=40), (False, False),
       "old", 1),
      ("wavlm_large", "wavlm", dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                    num_buckets=32, max_bucket_distance=40, conv_bias=True),
       (True, True), "same", 2),
      ("data2vec_audio", "data2vec-audio", dict(num_conv_pos_embeddings=2,
                                                conv_pos_kernel_size=5), (True, True), "same", 1),
  ]
  for seed, (name, kind, cfg, (norm, mask), bin_form, shards) in enumerate(specs):
    folder = os.path.join(root, name)
    shutil.rmtree(folder, ignore_errors=True)
    config, model = speech_model(kind, seed, **cfg)
    sd = model.state_dict()
    bin_sd = None
    if bin_form == "old":
      bin_sd = old_weight_norm_names(sd)
    elif bin_form == "ctc":   # as wav2vec2-base-960h: Wav2Vec2ForCTC, old weight-norm names
      ctc = T.Wav2Vec2ForCTC(config).eval()
      ctc.wav2vec2.load_state_dict(sd)
      bin_sd = old_weight_norm_names(ctc.state_dict())
    save(folder, model, config, sd, bin_sd, shards)
    fe = T.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0,
                                    do_normalize=norm, return_attention_mask=mask)
    fe.save_pretrained(folder)
    speech_reference(model, fe, folder, seed)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")


def make_whisper(root: str) -> None:
  """Whisper encoders: tiny-like (80 mels; ``WhisperModel`` names) and large-v3-like (128
  mels; the ``.bin`` as ``WhisperForConditionalGeneration``'s ``model.`` prefix). References:
  the feature extractor's log-mel of each clip and the encoder's hidden states over its
  frames (the rest of the 30-s window is left out: small files)."""
  for seed, (name, mels) in enumerate((("whisper_tiny", 80), ("whisper_large_v3", 128)),
                                      start=40):
    folder = os.path.join(root, name)
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(seed)
    config = T.WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2,
                             encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2,
                             decoder_ffn_dim=32, num_mel_bins=mels, vocab_size=64,
                             max_target_positions=8, max_source_positions=1500,
                             decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2)
    model = T.WhisperModel(config).eval()
    perturb(model, seed)
    sd = model.state_dict()
    full = T.WhisperForConditionalGeneration(config).eval()
    full.model.load_state_dict(sd)
    # (safetensors: the encoder only, as fusion_jax reads it; .bin: the whole generator)
    enc_sd = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    save(folder, model, config, enc_sd, full.state_dict())
    fe = T.WhisperFeatureExtractor(feature_size=mels)
    fe.save_pretrained(folder)
    rng = np.random.default_rng(seed)
    out = {}
    with torch.no_grad():
      for i, n in enumerate((SR, SR * 3 // 4)):   # 1 s and 0.75 s
        clip = (0.3 * rng.standard_normal(n) + 0.2 * np.sin(np.arange(n) / 9)).astype(
            np.float32)
        feats = fe(clip, sampling_rate=SR, return_tensors="pt").input_features
        o = model.encoder(feats, output_hidden_states=True)
        frames = -(-(n // 160) // 2)   # the clip's encoder frames; the rest is the window's
        out[f"clip{i}"], out[f"mel{i}"] = clip, feats[0, :, :2 * frames + 20].numpy()
        out[f"hidden{i}"] = np.stack([h[0, :frames].numpy() for h in o.hidden_states])
        out[f"last{i}"] = o.last_hidden_state[0, :frames].numpy()
    np.savez_compressed(os.path.join(folder, "reference.npz"), **out)
    print(f"{name}: {sum(p.numel() for p in model.encoder.parameters())} encoder parameters")


# ------------------------------------------------------------------ the original's extraction
TESS_CLIPS = [("OAF_angry", "OAF_back_angry", 24414), ("OAF_Pleasant_surprise", "OAF_dip_ps", 24414),
              ("YAF_sad", "YAF_near_sad", 24414), ("YAF_pleasant_surprised", "YAF_moon_ps", 16000),
              ("OAF_Fear", "OAF_tip_fear", 24414), ("YAF_disgust", "YAF_wag_disgust", 24414),
              ("OAF_happy", "OAF_luck_happy", 24414), ("YAF_neutral", "YAF_turn_neutral", 24414),
              ("YAF_angry", "YAF_mob_angry", 24414), ("OAF_neutral", "OAF_jar_neutral", 24414)]
TESS_LABELS = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "neutral": 4,
               "pleasant_surprise": 5, "sad": 6}
TESS_SPLIT_ROWS = {"train": [0, 5, 4, 6, 7, 3, 2], "val": [1, 8], "test": [9]}   # train: all 7


def torchaudio_resample(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
  """torchaudio.transforms.Resample(orig, new) with its defaults, written out from its
  source (torchaudio does not install beside torch 2.13): the dense float64 kernel cast to
  float32, then a strided conv1d."""
  import math  # pylint: disable=import-outside-toplevel
  g = math.gcd(orig, new)
  o, n = orig // g, new // g
  lw, base = 6, min(o, n) * 0.99
  width = math.ceil(lw * o / base)
  idx = torch.arange(-width, width + o, dtype=torch.float64)[None, None] / o
  t = torch.arange(0, -n, -1)[:, None, None] / n + idx
  t *= base
  t = t.clamp_(-lw, lw)
  window = torch.cos(t * math.pi / lw / 2) ** 2
  t *= math.pi
  kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
  kernels = (kernels * window * (base / o)).to(torch.float32)
  length = waveform.shape[-1]
  x = torch.nn.functional.pad(waveform.view(-1, length), (width, width + o))
  y = torch.nn.functional.conv1d(x[:, None], kernels, stride=o)
  y = y.transpose(1, 2).reshape(x.shape[0], -1)
  return y[..., :math.ceil(n * length / o)]


def original_features(model, extractor, tokenizer, text_model, paths) -> dict:
  """The original's extract_and_cache / extract_text_features_from_split on these files:
  torchaudio-style load (int16 / 32768), resample, 1 %-of-peak trim, the feature
  extractor's normalisation, last_hidden_state; "Say the word W" through the tokenizer
  (truncation), last_hidden_state; both padded with a 0/1 mask."""
  import wave  # pylint: disable=import-outside-toplevel
  speech, text = [], []
  with torch.no_grad():
    for p in paths:
      with wave.open(p, "rb") as w:
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
      waveform = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
      if sr != 16000:
        waveform = torchaudio_resample(waveform, sr, 16000)
      energy = waveform.abs().squeeze()
      mask = energy > (energy.max() * 0.01)
      if mask.any():
        ind = torch.where(mask)[0]
        waveform = waveform[:, ind[0]:ind[-1] + 1]
      inputs = extractor(waveform.squeeze().numpy(), sampling_rate=16000,
                         return_tensors="pt").input_values
      speech.append(model(inputs).last_hidden_state.squeeze(0))
      word = os.path.basename(p).replace(".wav", "").split("_")[1]
      enc = tokenizer(f"Say the word {word}", return_tensors="pt", truncation=True)
      text.append(text_model(**enc).last_hidden_state.squeeze(0))
  out = {}
  for name, seqs in (("speech", speech), ("text", text)):
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    m = torch.zeros(padded.shape[:2])
    for i, f in enumerate(seqs):
      m[i, :f.shape[0]] = 1
    out[f"{name}_x"], out[f"{name}_m"] = padded.numpy(), m.numpy()
  return out


def make_tess(hf_root: str, root: str) -> None:
  """A ten-clip TESS tree (24 414 Hz as the corpus, one clip at 16 kHz), the original's split
  CSVs with Colab paths, and what the original's extraction makes of them with the
  wav2vec2_base and roberta fixtures (``reference.npz``: per split x, m, y)."""
  import wave  # pylint: disable=import-outside-toplevel
  shutil.rmtree(root, ignore_errors=True)
  rng = np.random.default_rng(7)
  paths = []
  for folder, stem, sr in TESS_CLIPS:
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    voice = np.sin(2 * np.pi * (180 + 60 * rng.random()) * t) * np.hanning(n) ** 0.5
    x = 0.002 * rng.standard_normal(n) + 0.5 * voice * ((t > 0.06) & (t < 0.3))
    os.makedirs(os.path.join(root, "TESS", folder), exist_ok=True)
    path = os.path.join(root, "TESS", folder, stem + ".wav")
    with wave.open(path, "wb") as w:
      w.setnchannels(1)
      w.setsampwidth(2)
      w.setframerate(sr)
      w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    paths.append(path)
  os.makedirs(os.path.join(root, "Data Split"))
  speech_dir, text_dir = os.path.join(hf_root, "wav2vec2_base"), os.path.join(hf_root, "roberta")
  model = T.Wav2Vec2Model.from_pretrained(speech_dir).eval()
  fe = T.Wav2Vec2FeatureExtractor.from_pretrained(speech_dir)
  text_model = T.RobertaModel.from_pretrained(text_dir, add_pooling_layer=False).eval()
  tok = T.AutoTokenizer.from_pretrained(text_dir)
  ref = {}
  for split, rows in TESS_SPLIT_ROWS.items():
    emotions = [TESS_CLIPS[r][0].split("_")[-1].lower() for r in rows]
    emotions = [{"surprised": "pleasant_surprise", "surprise": "pleasant_surprise"}.get(e, e)
                for e in emotions]
    with open(os.path.join(root, "Data Split", f"{split}_split.csv"), "w") as f:
      f.write("path,label,emotion_name\n")
      for r, e in zip(rows, emotions):
        folder, stem, _ = TESS_CLIPS[r]
        f.write(f"/content/TESS_Toronto_emotional_speech_set_data/{folder}/{stem}.wav,"
                f"{TESS_LABELS[e]},{e}\n")
    feats = original_features(model, fe, tok, text_model, [paths[r] for r in rows])
    ref.update({f"{split}_{k}": v for k, v in feats.items()})
    ref[f"{split}_y"] = np.array([TESS_LABELS[e] for e in emotions], np.int64)
  np.savez_compressed(os.path.join(root, "reference.npz"), **ref)
  print(f"tess: {len(paths)} clips, splits {[len(r) for r in TESS_SPLIT_ROWS.values()]}")


def bpe_tokenizer(specials: list) -> T.PreTrainedTokenizerFast:
  """A byte-level BPE as RoBERTa's: ``<s> A </s>``, no prefix space."""
  from tokenizers import ByteLevelBPETokenizer, processors  # pylint: disable=import-outside-toplevel
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(CORPUS * 4, vocab_size=300, min_frequency=1, special_tokens=specials)
  inner = bpe._tokenizer  # pylint: disable=protected-access
  inner.post_processor = processors.RobertaProcessing(("</s>", inner.token_to_id("</s>")),
                                                      ("<s>", inner.token_to_id("<s>")))
  return T.PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", model_max_length=38)


def wordpiece_tokenizer() -> T.PreTrainedTokenizerFast:
  """An uncased WordPiece as BERT's: ``[CLS] A [SEP]``."""
  from tokenizers import BertWordPieceTokenizer, processors  # pylint: disable=import-outside-toplevel
  wp = BertWordPieceTokenizer(lowercase=True)
  wp.train_from_iterator(CORPUS * 4, vocab_size=200, min_frequency=1)
  inner = wp._tokenizer  # pylint: disable=protected-access
  inner.post_processor = processors.BertProcessing(("[SEP]", inner.token_to_id("[SEP]")),
                                                   ("[CLS]", inner.token_to_id("[CLS]")))
  return T.PreTrainedTokenizerFast(tokenizer_object=inner,
                                   unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]",
                                   pad_token="[PAD]", mask_token="[MASK]", model_max_length=40)


def text_reference(model, tok, folder: str) -> None:
  out = {}
  with torch.no_grad():
    for i, line in enumerate(TEXTS):
      enc = tok(line, return_tensors="pt")
      o = model(**enc, output_hidden_states=True)
      out[f"ids{i}"] = enc.input_ids[0].numpy()
      out[f"hidden{i}"] = np.stack([h[0].numpy() for h in o.hidden_states])
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    o = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
              output_hidden_states=True)
    out["batch_ids"] = enc.input_ids.numpy()
    out["batch_mask"] = enc.attention_mask.numpy()
    out["batch_hidden"] = np.stack([h.numpy() for h in o.hidden_states], axis=1)
  np.savez_compressed(os.path.join(folder, "reference.npz"), texts=np.array(TEXTS), **out)


def make_text(root: str) -> None:
  roberta_specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  specs = [("bert", None), ("roberta", roberta_specials),
           # pad id 0, not RoBERTa's 1: position ids must follow the config's pad_token_id
           ("xlm_roberta", ["<pad>", "<s>", "</s>", "<unk>", "<mask>"])]
  for seed, (name, specials) in enumerate(specs, start=20):
    folder = os.path.join(root, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    torch.manual_seed(seed)
    if specials is None:
      tok = wordpiece_tokenizer()
      config = T.BertConfig(vocab_size=len(tok), **SMALL_TEXT, pad_token_id=tok.pad_token_id)
      model = T.BertModel(config, add_pooling_layer=False).eval()
    else:
      tok = bpe_tokenizer(specials)
      cfg_cls, model_cls = ((T.RobertaConfig, T.RobertaModel) if name == "roberta" else
                            (T.XLMRobertaConfig, T.XLMRobertaModel))
      config = cfg_cls(vocab_size=len(tok), **{**SMALL_TEXT, "max_position_embeddings": 42},
                       type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
      model = model_cls(config, add_pooling_layer=False).eval()
    perturb(model, seed)
    sd = model.state_dict()
    # the .bin as a masked-LM checkpoint would hold it: under the model type's prefix
    prefix = "bert." if name == "bert" else "roberta."
    save(folder, model, config, sd, {prefix + k: v for k, v in sd.items()})
    tok.save_pretrained(folder)
    text_reference(model, tok, folder)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, "
          f"pad id {tok.pad_token_id}")


def make_full(root: str) -> None:
  """Full-size random wav2vec2-base and roberta-base (no weights needed), with references."""
  torch.manual_seed(0)
  folder = os.path.join(root, "wav2vec2_base_full")
  config = T.Wav2Vec2Config()   # = facebook/wav2vec2-base(-960h)'s architecture
  model = T.Wav2Vec2Model(config).eval()
  save(folder, model, config, model.state_dict(), old_weight_norm_names(model.state_dict()))
  fe = T.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
  fe.save_pretrained(folder)
  global CLIP_SAMPLES  # pylint: disable=global-statement
  CLIP_SAMPLES = (3 * SR, 2 * SR)
  speech_reference(model, fe, folder, 0)
  folder = os.path.join(root, "roberta_base_full")
  os.makedirs(folder, exist_ok=True)
  tok = bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  tok.model_max_length = 512   # roberta-base's
  config = T.RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1)   # = roberta-base's
  model = T.RobertaModel(config, add_pooling_layer=False).eval()
  save(folder, model, config, model.state_dict(), bin_sd=False)   # (safetensors only: disk)
  tok.save_pretrained(folder)
  text_reference(model, tok, folder)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out", help="output folder (tests/fixtures/hf for the committed ones)")
  parser.add_argument("--full", action="store_true", help="full-size random models instead")
  parser.add_argument("--only", choices=["speech", "whisper", "text", "tess"], default=None,
                      help="remake one family of fixtures only")
  args = parser.parse_args()
  if args.full:
    make_full(args.out)
    return
  for family, make in (("speech", make_speech), ("whisper", make_whisper),
                       ("text", make_text)):
    if args.only in (None, family):
      make(args.out)
  if args.only in (None, "tess"):   # after the speech and text fixtures it runs
    make_tess(args.out, os.path.join(os.path.dirname(os.path.normpath(args.out)), "tess"))


if __name__ == "__main__":
  main()
