"""One experiment context, built once from the config and the data.

Everything a train / evaluate / analyse / benchmark / recipe call needs beyond
its own arguments lives here, derived once:

* ``config``: the resolved config (feature dims taken from the data);
* ``class_names``; ``mesh`` (a ``data`` mesh over ``config.runtime.num_devices``
  devices, 0 = all); ``shapes`` (the training batch shapes);
* ``model_dir`` / ``results_dir``; ``log`` (where progress lines go);
* ``ledger``: the compile ledger every step goes through, and the steps of each
  model, built once and shared by every seed, split and pass.

::

  from fusion_jax import experiment, training, evaluation
  exp = experiment.Experiment.create(config, class_names, train=train, val=val,
                                     model_dir="models", results_dir="results")
  summary = training.train_and_evaluate(exp, train, val)
  evaluation.evaluate(exp, test, train=train)
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Callable, Iterator, Optional, Sequence

import ml_collections
import numpy as np

from fusion_jax import configs, ledger as ledger_lib, optim as optim_lib, passes, runs, sharding, steps as steps_lib
from fusion_jax.data import batching
from fusion_jax.data.splits import Split
from fusion_jax.encoders import hub
from fusion_jax.errors import ConfigError, DataError
from fusion_jax.models import model as model_lib, registry, encoders


def default_log(msg: str) -> None:
  """Prints ``msg``; in a multi-process run, only process 0 does (the others compute the
  same epochs: one console, not N interleaved copies)."""
  if sharding.is_primary():
    print(msg, flush=True)


def parse_seeds(spec) -> list:
  """``"0,1,2"`` or ``3`` (= seeds 0..2) or a list → list of distinct ints, in order."""
  try:
    if isinstance(spec, (list, tuple)):
      seeds = [int(s) for s in spec]
    elif isinstance(spec, int):
      seeds = list(range(spec))
    else:
      seeds = [int(s) for s in str(spec).split(",") if s.strip()]
    seeds = list(dict.fromkeys(seeds))   # "0,0" would lock one run twice
  except ValueError:
    seeds = None
  if not seeds or min(seeds) < 0:
    raise ConfigError(f"seeds must be comma-separated integers >= 0, got {spec!r} (--seeds)")
  return seeds


def _dims(split: Split) -> dict:
  return {"speech": int(split.speech[0].shape[1]), "text": int(split.text[0].shape[1])}


def resolve_dims(config, train: Split, *others: Split):
  """A copy of ``config`` whose ``model.{speech,text}_dim`` (and ``_layers``: stacked
  hidden states per frame; ``text_encoder`` when fine-tuning) are the training data's.

  Raises:
    DataError: another split's features have other dims than the training split's.
  """
  dims = _dims(train)
  for split in others:
    for m, d in _dims(split).items():
      if d != dims[m]:
        raise DataError(split.sources.get(m) or split.name, f"{m} features are {d}-d but the "
                        f"training features ({train.sources.get(m) or train.name}) are "
                        f"{dims[m]}-d", field="x", hint="every split needs features from the "
                        "same extractor")
  stacks = {m: int(train.preprocessing.get(m, {}).get("stack", 1)) for m in dims}
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.speech_dim, config.model.text_dim = dims["speech"], dims["text"]
    config.model.speech_layers, config.model.text_layers = stacks["speech"], stacks["text"]
    for modality in ("text", "speech"):
      if config.model[f"{modality}_finetune_layers"]:
        config.model[f"{modality}_encoder"] = _finetuned_encoder(train, modality,
                                                                 stacks[modality])
    config.model.encoder_locations = ",".join(
        f"{x['options']['sha256']}={x['location']}" for m in ("text", "speech")
        if config.model[f"{m}_finetune_layers"]
        for x in [train.preprocessing.get(m, {}).get("extractor") or {}]
        if "sha256" in x.get("options", {}) and x.get("location"))
  return config


def _finetuned_encoder(train: Split, modality: str, stack: int) -> str:
  """The name of the pretrained encoder whose top layers ``model.{modality}_finetune_layers``
  trains: the training features' extractor (``minilm``; a Hugging Face snapshot as
  ``hf@<sha256>``, whose folder the fingerprint records)."""
  extractor = train.preprocessing.get(modality, {}).get("extractor") or {}
  flag = f"--config.model.{modality}_finetune_layers"
  where = train.sources.get(modality) or train.name
  if stack == 1 or not extractor.get("name"):
    raise DataError(where, f"fine-tuning the {modality} encoder ({flag[9:]}) needs features of "
                    "every hidden state from a known extractor", field="stack",
                    hint=f"extract with --{modality}_hidden_states=all (minilm or hf), or set "
                    f"{flag}=0")
  options = extractor.get("options", {})
  if "sha256" not in options:
    return extractor["name"]
  if int(options.get("pool", 1)) != 1:
    raise DataError(where, f"fine-tuning the {modality} encoder needs its frames as the model "
                    f"made them, but the features averaged {options['pool']} frames",
                    field="pool", hint=f"extract with --pool=1, or set {flag}=0")
  location = extractor.get("location")
  if location and os.path.isdir(location) and hub.seen(options["sha256"]) is None:
    hub.remember(options["sha256"], location)
  return encoders.snapshot_key(extractor["name"], options["sha256"])


def resolve_class_weights(config, train: Split, num_classes: int):
  """``config.optim.class_weight_values``: the loss' per-class weights as a comma string
  ("" = unweighted), from ``optim.class_weights`` ("none", "balanced": from ``train``'s
  labels only, or explicit weights). Recorded with each run's config."""
  spec = str(config.optim.class_weights)
  if spec == "none":
    values = ""
  elif spec == "balanced":
    values = ",".join(f"{w:.6g}" for w in optim_lib.balanced_class_weights(train.labels,
                                                                             num_classes))
  else:
    weights = spec.split(",")
    if len(weights) != num_classes:
      raise ConfigError(f"config.optim.class_weights gives {len(weights)} weights for "
                       f"{num_classes} classes (--config.optim.class_weights)")
    values = spec
  config = copy.deepcopy(config)
  with config.unlocked():
    config.optim.class_weight_values = values
  return config


@dataclasses.dataclass
class DeviceSplit:
  """A split uploaded once: per speech bucket, its utterances padded to the bucket's length.

  Steps then take row indices (``[B]`` per batch, -1 for padding rows) and gather their
  batch on the device (:func:`fusion_jax.steps.gather`): no host work per step.

  Attributes:
    data: per bucket, ``{speech [N_b, T_b, Ds], speech_mask, text [N_b, L, Dt],
      text_mask, label}`` on the mesh (replicated).
    where: ``[N, 2]``: each split row's bucket and its row inside the bucket.
  """
  data: list
  where: np.ndarray

  def indices(self, rows, batch_size: int) -> np.ndarray:
    """Positions of split ``rows`` (all in one bucket) in it, padded with -1 to ``batch_size``."""
    out = np.full(batch_size, -1, np.int32)
    out[:len(rows)] = self.where[np.asarray(rows, np.int64), 1]
    return out

  def eval_batches(self, batch_size: int) -> list:
    """``(bucket, indices [batch_size])`` covering every row once, bucket by bucket."""
    out = []
    for b in range(len(self.data)):
      n = int((self.where[:, 0] == b).sum())
      for i in range(0, n, batch_size):
        idx = np.full(batch_size, -1, np.int32)
        idx[:min(batch_size, n - i)] = np.arange(i, min(i + batch_size, n))
        out.append((b, idx))
    return out


@dataclasses.dataclass
class Experiment:
  """The context of one experiment (see the module docstring). Build with :meth:`create`."""
  config: ml_collections.ConfigDict
  class_names: tuple
  mesh: object
  model_dir: Optional[str] = None
  results_dir: Optional[str] = None
  log: Callable[[str], None] = default_log
  shapes: Optional[batching.BatchShapes] = None
  ledger: ledger_lib.CompileLedger = dataclasses.field(default_factory=ledger_lib.CompileLedger)
  _steps: dict = dataclasses.field(default_factory=dict, repr=False)
  _cache: dict = dataclasses.field(default_factory=dict, repr=False)   # per split: identity, device copy

  @classmethod
  def create(cls, config, class_names: Sequence[str], *, train: Optional[Split] = None,
             val: Optional[Split] = None, model_dir: Optional[str] = None,
             results_dir: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
             mesh=None) -> "Experiment":
    """Resolves the config against the data and builds the mesh.

    Args:
      config: the full ConfigDict (``model``, ``data``, ``optim``, ``train``, ``eval``,
        ``analysis``, ``runtime``); not modified.
      class_names: K names; labels are in ``[0, K)``.
      train, val: when given, feature dims come from them and the training batch
        shapes are planned on them.
      mesh: overrides ``config.runtime.num_devices`` (tests).
    """
    configs.validate(config)
    for flag, path in (("--model_dir", model_dir), ("--results_dir", results_dir)):
      if path and os.path.exists(path) and not os.path.isdir(path):
        raise DataError(path, f"is a file; {flag} must be a directory")
    if train is not None:
      config = resolve_dims(config, train, *([val] if val is not None else []))
      config = resolve_class_weights(config, train, len(class_names))
    if mesh is None:
      mesh = sharding.make_mesh(config.runtime.num_devices or None)
    sharding.check_batch_size(config.train.batch_size, mesh, "train.batch_size")
    sharding.check_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    log = log or default_log
    exp = cls(config=config, class_names=tuple(class_names), mesh=mesh, model_dir=model_dir,
              results_dir=results_dir, log=log, ledger=ledger_lib.CompileLedger(log=log))
    if train is not None:
      exp.shapes = exp.training_shapes(train, val)
    return exp

  def with_dirs(self, model_dir: Optional[str], results_dir: Optional[str]) -> "Experiment":
    """The same context writing elsewhere (e.g. one fold of a recipe); steps are shared."""
    return dataclasses.replace(self, model_dir=model_dir, results_dir=results_dir)

  def with_data(self, train: Split, val: Optional[Split] = None) -> "Experiment":
    """The same context (mesh, ledger, steps) with dims and shapes of other data."""
    fresh = Experiment.create(self.config, self.class_names, train=train, val=val,
                              mesh=self.mesh)
    return dataclasses.replace(self, config=fresh.config, shapes=fresh.shapes)

  def training_shapes(self, train: Split, val: Optional[Split] = None) -> batching.BatchShapes:
    """``self.shapes`` when planned at creation, else planned on ``train`` (and ``val``)."""
    if self.shapes is not None:
      return self.shapes
    return batching.plan_shapes([train] + ([val] if val is not None else []),
                                self.config.data.num_buckets, self.config.data.bucket_multiple,
                                batch_size=self.config.train.batch_size)

  def data_identity(self, split: Split) -> dict:
    """:func:`fusion_jax.runs.data_identity` of ``split``, computed once per split object."""
    key = id(split)
    if key not in self._cache or self._cache[key][0] is not split:
      self._cache[key] = (split, runs.data_identity(split))
    return self._cache[key][1]

  # -- what the config says
  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def variants(self) -> list:
    return registry.parse(self.config.train.variants)

  @property
  def seeds(self) -> list:
    return parse_seeds(self.config.train.seeds)

  @property
  def model_config(self) -> model_lib.ModelConfig:
    return model_lib.ModelConfig.from_config(self.config.model)

  # -- models and their steps
  def compute_config(self, model_config: model_lib.ModelConfig) -> model_lib.ModelConfig:
    """A (trained) model's config computing in this experiment's ``model.dtype``.

    The architecture comes from the checkpoint; the compute dtype is a runtime
    choice (``--config.model.dtype=bfloat16`` evaluates a float32-trained model in bf16).
    """
    return dataclasses.replace(model_config, dtype=self.config.model.dtype)

  def _owner(self, variant: str, model_config: Optional[model_lib.ModelConfig]) -> tuple:
    """What identifies ``variant``'s steps: every input of :meth:`steps`."""
    mc = self.compute_config(model_config or self.model_config)
    optim = self.config.optim
    frames = steps_lib.microbatch_budget(int(self.config.runtime.microbatch_frames))
    return (registry.get(variant).name, mc, self.num_classes, float(optim.label_smoothing),
            tuple(sorted((k, str(v)) for k, v in dict(optim).items())), frames)

  def steps(self, variant: str,
            model_config: Optional[model_lib.ModelConfig] = None) -> steps_lib.Steps:
    """The jitted steps of ``variant`` (architecture from ``model_config``, default the
    config's; compute dtype always the config's, see :meth:`compute_config`)."""
    owner = self._owner(variant, model_config)
    if owner not in self._steps:
      mc, optim = owner[1], self.config.optim
      model = model_lib.build_model(mc, variant, self.num_classes)
      self._steps[owner] = steps_lib.Steps(
          model, optim_lib.make_optimizer(optim, finetune=mc.finetunes,
                                         frozen=model_lib.has_floor(mc, variant)),
          optim.label_smoothing, owner, optim_lib.Loss.from_config(optim),
          microbatch_frames=owner[-1], devices=int(self.mesh.devices.size),
          modality_dropout=float(optim.modality_dropout))
    return self._steps[owner]

  def forget(self, variant: Optional[str] = None,
             model_config: Optional[model_lib.ModelConfig] = None) -> int:
    """Drops ``variant``'s compiled steps (None: every model's) — their ledger entries,
    jitted functions and JAX's caches — to free their host memory and memory mappings
    (~0.25 GB per 768-d variant). Training and evaluation call it for each model they are
    done with, so a recipe of any length holds one model's programs at a time; using
    it again compiles again (from the persistent compilation cache when one is set).
    Returns how many compiled steps were dropped."""
    if variant is None:
      self._steps.clear()
      return self.ledger.forget()
    owner = self._owner(variant, model_config)
    self._steps.pop(owner, None)
    return self.ledger.forget(owner)

  # -- batches on the mesh
  def shard(self, batch: dict) -> dict:
    """Places a host batch on the mesh (split along the batch axis); drops ``index``."""
    return sharding.shard_batch({k: v for k, v in batch.items() if k != "index"}, self.mesh)

  def plan(self, *splits: Split, batch_size: Optional[int] = None) -> batching.BatchShapes:
    """Batch shapes for evaluating ``splits``: :func:`~fusion_jax.configs.eval_buckets` of
    them (the eval batch size by default)."""
    return batching.plan_shapes(list(splits), configs.eval_buckets(self.config),
                                self.config.data.bucket_multiple,
                                batch_size=batch_size or self.config.eval.batch_size)

  def batches(self, split: Split, shapes: Optional[batching.BatchShapes] = None,
              batch_size: Optional[int] = None) -> Iterator[tuple]:
    """``(placed batch, index [B])`` covering every utterance of ``split`` once, in order."""
    bs = batch_size or self.config.eval.batch_size
    shapes = shapes or self.plan(split, batch_size=bs)
    for batch in batching.iterate_batches(split, shapes, bs, shuffle=False):
      yield self.shard(batch), batch["index"]

  def device_split(self, split: Split, shapes: batching.BatchShapes) -> DeviceSplit:
    """``split`` on the device, once per (split, shapes): see :class:`DeviceSplit`."""
    key = ("device", id(split), shapes)
    cached = self._cache.get(key)
    if cached is not None and cached[0] is split:
      return cached[1]
    buckets = shapes.assign(split)
    where = np.zeros((len(split), 2), np.int64)
    data = []
    for b in range(shapes.num_buckets):
      rows = np.flatnonzero(buckets == b)
      where[rows, 0], where[rows, 1] = b, np.arange(len(rows))
      batch = batching.make_batch(split, rows, *shapes.lengths(b), max(len(rows), 1))
      data.append(sharding.replicate({k: batch[k] for k in ("speech", "speech_mask", "text",
                                                            "text_mask", "label")}, self.mesh))
    out = DeviceSplit(data, where)
    self._cache[key] = (split, out)
    return out

  def release(self, *splits: Split) -> None:
    """Forgets what is cached for ``splits`` (device copies, identities): a recipe's fold
    is done with them, and every context derived from this one shares the cache."""
    for key in [k for k, v in self._cache.items() if any(v[0] is s for s in splits)]:
      del self._cache[key]

  def evaluate_split(self, steps: steps_lib.Steps, params, split: Split,
                     shapes: Optional[batching.BatchShapes] = None,
                     cache: Optional[dict] = None) -> dict:
    """Loss, confusion matrix and summary metrics over ``split`` (none dropped).

    ``cache`` (a dict owned by the caller) keeps the split's placed batches
    between calls, e.g. the validation set across epochs.
    """
    key = id(split)
    if cache is not None and key in cache:
      placed = cache[key]
    else:
      placed = [b for b, _ in self.batches(split, shapes)]
      if cache is not None:
        cache[key] = placed
    return passes.evaluate_batches(self.ledger, steps, params, placed, len(split))

  def predict(self, steps: steps_lib.Steps, params, split: Split,
              aux_keys: Sequence[str] = (),
              shapes: Optional[batching.BatchShapes] = None,
              batch_size: Optional[int] = None) -> tuple:
    """Softmax probabilities ``[N, K]`` and requested ``aux`` arrays, in split order
    (entries with time axes padded to the longest bucket)."""
    return passes.predict_batches(self.ledger, steps, params,
                                     self.batches(split, shapes, batch_size),
                                     len(split), self.num_classes, aux_keys)

