"""Stage-2 train step: sharded == single device, frozen encoder, predictor/dtype options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import sharding, training
from jepa_jax.models import vit
from jepa_jax.world_model import model as model_lib
from jepa_jax.world_model import train

STATS = {'action_mean': np.zeros(2, np.float32), 'action_std': np.ones(2, np.float32),
         'proprio_mean': np.zeros(2, np.float32), 'proprio_std': np.ones(2, np.float32)}
FRAMESKIP = 2
RULES = [('.*/kernel', ('fsdp', None)), ('.*', ())]
PREDICTOR_CONFIGS = {
    'adaln': dict(depth=1, num_heads=2),
    'dino_wm': dict(depth=1, num_heads=2, head_dim=8, mlp_dim=32, max_frames=3),
    'vjepa2_ac': dict(embed_dim=16, depth=1, num_heads=2),
}


def setup(predictor='adaln', dtype='float32', **overrides):
  cfg = train.WorldModelConfig(predictor=predictor, predictor_config=PREDICTOR_CONFIGS[predictor],
                               proprio_emb_dim=4, dtype=dtype, lr=1e-3, **overrides)
  encoder = vit.ViTEncoder(
      vit.vit_config('tiny', image_size=32, width=16, depth=1, num_heads=2),
      training.DTYPES[dtype])
  model = model_lib.build_world_model(
      encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
      predictor_kind=predictor, predictor_config=cfg.predictor_config,
      proprio_emb_dim=cfg.proprio_emb_dim, stats=STATS, frameskip=FRAMESKIP,
      dtype=training.DTYPES[dtype])
  encoder_params = encoder.init(jax.random.PRNGKey(1), jnp.zeros((1, 2, 32, 32, 3)))['params']
  tx = training.make_optimizer(cfg)
  step = train.make_train_step(model, tx, cfg.loss_config(rollout_context=3), seed=0,
                               use_dropout=predictor == 'dino_wm')
  state = train.init_state(model, tx, jax.random.PRNGKey(0), num_frames=4)
  return step, state, encoder_params


def make_batch(batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'observations': rng.integers(0, 256, (batch_size, 4, 32, 32, 3), dtype=np.uint8),
          'actions': rng.normal(size=(batch_size, 4, 2 * FRAMESKIP)).astype(np.float32),
          'proprio': rng.normal(size=(batch_size, 4, 2)).astype(np.float32)}


def run_steps(mesh, num_steps=2):
  step, state, encoder_params = setup()
  state_sh = sharding.param_shardings(state, mesh, RULES)
  enc_sh = sharding.param_shardings(encoder_params, mesh, RULES)
  jitted = training.jit_step(step, state_sh, (enc_sh,), mesh)
  initial = jax.device_get(state)
  state = jax.device_put(state, state_sh)
  encoder_params = jax.device_put(encoder_params, enc_sh)
  losses = []
  for i in range(num_steps):
    state, metrics = jitted(state, encoder_params, sharding.shard_batch(make_batch(seed=i), mesh))
    losses.append(float(metrics['loss']))
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0
  return initial, jax.device_get(state), losses


def test_sharded_step_matches_single_device():
  """8 fake devices (data x fsdp = 4 x 2, kernels split over fsdp) == one device; the frozen
  encoder is not part of the trained state."""
  assert len(jax.devices()) == 8
  initial, single, single_losses = run_steps(
      sharding.make_mesh({'data': 1, 'fsdp': 1}, jax.devices()[:1]))
  _, multi, multi_losses = run_steps(sharding.make_mesh({'data': 4, 'fsdp': 2}))
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(single)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert int(multi['step']) == 2

  assert set(single['params']) == {'predictor', 'proprio_encoder'}
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), single['params'],
                       initial['params'])
  assert max(jax.tree.leaves(moved['proprio_encoder'])) > 0  # trained through its inputs
  assert max(jax.tree.leaves(moved['predictor'])) > 0


def test_no_weight_decay_on_biases_and_norms():
  """With a zero loss gradient (lr > 0, huge decay), only matrices shrink; the first step
  decays by weight_decay_start (the cosine schedule starts there)."""
  _, state, _ = setup(weight_decay=0.5, grad_clip_norm=0.0)
  tx = training.make_optimizer(train.WorldModelConfig(lr=0.1, weight_decay=0.9,
                                                      weight_decay_start=0.5, grad_clip_norm=0.0))
  zeros = jax.tree.map(jnp.zeros_like, state['params'])
  updates, _ = tx.update(zeros, tx.init(state['params']), state['params'])
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  params = dict(jax.tree_util.tree_flatten_with_path(state['params'])[0])
  for path, update in flat:
    name = sharding.path_to_str(path)
    if np.ndim(update) >= 2:
      np.testing.assert_allclose(update, -0.1 * 0.5 * np.asarray(params[path]), rtol=1e-5,
                                 err_msg=name)
    else:
      assert not np.any(np.asarray(update)), name


@pytest.mark.slow
@pytest.mark.parametrize('predictor,dtype', [('dino_wm', 'float32'), ('vjepa2_ac', 'bfloat16')])
def test_predictor_kinds_and_bf16_train(predictor, dtype):
  """DINO-WM (dropout active) and V-JEPA 2-AC under bf16 compute take a finite step."""
  step, state, encoder_params = setup(predictor, dtype)
  new_state, metrics = jax.jit(step)(state, encoder_params, make_batch())
  assert np.isfinite(float(metrics['loss'])) and float(metrics['grad_norm']) > 0
  for old, new in zip(jax.tree.leaves(state['params']), jax.tree.leaves(new_state['params'])):
    assert new.dtype == jnp.float32  # params (and updates) stay float32 under bf16 compute
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in
           zip(jax.tree.leaves(state['params']), jax.tree.leaves(new_state['params']))]
  assert max(moved) > 0


def test_bad_config_values_are_rejected():
  with pytest.raises(ValueError, match='world_model.dtype'):
    train.WorldModelConfig(dtype='fp8')
  with pytest.raises(TypeError):
    train.WorldModelConfig(**{'not_a_key': 1})
  assert dataclasses.asdict(train.WorldModelConfig())['rollout_steps'] == 2
