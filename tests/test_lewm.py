"""LeWorldModel: standardised latents folded into the export, gradients through both sides of
the prediction loss, and a short end-to-end run whose export stage 3 loads."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import wall
from jepa_jax import training
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.lewm import train as lewm_train
from jepa_jax.representation import standardise
from jepa_jax.world_model import model as model_lib

IMAGE = 16


def tiny_lewm(**overrides):
  return lewm_train.LeWMConfig(**{
      'encoder': dict(preset='tiny', image_size=IMAGE, patch_size=IMAGE, tubelet_size=1,
                      width=12, depth=1, num_heads=2, pos_embed='none'),
      'predictor_config': dict(depth=1, num_heads=2, mlp_ratio=2.0),
      'sigreg_directions': 8, **overrides})


STATS = {'action_mean': np.zeros(2, np.float32), 'action_std': np.ones(2, np.float32),
         'proprio_mean': np.zeros(2, np.float32), 'proprio_std': np.ones(2, np.float32)}


def random_batch(seed=0, batch=6, frames=4):
  rng = np.random.default_rng(seed)
  return {'observations': rng.integers(0, 256, (batch, frames, IMAGE, IMAGE, 3), np.uint8),
          'actions': rng.normal(size=(batch, frames, 10)).astype(np.float32),
          'proprio': rng.normal(size=(batch, frames, 2)).astype(np.float32)}


def test_folded_statistics_make_the_export_output_standardised_latents():
  cfg = tiny_lewm()
  model = lewm_train.build_model(cfg, STATS, frameskip=5)
  params = lewm_train.init_params(model, jax.random.PRNGKey(0), 4)
  frames = random_batch()['observations']
  raw = np.asarray(jax.jit(lambda p, f: lewm_train.encode_with_grad(model, p, f))(
      params['encoder'], frames), np.float64)
  assert raw.shape == (6, 4, 1, 1, 12)
  flat = raw.reshape(-1, 12)
  mean, std = flat.mean(0), np.sqrt(flat.var(0) + standardise.BATCHNORM_EPS)
  folded = standardise.fold_batchnorm(jax.device_get(params['encoder']), mean, std)
  exported = np.asarray(jax.jit(model.encode)({'encoder': folded}, frames), np.float64)
  np.testing.assert_allclose(exported, (raw - mean) / std, atol=2e-4)
  # The training-time standardisation is the same map on a batch.
  z, batch_mean, batch_std = standardise.batch_normalise(jnp.asarray(raw, jnp.float32))
  np.testing.assert_allclose(batch_mean, mean, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z), (raw - mean) / std, atol=2e-4)


def test_prediction_loss_has_no_stop_gradient_and_trains_the_encoder():
  cfg = tiny_lewm(sigreg_weight=0.0)
  model = lewm_train.build_model(cfg, STATS, frameskip=5)
  params = lewm_train.init_params(model, jax.random.PRNGKey(1), 4)
  batch = random_batch(1)
  key = jax.random.PRNGKey(2)
  grads = jax.jit(jax.grad(lambda p: lewm_train.lewm_loss(p, batch, key, model, cfg)[0]))(params)
  kernel = grads['encoder']['patch_embed']['proj']['kernel']
  assert float(jnp.abs(kernel).max()) > 0
  # The final LayerNorm affine is fixed (the standardisation owns the scale).
  assert float(jnp.abs(grads['encoder']['norm']['scale']).max()) == 0.0

  def stopped_target_loss(p):
    raw = lewm_train.encode_with_grad(model, p['encoder'], batch['observations'])
    z, _, _ = standardise.batch_normalise(raw)
    pred, _ = model.predict(p, z[:, :-1], batch['actions'][:, :-1], None)
    return jnp.mean(jnp.square(pred - jax.lax.stop_gradient(z[:, 1:])))
  stopped = jax.jit(jax.grad(stopped_target_loss))(params)['encoder']['patch_embed']['proj']['kernel']
  assert float(jnp.abs(stopped - kernel).max()) > 1e-3 * float(jnp.abs(kernel).max())


def test_frozen_random_encoder_stays_at_its_init_while_the_predictor_learns():
  """`train_encoder=False` (the ablation's random-encoder baseline): after two AdamW steps with
  weight decay the encoder is bit-identical to its init, the predictor has moved."""
  cfg = tiny_lewm(train_encoder=False, weight_decay=0.1)
  model = lewm_train.build_model(cfg, STATS, frameskip=5)
  params = lewm_train.init_params(model, jax.random.PRNGKey(5), 4)
  tx = training.adamw(learning_rate=1e-2, weight_decay=0.1)
  state = {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  step = jax.jit(lewm_train.make_train_step(model, cfg, tx, seed=0))
  for seed in (5, 6):
    state, metrics = step(state, random_batch(seed))
  assert np.isfinite(float(metrics['loss']))
  for a, b in zip(jax.tree_util.tree_leaves(params['encoder']),
                  jax.tree_util.tree_leaves(state['params']['encoder'])):
    np.testing.assert_array_equal(a, b)
  moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      jax.tree_util.tree_leaves(params['predictor']),
      jax.tree_util.tree_leaves(state['params']['predictor']))]
  assert max(moved) > 1e-3


def test_sigreg_term_is_added_with_its_weight():
  model = lewm_train.build_model(tiny_lewm(), STATS, frameskip=5)
  params = lewm_train.init_params(model, jax.random.PRNGKey(3), 4)
  batch = random_batch(3)
  loss, metrics = jax.jit(lambda p: lewm_train.lewm_loss(
      p, batch, jax.random.PRNGKey(4), model, tiny_lewm(sigreg_weight=0.5)))(params)
  np.testing.assert_allclose(loss, metrics['prediction'] + 0.5 * metrics['sigreg'], rtol=1e-6)


def test_dtype_sets_the_compute_dtype_of_encoder_and_predictor():
  """`lewm.dtype='bfloat16'` computes latents and predictions in bfloat16; the params (and
  the loss) stay float32."""
  model = lewm_train.build_model(tiny_lewm(dtype='bfloat16'), STATS, frameskip=5)
  assert model.encoder.dtype == jnp.bfloat16 and model.predictor.dtype == jnp.bfloat16
  params = lewm_train.init_params(model, jax.random.PRNGKey(0), 4)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype('float32')}
  z = jax.jit(lambda p, f: lewm_train.encode_with_grad(model, p, f))(
      params['encoder'], random_batch()['observations'])
  assert z.dtype == jnp.bfloat16
  loss, _ = jax.jit(lambda p: lewm_train.lewm_loss(p, random_batch(), jax.random.PRNGKey(1),
                                                   model, tiny_lewm()))(params)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))


def test_unknown_key_and_bad_tubelet_are_clear_errors():
  with pytest.raises(TypeError, match='sigreg_lambda'):
    lewm_train.as_lewm_config({'sigreg_lambda': 1.0})
  bad = tiny_lewm(encoder=dict(preset='tiny', image_size=IMAGE, patch_size=IMAGE,
                               tubelet_size=2, width=12, depth=1, num_heads=2))
  with pytest.raises(ValueError, match='tubelet_size'):
    lewm_train.build_model(bad, STATS, frameskip=5)


@pytest.mark.slow
def short_run_config():
  config = wall.get_config('smoke')
  config.data.update(dict(image_size=IMAGE, num_train_trajectories=8,
                          num_validation_trajectories=4, trajectory_length=40))
  config.lewm = ml_collections.ConfigDict(dict(
      **{k: v for k, v in vars(tiny_lewm()).items() if k in (
          'encoder', 'predictor_config', 'sigreg_directions')},
      batch_size=8, num_steps=3, log_every=1, checkpoint_every=2, eval_batch_size=8,
      eval_num_batches=1, statistics_batches=2, geometry_frames=64))
  return config


def test_short_run_exports_a_world_model_that_loads(tmp_path):
  config = short_run_config()
  data_dir = str(tmp_path / 'data')
  dataset = trajectories.generate(data_dir, config.env, config.data, config.seed)
  summary = lewm_train.train(config, str(tmp_path / 'lewm'), data_dir)
  assert summary['num_steps'] == 3
  with open(tmp_path / 'lewm' / 'summary.json') as f:
    written = json.load(f)
  for key in ('geometry_latent_distance_spearman',
              'geometry_latent_distance_spearman_random_encoder',
              'geometry_probe_error_mean_pool', 'geometry_effective_rank',
              'rollout_error_normalised', 'ratio_to_constant'):
    assert key in written
  assert os.path.exists(tmp_path / 'lewm' / 'cost_landscape.png')
  model, params = model_lib.load_world_model(summary['model_path'])
  assert not model.use_proprio
  np.testing.assert_allclose(model.stats['action_std'],
                             stats_lib.load_stats(dataset)['action_std'], rtol=1e-6)
  frames = random_batch(5, batch=2, frames=3)['observations']
  z = jax.jit(model.encode)(params, frames)
  assert z.shape == (2, 3, 1, 1, 12)
  pred, _ = jax.jit(model.unroll)(params, z[:, 0], None, jnp.zeros((2, 4, 10)))
  assert pred.shape == (2, 4, 1, 1, 12) and bool(jnp.isfinite(pred).all())


def test_pseudo_labels_read_proprio_and_need_it(tmp_path):
  # LeWM has no frozen latent before it trains: its inverse model reads proprio, and a
  # pixels-only LeWM asked for pseudo labels stops in one line before training.
  config = short_run_config()
  config.labeled_fraction = 0.5
  config.lewm.pseudo_labels = True
  data_dir = str(tmp_path / 'data')
  trajectories.generate(data_dir, config.env, config.data, config.seed)
  with pytest.raises(ValueError, match=r'lewm\.pseudo_labels needs proprio'):
    lewm_train.train(config, str(tmp_path / 'pixels'), data_dir)
  assert not os.path.exists(tmp_path / 'pixels' / 'checkpoints')
  config.lewm.proprio_emb_dim = 4
  summary = lewm_train.train(config, str(tmp_path / 'lewm'), data_dir)
  assert summary['labeled_trajectories'] == 4
  report = summary['pseudo_labels']
  assert report['labelled_trajectories'] == report['pseudo_labelled_trajectories'] == 4
  assert report['inverse_model_inputs'] == 'proprio'
