"""The variant registry: every question about a variant is asked here.

A *variant* is what ``--variants`` names: a fusion head over both blocks, or a
unimodal baseline. Its record says which modalities it reads, which head it
builds, a stable integer id (each run's random key is derived from it, so adding
a variant never changes another's results), and a description with its source.

  from fusion_jax.models import registry
  registry.get("gated").modalities          # ("speech", "text")
  registry.names("fusion")                  # every fusion head
  registry.parse("all")                     # every variant, in registration order

Adding a fusion head is one module (a :class:`~fusion_jax.models.heads.FusionHead`
subclass) plus one record::

  registry.register(registry.Variant(
      name="my_head", head=MyHead, modalities=("speech", "text"),
      description="what it does", reference="Author et al., Venue 2025"))

Binaries import modules that register variants with ``--module_import=my_module``.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

from fusion_jax.models import heads
from fusion_jax.errors import ConfigError

MODALITIES = ("speech", "text")
# The analysis' name and the original's title of each block, and the aux entry holding it.
BLOCKS = {
    "temporal": ("temporal/pooled", "Temporal Modeling Block (Speech)"),
    "contextual": ("contextual/pooled", "Contextual Modeling Block (Text)"),
    "fusion": ("fusion/fused", "Fusion Block"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One variant.

  Attributes:
    name: what ``--variants`` and the reports call it.
    modalities: the inputs it reads, a subset of ("speech", "text").
    head: the :class:`~fusion_jax.models.heads.FusionHead` subclass; None for a
      unimodal baseline (encoder → masked mean → MLP, as the original's).
    description: one line for ``--help`` and reports.
    reference: where the design comes from.
    id: stable integer for random keys (default: crc32 of the name).
    original: part of the original PyTorch pipeline (has a parity reference).
  """
  name: str
  modalities: tuple
  head: Optional[type]
  description: str
  reference: str = ""
  id: Optional[int] = None
  original: bool = False

  def __post_init__(self):
    if not self.modalities or any(m not in MODALITIES for m in self.modalities):
      raise ConfigError(f"variant {self.name!r}: modalities must be a non-empty subset of "
                       f"{MODALITIES}, got {self.modalities!r}")
    if self.head is None and len(self.modalities) != 1:
      raise ConfigError(f"variant {self.name!r}: a baseline without a head reads one modality")
    if self.head is not None and not issubclass(self.head, heads.FusionHead):
      raise ConfigError(f"variant {self.name!r}: head must subclass FusionHead")
    if self.id is None:
      object.__setattr__(self, "id", zlib.crc32(self.name.encode()))

  @property
  def is_fusion(self) -> bool:
    return self.head is not None

  def reads(self, modality: str) -> bool:
    return modality in self.modalities

  @property
  def blocks(self) -> list:
    """The analysed blocks: ``temporal`` (speech), ``contextual`` (text), ``fusion``."""
    out = [b for b, m in (("temporal", "speech"), ("contextual", "text")) if self.reads(m)]
    return out + (["fusion"] if self.is_fusion else [])

  @property
  def title(self) -> str:
    """How the original's plots name it ("GATED Fusion", "SPEECH_ONLY Baseline")."""
    return f"{self.name.upper()} {'Fusion' if self.is_fusion else 'Baseline'}"


_REGISTRY: dict = {}


def register(variant: Variant) -> Variant:
  """Adds a variant; its name and id must be new."""
  if variant.name in _REGISTRY:
    raise ConfigError(f"variant {variant.name!r} is already registered")
  clash = [v.name for v in _REGISTRY.values() if v.id == variant.id]
  if clash:
    raise ConfigError(f"variant {variant.name!r}: id {variant.id} is taken by {clash[0]}")
  _REGISTRY[variant.name] = variant
  return variant


def get(name: str) -> Variant:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ConfigError(f"unknown variant {name!r}; valid: {list(_REGISTRY)}") from None


def names(kind: Optional[str] = None, *, original: Optional[bool] = None) -> list:
  """Registered names, in registration order: all, ``"fusion"`` or ``"unimodal"``."""
  if kind not in (None, "fusion", "unimodal"):
    raise ConfigError(f"kind must be None, 'fusion' or 'unimodal', got {kind!r}")
  return [v.name for v in _REGISTRY.values()
          if (kind is None or v.is_fusion == (kind == "fusion"))
          and (original is None or v.original == original)]


def parse(spec: str) -> list:
  """``"all"``, ``"fusion"`` (every fusion head), ``"original"`` (the original's four
  heads) or a comma list → variant names, validated, duplicates dropped."""
  spec = str(spec).strip()
  if not spec.strip(", "):
    raise ConfigError("no variant given (--variants); e.g. 'original', 'fusion', 'all' or "
                     f"names from {names()}")
  if spec == "all":
    return names()
  if spec == "fusion":
    return names("fusion")
  if spec == "original":
    return names("fusion", original=True)
  out = []
  for v in spec.split(","):
    if v.strip() and get(v.strip()).name not in out:
      out.append(v.strip())
  return out


def describe() -> str:
  """One line per variant (for ``--help``)."""
  return "; ".join(f"{v.name} ({v.description})" for v in _REGISTRY.values())


_PAPER = "indrasn0wal/Multimodal-Emotion-Recognition (the original pipeline)"
for _v in (
    Variant("cross_attention", ("speech", "text"), heads.CrossAttentionFusion,
            "bidirectional cross-modal attention, pooled", _PAPER, id=0, original=True),
    Variant("concatenation", ("speech", "text"), heads.ConcatenationFusion,
            "pooled, projected, concatenated", _PAPER, id=1, original=True),
    Variant("gated", ("speech", "text"), heads.GatedFusion,
            "sigmoid gate per modality", _PAPER, id=2, original=True),
    Variant("weighted", ("speech", "text"), heads.WeightedFusion,
            "softmax weight per modality", _PAPER, id=3, original=True),
    Variant("speech_only", ("speech",), None, "temporal block alone", _PAPER, id=4,
            original=True),
    Variant("text_only", ("text",), None, "contextual block alone", _PAPER, id=5,
            original=True),
    # Ids 0..5 are the original order (runs' random keys stay what they always were);
    # every later variant's id is the crc32 of its name.
    Variant("mult", ("speech", "text"), heads.MulTFusion,
            "directional crossmodal transformers (MulT)",
            "Tsai et al., Multimodal Transformer for Unaligned Multimodal Language "
            "Sequences, ACL 2019"),
    Variant("bottleneck", ("speech", "text"), heads.BottleneckFusion,
            "attention bottlenecks inside the encoders (MBT)",
            "Nagrani et al., Attention Bottlenecks for Multimodal Fusion, NeurIPS 2021"),
    Variant("tensor", ("speech", "text"), heads.TensorFusion,
            "outer product of [s;1] and [t;1] (TFN)",
            "Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, "
            "EMNLP 2017"),
    Variant("low_rank", ("speech", "text"), heads.LowRankFusion,
            "tensor fusion with a low-rank weight (LMF)",
            "Liu et al., Efficient Low-rank Multimodal Fusion with Modality-Specific "
            "Factors, ACL 2018"),
    Variant("late", ("speech", "text"), heads.LateFusion,
            "learned combination of two unimodal classifiers' logits",
            "late (decision-level) fusion, the baseline of every fusion paper"),
):
  register(_v)
