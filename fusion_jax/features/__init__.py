"""Feature extraction: from wav files and transcripts to fusion_jax feature files.

  from fusion_jax import features
  m = features.corpora.ravdess_manifest("ravdess16k")
  ex = features.make_extractor("logmel", pool=4)          # 80-d, 25 frames/s
  features.extract(m, ex, "work/ravdess_logmel.npz")

Extractors (:data:`EXTRACTORS`): ``logmel`` (NumPy/JAX), ``egemaps`` and
``compare`` (opensmile), ``whisper`` / ``whisper_base`` (Whisper tiny.en / base in JAX from
CTranslate2 weights), ``minilm`` (all-MiniLM-L6-v2 as a Flax BERT), ``hf`` / ``hf_text``
(your own Hugging Face snapshot: :mod:`fusion_jax.encoders`). All but ``logmel`` need
optional packages (``pip install -e '.[features]'``).
"""

from fusion_jax.features import audio, corpora, extractors, logmel
from fusion_jax.features.extract import (AlignedExtraction, ExtractionResult, Manifest, Progress,
                                         extract, extract_aligned,
                                         manifest_from_frame, read_manifest,
                                         subset_feature_file, write_split_csv)
from fusion_jax.features.extractors import EXTRACTORS, Extractor, make_extractor

__all__ = ["audio", "corpora", "extractors", "logmel",
           "AlignedExtraction", "ExtractionResult", "Manifest", "Progress", "extract",
           "extract_aligned", "manifest_from_frame",
           "read_manifest", "subset_feature_file", "write_split_csv", "EXTRACTORS", "Extractor",
           "make_extractor"]
