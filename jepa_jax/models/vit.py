"""Video / image Vision Transformer encoder (V-JEPA 1/2, DINOv2 options) and preprocessing.

`ViTEncoder(config, dtype).apply({'params': p}, video (B, T, H, W, C), token_indices=None,
return_layers=())` -> patch tokens after the final LayerNorm, `(B, T', H', W', D)` with
T' = T / tubelet_size, H' = H / patch_size, W' = W / patch_size (CLS / register tokens dropped),
or `(B, K, D)` for the K tokens selected by `token_indices`. With `readout='cls'` (LeWorldModel:
the CLS token is the frame's latent) the output is the CLS token alone, `(B, 1, 1, 1, D)`, of a
clip that is a single tubelet.

Position embeddings (`config.pos_embed`):
  'sincos3d'  fixed V-JEPA 1 table added after patch embedding: channels [frame | row | col] of
              widths [D/2 | D/4 | D/4] (or 2*ceil(D/6) each with `sincos_uniform_power`, cut to D),
              each half sin, half cos of `pos * 10000^(-k/(w/2))`.
  'learned'   DINOv2 table `pos_embed (1, n_cls + Hg*Wg, D)` on the grid `pos_embed_grid`
              (default: the working grid), shared by all frames; bicubically interpolated to the
              working grid like DINOv2 (see `bicubic_matrix`).
  'rope3d'    V-JEPA 2: no additive table; 3D RoPE in every attention (rope.py).
  'none'      nothing.

Parameter tree (torch names in brackets):
  patch_embed/proj/kernel (t, p, p, C, D)   [patch_embed.proj.weight (D, C, t, p, p) for Conv3d,
                                              (D, C, p, p) for DINOv2's Conv2d with t = 1]
  patch_embed/proj/bias (D,)
  stem/conv_{i}/{kernel (3, 3, C_in, C_out), bias}  only with `stem_channels` (no torch
                                             counterpart: the reference encoders have no stem)
  cls_token (1, 1, D), register_tokens (1, R, D), pos_embed (1, n_cls + Hg*Wg, D)  [same names]
  blocks_{i}/{norm1, attn/{qkv, proj}, ls1/gamma, norm2, mlp/{fc1, fc2}, ls2/gamma}  [blocks.{i}.*]
  norm/{scale, bias}                         [norm.{weight, bias}]
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax.models import layers
from jepa_jax.models import rope as rope_lib

Dtype = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POS_EMBEDS = ('learned', 'sincos3d', 'rope3d', 'none')
READOUTS = ('patches', 'cls')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Encoder hyper-parameters (see module docstring for `pos_embed`).

  image_size: nominal input size (the model accepts any size divisible by patch_size).
  num_frames: nominal clip length (documentation; tables are built for the actual input).
  layerscale_init: None = no LayerScale (V-JEPA); a float = DINOv2 LayerScale init.
  pos_embed_grid: (Hg, Wg) grid of the learned table; None = image_size // patch_size.
  interpolate_offset: DINOv2's +0.1 in the bicubic scale factor (0 = plain size-based resize).
  readout: 'patches' (the patch tokens) or 'cls' (the CLS token only: one global latent per
    frame that still sees the image through patch_size x patch_size patches; needs
    use_cls_token).
  stem_channels: () = the plain patchify; else a convolutional stem (Xiao et al. 2021, "Early
    convolutions help transformers see better") of one 3x3 stride-2 convolution + GELU per
    entry, of that many channels, in front of a patchify of patch_size / 2^len(stem_channels):
    the token grid stays image_size / patch_size, but a token sees detail finer than a patch.
  output_dim: 0 = the latent is the final LayerNorm's output (`width` channels); k > 0 = a linear
    map to k channels after it (`output_proj`; stage 1's slow-feature readout writes it).
  scan_blocks: run the blocks as one `lax.scan` (`layers.scan_blocks`: the same parameters and
    outputs) instead of a Python loop, so a compiled program holds one block and its compile
    time does not grow with the depth (the 40-block ViT-g stage-1 step: docs/pods.md); calls
    with `return_layers` still loop (they keep intermediate outputs).
  """
  image_size: int = 224
  patch_size: int = 16
  tubelet_size: int = 2
  num_frames: int = 16
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  use_cls_token: bool = False
  num_register_tokens: int = 0
  layerscale_init: float | None = None
  pos_embed: str = 'sincos3d'
  pos_embed_grid: tuple[int, int] | None = None
  layernorm_eps: float = 1e-6
  in_channels: int = 3
  rope_layout: str = 'reference'
  sincos_uniform_power: bool = False
  interpolate_offset: float = 0.1
  readout: str = 'patches'
  stem_channels: tuple[int, ...] = ()
  output_dim: int = 0
  scan_blocks: bool = False

  def __post_init__(self):
    if self.readout not in READOUTS:
      raise ValueError(f'unknown encoder readout {self.readout!r}; choose one of {READOUTS}')
    if self.readout == 'cls' and not self.use_cls_token:
      raise ValueError("encoder readout='cls' needs use_cls_token=True")
    if self.pos_embed not in POS_EMBEDS:
      raise ValueError(f'unknown pos_embed {self.pos_embed!r}; choose one of {POS_EMBEDS}')
    if self.output_dim < 0:
      raise ValueError(f'output_dim {self.output_dim} must be >= 0 (0 = no output map)')
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} not divisible by num_heads {self.num_heads}')
    if self.pos_embed_grid is not None:
      object.__setattr__(self, 'pos_embed_grid', tuple(self.pos_embed_grid))
    object.__setattr__(self, 'stem_channels', tuple(self.stem_channels))
    if self.patch_size % 2 ** len(self.stem_channels):
      raise ValueError(f'patch_size {self.patch_size} not divisible by the conv stem\'s '
                       f'stride 2^{len(self.stem_channels)}; use fewer stem_channels')

  @property
  def latent_dim(self) -> int:
    """Channels of the encoder's output: `output_dim`, or `width` without an output map."""
    return self.output_dim or self.width

  @property
  def grid(self) -> tuple[int, int]:
    """Nominal output token grid (H', W'): the patch grid, or (1, 1) for the CLS readout."""
    return (1, 1) if self.readout == 'cls' else self.patch_grid

  @property
  def patch_grid(self) -> tuple[int, int]:
    """Nominal patch grid (H', W') of `image_size` frames."""
    return (self.image_size // self.patch_size,) * 2


_PRESETS = {
    'tiny': dict(width=192, depth=12, num_heads=3),
    'small': dict(width=384, depth=12, num_heads=6),
    'base': dict(width=768, depth=12, num_heads=12),
    'large': dict(width=1024, depth=24, num_heads=16),
    'giant': dict(width=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
}
# V-JEPA 2's encoders (docs/reference.md §1): 16-frame clips of 256 px in 2 x 16 x 16 tubelets,
# 3D RoPE, no position table. ViT-L/16 has 303 M parameters; ViT-g/16 1.01 B (width 1408,
# 40 blocks, 22 heads of 64, MLP 48/11 = 6144 wide: facebookresearch/vjepa2's
# `vit_giant_xformers`).
_VJEPA2_INPUT = dict(image_size=256, patch_size=16, tubelet_size=2, num_frames=16,
                     pos_embed='rope3d', scan_blocks=True)
_PRESETS.update(vjepa2_large={**_PRESETS['large'], **_VJEPA2_INPUT},
                vjepa2_giant={**_PRESETS['giant'], **_VJEPA2_INPUT})


def vit_config(preset: str = 'small', **overrides) -> ViTConfig:
  """ViTConfig from a size preset (tiny/small/base/large/giant, patch 16; vjepa2_large and
  vjepa2_giant with V-JEPA 2's clips and 3D RoPE) plus overrides.

  Unknown override keys raise TypeError naming the key.
  """
  if preset not in _PRESETS:
    raise ValueError(f'unknown ViT preset {preset!r}; choose one of {tuple(_PRESETS)}')
  return ViTConfig(**{**_PRESETS[preset], **overrides})


def dinov2_config(size: str = 'small', registers: bool = False, image_size: int = 224,
                  **overrides) -> ViTConfig:
  """DINOv2 ViT-{S,B,L}/14 (torch hub layout): CLS, 4 registers for `_reg`, LayerScale,
  learned 37x37 table (trained at 518 px) interpolated to the working grid, single images
  (tubelet 1). ViT-g/14 uses a SwiGLU MLP, which this encoder does not implement."""
  if size not in ('small', 'base', 'large'):
    raise ValueError(f'dinov2_config supports small/base/large, got {size!r}')
  return vit_config(size, image_size=image_size, patch_size=14, tubelet_size=1, num_frames=1,
                    use_cls_token=True, num_register_tokens=4 if registers else 0,
                    layerscale_init=1.0, pos_embed='learned', pos_embed_grid=(37, 37),
                    **overrides)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """`(N,)` positions -> `(N, dim)` float64 `[sin(pos w) | cos(pos w)]`, w_k = 1e4^(-k/(dim/2))."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angle = np.asarray(pos, np.float64).reshape(-1)[:, None] * omega
  return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def sincos3d_table(dim: int, grid: tuple[int, int, int], uniform_power: bool = False
                   ) -> np.ndarray:
  """V-JEPA fixed table `(T*H*W, dim)` for a row-major (frame, row, col) grid."""
  pos = rope_lib.grid_positions(*grid)
  if uniform_power:
    widths = (int(np.ceil(dim / 6) * 2),) * 3
  else:
    widths = (dim // 2, dim // 4, dim // 4)
  table = np.concatenate([sincos_1d(w, pos[:, a]) for a, w in enumerate(widths)], axis=1)
  if table.shape[1] < dim:
    raise ValueError(f'sincos3d needs width divisible by 4, got {dim}')
  return table[:, :dim]


def _cubic_weights(t: float, a: float) -> list[float]:
  """Keys cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(in_size: int, out_size: int, scale: float, a: float = -0.75) -> np.ndarray:
  """`(out_size, in_size)` float64 matrix of torch's 1-D bicubic resampling.

  Reproduces `torch.nn.functional.interpolate(mode='bicubic', align_corners=False,
  antialias=False)` along one axis when it is called with `scale_factor=scale`: output pixel i
  samples source coordinate `(i + 0.5) / scale - 0.5` (no clamping of the coordinate), uses the
  4 taps `floor(src) - 1 .. floor(src) + 2` with cubic-convolution weights of parameter
  a = -0.75 (torch; jax.image.resize 'cubic' uses a = -0.5), and taps outside `[0, in_size)`
  read the edge pixel (their weights are added to it). A size-based call is `scale = out / in`.
  """
  mat = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = (i + 0.5) / scale - 0.5
    base = math.floor(src)
    for offset, w in zip(range(-1, 3), _cubic_weights(src - base, a)):
      mat[i, min(max(base + offset, 0), in_size - 1)] += w
  return mat


def interpolate_pos_table(table: jnp.ndarray, grid: tuple[int, int], offset: float = 0.1
                          ) -> jnp.ndarray:
  """DINOv2 position-table interpolation: `(Hg, Wg, D)` -> `(H', W', D)`.

  Scale factors `(H' + offset) / Hg` and `(W' + offset) / Wg` (torch then outputs
  floor(Hg * scale) = H' rows); bicubic without antialias, computed in float32.
  """
  (hg, wg), (h, w) = table.shape[:2], grid
  rows = bicubic_matrix(hg, h, (h + offset) / hg)
  cols = bicubic_matrix(wg, w, (w + offset) / wg)
  return jnp.einsum('ph,qw,hwd->pqd', jnp.asarray(rows, jnp.float32),
                    jnp.asarray(cols, jnp.float32), table.astype(jnp.float32))


def preprocess_frames(frames, image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
  """uint8 `(..., S, S, 3)` frames -> float32 `(..., image_size, image_size, 3)`.

  Scales to [0, 1], resizes the whole frame bilinearly without antialiasing (half-pixel centres,
  like torch `interpolate(mode='bilinear', antialias=False)`), then `(x - mean) / std` per channel.
  """
  frames = jnp.asarray(frames)
  if frames.ndim < 3 or frames.shape[-1] != len(mean):
    raise ValueError(f'frames must be (..., S, S, {len(mean)}), got {frames.shape}')
  x = frames.astype(jnp.float32) / 255.0
  shape = frames.shape[:-3] + (image_size, image_size, frames.shape[-1])
  if shape != x.shape:
    x = jax.image.resize(x, shape, method='linear', antialias=False)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def image_to_clip(images, num_frames: int = 2):
  """`(..., H, W, C)` images -> `(..., num_frames, H, W, C)` clips repeating each image."""
  return jnp.repeat(jnp.asarray(images)[..., None, :, :, :], num_frames, axis=-4)


class PatchEmbed(nn.Module):
  """Non-overlapping tubelet embedding: a strided Conv3d written as reshape + einsum.

  Params `proj/kernel (t, p, p, C, D)` and `proj/bias (D,)`.
  """
  width: int
  patch_size: int
  tubelet_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video):
    """`(B, T, H, W, C)` -> `(B, T', H', W', D)`."""
    b, t, h, w, c = video.shape
    tt, p = self.tubelet_size, self.patch_size
    x = video.reshape(b, t // tt, tt, h // p, p, w // p, p, c)
    return nn.Einsum((tt, p, p, c, self.width), 'bTtHhWwc,thwcd->bTHWd', dtype=self.dtype,
                     param_dtype=jnp.float32, kernel_init=layers.trunc_normal(0.02),
                     name='proj')(x)


class ConvStem(nn.Module):
  """3x3 stride-2 convolutions + GELU applied to every frame: `(B, T, H, W, C)` ->
  `(B, T, H / 2^k, W / 2^k, channels[-1])` for k = len(channels). Params `conv_{i}/{kernel,
  bias}`."""
  channels: tuple[int, ...]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, video):
    b, t = video.shape[:2]
    x = video.reshape((b * t,) + video.shape[2:])
    for i, channels in enumerate(self.channels):
      x = layers.gelu_exact(nn.Conv(channels, (3, 3), strides=2, padding=1, dtype=self.dtype,
                                    param_dtype=jnp.float32, name=f'conv_{i}')(x))
    return x.reshape((b, t) + x.shape[1:])


class ViTEncoder(nn.Module):
  """ViT over video tubelets (or images with tubelet_size 1); see module docstring."""
  config: ViTConfig
  dtype: Dtype = jnp.float32

  def _check_video(self, video):
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f'video must be (B, T, H, W, {cfg.in_channels}), got {video.shape}')
    _, t, h, w, _ = video.shape
    if t % cfg.tubelet_size:
      raise ValueError(f'{t} frames not divisible by tubelet_size {cfg.tubelet_size}; '
                       'duplicate single images with image_to_clip')
    if h % cfg.patch_size or w % cfg.patch_size:
      raise ValueError(f'frame size {(h, w)} not divisible by patch_size {cfg.patch_size}')

  @nn.compact
  def __call__(self, video, token_indices=None, return_layers: Sequence[int] = ()):
    """Args:
      video: `(B, T, H, W, C)` float, already normalised.
      token_indices: optional `(B, K)` int32 flat row-major indices into the (T', H', W') grid
        of the tokens to keep after position embedding (stage-1 context encoder).
      return_layers: block indices (0-based, negatives from the end) whose outputs are also
        returned, each through the final LayerNorm.
    Returns:
      `(B, T', H', W', D)` (or `(B, K, D)`), and with return_layers a tuple
      `(final, [intermediate, ...])` of that shape.
    """
    cfg = self.config
    self._check_video(video)
    batch = video.shape[0]
    if cfg.stem_channels:
      video = ConvStem(cfg.stem_channels, self.dtype, name='stem')(video)
    x = PatchEmbed(cfg.width, cfg.patch_size // 2 ** len(cfg.stem_channels), cfg.tubelet_size,
                   self.dtype, name='patch_embed')(video)
    grid = x.shape[1:4]
    x = x.reshape(batch, -1, cfg.width)
    n_cls = int(cfg.use_cls_token)

    cls_pos = None
    if cfg.pos_embed == 'sincos3d':
      table = sincos3d_table(cfg.width, grid, cfg.sincos_uniform_power)
      x = x + jnp.asarray(table, self.dtype)
    elif cfg.pos_embed == 'learned':
      hg, wg = cfg.pos_embed_grid or cfg.patch_grid
      table = self.param('pos_embed', layers.trunc_normal(0.02), (1, n_cls + hg * wg, cfg.width),
                         jnp.float32)
      cls_pos = table[:, :n_cls]
      spatial = table[0, n_cls:].reshape(hg, wg, cfg.width)
      if (hg, wg) != tuple(grid[1:]):
        spatial = interpolate_pos_table(spatial, grid[1:], cfg.interpolate_offset)
      spatial = jnp.broadcast_to(spatial[None], grid + (cfg.width,)).reshape(-1, cfg.width)
      x = x + spatial.astype(self.dtype)

    positions = None
    if token_indices is not None:
      if token_indices.ndim != 2 or token_indices.shape[0] != batch:
        raise ValueError(f'token_indices must be (B={batch}, K), got {token_indices.shape}')
      x = jnp.take_along_axis(x, token_indices[..., None].astype(jnp.int32), axis=1)
      if cfg.pos_embed == 'rope3d':
        positions = rope_lib.positions_from_indices(token_indices, grid)
    elif cfg.pos_embed == 'rope3d':
      positions = jnp.broadcast_to(rope_lib.grid_positions(*grid), (batch, x.shape[1], 3))

    prefix = []
    if cfg.use_cls_token:
      cls = self.param('cls_token', layers.trunc_normal(0.02), (1, 1, cfg.width), jnp.float32)
      if cls_pos is not None:
        cls = cls + cls_pos
      prefix.append(jnp.broadcast_to(cls, (batch, 1, cfg.width)))
    if cfg.num_register_tokens:
      reg = self.param('register_tokens', nn.initializers.zeros,
                       (1, cfg.num_register_tokens, cfg.width), jnp.float32)
      prefix.append(jnp.broadcast_to(reg, (batch, cfg.num_register_tokens, cfg.width)))
    n_prefix = sum(p.shape[1] for p in prefix)
    if prefix:
      x = jnp.concatenate([p.astype(self.dtype) for p in prefix] + [x], axis=1)
      if positions is not None:  # prefix tokens at position (0, 0, 0): no rotation
        positions = jnp.concatenate(
            [jnp.zeros((batch, n_prefix, 3), jnp.int32), positions], axis=1)

    wanted = sorted({i % cfg.depth for i in return_layers})
    norm = layers.layer_norm(cfg.layernorm_eps, self.dtype, 'norm')
    if cfg.readout == 'cls':
      if token_indices is not None or grid[0] != 1:
        raise ValueError(f"encoder readout='cls' encodes whole clips of one tubelet, got token "
                         f"grid {grid} (token_indices given: {token_indices is not None})")
      out_shape, keep = (batch, 1, 1, 1, cfg.latent_dim), slice(0, 1)
    else:
      out_shape = (batch, -1, cfg.latent_dim) if token_indices is not None else (
          (batch,) + grid + (cfg.latent_dim,))
      keep = slice(n_prefix, None)
    output_proj = (nn.Dense(cfg.output_dim, dtype=self.dtype, param_dtype=jnp.float32,
                            name='output_proj') if cfg.output_dim else lambda h: h)

    def finish(h):
      return output_proj(norm(h[:, keep])).reshape(out_shape)

    block = functools.partial(
        layers.Block, cfg.num_heads, int(cfg.width * cfg.mlp_ratio), qkv_bias=cfg.qkv_bias,
        layerscale_init=cfg.layerscale_init, layernorm_eps=cfg.layernorm_eps,
        rope_layout=cfg.rope_layout, dtype=self.dtype)
    intermediates = {}
    if cfg.scan_blocks and not wanted:
      x = layers.scan_blocks(self, block(parent=None), cfg.depth, 'blocks_', x,
                             positions=positions)
    else:
      for i in range(cfg.depth):
        x = block(layer_id=i + 1, name=f'blocks_{i}')(x, positions=positions)
        if i in wanted:
          intermediates[i] = finish(x)
    out = finish(x)
    if return_layers:
      return out, [intermediates[i % cfg.depth] for i in return_layers]
    return out
