"""MPPI planner: CEM's sampling loop with weighted elites (docs/reference.md §5).

Refit, as the reference's `MPPIPlanner`: over the K cheapest samples, weights
`w_k = exp(T * (min_cost - c_k))` normalised to sum 1, then
`mean = sum_k w_k e_k / (sum w + 1e-9)` and `std = sqrt(sum_k w_k (e_k - mean)^2 / (sum w + 1e-9))`.

Two variants (`MPPIConfig.variant`):
  'reference' (default): the reference exactly. Initial std `var_scale` = its `max_std` = 2, no
    forced mean sample, and the returned plan is not the mean: an elite of the last iteration
    drawn with probability w, plus `std * noise` with ONE standard-normal draw `(A,)` shared by
    all H steps (the reference adds `std[:n] * randn(action_dim)` because it never sets its eval
    mode). Its `min_std` is declared but never applied: keep `min_std = 0`.
  'tdmpc': our earlier variant. Sample 0 is forced to the current mean and the plan is the final
    weighted mean (deterministic given the draws).
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from jepa_jax.planning import cem

VARIANTS = ('reference', 'tdmpc')


@dataclasses.dataclass(frozen=True)
class MPPIConfig(cem.CEMConfig):
  """`CEMConfig` plus the weight temperature (0.5 in the reference) and the variant.

  var_scale defaults to 2, the reference MPPI's initial std (`max_std`).
  """
  var_scale: float = 2.0
  temperature: float = 0.5
  variant: str = 'reference'

  def __post_init__(self):
    super().__post_init__()
    if self.temperature <= 0:
      raise ValueError(f'temperature={self.temperature} must be > 0')
    if self.variant not in VARIANTS:
      raise ValueError(f'MPPI variant={self.variant!r} must be one of {VARIANTS}')


def mppi_weights(elite_costs: jax.Array, temperature: float) -> jax.Array:
  """Weights `(K,)` of the elites: `exp(T * (min_cost - c_k))` normalised to sum 1.

  Non-finite costs get weight 0; if no cost is finite the weights are uniform, so the result
  is never NaN."""
  finite = jnp.isfinite(elite_costs)
  best = jnp.min(jnp.where(finite, elite_costs, jnp.inf))
  score = jnp.where(finite, jnp.exp(temperature * (best - elite_costs)), 0.0)
  score = jnp.where(finite.any(), score, 1.0)
  return score / score.sum()


def mppi_refit(elites: jax.Array, elite_costs: jax.Array, temperature: float):
  """Weighted mean and (biased, weighted) std of the `(K, H, A)` elites, each `(H, A)`."""
  w = mppi_weights(elite_costs, temperature)
  total = w.sum() + 1e-9  # the reference's guard; w already sums to 1
  w = w[:, None, None]
  mean = jnp.sum(w * elites, axis=0) / total
  std = jnp.sqrt(jnp.sum(w * jnp.square(elites - mean), axis=0) / total)
  return mean, std


def weighted_choice(key: jax.Array, weights: jax.Array) -> jax.Array:
  """Index `()` int32 drawn with probability `weights (K,)` (summing to 1) by inverse CDF of
  one `uniform(key)` draw: the first k with `u < cdf_k`, as numpy's `RandomState.choice`."""
  cdf = jnp.cumsum(weights)
  u = jax.random.uniform(key, (), cdf.dtype)
  idx = jnp.searchsorted(cdf / cdf[-1], u, side='right')
  return jnp.minimum(idx, weights.shape[0] - 1).astype(jnp.int32)


def readout_keys(key: jax.Array, num_iters: int):
  """`(pick_key, noise_key)` of the reference variant's read-out: `split(fold_in(key, I))`,
  after the I iterations' draws (public so that tests can regenerate them)."""
  pick_key, noise_key = jax.random.split(jax.random.fold_in(key, num_iters))
  return pick_key, noise_key


def mppi_plan(cost_fn: cem.CostFn, state, goal, action_dim: int, key: jax.Array,
              config: MPPIConfig, init_mean: Optional[jax.Array] = None):
  """MPPI plan `(H, A)` plus info (same contract as `cem.cem_plan`).

  The 'reference' variant adds to the info `mean (H, A)` (the final weighted mean) and
  `selected_elite ()` (the index of the drawn elite among `final_elites`)."""
  refit = functools.partial(mppi_refit, temperature=config.temperature)
  reference = config.variant == 'reference'
  mean, info = cem.sampling_plan(cost_fn, state, goal, action_dim, key, config, refit, init_mean,
                                 force_mean_sample=not reference)
  if not reference:
    return mean, info
  pick_key, noise_key = readout_keys(key, config.num_iters)
  pick = weighted_choice(pick_key, mppi_weights(info['final_elite_costs'], config.temperature))
  noise = jax.random.normal(noise_key, (action_dim,))  # one draw for all H steps, as the reference
  plan = info['final_elites'][pick] + info['final_std'] * noise
  plan = cem.clip_actions(plan, config.action_low, config.action_high)
  return plan, dict(info, mean=mean, selected_elite=pick)
