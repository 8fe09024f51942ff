"""The MPC protocol on Wall: trajectories re-derived with the env, sharding, batching, agents."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax import sharding
from jepa_jax.envs import wall
from jepa_jax.planning import agent as agent_lib
from jepa_jax.planning import evaluate, mpc, objectives, oracle
from jepa_jax.planning.config import PlanningConfig

ENV = wall.ENV
SMALL = PlanningConfig(cem=dict(num_samples=16, num_iters=2, num_elites=4), latency_repeats=1,
                       episode_set='random', num_episodes=8)


def _check_episodes(data, cfg, agent):
  """Every executed trajectory is the env rollout of the executed parts of the plans."""
  per_plan = cfg.num_execute * agent.frameskip
  for e in range(len(data['start'])):
    start, goal = data['start'][e], data['goal'][e]
    assert (start[0] < wall.WALL_LEFT) != (goal[0] < wall.WALL_LEFT)  # opposite rooms
    env_actions = np.concatenate([np.asarray(agent.to_env_actions(jnp.asarray(p)))[:per_plan]
                                  for p in data['plans'][e]])
    ref = np.asarray(wall.rollout(jnp.asarray(start), jnp.asarray(env_actions)))
    np.testing.assert_allclose(data['trajectory'][e], ref, atol=1e-4)
    dist = np.linalg.norm(ref[-1] - goal)
    np.testing.assert_allclose(data['final_distance'][e], dist, rtol=1e-5, atol=1e-5)
    assert bool(data['success'][e]) == (dist < 4.5)


@pytest.fixture(scope='module')
def single_device_run():
  return evaluate.evaluate(ENV, oracle.oracle_agent(ENV), SMALL, seed=3, measure_latency=False,
                           return_episodes=True)


def test_open_loop_protocol_matches_env(single_device_run):
  data = single_device_run['episode_data']
  assert data['trajectory'].shape == (8, 31, 2) and data['plans'].shape == (8, 1, 6, 10)
  _check_episodes(data, SMALL, oracle.oracle_agent(ENV))
  ci = single_device_run['success_ci']
  assert ci['low'] <= single_device_run['success_rate'] <= ci['high'] and ci['n'] == 8
  # Random baseline: N(0, cem var_scale) normalised actions, same start.
  assert data['random_trajectory'].shape == (8, 31, 2)
  np.testing.assert_array_equal(data['random_trajectory'][:, 0], data['start'])


def test_closed_loop_warm_start_and_shrinking_horizon():
  agent = oracle.oracle_agent(ENV)
  assert mpc.plan_horizons(dataclasses.replace(SMALL, num_execute=2), ENV, 5) == [6, 4, 2]
  cfg = dataclasses.replace(SMALL, num_execute=3, warm_start=True, num_episodes=3)
  assert mpc.plan_horizons(cfg, ENV, 5) == [6, 3]
  res = evaluate.evaluate(ENV, agent, cfg, seed=2, measure_latency=False, return_episodes=True)
  data = res['episode_data']
  assert data['plans'].shape == (3, 2, 6, 10)
  np.testing.assert_array_equal(data['plans'][:, 1, 3:], 0.0)  # horizon 3, zero-padded
  _check_episodes(data, cfg, agent)
  # The second plan's true-dynamics path starts where the first plan left the dot.
  np.testing.assert_allclose(data['planned'][:, 1, 0], data['trajectory'][:, 15], atol=1e-5)
  fixed = dataclasses.replace(cfg, shrink_horizon=False)
  assert mpc.plan_horizons(fixed, ENV, 5) == [6, 6]


def test_sharded_and_batched_evaluation_equal_single_call(single_device_run):
  agent, single = oracle.oracle_agent(ENV), single_device_run
  mesh = sharding.make_mesh({'data': -1})
  assert mesh.size == 8
  # 6 episodes are padded to 8 (one per device) and the padding is dropped again.
  cfg = dataclasses.replace(SMALL, num_episodes=6)
  sharded = evaluate.evaluate(ENV, agent, cfg, seed=3, mesh=mesh, measure_latency=False,
                              return_episodes=True)
  # 8 episodes in batches of 3 (the last one padded) on one device.
  batched = evaluate.evaluate(ENV, agent, dataclasses.replace(SMALL, episode_batch_size=3),
                              seed=3, measure_latency=False, return_episodes=True)
  assert sharded['devices'] == 8 and sharded['episodes'] == 6 and batched['episodes'] == 8
  for k in ('trajectory', 'plans', 'final_distance', 'random_trajectory'):
    np.testing.assert_allclose(sharded['episode_data'][k], single['episode_data'][k][:6],
                               atol=1e-5, err_msg=k)
    np.testing.assert_allclose(batched['episode_data'][k], single['episode_data'][k],
                               atol=1e-5, err_msg=k)


def test_no_retrace_across_seeds():
  cfg = dataclasses.replace(SMALL, cem=dict(num_samples=4, num_elites=2, num_iters=1))
  run = mpc.compile_episodes(ENV, oracle.oracle_agent(ENV), cfg)
  for seed in range(3):
    keys = evaluate.episode_keys(seed, 2)
    starts = jnp.stack([ENV.sample_start_goal(k)[0] for k in keys])
    run(None, starts, starts[::-1], keys)
  assert run._cache_size() == 1


def test_bad_inputs():
  with pytest.raises(ValueError, match='episode_steps'):
    mpc.num_plans(dataclasses.replace(SMALL, num_execute=4), ENV, 5)
  with pytest.raises(ValueError, match='planner'):
    PlanningConfig(planner='random')
  with pytest.raises(ValueError, match='num_episodes'):
    PlanningConfig(num_episodes=0)
  with pytest.raises(ValueError, match='num_elites'):
    PlanningConfig(cem=dict(num_samples=8))


@dataclasses.dataclass(frozen=True)
class FreeSpaceModel:
  """Stub world model with the WorldModel interface: a constant (1, 1, 2) latent that each
  model step moves by 2 * the sum of its env actions; proprio embedding = scale * position;
  actions de-normalised by * 3."""
  frameskip: int = 5
  action_dim: int = 10
  image_size: int = 16
  use_proprio: bool = True

  def encode(self, params, frames):
    # A constant latent: the rendered image only has to reach `encode` with the right shape.
    b, t = frames.shape[:2]
    return jnp.zeros((b, t, 1, 1, 2)) + params['offset']

  def encode_proprio(self, params, proprio):
    return proprio * params['scale']

  def env_actions(self, actions):
    return 3.0 * actions.reshape(actions.shape[:-2] + (-1, 2))

  def unroll(self, params, z0, pe0, actions):
    steps = 2.0 * self.env_actions(actions).reshape(actions.shape[:2] + (self.frameskip, 2)).sum(2)
    pe = pe0[:, None] + jnp.cumsum(steps, axis=1) * params['scale']
    return z0[:, None] + jnp.cumsum(steps, axis=1)[:, :, None, None], pe


def test_world_model_agent_cost_and_encode():
  model = FreeSpaceModel()
  params = {'offset': jnp.float32(1.0), 'scale': jnp.float32(0.5)}
  obj = objectives.ObjectiveConfig(distance='l2', final_step_only=True, proprio_weight=0.1)
  agent = agent_lib.world_model_agent(model, params, obj, ENV, image_size=16)
  assert agent.action_dim == 10 and agent.image_size == 16
  pos, goal_pos = jnp.array([10.0, 20.0]), jnp.array([15.0, 18.0])
  state = agent.encode(params, wall.render(pos, 16), pos)
  goal = agent.encode(params, wall.render(goal_pos, 16), goal_pos)
  actions = np.random.default_rng(0).normal(size=(5, 6, 10)).astype(np.float32)
  got = agent.cost_fn(params, state, goal, jnp.asarray(actions))
  # numpy: final latent = 1 + 6 * sum of all actions per coordinate; goal latent = 1.
  disp = 6.0 * actions.reshape(5, -1, 2).sum(1)
  vis = np.mean(disp ** 2, axis=-1)
  pro = np.mean((0.5 * (np.asarray(pos) + disp) - 0.5 * np.asarray(goal_pos)) ** 2, axis=-1)
  np.testing.assert_allclose(got, vis + 0.1 * pro, rtol=1e-4)
  # Scoring the candidates 2 at a time (3 chunks, the last one padded) gives the same costs.
  chunked = agent_lib.world_model_agent(model, params, obj, ENV, image_size=16, chunk_size=2)
  np.testing.assert_allclose(chunked.cost_fn(params, state, goal, jnp.asarray(actions)), got,
                             rtol=1e-6)
