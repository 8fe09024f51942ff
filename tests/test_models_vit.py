"""ViT encoder and preprocessing against torch (CPU) and numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa_jax.models import vit

SMALL = dict(image_size=32, patch_size=8, tubelet_size=2, width=48, depth=2, num_heads=4)


def _torch(x):
  return torch.from_numpy(np.array(x, np.float32))


@pytest.mark.parametrize('table_grid,grid', [((37, 37), (16, 16)), ((5, 5), (7, 9)),
                                             ((6, 4), (3, 5))])
def test_pos_table_interpolation_matches_torch_bicubic(table_grid, grid):
  """DINOv2: F.interpolate(bicubic, scale_factor=((h + .1) / Hg, (w + .1) / Wg), no antialias)."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=table_grid + (8,)).astype(np.float32)
  scale = ((grid[0] + 0.1) / table_grid[0], (grid[1] + 0.1) / table_grid[1])
  ref = F.interpolate(_torch(table).permute(2, 0, 1)[None], mode='bicubic', scale_factor=scale,
                      antialias=False)[0].permute(1, 2, 0).numpy()
  assert ref.shape[:2] == grid
  got = vit.interpolate_pos_table(jnp.asarray(table), grid, offset=0.1)
  np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5)


def test_bicubic_matrix_size_mode_matches_torch():
  x = np.random.default_rng(1).normal(size=(11,)).astype(np.float32)
  for out in (4, 11, 17):
    ref = F.interpolate(_torch(x)[None, None, :, None], size=(out, 1), mode='bicubic',
                        align_corners=False)[0, 0, :, 0].numpy()
    np.testing.assert_allclose(vit.bicubic_matrix(11, out, out / 11) @ x, ref, atol=2e-5)


def _numpy_sincos3d(dim, grid):
  """V-JEPA 1 table, token by token: [frame (D/2) | row (D/4) | col (D/4)], each [sin | cos]."""
  t_n, h_n, w_n = grid
  out = np.zeros((t_n * h_n * w_n, dim))
  for idx in range(out.shape[0]):
    coords = (idx // (h_n * w_n), (idx // w_n) % h_n, idx % w_n)
    col = 0
    for coord, width in zip(coords, (dim // 2, dim // 4, dim // 4)):
      for j in range(width):
        k = j % (width // 2)
        angle = coord / 10000 ** (k / (width / 2))
        out[idx, col + j] = np.sin(angle) if j < width // 2 else np.cos(angle)
      col += width
  return out


def test_sincos3d_matches_numpy():
  np.testing.assert_allclose(vit.sincos3d_table(48, (2, 3, 4)), _numpy_sincos3d(48, (2, 3, 4)),
                             atol=1e-12)


def test_patch_embed_posembed_and_norm_match_torch():
  """DINOv2-style encoder without blocks: LN(conv(x) + bicubic-interpolated table), CLS and
  registers dropped. Reference: torch conv2d with the converted kernel, F.interpolate, layer_norm."""
  cfg = vit.vit_config('tiny', image_size=32, patch_size=8, tubelet_size=1, width=16, depth=0,
                       num_heads=2, use_cls_token=True, num_register_tokens=2,
                       pos_embed='learned', pos_embed_grid=(3, 3))
  enc = vit.ViTEncoder(cfg)
  images = jax.random.normal(jax.random.key(0), (2, 1, 32, 32, 3))
  params = jax.jit(enc.init)(jax.random.key(1), images)['params']
  params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(2).normal(size=p.shape), params)
  got = jax.jit(enc.apply)({'params': params}, images)
  assert got.shape == (2, 1, 4, 4, 16)

  kernel = np.asarray(params['patch_embed']['proj']['kernel'])  # (1, p, p, C, D)
  weight = _torch(kernel[0].transpose(3, 2, 0, 1))  # torch Conv2d (D, C, p, p)
  x = F.conv2d(_torch(images[:, 0]).permute(0, 3, 1, 2), weight,
               _torch(params['patch_embed']['proj']['bias']), stride=8)  # (B, D, 4, 4)
  table = _torch(params['pos_embed'])[0, 1:].reshape(3, 3, 16).permute(2, 0, 1)[None]
  pos = F.interpolate(table, mode='bicubic', scale_factor=(4.1 / 3, 4.1 / 3), antialias=False)
  x = (x + pos).permute(0, 2, 3, 1)
  ref = F.layer_norm(x, (16,), _torch(params['norm']['scale']), _torch(params['norm']['bias']),
                     eps=1e-6)
  np.testing.assert_allclose(np.asarray(got[:, 0]), ref.numpy(), atol=1e-4)


def test_tubelet_embed_matches_torch_conv3d():
  video = jax.random.normal(jax.random.key(3), (1, 4, 32, 32, 3))
  enc = vit.PatchEmbed(48, 8, 2)
  params = jax.jit(enc.init)(jax.random.key(4), video)['params']
  got = enc.apply({'params': params}, video)
  weight = _torch(np.asarray(params['proj']['kernel']).transpose(4, 3, 0, 1, 2))  # (D,C,t,p,p)
  ref = F.conv3d(_torch(video).permute(0, 4, 1, 2, 3), weight, stride=(2, 8, 8))
  np.testing.assert_allclose(np.asarray(got), ref.permute(0, 2, 3, 4, 1).numpy(), atol=1e-4)


def test_conv_stem_then_patchify_matches_torch():
  """Encoder without blocks and tables: LN(patchify(gelu(conv(gelu(conv(x)))))). Reference:
  torch conv2d (3x3, stride 2, padding 1) + exact GELU twice, then the stride-4 patch conv."""
  cfg = vit.vit_config('tiny', image_size=32, patch_size=16, tubelet_size=1, width=16, depth=0,
                       num_heads=2, pos_embed='none', stem_channels=(6, 8))
  enc = vit.ViTEncoder(cfg)
  images = jax.random.normal(jax.random.key(5), (2, 1, 32, 32, 3))
  params = jax.jit(enc.init)(jax.random.key(6), images)['params']
  params = jax.tree.map(lambda p: p + 0.1 * np.random.default_rng(7).normal(size=p.shape), params)
  got = jax.jit(enc.apply)({'params': params}, images)
  assert got.shape == (2, 1, 2, 2, 16)  # the token grid of a plain 16 px patchify

  x = _torch(images[:, 0]).permute(0, 3, 1, 2)
  for i in range(2):
    conv = params['stem'][f'conv_{i}']
    weight = _torch(np.asarray(conv['kernel']).transpose(3, 2, 0, 1))  # (out, in, 3, 3)
    x = F.gelu(F.conv2d(x, weight, _torch(conv['bias']), stride=2, padding=1))
  kernel = np.asarray(params['patch_embed']['proj']['kernel'])[0]  # (4, 4, 8, 16)
  x = F.conv2d(x, _torch(kernel.transpose(3, 2, 0, 1)),
               _torch(params['patch_embed']['proj']['bias']), stride=4).permute(0, 2, 3, 1)
  ref = F.layer_norm(x, (16,), _torch(params['norm']['scale']), _torch(params['norm']['bias']),
                     eps=1e-6)
  np.testing.assert_allclose(np.asarray(got[:, 0]), ref.numpy(), atol=1e-4)


@pytest.mark.parametrize('pos_embed', ['sincos3d', 'rope3d'])
def test_token_indices_follow_positions(pos_embed):
  """Attention is permutation-equivariant and positions follow the indices, so encoding all
  tokens in a shuffled order gives the full output shuffled; a subset differs (tokens mix)."""
  enc = vit.ViTEncoder(vit.vit_config('tiny', **SMALL, pos_embed=pos_embed))
  video = jax.random.normal(jax.random.key(5), (2, 4, 32, 32, 3))
  params = jax.jit(enc.init)(jax.random.key(6), video)
  apply = jax.jit(enc.apply)
  full = np.asarray(apply(params, video)).reshape(2, 32, 48)
  perm = np.stack([np.random.default_rng(i).permutation(32) for i in range(2)]).astype(np.int32)
  shuffled = apply(params, video, jnp.asarray(perm))
  np.testing.assert_allclose(np.asarray(shuffled), np.take_along_axis(full, perm[..., None], 1),
                             atol=1e-4)
  subset = np.asarray(apply(params, video, jnp.asarray(perm[:, :8])))
  assert np.abs(subset - np.take_along_axis(full, perm[:, :8, None], 1)).max() > 1e-3


def test_return_layers():
  """Layer 0 through the final norm == a depth-1 encoder with the same weights; the last == out."""
  cfg = vit.vit_config('tiny', **SMALL, pos_embed='rope3d')
  enc = vit.ViTEncoder(cfg)
  video = jax.random.normal(jax.random.key(7), (1, 2, 32, 32, 3))
  params = jax.jit(enc.init)(jax.random.key(8), video)['params']
  out, (first, last) = enc.apply({'params': params}, video, return_layers=(0, -1))
  np.testing.assert_allclose(last, out, atol=1e-6)
  shallow = vit.ViTEncoder(vit.vit_config('tiny', **{**SMALL, 'depth': 1}, pos_embed='rope3d'))
  sub = {k: params[k] for k in ('patch_embed', 'blocks_0', 'norm')}
  np.testing.assert_allclose(shallow.apply({'params': sub}, video), first, atol=1e-5)


def test_cls_readout_is_the_normalised_cls_token():
  """readout='cls': the last block's CLS row through the final LayerNorm (re-derived in float64
  numpy from the captured block output), shaped as a (1, 1) token grid; the patch readout of the
  same weights is unchanged by it."""
  small = dict(SMALL, tubelet_size=1)
  cfg = vit.vit_config('tiny', **small, use_cls_token=True, readout='cls')
  assert cfg.grid == (1, 1) and cfg.patch_grid == (4, 4)
  enc = vit.ViTEncoder(cfg)
  video = jax.random.normal(jax.random.key(11), (3, 1, 32, 32, 3))
  params = jax.jit(enc.init)(jax.random.key(12), video)
  out, state = enc.apply(params, video, capture_intermediates=True)
  assert out.shape == (3, 1, 1, 1, 48)
  last = np.asarray(state['intermediates'][f'blocks_{cfg.depth - 1}']['__call__'][0], np.float64)
  cls = last[:, 0]
  norm = params['params']['norm']
  ref = ((cls - cls.mean(-1, keepdims=True)) / np.sqrt(cls.var(-1, keepdims=True) + 1e-6)
         * np.asarray(norm['scale']) + np.asarray(norm['bias']))
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], ref, atol=1e-5)
  patches = vit.ViTEncoder(vit.vit_config('tiny', **small, use_cls_token=True)).apply(params, video)
  assert patches.shape == (3, 1, 4, 4, 48)
  with pytest.raises(ValueError, match='use_cls_token'):
    vit.vit_config('tiny', **small, readout='cls')
  with pytest.raises(ValueError, match='readout'):
    vit.vit_config('tiny', **small, readout='mean')
  two_tubelets = jnp.zeros((1, 2, 32, 32, 3))
  with pytest.raises(ValueError, match='one tubelet'):
    enc.apply(params, two_tubelets)


def test_bf16_encoder_agrees_with_f32():
  cfg = vit.vit_config('tiny', **SMALL, pos_embed='rope3d')
  video = jax.random.normal(jax.random.key(9), (1, 2, 32, 32, 3))
  params = jax.jit(vit.ViTEncoder(cfg).init)(jax.random.key(10), video)
  ref = vit.ViTEncoder(cfg).apply(params, video)
  low = vit.ViTEncoder(cfg, jnp.bfloat16).apply(params, video)
  # LayerNorm outputs are O(1); bf16 has ~3 significant digits
  assert np.abs(np.asarray(low, np.float32) - np.asarray(ref)).max() < 0.1


@pytest.mark.parametrize('size,out', [(64, 32), (65, 224), (20, 20)])
def test_preprocess_matches_torch_bilinear(size, out):
  frames = np.random.default_rng(3).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  got = vit.preprocess_frames(frames, out)
  x = _torch(frames.astype(np.float32) / 255).permute(0, 3, 1, 2)
  x = F.interpolate(x, size=(out, out), mode='bilinear', align_corners=False, antialias=False)
  mean, std = np.array(vit.IMAGENET_MEAN), np.array(vit.IMAGENET_STD)
  ref = (x.permute(0, 2, 3, 1).numpy() - mean) / std
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def test_image_to_clip_and_errors():
  images = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  clip = vit.image_to_clip(images, 2)
  assert clip.shape == (2, 2, 4, 4, 3)
  np.testing.assert_array_equal(clip[:, 1], images)
  cfg = vit.vit_config('tiny', **SMALL)
  with pytest.raises(ValueError, match='image_to_clip'):
    vit.ViTEncoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))
  with pytest.raises(ValueError, match='preset'):
    vit.vit_config('huge')
  with pytest.raises(ValueError, match='pos_embed'):
    vit.vit_config('tiny', pos_embed='abs')
  with pytest.raises(TypeError, match='bogus'):
    vit.vit_config('tiny', bogus=1)
  with pytest.raises(ValueError, match='stem_channels'):
    vit.vit_config('tiny', patch_size=14, stem_channels=(8, 16))
  assert vit.vit_config('giant').mlp_ratio == 48 / 11
  assert vit.dinov2_config('small', registers=True).num_register_tokens == 4
