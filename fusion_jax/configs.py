"""Config presets (ml_collections). ``configs/*.py`` wrap these for ``--config``.

Override on the command line, e.g. ``--config=configs/default.py
--config.train.epochs=10 --config.model.dtype=bfloat16``; in a notebook,
``cfg = fusion_jax.configs.default(); cfg.train.epochs = 10``.
"""

import dataclasses
from typing import Optional

import ml_collections

from fusion_jax import metrics, schema
from fusion_jax.errors import ConfigError
from fusion_jax.models.model import ModelConfig
from fusion_jax.schema import at_least, fraction, knob, one_of, positive


def _class_weights(spec) -> bool:
  return spec in ("none", "balanced") or _weights_list(spec) is not None


def _weights_list(spec):
  try:
    w = [float(x) for x in str(spec).split(",")]
  except ValueError:
    return None
  return w if w and all(x > 0 for x in w) else None


# ------------------------------------------------------------------ the schema
# One frozen dataclass per section: its fields are the section's keys, with their default
# and check (config.model's is ModelConfig). Presets below override defaults; nothing else
# restates one.
@dataclasses.dataclass(frozen=True)
class DataConfig:
  num_buckets: int = knob(4, at_least(1), "at least 1",
                          "speech-length buckets, each one compiled shape")
  bucket_multiple: int = knob(8, at_least(1), "at least 1", "bucket lengths round up to this")
  # one fold of a recipe's speaker-independent cross-validation (recipes.fold_splits): the
  # training features hold a whole corpus with a speaker column; -1 = the splits as given
  fold: int = knob(-1, at_least(-1), "-1 (off) or a fold index",
                   "train/evaluate on this fold of the corpus in the training files")
  num_folds: int = knob(4, at_least(2), "at least 2", "speaker-independent folds (fold >= 0)")
  val_speakers: int = knob(2, at_least(1), "at least 1",
                           "validation speakers per fold, from the next fold's block")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  learning_rate: float = knob(1e-4, positive, "positive")
  weight_decay: float = knob(1e-4, at_least(0), "0 or more",
                             "L2 added to the gradient, as torch.optim.Adam does")
  b1: float = knob(0.9, fraction, "in [0, 1)")
  b2: float = knob(0.999, fraction, "in [0, 1)")
  eps: float = knob(1e-8, positive, "positive")
  label_smoothing: float = knob(0.1, fraction, "in [0, 1)")
  plateau_factor: float = knob(0.5, lambda v: 0 < v <= 1, "in (0, 1]",
                               "ReduceLROnPlateau(mode='max') on train.selection_metric")
  plateau_patience: int = knob(3, at_least(0), "0 or more")
  plateau_threshold: float = knob(1e-4, at_least(0), "0 or more", "torch's default, relative")
  # the loss for rare classes: "none", or "balanced" (weight n / (K n_k) per class, from
  # the training labels, as torch's CrossEntropyLoss(weight=...)); focal_gamma > 0
  # multiplies each example's loss by (1 - p_true)^gamma (Lin et al., 2017)
  class_weights: str = knob("none", _class_weights,
                            "'none', 'balanced' or comma-separated positive weights")
  class_weight_values: str = knob("", doc="set from class_weights and the training labels "
                                  "at run time")
  focal_gamma: float = knob(0.0, at_least(0), "0 (off) or more")
  # a fine-tuned encoder's layers (model.text_finetune_layers): their own learning rate
  # (follows the plateau schedule) with a linear warm-up over this many steps
  finetune_learning_rate: float = knob(5e-5, positive, "positive")
  finetune_warmup_steps: int = knob(200, at_least(0), "0 or more")
  # robustness to a missing modality (fusion variants): each modality is made absent
  # (its mask zeroed) in this fraction of the training utterances, never both at once;
  # with model.unimodal_heads, each head's own loss is added with this weight
  modality_dropout: float = knob(0.0, lambda v: 0 <= v <= 0.5, "in [0, 0.5]",
                                 "per utterance and modality, seeded by the step")
  unimodal_loss_weight: float = knob(0.0, at_least(0), "0 or more",
                                     "weight of the unimodal heads' auxiliary loss")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int = knob(30, at_least(1), "at least 1")
  batch_size: int = knob(32, at_least(1), "at least 1")
  seeds: str = knob("0", doc="comma-separated; several seeds give mean ± std")
  variants: str = knob("original", doc="the original's four fusion heads ('all' adds the "
                       "other heads and the baselines)")
  progress_every: int = knob(0, at_least(0), "0 or more",
                             "the progress bar (on a terminal) redraws at most every N steps "
                             "(0 = about 10 per epoch)")
  tensorboard: bool = knob(True, doc="TensorBoard event files per run in "
                           "results_dir/tensorboard/{variant}/seed_{seed}")
  checkpoint_every_seconds: float = knob(60.0, at_least(0), "0 or more",
                                         "'latest' (resume) checkpoint cadence; always at the end")
  # the validation metric that picks each run's best checkpoint, drives the plateau
  # schedule and ranks the variants (accuracy is the original's)
  selection_metric: str = knob("accuracy", one_of(*metrics.SELECTION_METRICS),
                               "one of " + ", ".join(metrics.SELECTION_METRICS))
  # the seeds of a variant as one vmapped program (True) or one after another (False);
  # unset: one program on GPU/TPU, in turn on CPU, where it measured faster (BUILD_NOTES)
  parallel_seeds: Optional[bool] = knob(None, placeholder=bool)
  export_torch: bool = knob(True, doc="also write the original's model_dir/best_{variant}_model.pt")
  export_torch_seed: int = knob(-1, at_least(-1), "-1 (the first seed trained) or a seed")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  batch_size: int = knob(64, at_least(1), "at least 1",
                         "evaluation batches can be larger than training ones")
  # Forward-only passes (validation each epoch, test, modality removal, embeddings) compile
  # one program per bucket. Fewer buckets compile less and pad more: on the demo, 1 saved
  # 16 s of compiling and cost 17 s of validation passes (BUILD_NOTES "Demo"), so the
  # default keeps the training buckets; fewer pay where compiles are long and evaluation
  # sets small. Validation takes the largest of the training buckets.
  num_buckets: int = knob(0, at_least(0), "0 (= data.num_buckets) or more",
                          "speech-length buckets of evaluation passes (compiled shapes)")
  calibration_bins: int = knob(15, at_least(1), "at least 1")


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
  methods: str = knob("tsne,umap,pca")
  tsne_perplexity: float = knob(30.0, positive, "positive")
  max_per_class: int = knob(0, at_least(0), "0 (all) or more",
                            ">0: subsample each class to this many points (reported)")
  knn_k: int = knob(5, at_least(1), "at least 1")
  cv_folds: int = knob(5, at_least(2), "at least 2")


@dataclasses.dataclass(frozen=True)
class PathsConfig:
  """Where things are: the original's flags (--train_speech_features, --model_dir, ...)
  set these fields. "" = not given (--data_dir fills data paths by their usual names)."""
  data_dir: str = ""
  train_speech_features: str = ""
  train_text_features: str = ""
  val_speech_features: str = ""
  val_text_features: str = ""
  test_speech_features: str = ""
  test_text_features: str = ""
  csv_path: str = knob("", doc="the training CSV: class names come from it")
  val_csv_path: str = ""
  test_csv_path: str = ""
  model_dir: str = "models/fusion_pipeline"
  results_dir: str = "results"


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
  """How to run (never changes a result): devices, compilation cache."""
  num_devices: int = knob(0, at_least(0), "0 (all) or more",
                          "data parallelism over this many devices (0 = all visible)")
  distributed: bool = knob(False, doc="jax.distributed.initialize() (multi-process)")
  # where the processes meet; all three empty: what jax.distributed.initialize() reads
  # from a cluster's environment (SLURM, Open MPI, Kubernetes, Cloud TPU)
  coordinator_address: str = knob("", doc="HOST:PORT of process 0's coordinator")
  num_processes: int = knob(0, at_least(0), "0 (from the environment) or more",
                            "processes in the run (0 = from the environment)")
  process_id: int = knob(-1, at_least(-1), "-1 (from the environment) or 0 or more",
                         "this process's index (-1 = from the environment)")
  compilation_cache_dir: str = knob("~/.cache/fusion_jax/xla",
                                    doc="persistent XLA cache ('' = off)")
  # training and evaluation compute each batch in parts of at most this many frames
  # (rows x (speech frames + text tokens)) per device, adding the parts' gradients:
  # activation memory / parts, same step up to float rounding (steps.num_microbatches;
  # 0 = whole batches; -1 = auto: 4096 on CPU, whole batches on GPU/TPU)
  microbatch_frames: int = knob(-1, at_least(-1), "-1 (auto), 0 (whole batches) or more")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig,
            "train": TrainConfig, "eval": EvalConfig, "analysis": AnalysisConfig,
            "paths": PathsConfig, "runtime": RuntimeConfig}


def default() -> ml_collections.ConfigDict:
  """The original pipeline's hyperparameters (docs/original.md, "Model" and "Training"): every
  section's schema defaults."""
  c = ml_collections.ConfigDict()
  for name, cls in SECTIONS.items():
    c[name] = schema.config_dict(cls)
  return c


def robust(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Turns on what makes fusion take a missing modality and never fall below its own
  unimodal heads on validation (models/floor.py): learned absent vectors, unimodal heads
  with their loss, modality dropout. The rates were chosen on the demo's validation split
  (BUILD_NOTES.md, "A missing modality"); off in :func:`default` (the original)."""
  c.model.absent_embedding = True
  c.model.unimodal_heads = True
  c.optim.modality_dropout = 0.3
  c.optim.unimodal_loss_weight = 1.0
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
  variant trains in well under a minute on 2 CPU cores; with :func:`robust` on.
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
  return robust(c)


def ravdess() -> ml_collections.ConfigDict:
  """The RAVDESS recipe: ~600 training clips per fold, so a narrow model, 30 epochs.

  ``speech_dim``/``text_dim`` are set from the feature files at run time. Inputs
  are projected to ``model_dim`` (so 25-d eGeMAPS and 384-d Whisper states share
  one architecture) and get sinusoidal positions. Chosen before looking at any
  test fold (BUILD_NOTES.md, RAVDESS recipe).
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
  return robust(c)


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


def validate(c) -> None:
  """Raises :class:`~fusion_jax.errors.ConfigError` naming the first field whose value
  cannot work (each section checked against its schema)."""
  for name, cls in SECTIONS.items():
    schema.check(cls, c[name], name)


def eval_buckets(c) -> int:
  """How many speech-length buckets evaluation passes compile: ``c.eval.num_buckets``, or
  ``c.data.num_buckets`` when it is 0 (and in a saved config from before the field)."""
  return int(c.get("eval", {}).get("num_buckets", 0) or c["data"]["num_buckets"])


def selection_metric(c) -> str:
  """``c.train.selection_metric`` of a ConfigDict or of a checkpoint's saved config dict
  (one saved before the field existed takes the schema's default)."""
  return schema.view(TrainConfig, c["train"]).selection_metric


PRESETS = {"default": default, "tiny": tiny, "demo": demo, "ravdess": ravdess, "meld": meld}
