"""Oracle check without a learned model: CEM with the true Wall dynamics solves the task."""

import jax.numpy as jnp
import numpy as np
import pytest

from jepa_jax.envs import wall
from jepa_jax.planning import evaluate, oracle
from jepa_jax.planning.config import PlanningConfig


def test_oracle_cem_reaches_95_percent_on_reference_episodes():
  # Reduced budget (150 x 15 instead of 300 x 30) to stay fast; the reference protocol:
  # one open-loop plan of horizon 6 x frameskip 5 executed for all 30 env steps, on the first
  # 20 of the reference's seeded episodes.
  cfg = PlanningConfig(cem=dict(num_samples=150, num_iters=15, num_elites=10), horizon=6,
                       num_execute=6, latency_repeats=2, num_episodes=20)
  res = evaluate.evaluate(wall.ENV, oracle.oracle_agent(wall.ENV), cfg, seed=0)
  assert res['success_rate'] >= 0.95, res
  assert res['random_policy_success_rate'] <= 0.2, res
  assert res['protocol']['num_plans_per_episode'] == 1 and res['episode_set'] == 'reference'
  assert res['plan_latency_median_s'] > 0 and res['episodes'] == 20


def test_pixel_cost_oracle_scores_rendered_frames():
  """cost='pixels': the mean squared difference of the final and goal frames in [0, 1], each
  rendered at image_size (numpy from wall.rollout and wall.render); the action sequence that
  lands on the goal scores 0, and a bad cost name is one clear error."""
  agent = oracle.oracle_agent(wall.ENV, cost='pixels', image_size=32)
  start, goal = jnp.array([20.0, 30.0]), jnp.array([26.0, 33.0])
  state = agent.encode(None, None, start)
  goal_state = agent.encode(None, None, goal)
  rng = np.random.default_rng(0)
  actions = rng.normal(size=(4, 2, agent.action_dim)).astype(np.float32)
  actions[0] = 0.0
  actions[0, 0, :2] = [3.0, 1.5]    # one env step of 2 * a: (20, 30) -> (26, 33), then rest
  got = np.asarray(agent.cost_fn(None, state, goal_state, jnp.asarray(actions)))
  goal_frame = np.asarray(wall.render(goal, 32), np.float64) / 255
  for n in range(4):
    final = wall.ENV.rollout(start, agent.to_env_actions(jnp.asarray(actions[n])))[-1]
    frame = np.asarray(wall.render(final, 32), np.float64) / 255
    np.testing.assert_allclose(got[n], np.mean((frame - goal_frame) ** 2), rtol=1e-5,
                               atol=1e-7)
  assert got[0] < 1e-9 < got[1:].min()
  with pytest.raises(ValueError, match='must be one of'):
    oracle.oracle_agent(wall.ENV, cost='reward')
