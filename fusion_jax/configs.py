"""Config presets (ml_collections). ``configs/*.py`` wrap these for ``--config``.

Override on the command line, e.g. ``--config=configs/default.py
--config.train.epochs=10 --config.model.dtype=bfloat16``; in a notebook,
``cfg = fusion_jax.configs.default(); cfg.train.epochs = 10``.
"""

import ml_collections
from ml_collections import config_dict


def default() -> ml_collections.ConfigDict:
  """The original pipeline's hyperparameters (docs/original.md, "Model" and "Training")."""
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict(dict(
      speech_dim=768,          # wav2vec2-base frames
      text_dim=768,            # RoBERTa-base tokens
      hidden=256,              # encoder feed-forward width = 4 * hidden
      layers=2,
      heads=8,
      f_hidden=512,            # fusion width
      classifier_hidden=256,   # classifier (and unimodal head) hidden width
      dropout=0.4,
      model_dim=0,             # >0: project inputs to this width first (off in the original)
      positional_encoding=False,  # sinusoidal positions (off in the original)
      dtype="float32",         # compute dtype; "bfloat16" keeps float32 params and loss
      # heads beyond the original's (models/heads.py):
      mult_layers=2,           # MulT: crossmodal blocks per direction
      bottleneck_tokens=4,     # MBT: shared bottleneck tokens (0 = independent encoders)
      fusion_layer=1,          # MBT: first encoder layer that fuses (>= layers: none)
      tensor_dim=32,           # tensor / low-rank fusion: each modality's vector width
      rank=4,                  # low-rank fusion: rank of the fusion weight
      # features holding every hidden state of a pretrained encoder (extract with
      # hidden_states=all): learned softmax mix of the layers, or fine-tune the text
      # encoder's top k layers (speech_layers / text_layers / text_encoder come from the data)
      speech_layers=1, text_layers=1,
      text_finetune_layers=0,
      text_encoder="",
  ))

  c.data = ml_collections.ConfigDict(dict(
      num_buckets=4,           # speech-length buckets, each one compiled shape
      bucket_multiple=8,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      weight_decay=1e-4,       # L2 added to the gradient, as torch.optim.Adam does
      b1=0.9, b2=0.999, eps=1e-8,
      label_smoothing=0.1,
      plateau_factor=0.5,      # ReduceLROnPlateau(mode="max") on train.selection_metric
      plateau_patience=3,
      plateau_threshold=1e-4,  # torch's default, relative
      # the loss for rare classes: "none", or "balanced" (weight n / (K n_k) per class, from
      # the training labels, as torch's CrossEntropyLoss(weight=...)); focal_gamma > 0
      # multiplies each example's loss by (1 - p_true)^gamma (Lin et al., 2017)
      class_weights="none",
      class_weight_values="",  # set from class_weights and the training labels at run time
      focal_gamma=0.0,
      # a fine-tuned encoder's layers (model.text_finetune_layers): their own learning rate
      # (follows the plateau schedule) with a linear warm-up over this many steps
      finetune_learning_rate=5e-5,
      finetune_warmup_steps=200,
  ))

  c.train = ml_collections.ConfigDict(dict(
      epochs=30,
      batch_size=32,
      seeds="0",               # comma-separated; several seeds give mean ± std
      variants="original",     # the original's four fusion heads ("all" adds the baselines)
      progress_every=0,        # print a progress line every N steps (0 = about 10 per epoch)
      checkpoint_every_seconds=60.0,  # "latest" (resume) checkpoint cadence; always at the end
      # the validation metric that picks each run's best checkpoint, drives the plateau
      # schedule and ranks the variants: accuracy (the original's), uar, macro_f1, weighted_f1
      selection_metric="accuracy",
      # the seeds of a variant as one vmapped program (True) or one after another (False);
      # unset: one program on GPU/TPU, in turn on CPU, where it measured faster (BUILD_NOTES)
      parallel_seeds=config_dict.placeholder(bool),
      export_torch=True,       # also write the original's model_dir/best_{variant}_model.pt
      export_torch_seed=-1,    # ... of this seed (-1 = the first seed trained)
  ))

  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64,           # evaluation batches can be larger than training ones
      calibration_bins=15,
  ))

  c.analysis = ml_collections.ConfigDict(dict(
      methods="tsne,umap,pca",
      tsne_perplexity=30.0,
      max_per_class=0,         # >0: subsample each class to this many points (reported)
      knn_k=5,
      cv_folds=5,
  ))

  # Where things are: the original's flags (--train_speech_features, --model_dir, ...)
  # set these fields. "" = not given (--data_dir fills data paths by their usual names).
  c.paths = ml_collections.ConfigDict(dict(
      data_dir="",
      train_speech_features="", train_text_features="",
      val_speech_features="", val_text_features="",
      test_speech_features="", test_text_features="",
      csv_path="",             # the training CSV: class names come from it
      val_csv_path="", test_csv_path="",
      model_dir="models/fusion_pipeline",
      results_dir="results",
  ))

  # How to run (never changes a result): devices, compilation cache.
  c.runtime = ml_collections.ConfigDict(dict(
      num_devices=0,           # data parallelism over this many devices (0 = all visible)
      distributed=False,       # jax.distributed.initialize() (multi-host)
      compilation_cache_dir="~/.cache/fusion_jax/xla",  # persistent XLA cache ("" = off)
      # training and evaluation compute each batch in parts of at most this many frames
      # (rows x (speech frames + text tokens)) per device, adding the parts' gradients:
      # activation memory / parts, same step up to float rounding (steps.num_microbatches;
      # 0 = whole batches; -1 = auto: 4096 on CPU, whole batches on GPU/TPU)
      microbatch_frames=-1,
  ))
  return c


def tiny() -> ml_collections.ConfigDict:
  """A tiny model for tests and smoke runs: seconds per variant on a CPU."""
  c = default()
  c.model.speech_dim = 16
  c.model.text_dim = 16
  c.model.hidden = 8
  c.model.layers = 1
  c.model.heads = 2
  c.model.f_hidden = 16
  c.model.classifier_hidden = 16
  c.model.dropout = 0.1
  c.model.mult_layers = 1
  c.model.bottleneck_tokens = 2
  c.model.fusion_layer = 0       # one layer: MBT fuses in it
  c.model.tensor_dim = 4
  c.model.rank = 2
  c.data.num_buckets = 2
  c.train.epochs = 3
  c.train.batch_size = 8
  c.eval.batch_size = 16
  c.optim.learning_rate = 3e-3
  c.analysis.methods = "pca"
  c.analysis.cv_folds = 3
  return c


def demo() -> ml_collections.ConfigDict:
  """The README's demo on the embedded synthetic data (64-d features).

  Same architecture and optimisation as the original, narrower, so every
  variant trains in well under a minute on 2 CPU cores.
  """
  c = default()
  c.model.speech_dim = 64
  c.model.text_dim = 64
  c.model.hidden = 32
  c.model.heads = 4
  c.model.f_hidden = 64
  c.model.classifier_hidden = 64
  c.model.dropout = 0.2
  c.train.epochs = 10
  c.data.num_buckets = 3
  c.optim.learning_rate = 1e-3
  c.train.variants = "all"
  return c


def ravdess() -> ml_collections.ConfigDict:
  """The RAVDESS recipe: ~600 training clips per fold, so a narrow model, 30 epochs.

  ``speech_dim``/``text_dim`` are set from the feature files at run time. Inputs
  are projected to ``model_dim`` (so 25-d eGeMAPS and 384-d Whisper states share
  one architecture) and get sinusoidal positions. Chosen before looking at any
  test fold (BUILD_NOTES.md, "Feature extraction and real-data recipes").
  """
  c = default()
  c.model.model_dim = 128
  c.model.hidden = 64
  c.model.heads = 4
  c.model.f_hidden = 128
  c.model.classifier_hidden = 128
  c.model.dropout = 0.3
  c.model.positional_encoding = True
  c.data.num_buckets = 3
  c.optim.learning_rate = 5e-4
  c.train.epochs = 30
  c.train.batch_size = 32
  c.train.seeds = "0"           # folds give the spread; --seeds=0,1 doubles the run time
  c.train.variants = "all"
  c.train.export_torch = False  # recipes keep their runs in orbax only
  c.analysis.methods = "tsne,pca"
  return c


def meld() -> ml_collections.ConfigDict:
  """The MELD text recipe: MiniLM token states (384-d), 7 classes, ~10k training lines."""
  c = ravdess()
  c.model.positional_encoding = False   # MiniLM states already carry positions
  c.train.epochs = 15
  c.train.batch_size = 64
  c.train.seeds = "0,1,2"
  c.train.variants = "text_only"
  c.data.num_buckets = 3
  c.analysis.methods = "pca"
  c.analysis.max_per_class = 200
  return c


SELECTION_METRICS = ("accuracy", "uar", "macro_f1", "weighted_f1")


def validate(c) -> None:
  """Raises ``ValueError`` naming the first field whose value cannot work."""
  checks = [
      ("train.epochs", c.train.epochs >= 1, "at least 1"),
      ("train.batch_size", c.train.batch_size >= 1, "at least 1"),
      ("eval.batch_size", c.eval.batch_size >= 1, "at least 1"),
      ("data.num_buckets", c.data.num_buckets >= 1, "at least 1"),
      ("data.bucket_multiple", c.data.bucket_multiple >= 1, "at least 1"),
      ("optim.learning_rate", c.optim.learning_rate > 0, "positive"),
      ("optim.weight_decay", c.optim.weight_decay >= 0, "0 or more"),
      ("optim.label_smoothing", 0 <= c.optim.label_smoothing < 1, "in [0, 1)"),
      ("model.dropout", 0 <= c.model.dropout < 1, "in [0, 1)"),
      ("model.layers", c.model.layers >= 1, "at least 1"),
      ("model.heads", c.model.heads >= 1, "at least 1"),
      ("model.hidden", c.model.hidden >= 1, "at least 1"),
      ("model.f_hidden", c.model.f_hidden >= 1, "at least 1"),
      ("model.classifier_hidden", c.model.classifier_hidden >= 1, "at least 1"),
      ("model.model_dim", c.model.model_dim >= 0, "0 (off) or more"),
      ("model.mult_layers", c.model.mult_layers >= 1, "at least 1"),
      ("model.bottleneck_tokens", c.model.bottleneck_tokens >= 0, "0 or more"),
      ("model.fusion_layer", c.model.fusion_layer >= 0, "0 or more"),
      ("model.tensor_dim", c.model.tensor_dim >= 1, "at least 1"),
      ("model.rank", c.model.rank >= 1, "at least 1"),
      ("runtime.num_devices", c.runtime.num_devices >= 0, "0 (all) or more"),
      ("runtime.microbatch_frames", c.runtime.get("microbatch_frames", 0) >= -1,
       "-1 (auto), 0 (whole batches) or more"),
      ("model.text_finetune_layers", c.model.text_finetune_layers >= 0, "0 (frozen) or more"),
      ("optim.class_weights", c.optim.class_weights in ("none", "balanced")
       or _weights_list(c.optim.class_weights) is not None,
       "'none', 'balanced' or comma-separated positive weights"),
      ("optim.focal_gamma", c.optim.focal_gamma >= 0, "0 (off) or more"),
      ("optim.finetune_learning_rate", c.optim.finetune_learning_rate > 0, "positive"),
      ("optim.finetune_warmup_steps", c.optim.finetune_warmup_steps >= 0, "0 or more"),
      ("train.selection_metric", selection_metric(c) in SELECTION_METRICS,
       "one of " + ", ".join(SELECTION_METRICS)),
  ]
  for field, ok, want in checks:
    if not ok:
      section, name = field.split(".")
      raise ValueError(f"config.{field} = {c[section][name]!r} must be {want} (--config.{field})")


def selection_metric(c) -> str:
  """``c.train.selection_metric`` of a ConfigDict or of a checkpoint's saved config dict
  (configs saved before it existed: accuracy)."""
  return c["train"].get("selection_metric", "accuracy")


def _weights_list(spec):
  try:
    w = [float(x) for x in str(spec).split(",")]
  except ValueError:
    return None
  return w if w and all(x > 0 for x in w) else None


PRESETS = {"default": default, "tiny": tiny, "demo": demo, "ravdess": ravdess, "meld": meld}
