"""Reference world-model predictors (JEPA-WMs `.pth.tar`) -> our predictor + proprio encoder.

Input file: a dict with `predictor` (state dict), `opt`, `scaler`, `epoch` and optionally
`action_encoder` and `proprio_encoder` (state dicts); keys may carry a `module.` prefix
(DataParallel / DDP). Only the three model entries are read; anything else is ignored.

Output: `(config, params)` with
  config = {'kind': 'adaln' | 'dino_wm',
            'predictor': keyword arguments of `jepa_jax.models.build_predictor(kind, ...)`,
            'proprio_dim': P (raw proprio width; 0 without a proprio encoder)}
  params = {'predictor': ..., 'proprio_encoder': ...}   ('proprio_encoder' only when P > 0)
`build_converted(config)` rebuilds the two modules.

Size inference (what the tensors do not say comes from arguments, defaults = the paper):

AdaLN (docs/reference.md §3a/§8; every key under `predictor`, the action encoder included):
  latent_dim Dv = predictor_embed.weight in-dim   embed_dim E = predictor_embed.weight out-dim
  width C = action_encoder.weight out-dim         proprio_emb_dim Pe = C - E
  action_dim A = action_encoder.weight in-dim     depth = number of predictor_blocks.{i}
  mlp_ratio = mlp.fc1 rows / C                    qkv_bias = presence of attn.qkv.bias
  proprio_dim P = proprio_encoder patch_embed.weight in-dim (a kernel-1 Conv1d, (Pe, P, 1))
  num_heads (default 16) and grid_size (default (16, 16); RoPE has no table) are arguments.

DINO-WM (docs/reference.md §3b; the DINO-WM code's naming `transformer.layers.{i}.0` = attention with
its own `norm`, `to_qkv` (no bias), `to_out.0`; `transformer.layers.{i}.1.net.{0,1,4}` =
LayerNorm, Linear, Linear of the MLP; `transformer.norm`; `pos_embedding`). The action encoder
is the top-level `action_encoder` entry (kernel-1 Conv1d `patch_embed`, (Ae, A, 1)):
  C = pos_embedding width; Pe, Ae, A, P from the encoders; latent_dim = C - Pe - Ae;
  head_dim (default 64) -> num_heads = to_qkv rows / 3 / head_dim; mlp_dim = fc1 rows;
  max_frames = pos_embedding rows / (H * W) with grid_size (default (16, 16)) an argument.
  DINO-WM's `num_proprio_repeat`/`num_action_repeat` > 1 are not supported (pass `latent_dim`
  to have the channel split checked).
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.convert import torch_io
from jepa_jax.models import predictors

MODEL_ENTRIES = ('predictor', 'action_encoder', 'proprio_encoder')
KINDS = ('adaln', 'dino_wm')


def split_reference_checkpoint(checkpoint: Any) -> dict[str, dict[str, np.ndarray]]:
  """Loaded `.pth.tar` dict -> {'predictor', 'action_encoder', 'proprio_encoder'} numpy state
  dicts (`module.` prefixes stripped; an absent entry gives an empty dict)."""
  if not isinstance(checkpoint, Mapping) or 'predictor' not in checkpoint:
    found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint)
    raise ValueError(
        "not a reference predictor checkpoint: expected a dict with a 'predictor' state dict "
        f"(and 'opt', 'scaler', 'epoch', ...), found {found}")
  return {name: torch_io.numpy_state_dict(checkpoint.get(name) or {}) for name in MODEL_ENTRIES}


def _abstract_params(predictor, config: predictors.AdaLNConfig | predictors.DinoWMConfig):
  """Predictor param shapes without allocating them."""
  h, w = config.grid_size
  latents = jax.ShapeDtypeStruct((1, 1, h, w, config.latent_dim), jnp.float32)
  actions = jax.ShapeDtypeStruct((1, 1, config.action_dim), jnp.float32)
  proprio = (jax.ShapeDtypeStruct((1, 1, config.proprio_emb_dim), jnp.float32)
             if config.proprio_emb_dim else None)
  return jax.eval_shape(
      lambda *a: predictor.init(jax.random.key(0), *a), latents, actions, proprio)['params']


def _proprio_encoder(state: Mapping[str, np.ndarray], emb_dim: int, what: str
                     ) -> tuple[int, dict | None]:
  """Converts the proprio encoder (kernel-1 Conv1d P -> Pe); returns (P, params | None)."""
  if not emb_dim:
    torch_io.assemble_params(state, [], {}, what=what)  # anything present is unexpected
    return 0, None
  torch_io.require(state, ['patch_embed.weight'], what)
  proprio_dim = state['patch_embed.weight'].shape[1]
  abstract = {'patch_embed': {
      'kernel': jax.ShapeDtypeStruct((proprio_dim, emb_dim), jnp.float32),
      'bias': jax.ShapeDtypeStruct((emb_dim,), jnp.float32)}}
  rules = [torch_io.TensorRule('patch_embed.weight', ('patch_embed', 'kernel'),
                               torch_io.conv1x_kernel),
           torch_io.TensorRule('patch_embed.bias', ('patch_embed', 'bias'))]
  return proprio_dim, torch_io.assemble_params(state, rules, abstract, what=what)


def _convert_adaln(parts, *, num_heads, grid_size):
  what = 'AdaLN predictor'
  state = parts['predictor']
  torch_io.require(state, ['predictor_embed.weight', 'action_encoder.weight',
                           'predictor_blocks.0.mlp.fc1.weight'], what)
  embed_dim, latent_dim = state['predictor_embed.weight'].shape
  width, action_dim = state['action_encoder.weight'].shape
  if width < embed_dim:
    raise torch_io.CheckpointMismatchError(
        f'{what}: action_encoder width {width} < predictor_embed width {embed_dim}')
  if width % num_heads:
    raise ValueError(f'{what}: num_heads={num_heads} does not divide the width {width}')
  config = predictors.AdaLNConfig(
      latent_dim=latent_dim, embed_dim=None if embed_dim == latent_dim else embed_dim,
      proprio_emb_dim=width - embed_dim, action_dim=action_dim,
      depth=torch_io.count_blocks(state, 'predictor_blocks.', what), num_heads=num_heads,
      mlp_ratio=state['predictor_blocks.0.mlp.fc1.weight'].shape[0] / width,
      qkv_bias='predictor_blocks.0.attn.qkv.bias' in state, grid_size=tuple(grid_size))
  rules = (torch_io.linear_rules('predictor_embed', ('predictor_embed',))
           + torch_io.linear_rules('action_encoder', ('action_encoder',)))
  for i in range(config.depth):
    name, path = f'predictor_blocks.{i}', (f'predictor_blocks_{i}',)
    rules += torch_io.block_rules(name, path, qkv_bias=config.qkv_bias)
    # adaLN_modulation = Sequential(SiLU, Linear): the Linear is entry 1.
    rules += torch_io.linear_rules(f'{name}.adaLN_modulation.1', path + ('adaLN_modulation',))
  rules += (torch_io.layernorm_rules('predictor_norm', ('predictor_norm',))
            + torch_io.linear_rules('predictor_proj', ('predictor_proj',)))
  module = predictors.AdaLNPredictor(config)
  params = torch_io.assemble_params(state, rules, _abstract_params(module, config), what=what)
  # The action encoder lives inside the AdaLN predictor; a separate one would be unused.
  torch_io.assemble_params(parts['action_encoder'], [], {},
                           what='action_encoder entry (unused by the AdaLN predictor)')
  return config, params


def _convert_dino_wm(parts, *, head_dim, grid_size, latent_dim):
  what = 'DINO-WM predictor'
  state, actions = parts['predictor'], parts['action_encoder']
  torch_io.require(state, ['pos_embedding', 'transformer.layers.0.0.to_qkv.weight',
                           'transformer.layers.0.1.net.1.weight'], what)
  torch_io.require(actions, ['patch_embed.weight'], 'DINO-WM action encoder')
  torch_io.require(parts['proprio_encoder'], ['patch_embed.weight'], 'DINO-WM proprio encoder')
  action_emb_dim, action_dim = actions['patch_embed.weight'].shape[:2]
  proprio_emb_dim = parts['proprio_encoder']['patch_embed.weight'].shape[0]
  _, positions, width = state['pos_embedding'].shape
  inferred = width - proprio_emb_dim - action_emb_dim
  if latent_dim is not None and latent_dim != inferred:
    raise ValueError(
        f'{what}: width {width} != latent_dim {latent_dim} + proprio emb {proprio_emb_dim} + '
        f'action emb {action_emb_dim}; repeated proprio/action embeddings are not supported')
  inner = state['transformer.layers.0.0.to_qkv.weight'].shape[0] // 3
  if inner % head_dim:
    raise ValueError(f'{what}: head_dim={head_dim} does not divide the attention width {inner}')
  tokens = grid_size[0] * grid_size[1]
  if positions % tokens:
    raise ValueError(f'{what}: pos_embedding has {positions} rows, not a multiple of '
                     f'grid_size {tuple(grid_size)} = {tokens} patches; pass the right grid_size')
  config = predictors.DinoWMConfig(
      latent_dim=inferred, proprio_emb_dim=proprio_emb_dim, action_dim=action_dim,
      action_emb_dim=action_emb_dim,
      depth=torch_io.count_blocks(state, 'transformer.layers.', what),
      num_heads=inner // head_dim, head_dim=head_dim,
      mlp_dim=state['transformer.layers.0.1.net.1.weight'].shape[0],
      grid_size=tuple(grid_size), max_frames=positions // tokens)
  rules = [torch_io.TensorRule('pos_embedding', ('pos_embedding',))]
  for i in range(config.depth):
    attn, mlp, path = f'transformer.layers.{i}.0', f'transformer.layers.{i}.1.net', (
        f'blocks_{i}',)
    rules += (torch_io.layernorm_rules(f'{attn}.norm', path + ('norm1',))
              + torch_io.linear_rules(f'{attn}.to_qkv', path + ('attn', 'qkv'), bias=False)
              + torch_io.linear_rules(f'{attn}.to_out.0', path + ('attn', 'proj'))
              + torch_io.layernorm_rules(f'{mlp}.0', path + ('norm2',))
              + torch_io.linear_rules(f'{mlp}.1', path + ('mlp', 'fc1'))
              + torch_io.linear_rules(f'{mlp}.4', path + ('mlp', 'fc2')))
  rules += torch_io.layernorm_rules('transformer.norm', ('norm',))
  # The action encoder is a separate torch module; ours is a submodule of the predictor.
  merged = dict(state, **{f'action_encoder.{k}': v for k, v in actions.items()})
  rules += [torch_io.TensorRule('action_encoder.patch_embed.weight', ('action_encoder', 'kernel'),
                                torch_io.conv1x_kernel),
            torch_io.TensorRule('action_encoder.patch_embed.bias', ('action_encoder', 'bias'))]
  module = predictors.DinoWMPredictor(config)
  params = torch_io.assemble_params(merged, rules, _abstract_params(module, config), what=what)
  return config, params


def convert_reference_predictor(
    checkpoint: Any, kind: str, *, num_heads: int = 16, head_dim: int = 64,
    grid_size: tuple[int, int] = (16, 16), latent_dim: int | None = None) -> tuple[dict, dict]:
  """Reference `.pth.tar` predictor checkpoint -> `(config, params)` (see module doc).

  Args:
    checkpoint: path of the `.pth.tar`, or the already loaded dict.
    kind: 'adaln' or 'dino_wm'.
    num_heads: AdaLN heads (the tensors do not tell; paper 16).
    head_dim: DINO-WM head width (paper 64); its head count follows from the qkv rows.
    grid_size: patch grid (H, W) of the latents (paper 16 x 16).
    latent_dim: DINO-WM only: expected visual width, checked against the inferred split.

  Raises:
    ValueError / CheckpointMismatchError: not a checkpoint, unknown kind, or missing /
      unexpected / mis-shaped tensors (all listed).
  """
  if kind not in KINDS:
    raise ValueError(f'unknown reference predictor kind {kind!r}; choose one of {KINDS}')
  if isinstance(checkpoint, str):
    checkpoint = torch_io.load_torch_checkpoint(checkpoint)
  parts = split_reference_checkpoint(checkpoint)
  if kind == 'adaln':
    config, params = _convert_adaln(parts, num_heads=num_heads, grid_size=grid_size)
  else:
    config, params = _convert_dino_wm(parts, head_dim=head_dim, grid_size=grid_size,
                                      latent_dim=latent_dim)
  proprio_dim, proprio_params = _proprio_encoder(
      parts['proprio_encoder'], config.proprio_emb_dim, f'{kind} proprio encoder')
  predictor_config = {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in dataclasses.asdict(config).items()}
  all_params = {'predictor': params}
  if proprio_params is not None:
    all_params['proprio_encoder'] = proprio_params
  return ({'kind': kind, 'predictor': predictor_config, 'proprio_dim': proprio_dim},
          all_params)


def build_converted(config: Mapping[str, Any]
                    ) -> tuple[Any, predictors.ProprioEncoder | None]:
  """`(predictor module, ProprioEncoder | None)` from a converted predictor config."""
  predictor = predictors.build_predictor(
      config['kind'], **predictors.stored_config(config['kind'], dict(config['predictor'])))
  emb_dim = predictor.config.proprio_emb_dim
  return predictor, (predictors.ProprioEncoder(emb_dim) if config['proprio_dim'] else None)
