"""Wall MPC evaluation (REFERENCE.md section 6), one compiled program for a batch of episodes.

The protocol is written against a small `Agent` so that the same code runs the learned world
model (`world_model_agent`) and the true-dynamics oracle (`oracle.oracle_agent`):

  agent.encode(params, obs uint8 (S, S, 3) | None, proprio f32 (2,)) -> state pytree
  agent.cost_fn(params, state, goal_state, actions (N, H, A)) -> (N,) costs
  agent.to_env_actions(actions (..., M, A)) -> raw env actions (..., M * frameskip, 2)

`agent.params` (a pytree, None for the oracle) is passed to the compiled program as an
argument (replicated over the mesh), not baked into it as a constant.

An episode: start/goal from `wall.sample_start_goal` (opposite rooms), `episode_steps` (30)
env steps made of plans that each execute `num_execute` model steps (`frameskip` env steps
each); `num_execute = horizon` is the reference's single open-loop plan, a smaller value is
closed-loop MPC (replan every `num_execute` model steps, optionally warm-started from the
previous plan shifted by the executed steps). Success = `|final - goal| < 4.5` at the last
step. Episodes are vmapped and, given a mesh, sharded over its data axes.
"""

import dataclasses
import functools
import statistics
import time
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jepa_jax import sharding
from jepa_jax.envs import wall
from jepa_jax.planning import cem, gradient, mppi, objectives

PLANNERS = ('cem', 'mppi', 'gd', 'adam')


@dataclasses.dataclass(frozen=True)
class Agent:
  """What the MPC loop needs from a model; see the module docstring for the shapes.

  image_size: size S of the rendered observations `encode` reads (None: `encode` ignores
  images and gets None, e.g. the oracle). action_dim: A (frameskip * 2 for Wall).
  params: model parameters handed to `encode` and `cost_fn` (None when there are none).
  """
  encode: Callable[[Any, Optional[jax.Array], jax.Array], Any]
  cost_fn: Callable[[Any, Any, Any, jax.Array], jax.Array]
  to_env_actions: Callable[[jax.Array], jax.Array]
  action_dim: int
  frameskip: int
  image_size: Optional[int]
  params: Any = None


@dataclasses.dataclass(frozen=True)
class PlanningConfig:
  """Stage-3 settings (the `planning` section of experiments/configs/wall.py).

  planner: 'cem' | 'mppi' | 'gd' | 'adam'. Sampling planners use num_samples, num_iters,
  num_elites, var_scale, momentum, min_std (MPPI: temperature); gradient planners use
  gd_steps, gd_lr, gd_noise. horizon H, num_execute (model steps executed per plan),
  episode_steps (env steps per episode), warm_start (shift the previous plan into the next
  initial mean), shrink_horizon (a replan never plans past the episode's end; the reference's
  single open-loop plan is unaffected), action_low/high (box in normalised model units), objective_* (latent cost),
  oracle_action_scale (raw env units per normalised unit for the oracle), num_gifs,
  latency_repeats (timed single plans for the latency median).
  """
  planner: str = 'cem'
  num_episodes: int = 50
  num_samples: int = 300
  num_iters: int = 30
  num_elites: int = 10
  horizon: int = 6
  num_execute: int = 6
  var_scale: float = 1.0
  momentum: float = 0.0
  min_std: float = 0.0
  temperature: float = 0.5
  gd_steps: int = 500
  gd_lr: float = 1.0
  gd_noise: float = 0.003
  action_low: cem.Bound = None
  action_high: cem.Bound = None
  episode_steps: int = 30
  warm_start: bool = True
  shrink_horizon: bool = True
  objective_distance: str = 'l2'
  objective_final_step_only: bool = True
  objective_proprio_weight: float = 0.1
  oracle_action_scale: float = 1.0
  num_gifs: int = 4
  latency_repeats: int = 5

  def __post_init__(self):
    if self.planner not in PLANNERS:
      raise ValueError(f'planner={self.planner!r} must be one of {PLANNERS}')
    if self.num_episodes < 1:
      raise ValueError(f'num_episodes={self.num_episodes} must be >= 1')

  def objective(self) -> objectives.ObjectiveConfig:
    return objectives.ObjectiveConfig(self.objective_distance, self.objective_final_step_only,
                                      self.objective_proprio_weight)


def make_planner(config: PlanningConfig) -> Tuple[Callable, Any]:
  """Returns `(planner, planner_config)`: `planner(cost_fn, state, goal, action_dim, key,
  config, init_mean)` is `cem_plan`, `mppi_plan` or `gradient_plan`, and `planner_config` its
  config dataclass built from `config` (the evaluation may `dataclasses.replace` its horizon)."""
  common = dict(horizon=config.horizon, num_execute=config.num_execute,
                action_low=config.action_low, action_high=config.action_high)
  sampling = dict(num_samples=config.num_samples, num_iters=config.num_iters,
                  num_elites=config.num_elites, var_scale=config.var_scale,
                  momentum=config.momentum, min_std=config.min_std, **common)
  if config.planner == 'cem':
    return cem.cem_plan, cem.CEMConfig(**sampling)
  if config.planner == 'mppi':
    return mppi.mppi_plan, mppi.MPPIConfig(temperature=config.temperature, **sampling)
  return gradient.gradient_plan, gradient.GradientConfig(
      num_steps=config.gd_steps, lr=config.gd_lr, noise_std=config.gd_noise,
      optimizer=config.planner, **common)


def _observe(agent: Agent, pos: jax.Array):
  return None if agent.image_size is None else wall.render(pos, agent.image_size)


def num_plans(config: PlanningConfig, frameskip: int) -> int:
  """Plans per episode: episode_steps / (num_execute * frameskip), which must be whole."""
  per_plan = config.num_execute * frameskip
  if config.episode_steps % per_plan:
    raise ValueError(f'episode_steps={config.episode_steps} is not a multiple of '
                     f'num_execute*frameskip={per_plan}; change num_execute or episode_steps')
  return config.episode_steps // per_plan


def episode_keys(seed: int, num_episodes: int) -> jax.Array:
  """Key of episode i = fold_in(PRNGKey(seed), i): independent of the batch size/padding."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(num_episodes))


def plan_horizons(config: PlanningConfig, frameskip: int) -> list:
  """Horizon of each plan of an episode: H, or with `shrink_horizon` the model steps left
  in the episode when fewer (so a late replan still aims at the episode's last step)."""
  model_steps = config.episode_steps // frameskip
  return [min(config.horizon, model_steps - j * config.num_execute) if config.shrink_horizon
          else config.horizon for j in range(num_plans(config, frameskip))]


def run_episode(agent: Agent, config: PlanningConfig, params, key: jax.Array) -> dict:
  """One Wall episode (MPC plus the random-policy baseline on the same start/goal).

  Returns a dict of arrays (P = plans per episode): start/goal `(2,)`, trajectory
  `(episode_steps + 1, 2)` executed positions, planned `(P, H * frameskip + 1, 2)`
  true-dynamics rollout of each full plan from where it was made (edge-padded when the
  horizon shrank), plans `(P, H, A)` (zero-padded), plan_cost `(P,)` (best cost of the last
  iteration / step), final_distance, success, random_trajectory, random_final_distance,
  random_success.
  """
  planner, planner_config = make_planner(config)
  k_env, k_plan, k_rand = jax.random.split(key, 3)
  start, goal = wall.sample_start_goal(k_env)
  goal_state = agent.encode(params, _observe(agent, goal), goal)
  cost_fn = functools.partial(agent.cost_fn, params)
  execute_env = config.num_execute * agent.frameskip
  full = (config.horizon, agent.action_dim)

  # A Python loop over the (few, static) plans: their horizons may differ in shape.
  pos, previous = start, jnp.zeros(full, jnp.float32)
  executed, planned, plans, costs = [], [], [], []
  for j, horizon in enumerate(plan_horizons(config, agent.frameskip)):
    pc = dataclasses.replace(planner_config, horizon=horizon,
                             num_execute=min(config.num_execute, horizon))
    init = cem.shift_plan(previous, config.num_execute)[:horizon] if config.warm_start else None
    state = agent.encode(params, _observe(agent, pos), pos)
    plan, info = planner(cost_fn, state, goal_state, agent.action_dim,
                         jax.random.fold_in(k_plan, j), pc, init)
    env_actions = agent.to_env_actions(plan)
    path = wall.rollout(pos, env_actions)
    planned.append(jnp.pad(path, ((0, config.horizon * agent.frameskip + 1 - len(path)), (0, 0)),
                           mode='edge'))
    previous = jnp.pad(plan, ((0, config.horizon - horizon), (0, 0)))
    plans.append(previous)
    costs.append(info['best_cost'][-1] if 'best_cost' in info else info['cost'][-1])
    executed.append(path[1:execute_env + 1])
    pos = path[execute_env]
  trajectory = jnp.concatenate([start[None]] + executed, axis=0)

  # Random policy: normalised actions drawn like the planner's initial distribution.
  model_steps = config.episode_steps // agent.frameskip
  random_actions = config.var_scale * jax.random.normal(k_rand, (model_steps, agent.action_dim))
  random_trajectory = wall.rollout(start, agent.to_env_actions(random_actions))
  random_final = random_trajectory[-1]
  return dict(
      start=start, goal=goal, trajectory=trajectory, planned=jnp.stack(planned),
      plans=jnp.stack(plans), plan_cost=jnp.stack(costs),
      final_distance=jnp.linalg.norm(pos - goal), success=wall.is_success(pos, goal),
      random_trajectory=random_trajectory,
      random_final_distance=jnp.linalg.norm(random_final - goal),
      random_success=wall.is_success(random_final, goal))


def compile_episodes(agent: Agent, config: PlanningConfig, mesh=None):
  """Jitted `(params, keys (E, 2)) -> dict of (E, ...)` running E episodes; with a mesh,
  params are replicated and episodes split over its data axes (E a multiple of their size)."""
  batched = jax.vmap(functools.partial(run_episode, agent, config), in_axes=(None, 0))
  if mesh is None:
    return jax.jit(batched)
  shard = sharding.data_sharding(mesh)
  return jax.jit(batched, in_shardings=(sharding.replicated(mesh), shard), out_shardings=shard)


def _mesh_size(mesh) -> int:
  return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))


def measure_plan_latency(agent: Agent, config: PlanningConfig, seed: int = 0) -> dict:
  """Median wall time of one plan (one episode's first state), excluding compilation.

  Returns {'plan_latency_median_s', 'plan_compile_s'}; each call is `block_until_ready`-ed.
  """
  planner, planner_config = make_planner(config)
  start, goal = wall.sample_start_goal(jax.random.PRNGKey(seed))
  params = agent.params
  state = agent.encode(params, _observe(agent, start), start)
  goal_state = agent.encode(params, _observe(agent, goal), goal)

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


def evaluate_wall(agent: Agent, planner_config: PlanningConfig, num_episodes: Optional[int] = None,
                  seed: int = 0, *, mesh=None, measure_latency: bool = True,
                  return_episodes: bool = False) -> dict:
  """Runs the Wall protocol on `num_episodes` (default `planner_config.num_episodes`) episodes.

  Returns a JSON-ready dict: success_rate, random_policy_success_rate, mean_final_distance,
  median_final_distance, random_policy_mean_final_distance, episodes, planner (name),
  planner_settings, num_plans_per_episode, eval_wall_s (whole batch incl. compile),
  plan_latency_median_s, plan_compile_s (when measured), and with `return_episodes` an
  'episode_data' dict of numpy arrays (per-episode outputs of `run_episode`).
  """
  num_episodes = planner_config.num_episodes if num_episodes is None else num_episodes
  if num_episodes < 1:
    raise ValueError(f'num_episodes={num_episodes} must be >= 1')
  _, pc = make_planner(planner_config)
  n_dev = _mesh_size(mesh)
  padded = -(-num_episodes // n_dev) * n_dev  # pad to a multiple of the devices, drop later
  keys = episode_keys(seed, padded)
  if mesh is not None:
    keys = jax.device_put(keys, sharding.data_sharding(mesh))
  t0 = time.perf_counter()
  out = jax.block_until_ready(compile_episodes(agent, planner_config, mesh)(agent.params, keys))
  eval_s = time.perf_counter() - t0
  data = {k: np.asarray(v)[:num_episodes] for k, v in out.items()}
  results = dict(
      success_rate=float(data['success'].mean()),
      random_policy_success_rate=float(data['random_success'].mean()),
      mean_final_distance=float(data['final_distance'].mean()),
      median_final_distance=float(np.median(data['final_distance'])),
      random_policy_mean_final_distance=float(data['random_final_distance'].mean()),
      episodes=num_episodes,
      seed=seed,
      planner=planner_config.planner,
      planner_settings=dataclasses.asdict(pc),
      protocol=dict(episode_steps=planner_config.episode_steps, frameskip=agent.frameskip,
                    num_execute=planner_config.num_execute,
                    warm_start=planner_config.warm_start,
                    plan_horizons=plan_horizons(planner_config, agent.frameskip),
                    num_plans_per_episode=num_plans(planner_config, agent.frameskip)),
      devices=n_dev,
      eval_wall_s=eval_s,
  )
  if measure_latency:
    results.update(measure_plan_latency(agent, planner_config, seed))
  if return_episodes:
    results['episode_data'] = data
  return results


def latent_planning_cost(unroll: Callable, objective: objectives.ObjectiveConfig) -> Callable:
  """Agent cost `(params, state, goal, actions (N, H, A)) -> (N,)` for latent states
  {'z': (h, w, D), 'pe': (Pe,) or None}: broadcasts the state over the N candidates, unrolls
  `unroll(params, z0 (N, h, w, D), pe0 (N, Pe)|None, actions) -> (z (N, H, ...), pe)` and
  scores the predictions against the goal with `objectives.latent_cost`."""

  def cost_fn(params, state, goal, actions):
    n = actions.shape[0]
    z0 = jnp.broadcast_to(state['z'], (n,) + state['z'].shape)
    pe0 = None if state['pe'] is None else jnp.broadcast_to(state['pe'], (n,) + state['pe'].shape)
    z, pe = unroll(params, z0, pe0, actions)
    return objectives.latent_cost(z, goal['z'], pe, goal['pe'], objective)
  return cost_fn


def world_model_agent(model, params, objective: objectives.ObjectiveConfig,
                      image_size: Optional[int] = None) -> Agent:
  """`Agent` planning with a learned `jepa_jax.world_model.model.WorldModel`.

  State = {'z': (h, w, D) latent, 'pe': (Pe,) proprio embedding or None}; the cost unrolls the
  predictor with the reference's window of 2 (`model.unroll`) and scores it with
  `objectives.latent_cost`. image_size: size S the observations are rendered at (the
  dataset's frame size; default the encoder's input size, `encode` resizes anyway).
  """

  def encode(params, obs, proprio):
    z = model.encode(params, obs[None, None])[0, 0]
    pe = model.encode_proprio(params, proprio[None, None])[0, 0] if model.use_proprio else None
    return dict(z=z, pe=pe)

  return Agent(encode=encode, cost_fn=latent_planning_cost(model.unroll, objective), to_env_actions=model.env_actions,
               action_dim=model.action_dim, frameskip=model.frameskip,
               image_size=model.image_size if image_size is None else int(image_size),
               params=params)
