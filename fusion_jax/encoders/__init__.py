"""Pretrained encoders in JAX, read from Hugging Face snapshots on disk (never downloaded).

==================  ==========================================================================
:mod:`.hub`         find a snapshot (a folder, or a Hub id in the local cache), read its
                    config, weights (safetensors or a safe ``.bin`` reader, sharded or not)
                    and their SHA-256
:mod:`.weights`     PyTorch tensor names → Flax params, shape-checked
:mod:`.speech`      wav2vec2 (base and large-lv60/XLS-R variants), HuBERT, WavLM,
                    data2vec-audio: :class:`~.speech.SpeechEncoder`
:mod:`.whisper`     the Whisper encoder (tiny … large-v3; Hugging Face or CTranslate2
                    weights): :class:`~.whisper.WhisperEncoder`; tiny.en's decoder
                    (:class:`~.whisper.WhisperModel`) writes transcripts
:mod:`.bert`        BERT, RoBERTa, XLM-R (and MiniLM, a BERT):
                    :class:`~.bert.BertFeatureEncoder`
==================  ==========================================================================

  from fusion_jax import encoders
  wav = encoders.SpeechEncoder.from_pretrained("microsoft/wavlm-large")   # cached Hub id
  states = wav.encode([clip_16k], all_layers=True)                        # [[T, 25, 1024]]
  txt = encoders.BertFeatureEncoder.from_pretrained("/data/roberta-base")  # or a folder
  tokens = txt.encode(["I am so happy!"])                                 # [[L, 768]]

The feature extractors that run them are ``hf`` (speech) and ``hf_text`` in
:mod:`fusion_jax.features.extractors`; fine-tuning reuses the same modules
(:mod:`fusion_jax.models.encoders`).
"""

from fusion_jax.encoders import bert, hub, speech, tokenizer, weights, whisper
from fusion_jax.encoders.bert import BertFeatureEncoder
from fusion_jax.encoders.speech import SpeechEncoder
from fusion_jax.encoders.whisper import WhisperEncoder

__all__ = ["bert", "hub", "speech", "tokenizer", "weights", "whisper", "BertFeatureEncoder",
           "SpeechEncoder", "WhisperEncoder"]
