"""Cross-entropy method (CEM) planner, as in the reference (docs/reference.md §5).

A plan is a sequence of normalised model actions `(H, A)`. Each iteration samples `N`
sequences from a diagonal Gaussian, forces sample 0 to be the current mean, optionally clips
to a box, scores them with `cost_fn`, keeps the `K` cheapest (`lax.top_k`) and refits the
Gaussian. The whole optimisation is one `lax.scan`, so `cem_plan` can be jitted, vmapped over
episodes and sharded. Checked against the reference's `CEMPlanner`: sample 0 = mean before the
clip, unbiased elite std, momentum 0, the final mean is the plan.

The sampling loop is shared with MPPI (`mppi.py`), which swaps the refit rule and the way the
plan is read out.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

# cost_fn(state, goal, actions (N, H, A)) -> costs (N,); state/goal are arbitrary pytrees.
CostFn = Callable[[Any, Any, jax.Array], jax.Array]
Bound = Optional[Union[float, Sequence[float]]]


@dataclasses.dataclass(frozen=True)
class CEMConfig:
  """CEM settings; defaults are the paper's Wall settings.

  num_samples: N sequences per iteration (sample 0 is the current mean).
  num_iters: optimisation iterations.
  num_elites: K cheapest samples refitting the Gaussian (needs 2 <= K <= N: unbiased std).
  horizon: H model steps per plan.
  var_scale: initial std (the initial mean is 0).
  momentum: new = momentum * old + (1 - momentum) * elite statistic (0 = reference).
  min_std: floor on the std after each refit (0 = reference; > 0 keeps exploring).
  action_low/action_high: optional box (scalar or per action dimension) in normalised units.
  num_execute: how many of the plan's first steps an MPC loop executes (used by evaluation).
  """
  num_samples: int = 300
  num_iters: int = 30
  num_elites: int = 10
  horizon: int = 6
  var_scale: float = 1.0
  momentum: float = 0.0
  min_std: float = 0.0
  action_low: Bound = None
  action_high: Bound = None
  num_execute: int = 6

  def __post_init__(self):
    if self.num_samples < 1 or self.num_iters < 1 or self.horizon < 1:
      raise ValueError(f'num_samples, num_iters and horizon must be >= 1, got {self}')
    if not 2 <= self.num_elites <= self.num_samples:
      raise ValueError(f'num_elites={self.num_elites} must be in [2, num_samples={self.num_samples}]'
                       ' (the unbiased elite std needs at least 2 elites)')
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f'momentum={self.momentum} must be in [0, 1)')
    if not 1 <= self.num_execute <= self.horizon:
      raise ValueError(f'num_execute={self.num_execute} must be in [1, horizon={self.horizon}]')


def clip_actions(actions: jax.Array, low: Bound, high: Bound) -> jax.Array:
  """Clips `(..., A)` actions to a per-dimension box; `None` bounds leave that side open."""
  if low is not None:
    actions = jnp.maximum(actions, jnp.asarray(low, actions.dtype))
  if high is not None:
    actions = jnp.minimum(actions, jnp.asarray(high, actions.dtype))
  return actions


def shift_plan(plan: jax.Array, num_executed: int, fill: float = 0.0) -> jax.Array:
  """Warm start: drops the `num_executed` executed steps of a `(..., H, A)` plan and appends
  `fill` (the cold-start mean) at the end, so the new mean starts at the next step to execute."""
  if not 0 <= num_executed <= plan.shape[-2]:
    raise ValueError(f'num_executed={num_executed} must be in [0, horizon={plan.shape[-2]}]')
  tail = jnp.full(plan.shape[:-2] + (num_executed, plan.shape[-1]), fill, plan.dtype)
  return jnp.concatenate([plan[..., num_executed:, :], tail], axis=-2)


def iteration_noise(key: jax.Array, iteration, shape) -> jax.Array:
  """Standard normal draws of iteration `iteration`: `normal(fold_in(key, iteration), shape)`.

  Public so that tests (and anyone reproducing a run) can regenerate the exact draws."""
  return jax.random.normal(jax.random.fold_in(key, iteration), shape)


def cem_refit(elites: jax.Array, elite_costs: jax.Array):
  """CEM refit: elite mean and unbiased (ddof=1) std over the `(K, H, A)` elites."""
  del elite_costs  # CEM weights all elites equally
  return elites.mean(axis=0), elites.std(axis=0, ddof=1)


def rank_costs(costs: jax.Array) -> jax.Array:
  """Costs `(N,)` with every non-finite value (NaN, +-inf) replaced by +inf, so that a
  diverged sample always ranks last (`top_k` would otherwise rank NaN first)."""
  return jnp.where(jnp.isfinite(costs), costs, jnp.inf)


def sampling_plan(cost_fn: CostFn, state, goal, action_dim: int, key: jax.Array, config,
                  refit: Callable, init_mean: Optional[jax.Array] = None,
                  force_mean_sample: bool = True):
  """Shared loop of the sampling planners (CEM, MPPI).

  Args:
    cost_fn: `(state, goal, actions (N, H, A)) -> (N,)` costs (lower is better).
    state, goal: pytrees passed through to `cost_fn` (e.g. latents, proprio embeddings).
    action_dim: A, the model action size.
    key: PRNG key; iteration i draws `iteration_noise(key, i, (N, H, A))`.
    config: a `CEMConfig`-like dataclass (MPPI's adds a temperature).
    refit: `(elites (K, H, A), elite_costs (K,)) -> (mean, std)` each `(H, A)`.
    init_mean: optional `(H, A)` initial mean (warm start); zeros otherwise. The initial
      std is always `var_scale`.
    force_mean_sample: replace sample 0 by the current mean (CEM's "never lose the best
      previous action" trick; the reference's MPPI does not).
  Non-finite costs rank last (`rank_costs`). An iteration whose costs are all non-finite
  carries no information: it leaves the mean and std unchanged and sets `all_nonfinite`.
  Returns:
    plan: `(H, A)` final mean (the caller executes its first `num_execute` steps).
    info: dict with `best_cost (I,)` cheapest sample per iteration, `elite_cost (I,)` mean
      elite cost per iteration (both +inf for non-finite costs), `final_std (H, A)`,
      `best_actions (H, A)` (the cheapest sample of the last iteration), `final_elites
      (K, H, A)` and `final_elite_costs (K,)` of the last iteration, and `all_nonfinite`
      bool (): some iteration had no finite cost, so the plan is not to be trusted (an MPC
      loop marks the episode failed).
  """
  shape = (config.horizon, action_dim)
  if init_mean is None:
    mean = jnp.zeros(shape, jnp.float32)
  else:
    if init_mean.shape != shape:
      raise ValueError(f'init_mean has shape {init_mean.shape}, expected (horizon, action_dim)={shape}')
    mean = jnp.asarray(init_mean, jnp.float32)
  std = jnp.full(shape, config.var_scale, jnp.float32)
  elites0 = jnp.zeros((config.num_elites,) + shape, jnp.float32)
  elite_costs0 = jnp.full((config.num_elites,), jnp.inf, jnp.float32)

  def iteration(carry, i):
    mean, std, _, _ = carry
    noise = iteration_noise(key, i, (config.num_samples,) + shape)
    samples = mean + std * noise
    if force_mean_sample:
      samples = samples.at[0].set(mean)
    samples = clip_actions(samples, config.action_low, config.action_high)
    costs = rank_costs(cost_fn(state, goal, samples))
    neg_elite_costs, elite_idx = jax.lax.top_k(-costs, config.num_elites)
    elites, elite_costs = samples[elite_idx], -neg_elite_costs
    new_mean, new_std = refit(elites, elite_costs)
    new_mean = config.momentum * mean + (1.0 - config.momentum) * new_mean
    new_std = config.momentum * std + (1.0 - config.momentum) * new_std
    new_std = jnp.maximum(new_std, config.min_std)
    all_nonfinite = jnp.isinf(elite_costs[0])  # the cheapest is +inf: every cost was non-finite
    mean = jnp.where(all_nonfinite, mean, new_mean)
    std = jnp.where(all_nonfinite, std, new_std)
    return (mean, std, elites, elite_costs), (elite_costs[0], elite_costs.mean(), all_nonfinite)

  (mean, std, elites, elite_costs), (best_cost, elite_cost, nonfinite) = jax.lax.scan(
      iteration, (mean, std, elites0, elite_costs0), jnp.arange(config.num_iters))
  info = dict(best_cost=best_cost, elite_cost=elite_cost, final_std=std, best_actions=elites[0],
              final_elites=elites, final_elite_costs=elite_costs, all_nonfinite=nonfinite.any())
  return mean, info


def cem_plan(cost_fn: CostFn, state, goal, action_dim: int, key: jax.Array, config: CEMConfig,
             init_mean: Optional[jax.Array] = None):
  """CEM plan `(H, A)` plus info (see `sampling_plan`); pure and jit/vmap friendly."""
  return sampling_plan(cost_fn, state, goal, action_dim, key, config, cem_refit, init_mean)
