"""End to end stage 3: an exported (tiny, random) world model -> run_planning -> files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import wall as wall_configs
from jepa_jax.models import vit
from jepa_jax.planning import run
from jepa_jax.world_model import model as model_lib

STATS = {'action_mean': np.array([0.1, -0.2], np.float32),
         'action_std': np.array([1.5, 0.5], np.float32),
         'proprio_mean': np.array([30.0, 30.0], np.float32),
         'proprio_std': np.array([15.0, 15.0], np.float32)}


def export_tiny_world_model(path):
  cfg = vit.vit_config('tiny', image_size=32, patch_size=16, width=16, depth=1, num_heads=2)
  encoder = vit.ViTEncoder(cfg)
  model = model_lib.build_world_model(
      encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
      predictor_kind='adaln', predictor_config=dict(depth=1, num_heads=2), proprio_emb_dim=4,
      stats=STATS, frameskip=5)
  key = jax.random.PRNGKey(0)
  params = model_lib.init_trainable_params(model, key, num_frames=2)
  params['encoder'] = encoder.init(key, jnp.zeros((1, 2, 32, 32, 3)))['params']
  model_lib.save_world_model(path, model, params)


def small_config():
  config = wall_configs.get_config('smoke')
  config.data.image_size = 32
  config.planning.update(num_episodes=3, num_samples=8, num_iters=2, num_elites=2, num_gifs=1,
                         latency_repeats=1)
  config.planning_extra.mpc = dict(num_execute=3)
  config.planning_extra.pixels_only = dict(objective_proprio_weight=0.0)
  return config


def test_run_planning_with_exported_world_model(tmp_path):
  export_tiny_world_model(str(tmp_path / 'world_model' / 'model'))
  workdir = str(tmp_path / 'planning')
  results = run.run_planning(workdir, small_config(), str(tmp_path / 'world_model' / 'model'))
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  for key in ('success_rate', 'random_policy_success_rate', 'mean_final_distance', 'episodes',
              'planner_settings', 'plan_latency_median_s'):
    assert key in saved and saved[key] == results[key]
  assert saved['agent'] == 'world_model' and saved['episodes'] == 3
  assert saved['devices'] == len(jax.devices())  # episodes sharded over the config mesh
  assert os.path.getsize(os.path.join(workdir, 'results.png')) > 0
  assert [os.path.basename(p) for p in saved['gifs']] == ['episode_0.gif']
  # Every extra row ran on the same episodes with its own protocol.
  assert set(saved['rows']) == {'pixels_only', 'mpc'}
  assert saved['rows']['mpc']['protocol']['num_plans_per_episode'] == 2
  assert saved['rows']['pixels_only']['planner_settings'] == saved['planner_settings']
  assert saved['rows']['mpc']['episode_info'] == saved['episode_info']
  assert saved['provenance']['packages']['jax'] == jax.__version__


def test_missing_world_model_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='no exported world model'):
    run.run_planning(str(tmp_path / 'planning'), small_config(), str(tmp_path / 'missing'))
