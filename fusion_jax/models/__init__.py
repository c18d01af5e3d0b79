"""Models: temporal/contextual transformers, fusion heads, classifier, baselines.

  from fusion_jax import models
  models.variant_names()                    # every registered variant
  model = models.build_model(config.model, "gated", num_classes=7)
  params = models.init_params(model, jax.random.key(0))
  logits, aux = model.apply({"params": params}, speech, speech_mask, text, text_mask)

Variants live in :mod:`fusion_jax.models.registry`; heads in
:mod:`fusion_jax.models.heads`; pretrained encoders' layer mixing and fine-tuning in
:mod:`fusion_jax.models.encoders`.
"""

from fusion_jax.models import encoders, heads, registry
from fusion_jax.models.convert import (convert_torch_state_dict, load_torch_checkpoint,
                                       save_torch_checkpoint, to_torch_state_dict)
from fusion_jax.models.heads import FusionHead
from fusion_jax.models.layers import (EncoderLayer, Linear, MultiHeadAttention,
                                      SequenceEncoder, masked_mean)
from fusion_jax.models.model import (EmotionRecognizer, ModelConfig, build_model, count_params,
                                     dummy_inputs, forward_flops, init_params, layer_weights)
from fusion_jax.models.registry import Variant

get_variant = registry.get
variant_names = registry.names
parse_variants = registry.parse
register_variant = registry.register

__all__ = [
    "EmotionRecognizer", "EncoderLayer", "FusionHead", "Linear", "ModelConfig",
    "MultiHeadAttention", "SequenceEncoder", "Variant", "build_model",
    "convert_torch_state_dict", "count_params", "dummy_inputs", "encoders", "forward_flops",
    "get_variant", "heads", "init_params", "layer_weights", "load_torch_checkpoint",
    "masked_mean",
    "parse_variants", "register_variant", "registry", "save_torch_checkpoint",
    "to_torch_state_dict", "variant_names",
]
