"""Stage-3 settings and the planner registry.

`PlanningConfig` is the `planning` section of an experiment config; its defaults are the
reference protocol of the paper's Table 1 (docs/reference.md §5): CEM 300 x 30, 10 elites,
horizon 6, the whole episode as one open-loop plan (`num_execute = horizon`), no warm start,
the 96 seeded reference episodes.
"""

import dataclasses
from typing import Any, Callable, Tuple

from jepa_jax import config_sections
from jepa_jax.planning import cem, gradient, mppi, objectives, oracle

PLANNERS = ('cem', 'mppi', 'gd', 'adam')
EPISODE_SETS = ('reference', 'random')


@dataclasses.dataclass(frozen=True)
class PlanningConfig:
  """Stage-3 settings.

  planner: 'cem' | 'mppi' | 'gd' | 'adam'. Sampling planners use num_samples, num_iters,
  num_elites, var_scale, momentum, min_std (MPPI: temperature, mppi_var_scale = its initial
  std, the reference's max_std 2, and mppi_variant 'reference' | 'tdmpc'); gradient planners
  use gd_steps, gd_lr, gd_noise and gd_var_scale (std of the random initial actions; 0 starts
  from zero). horizon H, num_execute (model steps executed per plan; = H is the
  reference's single open-loop plan, fewer is MPC that replans from the observed state),
  episode_steps (env steps per episode; 0: the environment's), warm_start (shift the previous
  plan into the next initial mean; not in the reference), shrink_horizon (a replan never plans
  past the episode's end, as the reference), action_low/high (box in normalised model units),
  objective_* (latent cost), cost_chunk_size (candidates scored at once, which bounds the
  plan's peak memory; 0 = automatic: cache-sized chunks on a CPU, all at once on an
  accelerator, see `chunking.cpu_chunk_size`), episode_set ('reference': the reference's
  seeded episodes, 'random': drawn from `seed`), num_episodes, episode_batch_size (episodes
  planned by one call of the compiled program: a progress line per batch; 0 = all at once),
  oracle_action_scale (raw env units per normalised unit for the oracle), oracle_cost
  ('state': the true state's `env.oracle_cost`; 'pixels': the squared difference of the final
  and goal frames at the data's image size; 'latent': the world model's objective on the
  encoded final frame and proprio, see `oracle.oracle_agent`), num_gifs,
  latency_repeats (timed single plans for the latency median).
  """
  planner: str = 'cem'
  episode_set: str = 'reference'
  num_episodes: int = 96
  episode_batch_size: int = 0
  num_samples: int = 300
  num_iters: int = 30
  num_elites: int = 10
  horizon: int = 6
  num_execute: int = 6
  var_scale: float = 1.0
  momentum: float = 0.0
  min_std: float = 0.0
  temperature: float = 0.5
  mppi_var_scale: float = 2.0
  mppi_variant: str = 'reference'
  gd_steps: int = 500
  gd_lr: float = 1.0
  gd_noise: float = 0.003
  gd_var_scale: float = 1.0
  action_low: cem.Bound = None
  action_high: cem.Bound = None
  episode_steps: int = 0
  warm_start: bool = False
  shrink_horizon: bool = True
  objective_distance: str = 'l2'
  objective_final_step_only: bool = True
  objective_proprio_weight: float = 0.1
  objective_visual_weight: float = 1.0
  cost_chunk_size: int = 0
  oracle_action_scale: float = 1.0
  oracle_cost: str = 'state'
  num_gifs: int = 8
  latency_repeats: int = 5

  def __post_init__(self):
    if self.planner not in PLANNERS:
      raise ValueError(f'planning.planner={self.planner!r} must be one of {PLANNERS}')
    if self.episode_set not in EPISODE_SETS:
      raise ValueError(f'planning.episode_set={self.episode_set!r} must be one of '
                       f'{EPISODE_SETS}')
    if self.num_episodes < 1:
      raise ValueError(f'planning.num_episodes={self.num_episodes} must be >= 1')
    if self.episode_batch_size < 0:
      raise ValueError(f'planning.episode_batch_size={self.episode_batch_size} must be >= 0 '
                       '(0 plans all episodes at once)')
    if self.cost_chunk_size < 0:
      raise ValueError(f'planning.cost_chunk_size={self.cost_chunk_size} must be >= 0 '
                       '(0 chooses it: cache-sized chunks on a CPU, all at once elsewhere)')
    if self.oracle_cost not in oracle.COSTS:
      raise ValueError(f'planning.oracle_cost={self.oracle_cost!r} must be one of {oracle.COSTS}')
    self.objective()  # the objective's own checks
    make_planner(self)  # the planner's own checks (elites, horizon, ...) before any work

  def objective(self) -> objectives.ObjectiveConfig:
    return objectives.ObjectiveConfig(self.objective_distance, self.objective_final_step_only,
                                      self.objective_proprio_weight,
                                      self.objective_visual_weight)


def as_planning_config(section: Any, **overrides) -> PlanningConfig:
  """PlanningConfig from a ConfigDict / dict plus overrides (unknown keys raise TypeError)."""
  return config_sections.from_section(PlanningConfig, section, **overrides)


def make_planner(config: PlanningConfig) -> Tuple[Callable, Any]:
  """Returns `(planner, planner_config)`: `planner(cost_fn, state, goal, action_dim, key,
  config, init_mean)` is `cem_plan`, `mppi_plan` or `gradient_plan`, and `planner_config` its
  config dataclass built from `config` (the MPC loop may `dataclasses.replace` its horizon)."""
  common = dict(horizon=config.horizon, num_execute=config.num_execute,
                action_low=config.action_low, action_high=config.action_high)
  sampling = dict(num_samples=config.num_samples, num_iters=config.num_iters,
                  num_elites=config.num_elites, momentum=config.momentum,
                  min_std=config.min_std, **common)
  if config.planner == 'cem':
    return cem.cem_plan, cem.CEMConfig(var_scale=config.var_scale, **sampling)
  if config.planner == 'mppi':
    return mppi.mppi_plan, mppi.MPPIConfig(
        var_scale=config.mppi_var_scale, temperature=config.temperature,
        variant=config.mppi_variant, **sampling)
  return gradient.gradient_plan, gradient.GradientConfig(
      num_steps=config.gd_steps, lr=config.gd_lr, noise_std=config.gd_noise,
      optimizer=config.planner, var_scale=config.gd_var_scale, **common)
