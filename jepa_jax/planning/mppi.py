"""MPPI planner: CEM's sampling loop with softmax-weighted elites (REFERENCE.md section 5).

The refit follows the TD-MPC2 convention that the reference adapts: the temperature
*multiplies* the (negated) costs, `w = softmax(-temperature * elite_costs)`, then
`mean = sum_k w_k e_k` and `std = sqrt(sum_k w_k (e_k - mean)^2)` over the K elites.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from jepa_jax.planning import cem


@dataclasses.dataclass(frozen=True)
class MPPIConfig(cem.CEMConfig):
  """`CEMConfig` plus the softmax temperature (0.5 in the reference)."""
  temperature: float = 0.5

  def __post_init__(self):
    super().__post_init__()
    if self.temperature <= 0:
      raise ValueError(f'temperature={self.temperature} must be > 0')


def mppi_weights(elite_costs: jax.Array, temperature: float) -> jax.Array:
  """Softmax weights `(K,)` of the elites: `exp(-temperature * c_k)` normalised to sum 1."""
  return jax.nn.softmax(-temperature * elite_costs)


def mppi_refit(elites: jax.Array, elite_costs: jax.Array, temperature: float):
  """Weighted mean and (biased, weighted) std of the `(K, H, A)` elites."""
  w = mppi_weights(elite_costs, temperature)[:, None, None]
  mean = jnp.sum(w * elites, axis=0)
  std = jnp.sqrt(jnp.sum(w * jnp.square(elites - mean), axis=0))
  return mean, std


def mppi_plan(cost_fn: cem.CostFn, state, goal, action_dim: int, key: jax.Array,
              config: MPPIConfig, init_mean: Optional[jax.Array] = None):
  """MPPI plan `(H, A)` plus info (same contract as `cem.cem_plan`)."""
  refit = functools.partial(mppi_refit, temperature=config.temperature)
  return cem.sampling_plan(cost_fn, state, goal, action_dim, key, config, refit, init_mean)
