"""The ViT encoder from an experiment config's `encoder` section (stage 1, stage 2 and LeWM)."""

from __future__ import annotations

from typing import Any

from jepa_jax import config_sections
from jepa_jax.models import vit

# The keys of an `encoder` section: a size preset of `vit.vit_config` and ViTConfig overrides.
ENCODER_KEYS = ('preset',) + config_sections.field_names(vit.ViTConfig)


def encoder_config(encoder_section: Any, num_frames: int) -> vit.ViTConfig:
  """ViTConfig from an `encoder` section (`preset` + overrides) for clips of `num_frames`."""
  section = dict(encoder_section.to_dict() if hasattr(encoder_section, 'to_dict')
                 else encoder_section)
  preset = section.pop('preset', 'small')
  section.setdefault('num_frames', num_frames)
  config = vit.vit_config(preset, **section)
  if num_frames % config.tubelet_size:
    raise ValueError(f'num_frames={num_frames} is not a multiple of '
                     f'encoder.tubelet_size={config.tubelet_size}')
  return config


def token_grid(vit_config: vit.ViTConfig, num_frames: int) -> tuple[int, int, int]:
  """(T', H', W') token grid of a clip of `num_frames` frames at the encoder resolution."""
  if vit_config.image_size % vit_config.patch_size:
    raise ValueError(f'encoder.image_size={vit_config.image_size} is not a multiple of '
                     f'encoder.patch_size={vit_config.patch_size}')
  side = vit_config.image_size // vit_config.patch_size
  return (num_frames // vit_config.tubelet_size, side, side)
