"""Stage-3 settings and the planner registry.

`PlanningConfig` is the `planning` section of an experiment config; its defaults are the
reference protocol of the paper's Table 1 (docs/reference.md §5): CEM 300 x 30, 10 elites,
horizon 6, the whole episode as one open-loop plan (`num_execute = horizon`), no warm start,
the 96 seeded reference episodes. Each planner's settings are a nested sub-section
(`planning.cem`, `planning.mppi`, `planning.gradient`) holding the fields of the planner's own
dataclass at that dataclass's defaults, and `planning.objective` is an `ObjectiveConfig`.
"""

import dataclasses
from typing import Any, Callable, Tuple

from jepa_jax import config_sections
from jepa_jax.planning import cem, episodes, gradient, mppi, objectives, oracle

# Planner fields every planner shares: the protocol's, set from the top level of `planning`.
PROTOCOL_KEYS = ('horizon', 'num_execute', 'action_low', 'action_high')
# planner -> (its sub-section of `planning`, plan function, config dataclass, fields of that
# dataclass the sub-section does not hold: the protocol's and, for the gradient planners, the
# optimizer, which `planner` names).
PLANNERS = {
    'cem': ('cem', cem.cem_plan, cem.CEMConfig, PROTOCOL_KEYS),
    'mppi': ('mppi', mppi.mppi_plan, mppi.MPPIConfig, PROTOCOL_KEYS),
    'gd': ('gradient', gradient.gradient_plan, gradient.GradientConfig,
           PROTOCOL_KEYS + ('optimizer',)),
    'adam': ('gradient', gradient.gradient_plan, gradient.GradientConfig,
             PROTOCOL_KEYS + ('optimizer',)),
}


@dataclasses.dataclass(frozen=True)
class PlanningConfig:
  """Stage-3 settings.

  planner: 'cem' | 'mppi' | 'gd' | 'adam', configured by its sub-section: `cem` (the fields of
  `cem.CEMConfig`: num_samples, num_iters, num_elites, var_scale, momentum, min_std), `mppi`
  (`mppi.MPPIConfig`'s: CEM's plus temperature and variant 'reference' | 'tdmpc'; var_scale 2
  is the reference's max_std) or `gradient` (`gradient.GradientConfig`'s: num_steps, lr,
  noise_std, var_scale = std of the random initial actions, 0 starts from zero), each given as
  a dict of the keys it changes and held complete. horizon H, num_execute (model steps
  executed per plan; = H is the reference's single open-loop plan, fewer is MPC that replans
  from the observed state) and action_low/high (box in normalised model units) are shared by
  every planner. episode_steps (env steps per episode; 0: the environment's), warm_start
  (shift the previous plan into the next initial mean; not in the reference), shrink_horizon
  (a replan never plans past the episode's end, as the reference), objective (the latent cost,
  an `objectives.ObjectiveConfig` or a dict of its fields), cost_chunk_size (candidates scored
  at once, which bounds the plan's peak memory; 0 = automatic: cache-sized chunks on a CPU,
  all at once on an accelerator, see `chunking.cpu_chunk_size`), episode_set ('reference':
  the reference's seeded episodes, 'random': drawn from `seed`), num_episodes,
  episode_batch_size (episodes planned by one call of the compiled program: a progress line
  per batch; 0 = all at once), oracle_action_scale (raw env units per normalised unit for the
  oracle), oracle_cost ('state': the true state's `env.oracle_cost`; 'pixels': the squared
  difference of the final and goal frames at the data's image size; 'latent': the world
  model's objective on the encoded final frame and proprio, see `oracle.oracle_agent`),
  num_gifs, latency_repeats (timed single plans for the latency median).
  """
  planner: str = 'cem'
  episode_set: str = 'reference'
  num_episodes: int = 96
  episode_batch_size: int = 0
  horizon: int = 6
  num_execute: int = 6
  action_low: cem.Bound = None
  action_high: cem.Bound = None
  episode_steps: int = 0
  warm_start: bool = False
  shrink_horizon: bool = True
  cem: dict = dataclasses.field(default_factory=dict)
  mppi: dict = dataclasses.field(default_factory=dict)
  gradient: dict = dataclasses.field(default_factory=dict)
  objective: objectives.ObjectiveConfig = dataclasses.field(
      default_factory=objectives.ObjectiveConfig)
  cost_chunk_size: int = 0
  oracle_action_scale: float = 1.0
  oracle_cost: str = 'state'
  num_gifs: int = 8
  latency_repeats: int = 5

  def __post_init__(self):
    if self.planner not in PLANNERS:
      raise ValueError(f'planning.planner={self.planner!r} must be one of {tuple(PLANNERS)}')
    if self.episode_set not in episodes.EPISODE_SETS:
      raise ValueError(f'planning.episode_set={self.episode_set!r} must be one of '
                       f'{episodes.EPISODE_SETS}')
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
    # Sub-sections given as dicts / ConfigDicts are completed from the planners' defaults
    # (frozen dataclass: set once, here).
    for section, _, cls, protocol_keys in PLANNERS.values():
      object.__setattr__(self, section, config_sections.sub_section(
          cls, f'planning.{section}', getattr(self, section), protocol_keys))
    if not isinstance(self.objective, objectives.ObjectiveConfig):
      object.__setattr__(self, 'objective', _build(
          'objective', objectives.ObjectiveConfig, **config_sections.sub_section(
              objectives.ObjectiveConfig, 'planning.objective', self.objective)))
    make_planner(self)  # the planner's own checks (elites, horizon, ...) before any work


def as_planning_config(section: Any, **overrides) -> PlanningConfig:
  """PlanningConfig from a ConfigDict / dict plus overrides, nested ones merged key by key
  (`cem=dict(num_samples=300)` changes that key alone); unknown keys raise."""
  return config_sections.from_section(PlanningConfig, section, **overrides)


def make_planner(config: PlanningConfig) -> Tuple[Callable, Any]:
  """Returns `(planner, planner_config)`: `planner(cost_fn, state, goal, action_dim, key,
  config, init_mean)` is `cem_plan`, `mppi_plan` or `gradient_plan`, and `planner_config` its
  config dataclass built from the planner's sub-section and the shared protocol fields (the
  MPC loop may `dataclasses.replace` its horizon). A bad value is a one-line ValueError naming
  the sub-section."""
  section, plan, cls, _ = PLANNERS[config.planner]
  shared = {key: getattr(config, key) for key in PROTOCOL_KEYS}
  if cls is gradient.GradientConfig:
    shared['optimizer'] = config.planner
  return plan, _build(section, cls, **getattr(config, section), **shared)


def _build(section: str, cls: type, **settings):
  """`cls(**settings)`, its own checks' ValueError prefixed with `planning.<section>: `."""
  try:
    return cls(**settings)
  except ValueError as e:
    raise ValueError(f'planning.{section}: {e}') from None
