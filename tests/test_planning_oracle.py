"""Oracle check without a learned model: CEM with the true Wall dynamics solves the task."""

from jepa_jax.envs import wall
from jepa_jax.planning import evaluate, oracle
from jepa_jax.planning.config import PlanningConfig


def test_oracle_cem_reaches_95_percent_on_reference_episodes():
  # Reduced budget (150 x 15 instead of 300 x 30) to stay fast; the reference protocol:
  # one open-loop plan of horizon 6 x frameskip 5 executed for all 30 env steps, on the first
  # 20 of the reference's seeded episodes.
  cfg = PlanningConfig(num_samples=150, num_iters=15, num_elites=10, horizon=6, num_execute=6,
                       latency_repeats=2, num_episodes=20)
  res = evaluate.evaluate(wall.ENV, oracle.oracle_agent(wall.ENV), cfg, seed=0)
  assert res['success_rate'] >= 0.95, res
  assert res['random_policy_success_rate'] <= 0.2, res
  assert res['protocol']['num_plans_per_episode'] == 1 and res['episode_set'] == 'reference'
  assert res['plan_latency_median_s'] > 0 and res['episodes'] == 20
