"""WorldModel pure functions: sliding-window unroll, env actions, encode, export round trip."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import checkpoint
from jepa_jax.models import vit
from jepa_jax.world_model import model as model_lib

B, H, W, D, A, PE = 2, 2, 2, 3, 4, 5


def stand_in(z, a, pe):
  """Frame-causal and window-position dependent: out_i = sum_{j<=i} (j+1) x_j / (i+1) + mean(a_i)."""
  t = z.shape[1]
  pos = jnp.arange(1, t + 1, dtype=jnp.float32)
  weights = jnp.tril(jnp.ones((t, t))) * pos[None, :] / pos[:, None]
  a_term = jnp.mean(a, -1)
  z_out = 0.9 * jnp.einsum('ij,bjhwd->bihwd', weights, z) + a_term[:, :, None, None, None]
  pe_out = None if pe is None else 0.9 * jnp.einsum('ij,bjp->bip', weights, pe) + a_term[..., None]
  return z_out, pe_out


def np_stand_in(x, a):
  """One call of the stand-in on a window, float64 loops; x (B, T, ...), a (B, T, A)."""
  out = np.zeros_like(x)
  for i in range(x.shape[1]):
    for j in range(i + 1):
      out[:, i] += 0.9 * (j + 1) / (i + 1) * x[:, j]
    out[:, i] += a[:, i].mean(-1).reshape((-1,) + (1,) * (x.ndim - 2))
  return out


def np_unroll(x0, actions):
  """Reference sliding window of 2 with a Python list of (true or predicted) frames."""
  frames = [x0]
  for h in range(actions.shape[1]):
    window = np.stack(frames[-2:], 1)
    acts = actions[:, max(0, h - 1):h + 1]
    frames.append(np_stand_in(window, acts)[:, -1])
  return np.stack(frames[1:], 1)


@pytest.mark.parametrize('horizon', [1, 2, 5])
def test_sliding_window_unroll_matches_list_reference(horizon):
  rng = np.random.default_rng(horizon)
  z0 = rng.normal(size=(B, H, W, D))
  pe0 = rng.normal(size=(B, PE))
  actions = rng.normal(size=(B, horizon, A))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  zs, pes = jax.jit(lambda *x: model_lib.sliding_window_unroll(stand_in, *x))(
      f32(z0), f32(pe0), f32(actions))
  assert zs.shape == (B, horizon, H, W, D) and pes.shape == (B, horizon, PE)
  np.testing.assert_allclose(zs, np_unroll(z0, actions), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pes, np_unroll(pe0, actions), rtol=1e-4, atol=1e-5)


def per_patch_stand_in(z, a, pe):
  """Like stand_in, but the proprio output is per patch (B, T, h, w, Pe) and depends on the
  patch (through z), so per-patch feedback matters; pe may be (B, T, Pe) or per patch."""
  z_out, _ = stand_in(z, a, None)
  if pe.ndim == 3:
    pe = jnp.broadcast_to(pe[:, :, None, None], z.shape[:4] + pe.shape[-1:])
  t = z.shape[1]
  pos = jnp.arange(1, t + 1, dtype=jnp.float32)
  weights = jnp.tril(jnp.ones((t, t))) * pos[None, :] / pos[:, None]
  pe_out = 0.9 * jnp.einsum('ij,bjhwp->bihwp', weights, pe) + 0.1 * z_out[..., :1]
  return z_out, pe_out


def np_per_patch_unroll(z0, pe0, actions):
  """float64 list reference: pe0 repeated over the patches, per-patch predictions fed back."""
  zs, pes = [z0], [np.broadcast_to(pe0[:, None, None], z0.shape[:3] + pe0.shape[-1:])]
  for h in range(actions.shape[1]):
    zw, pw = np.stack(zs[-2:], 1), np.stack(pes[-2:], 1)
    acts = actions[:, max(0, h - 1):h + 1]
    z_out = np_stand_in(zw, acts)
    pe_out = np.zeros_like(pw)
    for i in range(pw.shape[1]):
      for j in range(i + 1):
        pe_out[:, i] += 0.9 * (j + 1) / (i + 1) * pw[:, j]
    pe_out += 0.1 * z_out[..., :1]
    zs.append(z_out[:, -1])
    pes.append(pe_out[:, -1])
  return np.stack(zs[1:], 1), np.stack(pes[1:], 1)


@pytest.mark.parametrize('horizon', [1, 4])
def test_unroll_feeds_per_patch_proprio_back(horizon):
  rng = np.random.default_rng(10 + horizon)
  z0 = rng.normal(size=(B, H, W, D))
  pe0 = rng.normal(size=(B, PE))
  actions = rng.normal(size=(B, horizon, A))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  zs, pes = jax.jit(lambda *x: model_lib.sliding_window_unroll(per_patch_stand_in, *x))(
      f32(z0), f32(pe0), f32(actions))
  want_z, want_pe = np_per_patch_unroll(z0, pe0, actions)
  assert pes.shape == (B, horizon, H, W, PE)
  np.testing.assert_allclose(zs, want_z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pes, want_pe, rtol=1e-4, atol=1e-5)


def test_unroll_without_proprio_and_under_vmap():
  rng = np.random.default_rng(0)
  z0 = jnp.asarray(rng.normal(size=(3, B, H, W, D)), jnp.float32)
  actions = jnp.asarray(rng.normal(size=(3, B, 4, A)), jnp.float32)
  zs, pes = jax.vmap(lambda z, a: model_lib.sliding_window_unroll(stand_in, z, None, a))(
      z0, actions)
  assert pes is None
  for i in range(3):
    np.testing.assert_allclose(zs[i], np_unroll(np.asarray(z0[i], np.float64),
                                                np.asarray(actions[i], np.float64)),
                               rtol=1e-4, atol=1e-5)


# --- a real (tiny) WorldModel ----------------------------------------------------------------

STATS = {'action_mean': np.array([0.1, -0.2], np.float32),
         'action_std': np.array([1.5, 0.5], np.float32),
         'proprio_mean': np.array([30.0, 20.0], np.float32),
         'proprio_std': np.array([10.0, 5.0], np.float32)}
FRAMESKIP = 3


def tiny_model(predictor='adaln', proprio_emb_dim=4):
  cfg = vit.vit_config('tiny', image_size=32, patch_size=16, width=16, depth=1, num_heads=2)
  encoder = vit.ViTEncoder(cfg)
  pred_cfg = {'adaln': dict(depth=1, num_heads=2), 'dino_wm': dict(depth=1, num_heads=2,
              head_dim=8, mlp_dim=32, max_frames=3)}[predictor]
  model = model_lib.build_world_model(
      encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
      predictor_kind=predictor, predictor_config=pred_cfg, proprio_emb_dim=proprio_emb_dim,
      stats=STATS, frameskip=FRAMESKIP)
  key = jax.random.PRNGKey(0)
  params = model_lib.init_trainable_params(model, key, num_frames=3)
  params['encoder'] = encoder.init(key, jnp.zeros((1, 2, 32, 32, 3)))['params']
  return model, params


def test_env_actions_undo_reshape_and_normalisation():
  model, _ = tiny_model()
  rng = np.random.default_rng(0)
  norm = rng.normal(size=(2, 4, FRAMESKIP * 2)).astype(np.float32)
  raw = np.asarray(model.env_actions(jnp.asarray(norm)))
  assert raw.shape == (2, 4 * FRAMESKIP, 2)
  for h in range(4):
    for f in range(FRAMESKIP):
      expected = norm[:, h, 2 * f:2 * f + 2] * STATS['action_std'] + STATS['action_mean']
      np.testing.assert_allclose(raw[:, h * FRAMESKIP + f], expected, rtol=1e-6)
  with pytest.raises(ValueError, match='channels'):
    model.env_actions(jnp.zeros((4, 5)))


def test_encode_is_per_frame_duplicated_clip():
  model, params = tiny_model()
  frames = np.random.default_rng(1).integers(0, 256, size=(2, 3, 40, 40, 3), dtype=np.uint8)
  z = model.encode(params, jnp.asarray(frames))
  assert z.shape == (2, 3, 2, 2, 16)
  # Frame (1, 2) alone, duplicated into a 2-frame clip by hand.
  x = frames[1, 2].astype(np.float32) / 255.0
  x = jax.image.resize(x, (32, 32, 3), 'linear', antialias=False)
  x = (x - np.array(vit.IMAGENET_MEAN)) / np.array(vit.IMAGENET_STD)
  clip = jnp.stack([x, x])[None].astype(jnp.float32)
  alone = model.encoder.apply({'params': params['encoder']}, clip)[0, 0]
  np.testing.assert_allclose(z[1, 2], alone, rtol=1e-4, atol=1e-5)


def test_encode_proprio_zscores_raw_positions():
  model, params = tiny_model()
  raw = jnp.array([[[30.0, 20.0], [40.0, 25.0]]])
  pe = model.encode_proprio(params, raw)
  kernel = params['proprio_encoder']['patch_embed']['kernel']
  bias = params['proprio_encoder']['patch_embed']['bias']
  expected = np.array([[0.0, 0.0], [1.0, 1.0]]) @ np.asarray(kernel) + np.asarray(bias)
  np.testing.assert_allclose(pe[0], expected, rtol=1e-5, atol=1e-6)


def test_unroll_first_step_is_single_frame_prediction():
  model, params = tiny_model()
  rng = np.random.default_rng(2)
  z0 = jnp.asarray(rng.normal(size=(2, 2, 2, 16)), jnp.float32)
  pe0 = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  actions = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  zs, pes = jax.jit(model.unroll)(params, z0, pe0, actions)
  z1, pe1 = model.predict(params, z0[:, None], actions[:, :1], pe0[:, None])
  np.testing.assert_allclose(zs[:, 0], z1[:, 0], rtol=1e-5, atol=1e-6)
  # per-patch proprio (AdaLN default): pe0 is repeated over the patches, pe1 fed back per patch
  assert pe1.shape == (2, 1, 2, 2, 4) and pes.shape == (2, 3, 2, 2, 4)
  pe0_patches = jnp.broadcast_to(pe0[:, None, None], (2, 2, 2, 4))
  z2, pe2 = model.predict(params, jnp.stack([z0, z1[:, 0]], 1), actions[:, :2],
                          jnp.stack([pe0_patches, pe1[:, 0]], 1))
  np.testing.assert_allclose(zs[:, 1], z2[:, 1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pes[:, 1], pe2[:, 1], rtol=1e-4, atol=1e-5)


def list_unroll(model, params, z0, pe0, actions):
  """docs/reference.md §5 written out: every step feeds its whole window (the last 2 frames, true or
  predicted, positions from 0; pe0 repeated over the patches) to `model.predict` and keeps
  the newest output."""
  zs, pes = [z0], [pe0]
  predict = jax.jit(functools.partial(model.predict, params))  # compiles per window length
  for h in range(actions.shape[1]):
    window_pe = None
    if pe0 is not None:
      last = pes[-2:]
      if len(last) == 2 and last[0].ndim != last[1].ndim:  # per-frame pe0, per-patch pe1
        last[0] = jnp.broadcast_to(last[0][:, None, None], last[1].shape)
      window_pe = jnp.stack(last, 1)
    z, pe = predict(jnp.stack(zs[-2:], 1), actions[:, max(0, h - 1):h + 1], window_pe)
    zs.append(z[:, -1])
    pes.append(None if pe is None else pe[:, -1])
  return jnp.stack(zs[1:], 1), None if pe0 is None else jnp.stack(pes[1:], 1)


@pytest.mark.parametrize('horizon,residual,proprio', [(4, False, 4), (3, True, 0)])
def test_cached_unroll_equals_the_full_window_every_step(horizon, residual, proprio):
  # WorldModel.unroll of the AdaLN predictor reuses step 0's keys/values in step 1
  # (cached_window_unroll); the result must be the window-by-window one.
  model, params = tiny_model(proprio_emb_dim=proprio)
  model = dataclasses.replace(model, residual=residual)
  assert model_lib.supports_kv_cache(model.predictor)
  keys = jax.random.split(jax.random.PRNGKey(horizon), 4)
  leaves, tree = jax.tree.flatten(params['predictor'])  # weights large enough to matter
  noise = jax.random.split(keys[0], len(leaves))
  params = dict(params, predictor=jax.tree.unflatten(
      tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, noise)]))
  z0 = jax.random.normal(keys[1], (2, 2, 2, 16))
  pe0 = jax.random.normal(keys[2], (2, proprio)) if proprio else None
  actions = jax.random.normal(keys[3], (2, horizon, 6))
  zs, pes = jax.jit(model.unroll)(params, z0, pe0, actions)
  want_z, want_pe = list_unroll(model, params, z0, pe0, actions)
  assert zs.shape == (2, horizon, 2, 2, 16)
  np.testing.assert_allclose(zs, want_z, rtol=1e-4, atol=1e-5)
  if proprio:
    np.testing.assert_allclose(pes, want_pe, rtol=1e-4, atol=1e-5)
  else:
    assert pes is None
  if horizon > 1:  # the steps differ, so a wrong window would show
    assert float(jnp.abs(want_z[:, -1] - want_z[:, 0]).max()) > 1e-2


@pytest.mark.parametrize('predictor,proprio', [('adaln', 4), ('dino_wm', 0)])
def test_export_round_trip(tmp_path, predictor, proprio):
  model, params = tiny_model(predictor, proprio)
  model_lib.save_world_model(tmp_path / 'wm', model, params)
  loaded, loaded_params = model_lib.load_world_model(tmp_path / 'wm')
  assert loaded.frameskip == FRAMESKIP and loaded.predictor_kind == predictor
  assert loaded.use_proprio == bool(proprio)
  assert dataclasses.asdict(loaded.predictor.config) == dataclasses.asdict(model.predictor.config)
  frames = np.random.default_rng(3).integers(0, 256, size=(1, 2, 32, 32, 3), dtype=np.uint8)
  z = model.encode(params, jnp.asarray(frames))
  np.testing.assert_allclose(loaded.encode(loaded_params, jnp.asarray(frames)), z, rtol=1e-6)
  pe0 = None if not proprio else jnp.ones((1, proprio))
  actions = jnp.ones((1, 2, 6))
  for a, b in zip(jax.tree.leaves(model.unroll(params, z[:, 0], pe0, actions)),
                  jax.tree.leaves(loaded.unroll(loaded_params, z[:, 0], pe0, actions))):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  for k in STATS:
    np.testing.assert_array_equal(loaded.stats[k], STATS[k])


def test_residual_option_adds_the_input(tmp_path):
  model, params = tiny_model()
  residual = dataclasses.replace(model, residual=True)
  rng = np.random.default_rng(4)
  z = jnp.asarray(rng.normal(size=(2, 3, 2, 2, 16)), jnp.float32)
  pe = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  actions = jnp.asarray(rng.normal(size=(2, 3, 6)), jnp.float32)
  out_z, out_pe = model.predict(params, z, actions, pe)
  res_z, res_pe = residual.predict(params, z, actions, pe)
  np.testing.assert_allclose(res_z, z + out_z, rtol=1e-6)
  np.testing.assert_allclose(res_pe, pe[:, :, None, None] + out_pe, rtol=1e-6)
  model_lib.save_world_model(tmp_path / 'wm', residual, params)
  assert model_lib.load_world_model(tmp_path / 'wm')[0].residual


def test_load_world_model_rejects_other_kinds(tmp_path):
  checkpoint.save_model(tmp_path / 'enc', kind='vit', config={}, params={'x': np.zeros(1)})
  with pytest.raises(ValueError, match='world_model'):
    model_lib.load_world_model(tmp_path / 'enc')


def test_conflicting_derived_predictor_key_is_rejected():
  encoder = vit.ViTEncoder(vit.vit_config('tiny', image_size=32, width=16, depth=1, num_heads=2))
  with pytest.raises(ValueError, match='latent_dim'):
    model_lib.build_world_model(
        encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
        predictor_kind='adaln', predictor_config=dict(latent_dim=99), proprio_emb_dim=4,
        stats=STATS, frameskip=FRAMESKIP)
