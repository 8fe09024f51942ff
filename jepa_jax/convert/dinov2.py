"""DINOv2 encoders (torch hub naming, with or without registers) -> `ViTEncoder` params.

Accepted input: a state dict saved with `torch.save(model.state_dict(), 'dinov2.pth')` from a
torch hub model (`dinov2_vits14`, `dinov2_vitb14_reg`, ...), optionally nested under a
`'model'`/`'state_dict'` entry and/or with a `module.` prefix on every key.

Sizes are inferred from the tensors:
  width         patch_embed.proj.weight.shape[0]       patch_size  its last dim
  depth         number of `blocks.{i}` groups            mlp_ratio  mlp.fc1 rows / width
  registers     register_tokens.shape[1] (0 if absent)  table grid  sqrt(pos_embed rows - 1)
  LayerScale    present iff `blocks.0.ls1.gamma` exists  qkv_bias   `blocks.0.attn.qkv.bias`
  num_heads     NOT in the tensors: `num_heads` argument, default width // 64 (every DINOv2
                model uses 64-wide heads: S 6, B 12, L 16, g 24).
`image_size` picks the working resolution (default: the table's native one, 518 for the hub
models); a different grid bicubically interpolates the table like torch hub (+0.1 offset).
`mask_token` (masked pretraining only) is read and dropped. ViT-g/14's SwiGLU MLP
(`mlp.w12`, `mlp.w3`) is not implemented by ViTEncoder and is reported as unexpected keys.
"""

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.convert import torch_io
from jepa_jax.models import vit

WHAT = 'DINOv2 encoder'


def _unwrap(checkpoint: Any) -> Mapping[str, Any]:
  """The state dict inside a loaded file (bare, or under 'model' / 'state_dict')."""
  if isinstance(checkpoint, Mapping):
    for key in ('model', 'state_dict'):
      if key in checkpoint and isinstance(checkpoint[key], Mapping):
        return checkpoint[key]
    return checkpoint
  raise ValueError(f'{WHAT}: expected a state dict, the file holds a '
                   f'{type(checkpoint).__name__}')


def dinov2_config_from_state(state: Mapping[str, np.ndarray], *, num_heads: int | None = None,
                             image_size: int | None = None) -> vit.ViTConfig:
  """Infers the `ViTConfig` of a DINOv2 state dict (numpy, prefix stripped); see module doc."""
  torch_io.require(state, ['patch_embed.proj.weight', 'pos_embed', 'blocks.0.mlp.fc1.weight'],
                   WHAT)
  width, in_channels, patch, patch_w = state['patch_embed.proj.weight'].shape
  if patch != patch_w:
    raise ValueError(f'{WHAT}: non-square patches {(patch, patch_w)} are not supported')
  use_cls = 'cls_token' in state
  table_tokens = state['pos_embed'].shape[1] - int(use_cls)
  grid = math.isqrt(table_tokens)
  if grid * grid != table_tokens:
    raise ValueError(f'{WHAT}: pos_embed has {table_tokens} patch positions, not a square grid')
  heads = num_heads or width // 64
  if heads < 1 or width % heads:
    raise ValueError(f'{WHAT}: num_heads={heads} does not divide the width {width}; '
                     'pass num_heads explicitly')
  return vit.ViTConfig(
      image_size=image_size or grid * patch, patch_size=patch, tubelet_size=1, num_frames=1,
      width=width, depth=torch_io.count_blocks(state, 'blocks.', WHAT), num_heads=heads,
      mlp_ratio=state['blocks.0.mlp.fc1.weight'].shape[0] / width,
      qkv_bias='blocks.0.attn.qkv.bias' in state, use_cls_token=use_cls,
      num_register_tokens=(state['register_tokens'].shape[1] if 'register_tokens' in state
                           else 0),
      layerscale_init=1e-5 if 'blocks.0.ls1.gamma' in state else None,
      pos_embed='learned', pos_embed_grid=(grid, grid), layernorm_eps=1e-6,
      in_channels=in_channels)


def dinov2_rules(config: vit.ViTConfig) -> list[torch_io.TensorRule]:
  """Torch hub key -> ViTEncoder param rules for `config`."""
  rules = [
      torch_io.TensorRule('patch_embed.proj.weight', ('patch_embed', 'proj', 'kernel'),
                          lambda w: torch_io.conv2d_kernel(w)[None]),  # tubelet axis of 1
      torch_io.TensorRule('patch_embed.proj.bias', ('patch_embed', 'proj', 'bias')),
      torch_io.TensorRule('pos_embed', ('pos_embed',)),
  ]
  if config.use_cls_token:
    rules.append(torch_io.TensorRule('cls_token', ('cls_token',)))
  if config.num_register_tokens:
    rules.append(torch_io.TensorRule('register_tokens', ('register_tokens',)))
  for i in range(config.depth):
    rules += torch_io.block_rules(f'blocks.{i}', (f'blocks_{i}',), qkv_bias=config.qkv_bias)
    if config.layerscale_init is not None:
      rules += [torch_io.TensorRule(f'blocks.{i}.ls1.gamma', (f'blocks_{i}', 'ls1', 'gamma')),
                torch_io.TensorRule(f'blocks.{i}.ls2.gamma', (f'blocks_{i}', 'ls2', 'gamma'))]
  return rules + torch_io.layernorm_rules('norm', ('norm',))


def abstract_vit_params(config: vit.ViTConfig) -> Any:
  """Shapes of `ViTEncoder(config)` params, without allocating them."""
  video = jax.ShapeDtypeStruct(
      (1, config.tubelet_size, config.image_size, config.image_size, config.in_channels),
      jnp.float32)
  return jax.eval_shape(lambda v: vit.ViTEncoder(config).init(jax.random.key(0), v),
                        video)['params']


def convert_dinov2(checkpoint: Any, *, num_heads: int | None = None,
                   image_size: int | None = None) -> tuple[vit.ViTConfig, dict]:
  """DINOv2 torch hub checkpoint -> `(ViTConfig, ViTEncoder params)`.

  Args:
    checkpoint: path of a `.pth` state dict, or an already loaded state dict (tensors).
    num_heads: attention heads (default width // 64).
    image_size: working resolution in pixels (default: the position table's native one).

  Returns:
    The config and a nested dict of float32 numpy arrays; run it with
    `ViTEncoder(config).apply({'params': params}, images[:, None])` on normalised
    `(B, 1, S, S, 3)` images -> `(B, 1, S/p, S/p, D)` final-LN patch tokens.

  Raises:
    ValueError / CheckpointMismatchError: not a checkpoint, or missing / unexpected /
      mis-shaped tensors (all listed).
  """
  if isinstance(checkpoint, str):
    checkpoint = torch_io.load_torch_checkpoint(checkpoint)
  state = torch_io.numpy_state_dict(_unwrap(checkpoint))
  config = dinov2_config_from_state(state, num_heads=num_heads, image_size=image_size)
  params = torch_io.assemble_params(state, dinov2_rules(config), abstract_vit_params(config),
                                    what=WHAT, ignore=lambda k: k == 'mask_token')
  return config, params
