"""The MPC episode loop, one compiled program for a batch of episodes of any environment.

An episode: a start and a goal state, `episode_steps` env steps made of plans that each execute
`num_execute` model steps (`frameskip` env steps each); `num_execute = horizon` is the
reference's single open-loop plan, fewer is closed-loop MPC (replan from the observed state every
`num_execute` model steps, optionally warm-started from the previous plan shifted by the
executed steps). Success (`env.is_success`) is read after the last step. The random policy runs
on the same start and goal. Episodes are vmapped and, given a mesh, sharded over its data axes.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jepa_jax import sharding
from jepa_jax.envs.base import Environment
from jepa_jax.planning import cem
from jepa_jax.planning.agent import Agent
from jepa_jax.planning.config import PlanningConfig, make_planner


def episode_steps(config: PlanningConfig, env: Environment) -> int:
  """Env steps per episode: the config's, or the environment's when it says 0."""
  return config.episode_steps or env.episode_steps


def num_plans(config: PlanningConfig, env: Environment, frameskip: int) -> int:
  """Plans per episode: episode_steps / (num_execute * frameskip), which must be whole."""
  per_plan = config.num_execute * frameskip
  steps = episode_steps(config, env)
  if steps % per_plan:
    raise ValueError(f'episode_steps={steps} is not a multiple of num_execute*frameskip='
                     f'{per_plan}; change planning.num_execute or planning.episode_steps')
  return steps // per_plan


def plan_horizons(config: PlanningConfig, env: Environment, frameskip: int) -> list:
  """Horizon of each plan of an episode: H, or with `shrink_horizon` the model steps left
  in the episode when fewer (so a late replan still aims at the episode's last step)."""
  model_steps = episode_steps(config, env) // frameskip
  return [min(config.horizon, model_steps - j * config.num_execute) if config.shrink_horizon
          else config.horizon for j in range(num_plans(config, env, frameskip))]


def observe(env: Environment, agent: Agent, state: jax.Array):
  """The frame the agent sees of `state` (None for an agent that reads no images)."""
  return None if agent.image_size is None else env.render(state, agent.image_size)


def plan_once(config: PlanningConfig, agent: Agent, params, latent, goal_latent,
              key: jax.Array, previous: jax.Array, horizon: int):
  """One plan of the loop, from the encoded observation `latent` towards `goal_latent`.

  previous: `(config.horizon, A)` the last plan (zero-padded; the warm start shifts it by the
  executed steps); horizon: static model steps of this plan. Returns `(plan (horizon, A),
  best cost (), failed bool ())` (failed: every cost was non-finite).
  """
  planner, planner_config = make_planner(config)
  pc = dataclasses.replace(planner_config, horizon=horizon,
                           num_execute=min(config.num_execute, horizon))
  init = cem.shift_plan(previous, config.num_execute)[:horizon] if config.warm_start else None
  plan, info = planner(functools.partial(agent.cost_fn, params), latent, goal_latent,
                       agent.action_dim, key, pc, init)
  cost = info['best_cost'][-1] if 'best_cost' in info else info['cost'][-1]
  return plan, cost, jnp.any(info.get('all_nonfinite', False))


def random_policy_actions(config: PlanningConfig, agent: Agent, key: jax.Array,
                          model_steps: int) -> jax.Array:
  """The random policy's normalised model actions `(model_steps, A)`: N(0, planning.cem's
  var_scale), CEM's initial distribution, whichever planner plans."""
  return config.cem['var_scale'] * jax.random.normal(key, (model_steps, agent.action_dim))


def run_episode(env: Environment, agent: Agent, config: PlanningConfig, params,
                start: jax.Array, goal: jax.Array, key: jax.Array) -> dict:
  """One episode (MPC plus the random-policy baseline on the same start/goal).

  Returns a dict of arrays (P = plans per episode, S = state_dim): start/goal `(S,)`,
  trajectory `(episode_steps + 1, S)` executed states, planned `(P, H * frameskip + 1, S)`
  true-dynamics rollout of each full plan from where it was made (edge-padded when the horizon
  shrank), plans `(P, H, A)` (zero-padded), plan_cost `(P,)` (best cost of the last iteration /
  step), planner_failed (every cost of some plan was non-finite: the episode counts as failed),
  final_distance, success, random_trajectory, random_final_distance, random_success.
  """
  k_plan, k_rand = jax.random.split(key)
  goal_state = agent.encode(params, observe(env, agent, goal), goal)
  execute_env = config.num_execute * agent.frameskip
  full = (config.horizon, agent.action_dim)

  # A Python loop over the (few, static) plans: their horizons may differ in shape.
  state, previous = start, jnp.zeros(full, jnp.float32)
  executed, planned, plans, costs, failed = [], [], [], [], []
  for j, horizon in enumerate(plan_horizons(config, env, agent.frameskip)):
    latent = agent.encode(params, observe(env, agent, state), state)
    plan, cost, plan_failed = plan_once(config, agent, params, latent, goal_state,
                                        jax.random.fold_in(k_plan, j), previous, horizon)
    path = env.rollout(state, agent.to_env_actions(plan))
    planned.append(jnp.pad(path, ((0, config.horizon * agent.frameskip + 1 - len(path)), (0, 0)),
                           mode='edge'))
    previous = jnp.pad(plan, ((0, config.horizon - horizon), (0, 0)))
    plans.append(previous)
    costs.append(cost)
    failed.append(plan_failed)
    executed.append(path[1:execute_env + 1])
    state = path[execute_env]
  trajectory = jnp.concatenate([start[None]] + executed, axis=0)
  planner_failed = jnp.any(jnp.stack(failed))

  # Random policy: normalised actions drawn like the planner's initial distribution.
  model_steps = episode_steps(config, env) // agent.frameskip
  random_actions = random_policy_actions(config, agent, k_rand, model_steps)
  random_trajectory = env.rollout(start, agent.to_env_actions(random_actions))
  random_final = random_trajectory[-1]
  return dict(
      start=start, goal=goal, trajectory=trajectory, planned=jnp.stack(planned),
      plans=jnp.stack(plans), plan_cost=jnp.stack(costs), planner_failed=planner_failed,
      final_distance=env.distance(state, goal),
      success=env.is_success(state, goal) & ~planner_failed,
      random_trajectory=random_trajectory,
      random_final_distance=env.distance(random_final, goal),
      random_success=env.is_success(random_final, goal))


def compile_episodes(env: Environment, agent: Agent, config: PlanningConfig, mesh=None):
  """Jitted `(params, starts (E, S), goals (E, S), keys (E, 2)) -> dict of (E, ...)` running E
  episodes; with a mesh, params are replicated and episodes split over its data axes (E a
  multiple of their size)."""
  batched = jax.vmap(functools.partial(run_episode, env, agent, config),
                     in_axes=(None, 0, 0, 0))
  if mesh is None:
    return jax.jit(batched)
  shard = sharding.data_sharding(mesh)
  return jax.jit(batched, in_shardings=(sharding.replicated(mesh), shard, shard, shard),
                 out_shardings=shard)
