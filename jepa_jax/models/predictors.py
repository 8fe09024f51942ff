"""Action-conditioned predictors of the world model (docs/reference.md §3) and the proprio encoder.

Every predictor has the same call (teacher-forced, frame-causal):

  predictor.apply({'params': p}, latents (B, T, H, W, Dv), actions (B, T, A),
                  proprio_emb (B, T, Pe) | None, deterministic=True)
      -> (visual (B, T, H, W, Dv), proprio_emb_pred | None)

proprio_emb_pred is `(B, T, Pe)` for DINO-WM and V-JEPA 2-AC, and for the AdaLN predictor
`(B, T, H, W, Pe)` (one prediction per patch, the reference; `proprio_readout='first_patch'`
gives `(B, T, Pe)`). AdaLN and DINO-WM also accept proprio_emb per patch `(B, T, H, W, Pe)`, so
per-patch predictions can be fed back in rollouts.

Output frame t is the prediction of frame t + 1 and depends only on inputs of frames <= t.
Proprioception enters as EMBEDDINGS from the separate `ProprioEncoder` (module name
'proprio_encoder' in the world model), so rollouts can feed predicted embeddings back.

Parameter trees (Dense kernels are `(in, out)` = torch `weight.T`; `{i}` is 0-based):

  ProprioEncoder:  patch_embed/{kernel (P, Pe), bias}      torch Conv1d weight (Pe, P, 1)
  AdaLNPredictor:  predictor_embed (Dv -> E), action_encoder (A -> E + Pe),
                   predictor_blocks_{i}/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2},
                                         adaLN_modulation}
                   predictor_norm, predictor_proj (E -> Dv)
  DinoWMPredictor: action_encoder (A -> Ae), pos_embedding (1, max_frames*H*W, C),
                   blocks_{i}/{norm1, attn/{qkv (no bias), proj}, norm2, mlp/{fc1, fc2}}, norm
                   with C = Dv + Pe + Ae
  VJEPA2ACPredictor: predictor_embed (Dv -> E), action_encoder (A -> E),
                   [state_encoder (Pe -> E), state_proj (E -> Pe)],
                   predictor_blocks_{i}/{norm1, attn, norm2, mlp}, predictor_norm,
                   predictor_proj (E -> Dv)

Parameter count of the paper AdaLN predictor (Dv = E = 384, Pe = 16, A = 10, depth 6, 16 heads):
17,626,480 = this module's params (predictor_embed, action_encoder, blocks, predictor_norm,
predictor_proj); the 48 params of ProprioEncoder(2 -> 16) are NOT part of that number.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import layers
from jepa_jax.models import rope as rope_lib

Dtype = Any


class ProprioEncoder(nn.Module):
  """Per-timestep Linear P -> Pe (the reference's kernel-1 Conv1d), torch default init."""
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, proprio):
    """`(B, T, P)` z-scored proprio -> `(B, T, Pe)` embeddings."""
    init = layers.torch_default_uniform(proprio.shape[-1])
    return nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
                    bias_init=init, name='patch_embed')(proprio)


def _check_inputs(module, latents, actions, proprio_emb, per_patch_proprio: bool = False):
  """Validates the common predictor inputs against `module.config`; returns latents.shape.

  per_patch_proprio: the module also accepts proprio embeddings per patch `(B, T, H, W, Pe)`.
  """
  name = type(module).__name__
  cfg = module.config
  latent_dim, action_dim = cfg.latent_dim, cfg.action_dim
  proprio_emb_dim, grid_size = cfg.proprio_emb_dim, cfg.grid_size
  if latents.ndim != 5:
    raise ValueError(f'{name}: latents must be (B, T, H, W, D), got shape {latents.shape}')
  batch, frames, height, width, dim = latents.shape
  if (height, width) != tuple(grid_size) or dim != latent_dim:
    raise ValueError(f'{name}: latents {latents.shape} do not match grid_size {grid_size} and '
                     f'latent_dim {latent_dim}; fix the predictor config')
  if actions.shape != (batch, frames, action_dim):
    raise ValueError(f'{name}: actions must be {(batch, frames, action_dim)}, got '
                     f'{actions.shape}')
  if proprio_emb_dim and proprio_emb is None:
    raise ValueError(f'{name}: config has proprio_emb_dim={proprio_emb_dim} but proprio_emb is '
                     'None; pass embeddings or set proprio_emb_dim=0')
  if not proprio_emb_dim and proprio_emb is not None:
    raise ValueError(f'{name}: proprio_emb given but proprio_emb_dim=0 in the config')
  allowed = [(batch, frames, proprio_emb_dim)]
  if per_patch_proprio:
    allowed.append((batch, frames, height, width, proprio_emb_dim))
  if proprio_emb is not None and proprio_emb.shape not in allowed:
    raise ValueError(f'{name}: proprio_emb must be one of {" or ".join(map(str, allowed))}, got '
                     f'{proprio_emb.shape}')
  return latents.shape


def _concat_proprio(x, proprio_emb):
  """Concatenates proprio channels to `(B, T, H, W, E)`: `(B, T, Pe)` is repeated over the
  patches, `(B, T, H, W, Pe)` (one embedding per patch) is taken as it is."""
  if proprio_emb is None:
    return x
  if proprio_emb.ndim == 3:
    proprio_emb = proprio_emb[:, :, None, None, :]
  tiled = jnp.broadcast_to(proprio_emb.astype(x.dtype), x.shape[:-1] + proprio_emb.shape[-1:])
  return jnp.concatenate([x, tiled], axis=-1)


PROPRIO_READOUTS = ('per_patch', 'first_patch')


@dataclasses.dataclass(frozen=True)
class PredictorConfig:
  """What the AdaLN and V-JEPA 2-AC predictors share (docs/reference.md §3a, §3c): pre-LN
  transformer blocks with 3D RoPE over the frames' patch tokens.

  latent_dim: encoder width Dv. proprio_emb_dim: Pe (0 = no proprio). action_dim: A.
  grid_size: (H, W) patch grid of the latents. depth, num_heads, mlp_ratio, qkv_bias,
  layernorm_eps: the blocks. rope_layout: see `rope.py`.
  remat: gradient checkpointing of each block, a key of `layers.REMAT_POLICIES`
    ('none', 'full', 'dots'); changes memory and speed of training, never the values.
  """
  latent_dim: int = 384
  proprio_emb_dim: int = 16
  action_dim: int = 10
  depth: int = 6
  num_heads: int = 16
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layernorm_eps: float = 1e-6
  grid_size: tuple[int, int] = (16, 16)
  rope_layout: str = 'reference'
  remat: str = 'none'

  def __post_init__(self):
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f'remat={self.remat!r} must be one of {tuple(layers.REMAT_POLICIES)}')


@dataclasses.dataclass(frozen=True)
class AdaLNConfig(PredictorConfig):
  """AdaLN predictor (docs/reference.md §3a); defaults are the paper's Wall config.

  embed_dim: visual width E inside the predictor (None -> Dv); the token width is
  E + proprio_emb_dim. zero_init: AdaLN-zero (modulation weights 0); modulation_std: the
  truncated-normal std of the modulation weights otherwise.
  proprio_readout: 'per_patch' (the reference: one proprio prediction per patch,
    `(B, T, H, W, Pe)`) or 'first_patch' (patch (0, 0) only, `(B, T, Pe)`).
  """
  embed_dim: int | None = None
  zero_init: bool = False
  modulation_std: float = 0.2
  proprio_readout: str = 'per_patch'

  def __post_init__(self):
    super().__post_init__()
    if self.proprio_readout not in PROPRIO_READOUTS:
      raise ValueError(f'proprio_readout={self.proprio_readout!r} must be one of '
                       f'{PROPRIO_READOUTS}')

  @property
  def width(self) -> int:
    return (self.embed_dim or self.latent_dim) + self.proprio_emb_dim


class AdaLNPredictor(nn.Module):
  """JEPA-WM AdaLN predictor: actions condition every block through AdaLN; 3D RoPE; frame-causal.

  Tokens are the H*W patches of every frame (frame-major); RoPE positions (t, row, col) restart
  at 0 for the window given. See docs/reference.md §3a for every detail reproduced here. Proprio
  embeddings may be given per frame `(B, T, Pe)` (repeated over the patches, as the reference's
  encoder output) or per patch `(B, T, H, W, Pe)` (fed-back predictions); the proprio output
  follows `config.proprio_readout`. The blocks run as one `lax.scan` (`layers.scan_blocks`).
  """
  config: AdaLNConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, actions, proprio_emb=None, *, deterministic: bool = True,
               first_frame: int = 0, kv_cache=None, return_kv_cache: bool = False,
               output_frames: int = 0):
    """`(B,T,H,W,Dv), (B,T,A), (B,T,Pe)|(B,T,H,W,Pe)|None -> ((B,T,H,W,Dv), proprio|None)`,
    proprio `(B,T,H,W,Pe)` ('per_patch' readout) or `(B,T,Pe)` ('first_patch').

    Incremental windows (exact; used by the planner's unroll): the T frames given may be the
    LAST frames of a window whose first `first_frame` frames were fed to an earlier call.
      first_frame: RoPE frame index of the first frame given (0 = a window of its own).
      kv_cache: None, or the `kv_cache` an earlier call returned for frames
        `0..first_frame-1` of the same window: per block `(k, v)`, each
        `(depth, B, heads, first_frame*H*W, head_dim)`.
      return_kv_cache: also return this call's cache (its frames' per-block keys/values).
    output_frames: F > 0 returns the predictions of the last F frames only (`T` -> `F` in the
      output shapes; the planner's unroll keeps only the newest frame): the last block computes
      its queries, attention output and MLP for those frames alone, the same values.
    Returns `(visual, proprio)`, or `(visual, proprio, kv_cache)` with return_kv_cache.
    """
    del deterministic  # no dropout in this model
    cfg = self.config
    batch, frames, height, width, _ = _check_inputs(self, latents, actions, proprio_emb,
                                                    per_patch_proprio=True)
    if (kv_cache is None) != (first_frame == 0):
      raise ValueError(f'{type(self).__name__}: first_frame={first_frame} needs the kv_cache of '
                       'frames 0..first_frame-1 (and first_frame=0 takes none)')
    if not 0 <= output_frames <= frames:
      raise ValueError(f'{type(self).__name__}: output_frames={output_frames} must be in '
                       f'[0, {frames}] (0 = every frame given)')
    embed_dim = cfg.embed_dim or cfg.latent_dim
    x = layers.dense(embed_dim, self.dtype, 'predictor_embed')(latents)
    x = _concat_proprio(x, proprio_emb)
    x = x.reshape(batch, frames * height * width, cfg.width)
    cond = layers.dense(cfg.width, self.dtype, 'action_encoder')(actions)  # (B, T, C)
    block = layers.AdaLNBlock(
        cfg.num_heads, int(cfg.width * cfg.mlp_ratio), cfg.qkv_bias, cfg.layernorm_eps,
        cfg.rope_layout, 0.0 if cfg.zero_init else cfg.modulation_std, dtype=self.dtype,
        parent=None)
    positions = rope_lib.grid_positions(first_frame + frames, height, width)
    x = layers.scan_blocks(self, block, cfg.depth, 'predictor_blocks_', x, cond,
                           positions=positions[first_frame * height * width:], causal=True,
                           return_kv=return_kv_cache, remat=cfg.remat,
                           per_block={} if kv_cache is None else {'kv_prefix': kv_cache},
                           last_block={'query_frames': output_frames} if 0 < output_frames < frames
                           else None)
    x, new_cache = x if return_kv_cache else (x, None)
    x = layers.layer_norm(cfg.layernorm_eps, self.dtype, 'predictor_norm')(x)
    x = x.reshape(batch, -1, height, width, cfg.width)
    visual = layers.dense(cfg.latent_dim, self.dtype, 'predictor_proj')(x[..., :embed_dim])
    proprio = None
    if cfg.proprio_emb_dim:
      proprio = x[..., embed_dim:]
      if cfg.proprio_readout == 'first_patch':
        proprio = proprio[:, :, 0, 0]
    return (visual, proprio, new_cache) if return_kv_cache else (visual, proprio)


@dataclasses.dataclass(frozen=True)
class DinoWMConfig:
  """DINO-WM feature-concatenation predictor (docs/reference.md §3b); defaults = the paper baseline."""
  latent_dim: int = 384
  proprio_emb_dim: int = 10
  action_dim: int = 10
  action_emb_dim: int = 10
  depth: int = 6
  num_heads: int = 16
  head_dim: int = 64
  mlp_dim: int = 2048
  dropout: float = 0.1
  layernorm_eps: float = 1e-5
  grid_size: tuple[int, int] = (16, 16)
  max_frames: int = 3

  @property
  def width(self) -> int:
    return self.latent_dim + self.proprio_emb_dim + self.action_emb_dim


class DinoWMPredictor(nn.Module):
  """Per patch `[z | proprio emb | action emb]`, learned positions, pre-LN causal blocks.

  No output projection: the output is split back into visual / proprio channels (the action
  channels are dropped); the proprio prediction is read from the first patch. Dropout (attention
  probabilities, attention output, MLP hidden and output, after the position embedding) is active
  only with `deterministic=False` and a 'dropout' rng.
  """
  config: DinoWMConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, actions, proprio_emb=None, *, deterministic: bool = True):
    """`(B,T,H,W,Dv), (B,T,A), (B,T,Pe)|None -> ((B,T,H,W,Dv), (B,T,Pe)|None)`."""
    cfg = self.config
    batch, frames, height, width, _ = _check_inputs(self, latents, actions, proprio_emb,
                                                    per_patch_proprio=True)
    if frames > cfg.max_frames:
      raise ValueError(f'DinoWMPredictor: {frames} frames > max_frames {cfg.max_frames} (the '
                       'learned position table); raise max_frames or shorten the context')
    tokens = height * width
    action_emb = layers.dense(cfg.action_emb_dim, self.dtype, 'action_encoder')(actions)
    x = _concat_proprio(latents.astype(self.dtype), proprio_emb)
    x = _concat_proprio(x, action_emb)
    x = x.reshape(batch, frames * tokens, cfg.width)
    pos = self.param('pos_embedding', nn.initializers.normal(1.0),
                     (1, cfg.max_frames * tokens, cfg.width), jnp.float32)
    x = x + pos[:, :frames * tokens].astype(self.dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    # Blocks stay a Python loop: each needs its own dropout rng stream.
    for i in range(cfg.depth):
      x = layers.Block(cfg.num_heads, cfg.mlp_dim, cfg.head_dim, qkv_bias=False,
                       layernorm_eps=cfg.layernorm_eps, dropout=cfg.dropout, dtype=self.dtype,
                       name=f'blocks_{i}')(x, causal_frames=frames, deterministic=deterministic)
    x = layers.layer_norm(cfg.layernorm_eps, self.dtype, 'norm')(x)
    x = x.reshape(batch, frames, height, width, cfg.width)
    visual = x[..., :cfg.latent_dim]
    proprio = (x[:, :, 0, 0, cfg.latent_dim:cfg.latent_dim + cfg.proprio_emb_dim]
               if cfg.proprio_emb_dim else None)
    return visual, proprio


@dataclasses.dataclass(frozen=True)
class VJEPA2ACConfig(PredictorConfig):
  """V-JEPA 2-AC predictor (docs/reference.md §3c). DROID: latent 1408, embed 1024, depth 24, 16 heads.

  embed_dim: token width E inside the predictor."""
  embed_dim: int = 384


class VJEPA2ACPredictor(nn.Module):
  """Per frame `[action token, (proprio token), H*W patch tokens]`, pre-LN RoPE blocks.

  Condition tokens get only the temporal RoPE (their row/column positions are 0, i.e. identity);
  the frame-causal mask works on blocks of `cond_tokens + H*W`. The output projection applies to
  patch tokens. The reference does not predict proprio; when proprio embeddings are given we read
  the proprio token's output through an extra `state_proj` Linear (E -> Pe) so that this model
  fits the common predictor interface.
  """
  config: VJEPA2ACConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latents, actions, proprio_emb=None, *, deterministic: bool = True):
    """`(B,T,H,W,Dv), (B,T,A), (B,T,Pe)|None -> ((B,T,H,W,Dv), (B,T,Pe)|None)`."""
    del deterministic  # no dropout in this model
    cfg = self.config
    batch, frames, height, width, _ = _check_inputs(self, latents, actions, proprio_emb)
    patches = height * width
    x = layers.dense(cfg.embed_dim, self.dtype, 'predictor_embed')(latents)
    x = x.reshape(batch, frames, patches, cfg.embed_dim)
    cond = [layers.dense(cfg.embed_dim, self.dtype, 'action_encoder')(actions)[:, :, None]]
    if proprio_emb is not None:
      cond.append(layers.dense(cfg.embed_dim, self.dtype, 'state_encoder')(proprio_emb)[:, :, None])
    num_cond = len(cond)
    x = jnp.concatenate(cond + [x], axis=2)  # (B, T, num_cond + patches, E)
    per_frame = num_cond + patches
    x = x.reshape(batch, frames * per_frame, cfg.embed_dim)
    grid = rope_lib.grid_positions(frames, height, width).reshape(frames, patches, 3)
    cond_pos = grid[:, :1] * np.array([1, 0, 0], np.int32)  # (frame, 0, 0): temporal only
    positions = np.concatenate([np.repeat(cond_pos, num_cond, axis=1), grid], axis=1)
    positions = positions.reshape(frames * per_frame, 3)  # numpy: constant RoPE tables
    block = layers.Block(cfg.num_heads, int(cfg.embed_dim * cfg.mlp_ratio),
                         qkv_bias=cfg.qkv_bias, layernorm_eps=cfg.layernorm_eps,
                         rope_layout=cfg.rope_layout, dtype=self.dtype, parent=None)
    x = layers.scan_blocks(self, block, cfg.depth, 'predictor_blocks_', x, positions=positions,
                           causal_frames=frames, remat=cfg.remat)
    x = layers.layer_norm(cfg.layernorm_eps, self.dtype, 'predictor_norm')(x)
    x = x.reshape(batch, frames, per_frame, cfg.embed_dim)
    visual = layers.dense(cfg.latent_dim, self.dtype, 'predictor_proj')(x[:, :, num_cond:])
    visual = visual.reshape(batch, frames, height, width, cfg.latent_dim)
    proprio = None
    if proprio_emb is not None:
      proprio = layers.dense(cfg.proprio_emb_dim, self.dtype, 'state_proj')(x[:, :, 1])
    return visual, proprio


# Kind -> its config dataclass ('adaln_zero' is AdaLN with zero_init forced).
PREDICTOR_CONFIGS = {'adaln': AdaLNConfig, 'adaln_zero': AdaLNConfig, 'dino_wm': DinoWMConfig,
                     'vjepa2_ac': VJEPA2ACConfig}
PREDICTOR_KINDS = tuple(PREDICTOR_CONFIGS)
_MODULES = {AdaLNConfig: AdaLNPredictor, DinoWMConfig: DinoWMPredictor,
            VJEPA2ACConfig: VJEPA2ACPredictor}


def stored_config(kind: str, config: dict) -> dict:
  """A predictor config as an export stored it, in today's keys: exports written before
  AdaLN / V-JEPA 2-AC dropped `max_frames` (it only documented the context length) still load."""
  if PREDICTOR_CONFIGS.get(kind) in (AdaLNConfig, VJEPA2ACConfig):
    return {k: v for k, v in config.items() if k != 'max_frames'}
  return dict(config)


def build_predictor(kind: str, dtype: Dtype = jnp.float32, **config) -> nn.Module:
  """Predictor module from a kind and its config keys (unknown keys raise TypeError).

  kinds: 'adaln', 'adaln_zero' (AdaLNConfig, zero_init forced), 'dino_wm' (DinoWMConfig),
  'vjepa2_ac' (VJEPA2ACConfig). `grid_size` may be a list (it is turned into a tuple).
  """
  if kind not in PREDICTOR_CONFIGS:
    raise ValueError(f'unknown predictor kind {kind!r}; choose one of {PREDICTOR_KINDS}')
  if 'grid_size' in config:
    config['grid_size'] = tuple(config['grid_size'])
  if kind == 'adaln_zero':
    config['zero_init'] = True
  config_cls = PREDICTOR_CONFIGS[kind]
  return _MODULES[config_cls](config_cls(**config), dtype)
