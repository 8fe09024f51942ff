"""Predictors (docs/reference.md §3) against float64 numpy re-derivations and structural properties."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jepa_jax.models import cpu_blocking
from jepa_jax.models import layers
from jepa_jax.models import predictors

TINY = dict(latent_dim=96, proprio_emb_dim=16, action_dim=10, depth=2, num_heads=4,
            grid_size=(4, 4))
TINY_DINO = dict(latent_dim=96, proprio_emb_dim=10, action_dim=10, action_emb_dim=10, depth=1,
                 num_heads=4, head_dim=16, mlp_dim=64, grid_size=(4, 4), max_frames=3)
TINY_AC = dict(latent_dim=96, embed_dim=64, proprio_emb_dim=16, action_dim=10, depth=1,
               num_heads=4, grid_size=(4, 4))


def _init(module, key, *inputs):
  return jax.jit(module.init)(key, *inputs)


def _perturbed_params(module, key, *inputs, scale=0.1):
  """Initialised params plus noise, so unit LayerNorm scales / zero biases cannot hide bugs."""
  @jax.jit
  def make(key, inputs):
    params = module.init(key, *inputs)['params']
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)
  return make(key, inputs)


def _inputs(key, batch=2, frames=3, grid=(4, 4), dv=96, a=10, pe=16):
  k1, k2, k3 = jax.random.split(key, 3)
  return (jax.random.normal(k1, (batch, frames) + grid + (dv,)),
          jax.random.normal(k2, (batch, frames, a)),
          jax.random.normal(k3, (batch, frames, pe)))


CONFIGS = {'adaln': TINY, 'adaln_zero': TINY, 'dino_wm': TINY_DINO, 'vjepa2_ac': TINY_AC}


@functools.lru_cache(maxsize=None)
def _setup(kind):
  """(model, perturbed params, (z, a, pe) with 3 frames, jitted apply), shared by tests so
  each model compiles once."""
  cfg = CONFIGS[kind]
  model = predictors.build_predictor(kind, **cfg)
  inputs = _inputs(jax.random.key(2), frames=3, pe=cfg['proprio_emb_dim'])
  params = _perturbed_params(model, jax.random.key(3), *inputs)
  apply = jax.jit(lambda p, *x: model.apply({'params': p}, *x))
  return model, params, inputs, apply


# ---------------------------------------------------------------- numpy float64 reference (§3a)
def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _linear(x, p):
  return x @ p['kernel'] + p['bias']


def _rope_quirk(x, pos):
  """x (N, h, hd), pos (N, 3): concatenated cos/sin tables, interleaved pair partners."""
  hd = x.shape[-1]
  d = 2 * ((hd // 3) // 2)
  w = 10000.0 ** (-np.arange(d // 2) / (d // 2))
  w = np.concatenate([w, w])
  out = x.copy()
  for a in range(3):
    seg = x[..., a * d:(a + 1) * d]
    partner = np.empty_like(seg)
    partner[..., 0::2], partner[..., 1::2] = -seg[..., 1::2], seg[..., 0::2]
    th = pos[:, a][:, None, None] * w
    out[..., a * d:(a + 1) * d] = seg * np.cos(th) + partner * np.sin(th)
  return out


def _np_adaln_block(x, c, p, heads, frames, pos):
  """One AdaLN block on a single sample: x (T*N, C), c (T, C)."""
  n, width = x.shape
  silu = c / (1 + np.exp(-c))
  mod = _linear(silu, p['adaLN_modulation'])  # (T, 6C)
  mod = np.repeat(mod, n // frames, axis=0)  # broadcast to each frame's tokens
  sh1, sc1, g1, sh2, sc2, g2 = np.split(mod, 6, axis=-1)
  h = _ln(x, p['norm1'], 1e-6) * (1 + sc1) + sh1
  qkv = _linear(h, p['attn']['qkv']).reshape(n, 3, heads, width // heads)
  q, k, v = _rope_quirk(qkv[:, 0], pos), _rope_quirk(qkv[:, 1], pos), qkv[:, 2]
  logits = np.einsum('qhd,khd->hqk', q, k) / math.sqrt(width // heads)
  frame = pos[:, 0]
  logits = np.where(frame[None, None, :] <= frame[None, :, None], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  att = np.einsum('hqk,khd->qhd', probs, v).reshape(n, width)
  x = x + g1 * _linear(att, p['attn']['proj'])
  h = _ln(x, p['norm2'], 1e-6) * (1 + sc2) + sh2
  h = _linear(h, p['mlp']['fc1'])
  h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
  return x + g2 * _linear(h, p['mlp']['fc2'])


def _np_adaln_predictor(p, z, a, pe, cfg, readout='per_patch'):
  """One sample: z (T, h, w, Dv), a (T, A), pe (T, Pe) or per patch (T, h, w, Pe)."""
  frames, hh, ww, _ = z.shape
  e = _linear(z, p['predictor_embed'])
  if pe.ndim == 2:
    pe = pe[:, None, None]
  x = np.concatenate([e, np.broadcast_to(pe, (frames, hh, ww, pe.shape[-1]))], -1)
  x = x.reshape(frames * hh * ww, -1)
  c = _linear(a, p['action_encoder'])
  t, r, col = np.meshgrid(np.arange(frames), np.arange(hh), np.arange(ww), indexing='ij')
  pos = np.stack([t, r, col], -1).reshape(-1, 3).astype(np.float64)
  for i in range(cfg['depth']):
    x = _np_adaln_block(x, c, p[f'predictor_blocks_{i}'], cfg['num_heads'], frames, pos)
  x = _ln(x, p['predictor_norm'], 1e-6).reshape(frames, hh, ww, -1)
  dv = e.shape[-1]
  proprio = x[..., dv:] if readout == 'per_patch' else x[:, 0, 0, dv:]
  return _linear(x[..., :dv], p['predictor_proj']), proprio


def _check_against_numpy(vis, prop, params, z, a, pe, cfg, readout='per_patch'):
  pn = _np(params)
  for b in range(z.shape[0]):
    rv, rp = _np_adaln_predictor(pn, *(np.asarray(t[b], np.float64) for t in (z, a, pe)), cfg,
                                 readout)
    np.testing.assert_allclose(np.asarray(vis[b]), rv, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(prop[b]), rp, rtol=2e-4, atol=2e-4)


def test_adaln_predictor_matches_numpy_float64():
  """Default readout: one proprio prediction per patch (B, T, H, W, Pe), docs/reference.md §3a."""
  _, params, (z, a, pe), apply = _setup('adaln')
  vis, prop = apply(params, z, a, pe)
  assert prop.shape == z.shape[:4] + (pe.shape[-1],)
  _check_against_numpy(vis, prop, params, z, a, pe, TINY)


def test_attention_in_cache_sized_blocks_matches_numpy_float64(monkeypatch):
  """The CPU path that attends a few (batch, head) pairs per loop step gives the model's values:
  blocks of at most 3 of the B * heads = 8 pairs are forced by a tiny logits budget."""
  model, params, (z, a, pe), _ = _setup('adaln')
  pairs = z.shape[0] * TINY['num_heads']
  tokens = 16  # one frame of the 4 x 4 grid: the first frame's logits are (16, 16) per pair
  monkeypatch.setattr(cpu_blocking, 'CPU_LOGITS_BLOCK_BYTES', 3 * 4 * tokens * tokens)
  monkeypatch.setattr(cpu_blocking, 'CPU_MIN_BLOCKED_PAIR_BYTES', 0)
  assert cpu_blocking.attention_block_pairs(pairs, tokens, tokens) in (1, 2, 3)
  assert pairs % cpu_blocking.attention_block_pairs(pairs, tokens, tokens) == 0
  # A fresh trace under the small budget (the shared jitted apply was traced without it).
  vis, prop = jax.jit(lambda p, *x: model.apply({'params': p}, *x))(params, z, a, pe)
  _check_against_numpy(vis, prop, params, z, a, pe, TINY)


def test_attention_block_pairs():
  """One step when the logits fit or each pair's are small; else the largest divisor that
  fits, at least 1."""
  budget = cpu_blocking.CPU_LOGITS_BLOCK_BYTES
  assert cpu_blocking.attention_block_pairs(1024, 16, 16) == 1024
  small_pair = 4 * 64 * 128  # 8x8 tokens per frame: under the per-pair minimum
  assert small_pair < cpu_blocking.CPU_MIN_BLOCKED_PAIR_BYTES and 4096 * small_pair > budget
  assert cpu_blocking.attention_block_pairs(4096, 64, 128) == 4096
  per_pair = 4 * 256 * 512
  block = cpu_blocking.attention_block_pairs(1024, 256, 512)
  assert block * per_pair <= budget < 2 * block * per_pair and 1024 % block == 0
  fitting_divisors = [d for d in (1, 3, 7, 21) if d * per_pair <= budget]
  assert cpu_blocking.attention_block_pairs(21, 256, 512) == max(fitting_divisors)
  assert cpu_blocking.attention_block_pairs(13, 4096, 4096) == 1  # one pair over budget: one at a time


def test_adaln_per_patch_proprio_input_and_first_patch_readout():
  """Per-patch proprio embeddings in (B, T, H, W, Pe); the 'first_patch' option reads (0, 0)."""
  _, params, (z, a, _), _ = _setup('adaln')
  pe_patches = jax.random.normal(jax.random.key(21), z.shape[:4] + (16,))
  first = predictors.build_predictor('adaln', proprio_readout='first_patch', **TINY)
  vis, prop = jax.jit(first.apply)({'params': params}, z, a, pe_patches)
  assert prop.shape == (z.shape[0], z.shape[1], 16)
  _check_against_numpy(vis, prop, params, z, a, pe_patches, TINY, readout='first_patch')
  with pytest.raises(ValueError, match='proprio_readout'):
    predictors.build_predictor('adaln', proprio_readout='mean', **TINY)


def test_remat_keeps_values_and_gradients():
  """Gradient checkpointing changes memory only: same loss gradients as without it."""
  _, params, (z, a, pe), _ = _setup('adaln')
  grads = {}
  for remat in ('none', 'full'):
    model = predictors.build_predictor('adaln', remat=remat, **TINY)
    loss = lambda p: sum(jnp.sum(jnp.sin(o)) for o in model.apply({'params': p}, z, a, pe))
    grads[remat] = jax.jit(jax.grad(loss))(params)
  for g_none, g_full in zip(jax.tree.leaves(grads['none']), jax.tree.leaves(grads['full'])):
    np.testing.assert_allclose(g_full, g_none, rtol=1e-4, atol=1e-5 * np.abs(g_none).max())
  with pytest.raises(ValueError, match='remat'):
    predictors.build_predictor('adaln', remat='some', **TINY)


def test_paper_adaln_param_count():
  """docs/reference.md §3a: 17,626,480 = predictor_embed + action_encoder + 6 blocks + predictor_norm +
  predictor_proj; the ProprioEncoder (2 -> 16: 48 params) is not included."""
  model = predictors.build_predictor('adaln', latent_dim=384, proprio_emb_dim=16, action_dim=10,
                                     depth=6, num_heads=16, grid_size=(16, 16))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 2, 16, 16, 384)), jnp.zeros((1, 2, 10)),
                          jnp.zeros((1, 2, 16)))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert count == 17_626_480
  proprio = jax.eval_shape(predictors.ProprioEncoder(16).init, jax.random.key(0),
                           jnp.zeros((1, 2, 2)))
  assert sum(x.size for x in jax.tree.leaves(proprio)) == 48


@pytest.mark.parametrize('kind', ['adaln', 'dino_wm', 'vjepa2_ac'])  # adaln_zero: same code
def test_frame_causality(kind):
  _, params, (z, a, pe), apply = _setup(kind)
  vis, prop = apply(params, z, a, pe)
  for t in range(2):  # perturb every input of frames > t
    later = jnp.arange(3)[None, :, None] > t
    z2 = jnp.where(later[..., None, None], z + 1.0, z)
    a2, pe2 = jnp.where(later, a - 1.0, a), jnp.where(later, pe + 2.0, pe)
    vis2, prop2 = apply(params, z2, a2, pe2)
    np.testing.assert_allclose(vis2[:, :t + 1], vis[:, :t + 1], atol=1e-5)
    np.testing.assert_allclose(prop2[:, :t + 1], prop[:, :t + 1], atol=1e-5)
    assert np.abs(np.asarray(vis2[:, t + 1] - vis[:, t + 1])).max() > 1e-3


def test_adaln_incremental_window_equals_the_whole_window():
  # frames 0..1 fed first (returning their keys/values), frame 2 fed alone at position 2
  # attending to them: the same outputs as the 3-frame window in one call.
  module, params, (z, a, pe), apply = _setup('adaln')
  vis, prop = apply(params, z, a, pe)
  run = jax.jit(functools.partial(module.apply, {'params': params}),
                static_argnames=('first_frame', 'return_kv_cache'))
  head_vis, head_prop, cache = run(z[:, :2], a[:, :2], pe[:, :2], return_kv_cache=True)
  tail_vis, tail_prop = run(z[:, 2:], a[:, 2:], pe[:, 2:], first_frame=2, kv_cache=cache)
  k, v = cache
  assert k.shape == v.shape == (2, 2, 4, 2 * 16, 28)  # (depth, B, heads, 2 frames x 16, hd)
  np.testing.assert_allclose(head_vis, vis[:, :2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tail_vis, vis[:, 2:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tail_prop, prop[:, 2:], rtol=1e-5, atol=1e-5)
  # the cache matters: a wrong one changes the output
  wrong = run(z[:, 2:], a[:, 2:], pe[:, 2:], first_frame=2, kv_cache=(k + 1.0, v))[0]
  assert np.abs(np.asarray(wrong - tail_vis)).max() > 1e-3
  with pytest.raises(ValueError, match='kv_cache'):
    run(z[:, 2:], a[:, 2:], pe[:, 2:], first_frame=2)


def test_adaln_output_frames_match_numpy_float64():
  # output_frames=F: the last block computes only the last F frames (the others give keys and
  # values); the outputs are those frames of the float64 re-derivation, also after a cache.
  module, params, (z, a, pe), _ = _setup('adaln')
  pn = _np(params)
  want = [_np_adaln_predictor(pn, *(np.asarray(t[b], np.float64) for t in (z, a, pe)), TINY,
                              'per_patch') for b in range(z.shape[0])]
  run = jax.jit(functools.partial(module.apply, {'params': params}),
                static_argnames=('first_frame', 'return_kv_cache', 'output_frames'))

  def check(outputs, frames):
    vis, prop = outputs[:2]
    assert vis.shape == z[:, :frames].shape
    for b, (rv, rp) in enumerate(want):
      np.testing.assert_allclose(np.asarray(vis[b]), rv[-frames:], rtol=2e-4, atol=2e-4)
      np.testing.assert_allclose(np.asarray(prop[b]), rp[-frames:], rtol=2e-4, atol=2e-4)

  for frames in (1, 2, 3):
    check(run(z, a, pe, output_frames=frames), frames)
  _, _, full_cache = run(z[:, :2], a[:, :2], pe[:, :2], return_kv_cache=True)
  _, _, cache = run(z[:, :2], a[:, :2], pe[:, :2], return_kv_cache=True, output_frames=1)
  for got, expected in zip(cache, full_cache):  # the skipped queries leave the keys/values
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  head_cache = run(z[:, :1], a[:, :1], pe[:, :1], return_kv_cache=True)[2]
  check(run(z[:, 1:], a[:, 1:], pe[:, 1:], first_frame=1, kv_cache=head_cache,
            output_frames=1), 1)
  with pytest.raises(ValueError, match='output_frames'):
    run(z, a, pe, output_frames=4)


def test_adaln_zero_blocks_are_identity_at_init():
  block = layers.AdaLNBlock(num_heads=4, mlp_dim=64, modulation_std=0.0)
  x = jax.random.normal(jax.random.key(4), (2, 3 * 5, 32))
  c = jax.random.normal(jax.random.key(5), (2, 3, 32))
  params = _init(block, jax.random.key(6), x, c)
  np.testing.assert_array_equal(jax.jit(block.apply)(params, x, c), x)
  # and the plain AdaLN init is not the identity
  block = layers.AdaLNBlock(num_heads=4, mlp_dim=64)
  params = _init(block, jax.random.key(6), x, c)
  assert np.abs(np.asarray(jax.jit(block.apply)(params, x, c) - x)).max() > 1e-3


def test_adaln_init_scales():
  """trunc-normal 0.02 (proj/fc2 of block l divided by sqrt(2l)), modulation 0.2, biases 0."""
  model = predictors.build_predictor('adaln', **TINY)
  z, a, pe = _inputs(jax.random.key(7), frames=1)
  params = _init(model, jax.random.key(8), z, a, pe)['params']
  for i in range(TINY['depth']):
    blk = params[f'predictor_blocks_{i}']
    np.testing.assert_allclose(np.std(blk['attn']['proj']['kernel']),
                               0.02 / math.sqrt(2 * (i + 1)), rtol=0.05)
    np.testing.assert_allclose(np.std(blk['mlp']['fc2']['kernel']),
                               0.02 / math.sqrt(2 * (i + 1)), rtol=0.05)
    np.testing.assert_allclose(np.std(blk['attn']['qkv']['kernel']), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(blk['adaLN_modulation']['kernel']), 0.2, rtol=0.05)
    assert not np.any(np.asarray(blk['attn']['qkv']['bias']))
  zero = _init(predictors.build_predictor('adaln_zero', **TINY), jax.random.key(8),
               *_inputs(jax.random.key(7), frames=1))['params']
  assert not np.any(np.asarray(zero['predictor_blocks_0']['adaLN_modulation']['kernel']))


@pytest.mark.parametrize('kind', ['adaln', 'dino_wm', 'vjepa2_ac'])
def test_bf16_agrees_with_f32(kind):
  """Same params, bf16 compute: max error <= 5% of the output's max magnitude."""
  _, params, (z, a, pe), apply = _setup(kind)
  bf16 = predictors.build_predictor(kind, dtype=jnp.bfloat16, **CONFIGS[kind])
  ref, ref_p = apply(params, z, a, pe)
  low, low_p = jax.jit(bf16.apply)({'params': params}, z, a, pe)
  assert low.dtype == jnp.bfloat16
  for r, l in ((ref, low), (ref_p, low_p)):
    err = np.abs(np.asarray(l, np.float32) - np.asarray(r)).max()
    assert err <= 0.05 * np.abs(np.asarray(r)).max(), err


def test_dino_wm_dropout_and_shapes():
  model, params, (z, a, pe), _ = _setup('dino_wm')
  params = {'params': params}
  assert params['params']['pos_embedding'].shape == (1, 3 * 16, 96 + 10 + 10)
  assert 'bias' not in params['params']['blocks_0']['attn']['qkv']
  apply = jax.jit(model.apply, static_argnames='deterministic')
  vis, prop = apply(params, z, a, pe)
  assert vis.shape == z.shape and prop.shape == pe.shape
  vis2, _ = apply(params, z, a, pe)
  np.testing.assert_array_equal(vis, vis2)  # deterministic by default
  drop, _ = apply(params, z, a, pe, deterministic=False, rngs={'dropout': jax.random.key(0)})
  assert np.abs(np.asarray(drop - vis)).max() > 1e-3
  with pytest.raises(ValueError, match='max_frames'):
    model.apply(params, *_inputs(jax.random.key(0), frames=4, pe=10))


def test_predictor_without_proprio():
  model = predictors.build_predictor('adaln', **{**TINY, 'proprio_emb_dim': 0})
  z, a, _ = _inputs(jax.random.key(13), frames=2)
  params = _init(model, jax.random.key(14), z, a, None)
  vis, prop = jax.jit(model.apply)(params, z, a, None)
  assert vis.shape == z.shape and prop is None


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match='unknown predictor kind'):
    predictors.build_predictor('mlp')
  with pytest.raises(TypeError, match='bogus'):
    predictors.build_predictor('adaln', bogus=1)
  model, params, (z, a, pe), _ = _setup('adaln')
  params = {'params': params}
  with pytest.raises(ValueError, match='proprio_emb is None'):
    model.apply(params, z, a, None)
  with pytest.raises(ValueError, match='grid_size'):
    model.apply(params, z[:, :, :2], a, pe)
  with pytest.raises(ValueError, match='actions'):
    model.apply(params, z, a[..., :3], pe)


def test_exports_written_with_max_frames_still_build():
  """AdaLN / V-JEPA 2-AC exports from before `max_frames` was dropped keep loading; DINO-WM's
  `max_frames` (its learned position table) is kept."""
  for kind, cfg in (('adaln', TINY), ('vjepa2_ac', TINY_AC)):
    with pytest.raises(TypeError, match='max_frames'):
      predictors.build_predictor(kind, **cfg, max_frames=4)
    stored = predictors.stored_config(kind, {**cfg, 'max_frames': 4})
    assert predictors.build_predictor(kind, **stored).config == predictors.build_predictor(
        kind, **cfg).config
  assert predictors.stored_config('dino_wm', TINY_DINO)['max_frames'] == 3
