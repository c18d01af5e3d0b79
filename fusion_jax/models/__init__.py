"""Models: temporal/contextual transformers, four fusion heads, classifier, baselines.

  from fusion_jax import models
  model = models.build_model(config.model, "gated", num_classes=7)
  params = models.init_params(model, jax.random.key(0))
  logits, aux = model.apply({"params": params}, speech, speech_mask, text, text_mask)
"""

from fusion_jax.models.layers import (EncoderLayer, Linear, MultiHeadAttention,
                                      SequenceEncoder, masked_mean)
from fusion_jax.models.model import (FUSION_HEADS, FUSION_VARIANTS, UNIMODAL_VARIANTS, VARIANTS,
                                     EmotionRecognizer, ModelConfig, build_model, check_variant,
                                     count_params, dummy_inputs, get_fusion_head, init_params,
                                     parse_variants)
from fusion_jax.models.convert import convert_torch_state_dict, load_torch_checkpoint

__all__ = [
    "EmotionRecognizer", "EncoderLayer", "FUSION_HEADS", "FUSION_VARIANTS", "Linear",
    "ModelConfig", "MultiHeadAttention", "SequenceEncoder", "UNIMODAL_VARIANTS", "VARIANTS",
    "build_model", "check_variant", "convert_torch_state_dict", "count_params", "dummy_inputs",
    "get_fusion_head", "init_params", "load_torch_checkpoint", "masked_mean", "parse_variants",
]
