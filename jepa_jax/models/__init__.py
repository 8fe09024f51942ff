"""Models: ViT encoder (vit.py), 3D RoPE (rope.py), shared transformer layers (layers.py),
action-conditioned predictors (predictors.py) and the stage-1 masked predictor
(masked_predictor.py). All are flax.linen modules with float32 params and a compute `dtype`.
cpu_blocking.py: how the CPU code paths cut work into cache-sized blocks."""

from jepa_jax.models.masked_predictor import MaskedPredictor, MaskedPredictorConfig
from jepa_jax.models.predictors import (AdaLNConfig, AdaLNPredictor, DinoWMConfig,
                                        DinoWMPredictor, PREDICTOR_KINDS, PROPRIO_READOUTS,
                                        ProprioEncoder, VJEPA2ACConfig, VJEPA2ACPredictor,
                                        build_predictor)
from jepa_jax.models.vit import (IMAGENET_MEAN, IMAGENET_STD, ViTConfig, ViTEncoder,
                                 dinov2_config, image_to_clip, preprocess_frames, vit_config)
