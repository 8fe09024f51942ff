"""The evaluation protocol: a set of episodes of one environment, planned in one compiled program.

`evaluate(env, agent, config)` draws the episode set (`planning.episodes`: the reference's
seeded episodes or random ones), runs the MPC loop (`planning.mpc`) on all of them at once,
sharded over the mesh's data axes, and summarises success with 95 % confidence intervals next
to the random policy on the same episodes.
"""

import dataclasses
import time
from typing import Optional

import jax
import numpy as np

from jepa_jax import console, sharding
from jepa_jax.envs.base import Environment
from jepa_jax.planning import confidence, episodes, latency, mpc
from jepa_jax.planning.agent import Agent
from jepa_jax.planning.config import PlanningConfig, make_planner


def _mesh_size(mesh) -> int:
  return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))


def episode_keys(seed: int, num_episodes: int) -> jax.Array:
  """Planner key of episode i = fold_in(PRNGKey(seed), i): independent of batching."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jax.numpy.arange(num_episodes))


def evaluate(env: Environment, agent: Agent, config: PlanningConfig, seed: int = 0, *,
             mesh=None, measure_latency: bool = True, return_episodes: bool = False) -> dict:
  """Runs the protocol of `config` on `config.num_episodes` episodes of `env`.

  Returns a JSON-ready dict: success_rate and its 95 % Wilson interval (success_ci), the random
  policy's rate and interval, mean/median final distance (env units), planner_failures
  (episodes whose costs were all non-finite), episodes, episode_set, seed, planner,
  planner_settings, protocol, devices, eval_wall_s (whole batch incl. compile),
  plan_latency_median_s and plan_compile_s (when measured), and with `return_episodes` an
  'episode_data' dict of numpy arrays (per-episode outputs of `mpc.run_episode`).
  """
  n = config.num_episodes
  starts, goals, episode_info = episodes.episode_starts_goals(env, config.episode_set, n, seed)
  n_dev = _mesh_size(mesh)
  # Batches of whole multiples of the devices; the last one is padded, its padding dropped.
  batch = -(-(config.episode_batch_size or n) // n_dev) * n_dev
  padded = -(-n // batch) * batch
  pad = lambda x: np.concatenate([x, np.repeat(x[-1:], padded - n, 0)], 0)
  inputs = (pad(np.asarray(starts)), pad(np.asarray(goals)),
            np.asarray(episode_keys(seed, padded)))
  run = mpc.compile_episodes(env, agent, config, mesh)
  outs = []
  t0 = time.perf_counter()
  with console.Progress(n, f'planning ({env.name})', unit='episode') as progress:
    for first in range(0, padded, batch):
      chunk = tuple(x[first:first + batch] for x in inputs)
      if mesh is not None:
        chunk = jax.device_put(chunk, sharding.data_sharding(mesh))
      outs.append(jax.device_get(run(agent.params, *chunk)))
      progress.update(min(batch, n - first))
  eval_s = time.perf_counter() - t0
  data = {k: np.concatenate([o[k] for o in outs])[:n] for k in outs[0]}
  resolved = dataclasses.replace(config, episode_steps=mpc.episode_steps(config, env))
  results = summarise(data, resolved, agent.frameskip, env_name=env.name,
                      distance_unit=env.distance_unit, episode_info=episode_info, seed=seed,
                      devices=n_dev, eval_wall_s=eval_s)
  if measure_latency:
    results.update(latency.measure_plan_latency(env, agent, config, starts[0], goals[0]))
  if return_episodes:
    results['episode_data'] = data
  return results


def summarise(data: dict, config: PlanningConfig, frameskip: int, *, env_name: str,
              distance_unit: str, episode_info: dict, seed: int, devices: int,
              eval_wall_s: float) -> dict:
  """The results dict of `evaluate` from per-episode arrays `data` (E,): success,
  random_success, final_distance, random_final_distance, planner_failed. `config.episode_steps`
  must be set (the env's default resolved)."""
  n = len(data['success'])
  _, planner_settings = make_planner(config)
  successes, random_successes = int(data['success'].sum()), int(data['random_success'].sum())
  # config.episode_steps is set, so the protocol helpers do not consult an environment.
  num_plans = mpc.num_plans(config, None, frameskip)
  return dict(
      success_rate=successes / n,
      success_ci=confidence.wilson_interval(successes, n).as_dict(),
      random_policy_success_rate=random_successes / n,
      random_policy_success_ci=confidence.wilson_interval(random_successes, n).as_dict(),
      mean_final_distance=float(data['final_distance'].mean()),
      median_final_distance=float(np.median(data['final_distance'])),
      random_policy_mean_final_distance=float(data['random_final_distance'].mean()),
      distance_unit=distance_unit,
      planner_failures=int(data['planner_failed'].sum()),
      env=env_name,
      episodes=n,
      episode_set=config.episode_set,
      episode_info=episode_info,
      seed=seed,
      planner=config.planner,
      planner_settings=dataclasses.asdict(planner_settings),
      protocol=dict(episode_steps=config.episode_steps, frameskip=frameskip,
                    num_execute=config.num_execute, warm_start=config.warm_start,
                    # Open loop = one plan per episode (every action of it executed).
                    open_loop=num_plans == 1,
                    plan_horizons=mpc.plan_horizons(config, None, frameskip),
                    num_plans_per_episode=num_plans),
      devices=devices,
      eval_wall_s=eval_wall_s,
  )
