"""Wall time of one plan, compile separated from steady state (`block_until_ready`)."""

import functools
import statistics
import time

import jax

from jepa_jax.envs.base import Environment
from jepa_jax.planning import mpc
from jepa_jax.planning.agent import Agent
from jepa_jax.planning.config import PlanningConfig, make_planner


def measure_plan_latency(env: Environment, agent: Agent, config: PlanningConfig,
                         start: jax.Array, goal: jax.Array) -> dict:
  """Median wall time of one full-horizon plan from `start` towards `goal`.

  Returns {'plan_latency_median_s', 'plan_compile_s'}; each call is `block_until_ready`-ed and
  the first one (compilation) is not in the median.
  """
  planner, planner_config = make_planner(config)
  params = agent.params
  state = agent.encode(params, mpc.observe(env, agent, start), start)
  goal_state = agent.encode(params, mpc.observe(env, agent, goal), goal)

  @jax.jit
  def plan_once(params, state, goal_state, key):
    cost_fn = functools.partial(agent.cost_fn, params)
    return planner(cost_fn, state, goal_state, agent.action_dim, key, planner_config)[0]

  t0 = time.perf_counter()
  jax.block_until_ready(plan_once(params, state, goal_state, jax.random.PRNGKey(0)))
  compile_s = time.perf_counter() - t0
  times = []
  for r in range(max(1, config.latency_repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(plan_once(params, state, goal_state, jax.random.PRNGKey(r + 1)))
    times.append(time.perf_counter() - t0)
  return dict(plan_latency_median_s=statistics.median(times), plan_compile_s=compile_s)
