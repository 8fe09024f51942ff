"""Stage-1 train step: EMA semantics, one compilation, sharded == single device, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import wall
from jepa_jax import checkpoint as checkpoint_lib
from jepa_jax import sharding as sharding_lib
from jepa_jax import training
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.models import vit
from jepa_jax.pretrain import masks as masks_lib
from jepa_jax.pretrain import train as train_lib
from jepa_jax.world_model import model as world_model_lib


def small_config(**pretrain):
  """A one-block ViT at 32 px (4x4 patches of 8 px), 4-frame clips -> (2, 4, 4) tokens."""
  config = wall.get_config('smoke')
  config.seed = 3
  config.method = 'three_stage'  # Wall's CPU default is LeWM; this is stage 1's test
  config.data.update(dict(image_size=32, num_train_trajectories=6,
                          num_validation_trajectories=3, trajectory_length=24))
  config.encoder = dict(preset='tiny', image_size=32, patch_size=8, tubelet_size=2, width=32,
                        depth=1, num_heads=2, pos_embed='sincos3d')
  # The reference's stage 1 (multi-block groups, EMA target, plain V-JEPA loss), not the CPU
  # recipe of the config; tests opt into each option.
  reference = train_lib.PretrainConfig(batch_size=8, num_steps=6)
  config.pretrain.update(dict(
      mask_groups=reference.mask_groups, objective=reference.objective,
      sigreg_samples=reference.sigreg_samples, standardise=reference.standardise,
      slow_readout=reference.slow_readout, slow_readout_mode=reference.slow_readout_mode,
      slow_readout_weight=reference.slow_readout_weight, ema_momentum=0.99))
  config.pretrain.update(dict(
      batch_size=8, num_steps=6, num_frames=4, frameskip=2, warmup_steps=2,
      predictor=dict(width=16, depth=1, num_heads=2), log_every=2, checkpoint_every=2,
      probe_train_trajectories=4, probe_val_trajectories=3, probe_batch_size=32,
      geometry_frames=64, **pretrain))
  return config


def fake_batch(models, batch_size, seed=0):
  """Random uint8 clips at 32 px plus masks drawn by the pipeline's transform."""
  rng = np.random.default_rng(seed)
  transform = masks_lib.MultiBlockMaskTransform(models.grid, models.mask_groups,
                                                models.mask_counts)
  examples = [transform.random_map({}, rng) for _ in range(batch_size)]
  group_masks = tuple(
      {k: np.stack([e['masks'][g][k] for e in examples]) for k in ('context_idx', 'target_idx')}
      for g in range(len(models.mask_groups)))
  frames = rng.integers(0, 256, size=(batch_size, 4, 32, 32, 3), dtype=np.uint8)
  return {'observations': frames, 'masks': group_masks}


def run_steps(config, mesh, batches):
  """Steps from the seeded init on `mesh`.

  Returns:
    dict with host copies of the state at init, after step 1 and at the end, the losses,
    the parameter PartitionSpecs and the number of compilations of the step.
  """
  _, _, state, step_fn = train_lib.sharded_setup(config, mesh)
  out = {'specs': [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(state['params'])],
         'init': jax.device_get(state), 'losses': []}
  for batch in batches:
    state, metrics = step_fn(state, sharding_lib.shard_batch(batch, mesh))
    out['losses'].append(float(metrics['loss']))
    out.setdefault('step1', jax.device_get(state))
    out.setdefault('metrics1', jax.device_get(metrics))
  out['final'] = jax.device_get(state)
  out['num_compiles'] = step_fn._cache_size()
  return out


SHARDING_CONFIG = dict(ema_momentum=0.9)


@pytest.fixture(scope='module')
def batches():
  models = train_lib.build_models(small_config(**SHARDING_CONFIG))
  return [fake_batch(models, 8, seed=s) for s in (10, 11, 12)]


@pytest.fixture(scope='module')
def single_device_run(batches):
  mesh = sharding_lib.make_mesh({'data': 1, 'fsdp': 1}, devices=jax.devices()[:1])
  return run_steps(small_config(**SHARDING_CONFIG), mesh, batches)


def test_step_updates_ema_target_and_compiles_once(single_device_run):
  run = single_device_run
  # EMA: target <- 0.9 * target + 0.1 * (updated online encoder), leaf by leaf.
  for t0, t1, online in zip(jax.tree_util.tree_leaves(run['init']['target_encoder']),
                            jax.tree_util.tree_leaves(run['step1']['target_encoder']),
                            jax.tree_util.tree_leaves(run['step1']['params']['encoder'])):
    np.testing.assert_allclose(t1, 0.9 * np.float64(t0) + 0.1 * np.float64(online), atol=1e-6)
  assert int(run['step1']['step']) == 1 and int(run['final']['step']) == 3
  assert np.isfinite(run['losses']).all() and run['metrics1']['target_feature_std'] > 0
  # The online encoder moved; the initial target was a copy of it.
  for a, b in zip(jax.tree_util.tree_leaves(run['init']['target_encoder']),
                  jax.tree_util.tree_leaves(run['init']['params']['encoder'])):
    np.testing.assert_array_equal(a, b)
  # Different masks each step, same shapes: the step compiled once.
  assert run['num_compiles'] == 1


def test_sharded_step_matches_single_device(batches, single_device_run):
  """8 devices (data=4 x fsdp=2, kernels split over fsdp) vs 1 device, three steps.

  Tolerance: float32 reductions run in a different order across devices; the losses agree to
  1e-5 relative and every state leaf to 1e-5 absolute (lr 1e-3, so that is ~1% of a step).
  """
  multi = sharding_lib.make_mesh({'data': 4, 'fsdp': 2})
  run = run_steps(small_config(**SHARDING_CONFIG), multi, batches)
  np.testing.assert_allclose(run['losses'], single_device_run['losses'], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(run['final']),
                  jax.tree_util.tree_leaves(single_device_run['final'])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # The multi-device state really is split: kernels live in halves over fsdp.
  assert any('fsdp' in str(spec) for spec in run['specs'])


def test_dense_loss_adds_weighted_context_term():
  config = small_config(dense_loss=True, dense_target_layers=[0, -1], dense_context_weight=0.5)
  mesh = sharding_lib.make_mesh({'data': 1, 'fsdp': 1}, devices=jax.devices()[:1])
  models, _, state, step_fn = train_lib.sharded_setup(config, mesh)
  # Two target levels (block 0 and the last, the same block here) of width 32 -> the
  # predictor outputs 64 features per token.
  assert state['params']['predictor']['predictor_proj']['kernel'].shape == (16, 64)
  _, metrics = step_fn(state, sharding_lib.shard_batch(fake_batch(models, 8), mesh))
  metrics = jax.device_get(metrics)
  np.testing.assert_allclose(metrics['loss'],
                             metrics['loss_masked'] + 0.5 * metrics['loss_context'], rtol=1e-6)
  np.testing.assert_allclose(metrics['loss_masked'],
                             (metrics['loss_group0'] + metrics['loss_group1']) / 2, rtol=1e-6)


def test_dense_loss_ramps_in_between_its_steps():
  """dense_ramp_steps=(1, 3): weight 0 at steps 0-1, half at 2, full from 3 on."""
  config = small_config(dense_loss=True, dense_context_weight=0.5, dense_ramp_steps=(1, 3))
  cfg = train_lib.as_pretrain_config(config.pretrain)
  weights = [float(train_lib.dense_weight(cfg, jnp.int32(s))) for s in range(5)]
  np.testing.assert_allclose(weights, [0.0, 0.0, 0.25, 0.5, 0.5])
  mesh = sharding_lib.make_mesh({'data': 1, 'fsdp': 1}, devices=jax.devices()[:1])
  models, _, state, step_fn = train_lib.sharded_setup(config, mesh)
  _, metrics = step_fn(state, sharding_lib.shard_batch(fake_batch(models, 8), mesh))
  metrics = jax.device_get(metrics)
  assert metrics['dense_weight'] == 0.0 and metrics['loss_context'] > 0
  np.testing.assert_allclose(metrics['loss'], metrics['loss_masked'], rtol=1e-6)
  with pytest.raises(ValueError, match='dense_ramp_steps'):
    train_lib.as_pretrain_config({**config.pretrain.to_dict(), 'dense_ramp_steps': (3, 1)})


class Preempted(Exception):
  pass


@pytest.mark.slow
def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path, monkeypatch):
  config = small_config()
  data_dir = str(tmp_path / 'data')
  trajectories.generate(data_dir, config.env, config.data, config.seed)

  straight = train_lib.train(config, str(tmp_path / 'straight'), data_dir)
  assert straight['num_steps'] == 6
  with open(tmp_path / 'straight' / 'summary.json') as f:
    written = json.load(f)
  for key in ('probe_error', 'probe_error_random_encoder'):
    assert np.isfinite(written[key])

  real_loop = training.run_train_loop

  def loop_killed_in_step_5(*, train_step, **kwargs):
    calls = []

    def step(state, batch):
      calls.append(None)
      if len(calls) == 5:  # after the step-4 checkpoint, before step 5 completes
        raise Preempted()
      return train_step(state, batch)
    return real_loop(train_step=step, **kwargs)

  workdir = str(tmp_path / 'resumed')
  monkeypatch.setattr(training, 'run_train_loop', loop_killed_in_step_5)
  with pytest.raises(Preempted):
    train_lib.train(config, workdir, data_dir)
  monkeypatch.undo()
  assert checkpoint_lib.TrainCheckpointer(
      os.path.join(workdir, 'checkpoints'), save_interval_steps=2).latest_step() == 4
  resumed = train_lib.train(config, workdir, data_dir)
  assert resumed['num_steps'] == 6

  _, vit_a, params_a, extra_a = checkpoint_lib.load_model(straight['encoder_path'])
  kind, vit_b, params_b, _ = checkpoint_lib.load_model(resumed['encoder_path'])
  assert kind == 'vit' and vit_a == vit_b
  np.testing.assert_allclose(extra_a['pixel_mean'], (0.485, 0.456, 0.406), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  assert resumed['probe_error'] == pytest.approx(straight['probe_error'], rel=1e-4)


def test_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='generate_data'):
    train_lib.train(small_config(), str(tmp_path / 'work'), str(tmp_path / 'nowhere'))


def test_unknown_pretrain_key_is_rejected():
  config = small_config()
  config.pretrain.learning_rate = 1.0
  with pytest.raises(TypeError, match='learning_rate'):
    train_lib.as_pretrain_config(config.pretrain)


@pytest.mark.parametrize('setting, message', [
    (dict(slow_readout_mode='prepend'), "slow_readout_mode='prepend'; choose one of"),
    (dict(slow_readout_weight=0.0), 'slow_readout_weight must be > 0'),
])
def test_bad_slow_readout_settings_are_one_line(setting, message):
  config = small_config()
  with pytest.raises(ValueError, match=message):
    train_lib.as_pretrain_config({**config.pretrain.to_dict(), **setting})


def test_sigreg_objective_adds_weighted_sigreg_of_context_tokens():
  config = small_config(objective='vjepa_sigreg', sigreg_weight=0.25, sigreg_directions=8)
  mesh = sharding_lib.make_mesh({'data': 1, 'fsdp': 1}, devices=jax.devices()[:1])
  models, _, state, step_fn = train_lib.sharded_setup(config, mesh)
  _, metrics = step_fn(state, sharding_lib.shard_batch(fake_batch(models, 8), mesh))
  metrics = jax.device_get(metrics)
  assert metrics['sigreg'] > 0
  np.testing.assert_allclose(metrics['loss'], metrics['loss_jepa'] + 0.25 * metrics['sigreg'],
                             rtol=1e-6)


def test_objective_names_are_checked():
  with pytest.raises(ValueError, match='--config.method=lewm'):
    train_lib.as_pretrain_config(small_config(objective='lewm').pretrain)
  with pytest.raises(ValueError, match='vjepa_sigreg'):
    train_lib.as_pretrain_config(small_config(objective='jepa').pretrain)


def test_frame_regulariser_samples_are_per_tubelet_means_of_the_context():
  # A numpy re-derivation: each clip's context tokens averaged per tubelet.
  grid = (3, 2, 2)
  rng = np.random.default_rng(0)
  context = rng.normal(size=(5, 6, 4)).astype(np.float32)
  idx = np.stack([np.sort(rng.choice(12, 6, replace=False)) for _ in range(5)]).astype(np.int32)
  group = masks_lib.MaskGroupSpec(num_blocks=1, spatial_scale=0.5)
  samples = np.asarray(train_lib.regulariser_samples(
      jnp.asarray(context), jnp.asarray(idx), grid, group, 'frames'))
  assert samples.shape == (3, 5, 4)
  for b in range(5):
    for f in range(3):
      in_frame = idx[b] // 4 == f
      expected = context[b, in_frame].mean(0) if in_frame.any() else np.zeros(4)
      np.testing.assert_allclose(samples[f, b], expected, rtol=1e-5, atol=1e-6)
  tokens = train_lib.regulariser_samples(jnp.asarray(context), jnp.asarray(idx), grid, group,
                                         'tokens')
  np.testing.assert_array_equal(np.asarray(tokens), context.reshape(1, 30, 4))


def test_standardised_targets_match_a_float64_rederivation():
  # Targets = LayerNorm (no affine) of the encoder's features standardised per channel over the
  # batch and tokens.
  config = small_config(standardise=True)
  models = train_lib.build_models(config)
  cfg = train_lib.as_pretrain_config(config.pretrain)
  params = models.encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 32, 32, 3)))['params']
  video = jax.random.normal(jax.random.PRNGKey(1), (6, 4, 32, 32, 3))
  targets, _ = train_lib.target_features(models, cfg, params, video)
  raw = np.asarray(models.encoder.apply({'params': params}, video), np.float64)
  raw = raw.reshape(6, -1, raw.shape[-1])
  z = (raw - raw.mean((0, 1))) / np.sqrt(raw.var((0, 1)) + 1e-5)
  expected = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(targets), expected, rtol=1e-3, atol=1e-3)


def test_slow_readout_export_is_the_readout_of_the_standardised_encoder(tmp_path):
  """`pretrain.slow_readout=3`: the export (here of the random init) outputs 3 channels equal to
  the standardised export's features times a readout fit on the training frames, and a world
  model built on it derives latent_dim 3; in 'append' mode the standardised features come
  first, unchanged."""
  config = small_config(standardise=True)
  data_dir = str(tmp_path / 'data')
  trajectories.generate(data_dir, config.env, config.data, config.seed)
  train_lib.export_random_encoder(config, str(tmp_path / 'plain'), data_dir)
  config.pretrain.slow_readout = 3
  train_lib.export_random_encoder(config, str(tmp_path / 'slow'), data_dir)
  plain, plain_params, mean, std = world_model_lib.load_encoder(str(tmp_path / 'plain'))
  slow, slow_params, _, _ = world_model_lib.load_encoder(str(tmp_path / 'slow'))
  assert slow.config.latent_dim == 3 and slow.config.output_dim == 3
  # The same encoder below the map: the readout is an affine map of the standardised features.
  frames = trajectories.load_trajectories(
      trajectories.locate_dataset(config, data_dir), 'train', max_count=2)['observations'][0]
  clips = vit.image_to_clip(vit.preprocess_frames(frames, 32, mean, std), slow.config.tubelet_size)
  features = np.asarray(plain.apply({'params': plain_params}, clips), np.float64)
  out = np.asarray(slow.apply({'params': slow_params}, clips), np.float64)
  projection = slow_params['output_proj']
  np.testing.assert_allclose(out, features @ projection['kernel'] + projection['bias'],
                             rtol=1e-4, atol=1e-4)
  model = world_model_lib.build_world_model(
      encoder=slow, pixel_mean=mean, pixel_std=std, predictor_kind='adaln',
      predictor_config=dict(depth=1, num_heads=1), proprio_emb_dim=0,
      stats=stats_lib.load_stats(trajectories.locate_dataset(config, data_dir)), frameskip=2)
  assert model.predictor.config.latent_dim == 3
  # 'append': the standardised features themselves, then the 3 slow channels.
  config.pretrain.slow_readout_mode = 'append'
  train_lib.export_random_encoder(config, str(tmp_path / 'appended'), data_dir)
  appended, appended_params, _, _ = world_model_lib.load_encoder(str(tmp_path / 'appended'))
  assert appended.config.latent_dim == 32 + 3
  out = np.asarray(appended.apply({'params': appended_params}, clips), np.float64)
  np.testing.assert_allclose(out[..., :32], features, rtol=1e-4, atol=1e-4)
  projection = appended_params['output_proj']
  np.testing.assert_allclose(out[..., 32:], features @ projection['kernel'][:, 32:]
                             + projection['bias'][32:], rtol=1e-4, atol=1e-4)
