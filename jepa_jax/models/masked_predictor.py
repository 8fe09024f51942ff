"""Stage-1 (V-JEPA) masked predictor: predicts target-encoder features at masked positions.

  MaskedPredictor(config, dtype).apply({'params': p}, context_tokens (B, Kc, D),
      context_idx (B, Kc) int32, target_idx (B, Kt) int32, grid=(T', H', W'),
      context_valid=None (B, Kc) bool, target_valid=None (B, Kt) bool, mask_index=0,
      return_context=False, target_offsets=None (B, Kt, Dp))
    -> (B, Kt, out_dim) predictions at target_idx
       (and (B, Kc, out_dim) at the context tokens with return_context, for V-JEPA 2.1 dense loss)

Indices are flat row-major positions on the (T', H', W') token grid of the encoder. Context
tokens are embedded (`predictor_embed`, D -> Dp); every target gets the (learned) mask token, plus
`target_offsets` when given (stage 1's latent actions, `pretrain.latent_actions`);
positions enter as the fixed sincos3d table at width Dp (V-JEPA 1) or as 3D RoPE in attention
(V-JEPA 2). All tokens attend to each other, except padded tokens (`*_valid` False), which are
masked out as keys so they change nothing for valid tokens. Since attention without a causal
mask is permutation-equivariant, the token order (the reference sorts by position) is immaterial.

Parameter tree (torch names of the reference predictor):
  predictor_embed/{kernel (D, Dp), bias}, mask_tokens (num_mask_tokens, 1, 1, Dp)
  [mask_tokens.{i} (1, 1, Dp)], predictor_blocks_{i}/{norm1, attn/{qkv, proj}, norm2,
  mlp/{fc1, fc2}}, predictor_norm, predictor_proj/{kernel (Dp, out_dim), bias}
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jepa_jax.models import layers
from jepa_jax.models import rope as rope_lib
from jepa_jax.models import vit

Dtype = Any


@dataclasses.dataclass(frozen=True)
class MaskedPredictorConfig:
  """embed_dim: encoder width D. width: predictor width Dp. out_dim: None -> D (set it to
  D * levels for multi-level V-JEPA 2.1 targets). num_mask_tokens: one per mask group."""
  embed_dim: int = 384
  width: int = 384
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  pos_embed: str = 'sincos3d'
  layernorm_eps: float = 1e-6
  rope_layout: str = 'reference'
  sincos_uniform_power: bool = False
  num_mask_tokens: int = 1
  out_dim: int | None = None

  def __post_init__(self):
    if self.pos_embed not in ('sincos3d', 'rope3d'):
      raise ValueError(f"MaskedPredictor pos_embed must be 'sincos3d' or 'rope3d', got "
                       f'{self.pos_embed!r}')


class MaskedPredictor(nn.Module):
  """Narrow ViT predictor of V-JEPA (see module docstring)."""
  config: MaskedPredictorConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, context_tokens, context_idx, target_idx, grid, context_valid=None,
               target_valid=None, mask_index: int = 0, return_context: bool = False,
               target_offsets=None):
    cfg = self.config
    grid = tuple(int(g) for g in grid)
    batch, num_ctx, dim = context_tokens.shape
    num_tgt = target_idx.shape[1]
    if dim != cfg.embed_dim:
      raise ValueError(f'context_tokens width {dim} != config.embed_dim {cfg.embed_dim}')
    if context_idx.shape != (batch, num_ctx) or target_idx.shape[0] != batch:
      raise ValueError(f'context_idx {context_idx.shape} / target_idx {target_idx.shape} must '
                       f'be (B, Kc) / (B, Kt) with B={batch}, Kc={num_ctx}')
    if not 0 <= mask_index < cfg.num_mask_tokens:
      raise ValueError(f'mask_index {mask_index} out of range [0, {cfg.num_mask_tokens})')

    x = layers.dense(cfg.width, self.dtype, 'predictor_embed')(context_tokens)
    mask_tokens = self.param('mask_tokens', nn.initializers.zeros,
                             (cfg.num_mask_tokens, 1, 1, cfg.width), jnp.float32)
    tgt = jnp.broadcast_to(mask_tokens[mask_index].astype(self.dtype),
                           (batch, num_tgt, cfg.width))
    if target_offsets is not None:
      tgt = tgt + target_offsets.astype(self.dtype)
    indices = jnp.concatenate([context_idx, target_idx], axis=1).astype(jnp.int32)
    x = jnp.concatenate([x, tgt], axis=1)
    positions = None
    if cfg.pos_embed == 'sincos3d':
      table = jnp.asarray(vit.sincos3d_table(cfg.width, grid, cfg.sincos_uniform_power),
                          self.dtype)
      x = x + table[indices]
    else:
      positions = rope_lib.positions_from_indices(indices, grid)

    attn_mask = None
    if context_valid is not None or target_valid is not None:
      cv = jnp.ones((batch, num_ctx), bool) if context_valid is None else context_valid
      tv = jnp.ones((batch, num_tgt), bool) if target_valid is None else target_valid
      attn_mask = jnp.concatenate([cv, tv], axis=1)[:, None, None, :]  # keys only

    for i in range(cfg.depth):
      x = layers.Block(cfg.num_heads, int(cfg.width * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias,
                       layernorm_eps=cfg.layernorm_eps, rope_layout=cfg.rope_layout,
                       layer_id=i + 1, dtype=self.dtype, name=f'predictor_blocks_{i}')(
                           x, mask=attn_mask, positions=positions)
    x = layers.layer_norm(cfg.layernorm_eps, self.dtype, 'predictor_norm')(x)
    out = layers.dense(cfg.out_dim or cfg.embed_dim, self.dtype, 'predictor_proj')(x)
    if return_context:
      return out[:, num_ctx:], out[:, :num_ctx]
    return out[:, num_ctx:]
