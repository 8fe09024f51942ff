"""End to end stage 3: an exported (tiny, random) world model -> run_planning -> files; the
oracle scored in that world model's latent."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import wall as wall_configs
from jepa_jax.envs import wall
from jepa_jax.models import vit
from jepa_jax.planning import objectives, oracle, run
from jepa_jax.world_model import model as model_lib

STATS = {'action_mean': np.array([0.1, -0.2], np.float32),
         'action_std': np.array([1.5, 0.5], np.float32),
         'proprio_mean': np.array([30.0, 30.0], np.float32),
         'proprio_std': np.array([15.0, 15.0], np.float32)}


def tiny_world_model():
  """`(WorldModel, params)`: a random 32 px ViT encoder, AdaLN predictor, proprio on."""
  cfg = vit.vit_config('tiny', image_size=32, patch_size=16, width=16, depth=1, num_heads=2)
  encoder = vit.ViTEncoder(cfg)
  model = model_lib.build_world_model(
      encoder=encoder, pixel_mean=vit.IMAGENET_MEAN, pixel_std=vit.IMAGENET_STD,
      predictor_kind='adaln', predictor_config=dict(depth=1, num_heads=2), proprio_emb_dim=4,
      stats=STATS, frameskip=5)
  key = jax.random.PRNGKey(0)
  params = model_lib.init_trainable_params(model, key, num_frames=2)
  params['encoder'] = encoder.init(key, jnp.zeros((1, 2, 32, 32, 3)))['params']
  return model, params


def export_tiny_world_model(path):
  model_lib.save_world_model(path, *tiny_world_model())


def small_config():
  config = wall_configs.get_config('smoke')
  config.data.image_size = 32
  config.planning.update(num_episodes=3, num_gifs=1, latency_repeats=1)
  config.planning.cem.update(num_samples=8, num_iters=2, num_elites=2)
  config.planning_extra.mpc = dict(num_execute=3)
  config.planning_extra.pixels_only = dict(objective=dict(proprio_weight=0.0))
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


def test_latent_oracle_scores_true_final_states_in_the_world_model_latent():
  """oracle cost='latent': the true final state's 32 px frame and proprio, encoded by the world
  model, against the goal's, with the planning objective (float64 numpy from wall.rollout,
  wall.render and the model's own encoders); the action sequence that lands on the goal
  scores 0, and the cost and the world model come together or not at all."""
  model, params = tiny_world_model()
  objective = objectives.ObjectiveConfig(proprio_weight=0.3)
  agent = oracle.oracle_agent(wall.ENV, cost='latent', image_size=32,
                              world_model=(model, params), objective=objective)
  start, goal = jnp.array([20.0, 30.0]), jnp.array([26.0, 33.0])
  state = agent.encode(agent.params, None, start)
  goal_state = agent.encode(agent.params, None, goal)
  rng = np.random.default_rng(0)
  actions = rng.normal(size=(4, 2, agent.action_dim)).astype(np.float32)
  actions[0] = 0.0
  actions[0, 0, :2] = [3.0, 1.5]    # one env step of 2 * a: (20, 30) -> (26, 33), then rest
  got = np.asarray(agent.cost_fn(agent.params, state, goal_state, jnp.asarray(actions)))

  def latent(true_state):  # float64 (z, proprio embedding) of one true state
    z = model.encode(params, wall.render(true_state, 32)[None, None])[0, 0]
    pe = model.encode_proprio(params, wall.ENV.proprio(true_state)[None, None])[0, 0]
    return np.asarray(z, np.float64), np.asarray(pe, np.float64)

  goal_z, goal_pe = latent(goal)
  for n in range(4):
    final = wall.ENV.rollout(start, agent.to_env_actions(jnp.asarray(actions[n])))[-1]
    z, pe = latent(final)
    want = np.mean((z - goal_z) ** 2) + 0.3 * np.mean((pe - goal_pe) ** 2)
    np.testing.assert_allclose(got[n], want, rtol=1e-4, atol=1e-7)
  assert got[0] < 1e-9 < got[1:].min()
  with pytest.raises(ValueError, match="exactly when the cost is 'latent'"):
    oracle.oracle_agent(wall.ENV, cost='latent')
  with pytest.raises(ValueError, match="exactly when the cost is 'latent'"):
    oracle.oracle_agent(wall.ENV, cost='pixels', world_model=(model, params))


def test_oracle_reads_the_world_model_only_for_latent_rows(tmp_path):
  path = str(tmp_path / 'world_model' / 'model')
  export_tiny_world_model(path)
  config = small_config()
  config.planning_extra = {'latent': dict(oracle_cost='latent')}
  results = run.run_planning(str(tmp_path / 'latent'), config, path, use_oracle=True)
  assert results['agent'] == 'oracle' and results['world_model_path'] == path
  assert results['rows']['latent']['episode_info'] == results['episode_info']
  config.planning_extra = {}
  results = run.run_planning(str(tmp_path / 'state'), config, str(tmp_path / 'missing'),
                             use_oracle=True)
  assert results['world_model_path'] is None
