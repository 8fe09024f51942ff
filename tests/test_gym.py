"""Our environments as gymnasium.Env (jepa_jax.envs.gym) and the MPC loop over any gymnasium.Env
(jepa_jax.planning.external), checked against the jitted evaluation on the same episodes."""

import json
import os

import gymnasium
from gymnasium.utils import env_checker
import numpy as np
import pytest

from jepa_jax import envs
from jepa_jax.envs import gym as jax_gym
from jepa_jax.planning import agent as agent_lib
from jepa_jax.planning import episodes as episodes_lib
from jepa_jax.planning import evaluate, external
from jepa_jax.planning.config import as_planning_config
from tests.test_planning_run import tiny_world_model


def test_wall_through_gymnasium_is_the_jax_environment():
  env = jax_gym.make('wall', render_size=65)
  env_checker.check_env(env.unwrapped, skip_render_check=True)
  wall = envs.get('wall')
  start, goal = np.array([10.0, 40.0], np.float32), np.array([50.0, 20.0], np.float32)
  obs, info = env.reset(options={'start': start, 'goal': goal})
  np.testing.assert_array_equal(obs['pixels'], np.asarray(wall.render(start, 65)))
  np.testing.assert_array_equal(info['goal'], np.asarray(wall.render(goal, 65)))
  actions = np.random.default_rng(0).normal(0, 1, (wall.episode_steps, 2)).astype(np.float32)
  path = np.asarray(wall.rollout(start, actions))
  for t, action in enumerate(actions):
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_allclose(info['state'], path[t + 1], atol=1e-5)
    assert not terminated and truncated == (t == len(actions) - 1)
  np.testing.assert_allclose(obs['proprio'], path[-1], atol=1e-5)
  np.testing.assert_allclose(-reward, np.linalg.norm(path[-1] - goal), rtol=1e-5)
  assert info['is_success'] == (np.linalg.norm(path[-1] - goal) < 4.5)
  np.testing.assert_array_equal(env.render(), obs['pixels'])
  # The seeded random draw is reproducible.
  first, again = env.reset(seed=3)[1], env.reset(seed=3)[1]
  np.testing.assert_array_equal(first['state'], again['state'])
  assert set(jax_gym.GYM_IDS.values()) <= set(gymnasium.registry)
  with pytest.raises(ValueError, match=r'shape \(2,\)'):
    env.reset(options={'start': np.zeros(3), 'goal': goal})
  with pytest.raises(ValueError, match='unknown environment'):
    jax_gym.make('cartpole')


def planning_config(**overrides):
  settings = dict(num_episodes=4, cem=dict(num_samples=16, num_iters=2, num_elites=2),
                  horizon=2, num_execute=1, warm_start=True, shrink_horizon=False,
                  episode_set='reference', num_gifs=1, episode_steps=10)
  return as_planning_config({**settings, **overrides})


@pytest.mark.slow   # ~25 s: compiles the vmapped evaluation and the loop's planner step
def test_external_loop_on_our_wall_matches_the_jitted_evaluation(tmp_path):
  """Same episodes (the reference draw), same keys: the MPC loop over the gymnasium wrapper
  executes the plans of the jitted evaluation (closed loop, warm-started, 2 plans)."""
  model, params = tiny_world_model()
  planning = planning_config()
  wall = envs.get('wall')
  agent = agent_lib.world_model_agent(model, params, planning.objective, wall, image_size=32)
  jitted = evaluate.evaluate(wall, agent, planning, seed=0, measure_latency=False,
                             return_episodes=True)
  env = jax_gym.make('wall', render_size=65)   # frames resized to 32 px by the loop
  episodes = jax_gym.evaluation_episodes('wall', 'reference', 4)
  starts, _, _ = episodes_lib.episode_starts_goals(wall, 'reference', 4)
  np.testing.assert_array_equal(episodes[3].options['start'], starts[3])
  results = external.run_external((model, params), env, episodes, planning, image_size=32,
                                  seed=0, workdir=str(tmp_path), distance_unit='px')
  data = jitted['episode_data']
  ours = json.load(open(os.path.join(tmp_path, 'results.json')))
  assert ours['success_rate'] == results['success_rate'] == jitted['success_rate']
  assert results['random_policy_success_rate'] == jitted['random_policy_success_rate']
  np.testing.assert_allclose(results['mean_final_distance'], data['final_distance'].mean(),
                             rtol=1e-3)
  np.testing.assert_allclose(results['random_policy_mean_final_distance'],
                             data['random_final_distance'].mean(), rtol=1e-3)
  assert results['success_ci'] == jitted['success_ci']
  assert results['protocol'] == jitted['protocol']
  assert results['planner_settings'] == jitted['planner_settings']
  assert set(jitted) - {'episode_data', 'episode_info'} <= set(results)
  assert os.path.isfile(results['gifs'][0])


def test_external_loop_reads_goals_from_info_and_refuses_what_it_cannot_read(tmp_path):
  model, params = tiny_world_model()
  env = jax_gym.make('wall', render_size=32)
  episodes = [external.ExternalEpisode(seed=1)]    # goal frame and proprio from reset's info
  results = external.run_external((model, params), env, episodes,
                                  planning_config(num_execute=2, warm_start=False),
                                  image_size=32)
  assert results['episodes'] == 1 and results['protocol']['num_plans_per_episode'] == 1

  with pytest.raises(ValueError, match='success_fn'):
    external.success_from_info(env, None, {'distance': 1.0})
  with pytest.raises(ValueError, match='num_execute'):
    external.run_external((model, params), env, episodes, planning_config(episode_steps=7),
                          image_size=32)
  pixels_only = gymnasium.wrappers.TransformObservation(
      env, lambda obs: obs['pixels'], env.observation_space['pixels'])
  with pytest.raises(ValueError, match='proprio_fn'):
    external.run_external((model, params), pixels_only, episodes, planning_config(),
                          image_size=32)
