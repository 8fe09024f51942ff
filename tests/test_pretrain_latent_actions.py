"""Stage 1's latent actions: the inverse model against a float64 numpy forward pass, the
per-tubelet pooling and lookup against loops, and the step that trains them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import sharding as sharding_lib
from jepa_jax.pretrain import latent_actions as latent_actions_lib
from jepa_jax.pretrain import train as train_lib
from tests import test_pretrain_train as pretrain_tests


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_inverse_model_matches_a_float64_forward_pass():
  model = latent_actions_lib.LatentActionModel(action_dim=2, hidden=8, out_width=5)
  rng = np.random.default_rng(0)
  reference, frames = rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
  params = model.init(jax.random.key(0), reference, frames)['params']
  params = jax.tree_util.tree_map(lambda p: p + 0.3 * rng.normal(size=p.shape), params)
  actions, embeddings = model.apply({'params': params}, jnp.asarray(reference, jnp.float32),
                                    jnp.asarray(frames, jnp.float32))
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  pairs = np.concatenate([np.repeat(reference[:, None], 2, axis=1), frames], axis=-1)
  hidden = _gelu_tanh(pairs @ p['inverse_hidden']['kernel'] + p['inverse_hidden']['bias'])
  want = hidden @ p['inverse_out']['kernel'] + p['inverse_out']['bias']
  np.testing.assert_allclose(actions, want, atol=1e-5)
  np.testing.assert_allclose(
      embeddings, want @ p['action_embed']['kernel'] + p['action_embed']['bias'], atol=1e-5)


def test_pooling_and_lookup_follow_the_token_grid():
  grid = (3, 2, 2)  # 12 tokens, 4 per tubelet
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(2, 12, 5))
  pooled = np.asarray(latent_actions_lib.frame_pooled(jnp.asarray(tokens), grid))
  for b in range(2):
    for t in range(3):
      np.testing.assert_allclose(pooled[b, t], tokens[b, 4 * t:4 * t + 4].mean(axis=0),
                                 atol=1e-6)
  idx = np.array([[11, 0, 5], [4, 8, 3]])
  got = np.asarray(latent_actions_lib.frame_offsets(jnp.asarray(pooled), jnp.asarray(idx), grid))
  for b in range(2):
    for k in range(3):
      np.testing.assert_array_equal(got[b, k], pooled[b, idx[b, k] // 4])


def test_step_trains_the_inverse_model_and_conditions_the_targets():
  config = pretrain_tests.small_config(
      latent_action_dim=3, mask_groups=(dict(num_blocks=1, spatial_scale=1.0,
                                             context_frames=1),))
  mesh = sharding_lib.make_mesh({'data': 1, 'fsdp': 1}, devices=jax.devices()[:1])
  models, cfg, state, step_fn = train_lib.sharded_setup(config, mesh)
  assert state['params']['latent_actions']['inverse_out']['kernel'].shape == (16, 3)
  assert state['params']['latent_actions']['action_embed']['kernel'].shape == (3, 16)
  batch = pretrain_tests.fake_batch(models, 8)
  initial = jax.device_get(state['params']['latent_actions'])
  loss_fn = jax.jit(lambda params: train_lib.jepa_loss(
      params, state['target_encoder'], train_lib.preprocess_clips(
          jnp.asarray(batch['observations']), models.vit_config, cfg),
      batch['masks'], models, cfg)[0])
  # At init the offsets are ~1e-4 (two 0.02-std layers); scaled up they must matter, and with
  # the action embedding zeroed the predictor sees no latent action.
  rng = np.random.default_rng(2)
  loud = {**state['params'], 'latent_actions': jax.tree_util.tree_map(
      lambda p: p + rng.normal(size=p.shape).astype(np.float32), initial)}
  silenced = {**loud, 'latent_actions': {
      **loud['latent_actions'], 'action_embed': jax.tree_util.tree_map(
          jnp.zeros_like, loud['latent_actions']['action_embed'])}}
  silenced_loss = float(loss_fn(silenced))
  assert abs(float(loss_fn(loud)) - silenced_loss) > 1e-3
  np.testing.assert_allclose(silenced_loss, float(loss_fn(state['params'])), atol=1e-3)
  # The loss trains every layer of the inverse model.
  grads = jax.grad(loss_fn)(loud)['latent_actions']
  assert all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads))
  _, metrics = step_fn(state, sharding_lib.shard_batch(batch, mesh))
  metrics = jax.device_get(metrics)
  assert np.isfinite(metrics['loss']) and metrics['latent_action_std'] > 0


def test_negative_latent_action_dim_is_one_line():
  config = pretrain_tests.small_config()
  with pytest.raises(ValueError, match='latent_action_dim must be >= 0'):
    train_lib.as_pretrain_config({**config.pretrain.to_dict(), 'latent_action_dim': -1})
