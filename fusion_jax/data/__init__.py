"""Data: safe readers for the original's feature files, split CSVs, batching, demo data.

Typical use::

  from fusion_jax import data
  names = data.class_names_from_csv("train_split.csv")
  train = data.load_split("train", "train_speech.pt", "train_text.pt", "train_split.csv",
                          class_names=names, speech_dim=768, text_dim=768)
  shapes = data.plan_shapes([train], num_buckets=4)
  for batch in data.iterate_batches(train, shapes, 32, shuffle=True, seed=0, epoch=0):
    ...  # batch["speech"]: [32, T_bucket, 768], batch["speech_mask"]: [32, T_bucket], ...
"""

from fusion_jax.data.batching import (BatchShapes, batch_indices, iterate_batches, make_batch,
                                      padding_fraction, plan_shapes)
from fusion_jax.data.demo import SIGNALS, TESS_CLASSES, DemoSpec, make_demo_dataset
from fusion_jax.errors import DataError
from fusion_jax.data.features import (ModalityFeatures, load_features, pad, save_features,
                                      save_original_layout)
from fusion_jax.data.splits import (Split, SplitCSV, class_names_from_csv, load_split,
                                    read_split_csv, split_from_arrays)
from fusion_jax.data.torch_pickle import UnsafePickleError, load_torch_file, save_torch_file

__all__ = [
    "BatchShapes", "DataError", "DemoSpec", "ModalityFeatures", "SIGNALS", "Split", "SplitCSV",
    "TESS_CLASSES", "UnsafePickleError", "batch_indices", "class_names_from_csv",
    "iterate_batches", "load_features", "load_split", "load_torch_file", "make_batch",
    "make_demo_dataset", "pad", "padding_fraction", "plan_shapes", "read_split_csv",
    "save_features", "save_original_layout", "save_torch_file", "split_from_arrays",
]
