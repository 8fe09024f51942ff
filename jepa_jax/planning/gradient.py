"""Gradient planners: the reference's noisy gradient descent and a real Adam (optax).

Start: `actions = init_mean (0 by default) + var_scale * N(0, 1)`, the reference's "randn"
initialisation (`var_scale = 0` is its "zero" one); no clip before the first step, as the
reference. Each step: `g = d cost / d actions`; `actions <- actions + optimiser_update(g)`
(plain `-lr * g` for 'gd', Adam for 'adam'); then `actions += noise_std * N(0, 1)`; then the
optional box clip. The reference's "Adam" planner never steps its optimiser, so its behaviour is
'gd' (500 steps, lr 1, noise 0.003, docs/reference.md §5); 'adam' is the real thing, with the
betas the reference declares (0.9, 0.995).

A step whose cost or gradient is not finite is skipped (actions and optimiser state unchanged)
and sets `info['all_nonfinite']`: one NaN gradient would otherwise turn the plan into NaN.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from jepa_jax.planning import cem

OPTIMIZERS = ('gd', 'adam')


@dataclasses.dataclass(frozen=True)
class GradientConfig:
  """Gradient planner settings (defaults: the reference's GD).

  num_steps: optimisation steps; lr: learning rate; noise_std: std of the Gaussian noise
  added to the actions after every step; optimizer: 'gd' or 'adam'; var_scale: std of the
  random initial actions around the initial mean (1 = the reference; 0 = start at the mean);
  action_low/action_high, horizon, num_execute: as in `CEMConfig`.
  """
  num_steps: int = 500
  lr: float = 1.0
  noise_std: float = 0.003
  optimizer: str = 'gd'
  var_scale: float = 1.0
  horizon: int = 6
  action_low: cem.Bound = None
  action_high: cem.Bound = None
  num_execute: int = 6

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f'optimizer={self.optimizer!r} must be one of {OPTIMIZERS}')
    if self.num_steps < 1 or self.horizon < 1:
      raise ValueError(f'num_steps and horizon must be >= 1, got {self}')
    if self.var_scale < 0:
      raise ValueError(f'var_scale={self.var_scale} must be >= 0 (0 starts at the mean)')
    if not 1 <= self.num_execute <= self.horizon:
      raise ValueError(f'num_execute={self.num_execute} must be in [1, horizon={self.horizon}]')


def _optimizer(config: GradientConfig) -> optax.GradientTransformation:
  if config.optimizer == 'gd':
    return optax.sgd(config.lr)
  return optax.adam(config.lr, b1=0.9, b2=0.995, eps=1e-8)


def gradient_plan(cost_fn: cem.CostFn, state, goal, action_dim: int, key: jax.Array,
                  config: GradientConfig, init_mean: Optional[jax.Array] = None):
  """Optimises one `(H, A)` action sequence by gradient steps on `cost_fn`.

  `cost_fn` is the batched `(state, goal, (N, H, A)) -> (N,)` cost of the other planners
  (called with N = 1); it must be differentiable in the actions. Noise of step i is
  `config.noise_std * cem.iteration_noise(key, i, (H, A))`; the initial actions are
  `init_mean + config.var_scale * cem.iteration_noise(key, num_steps, (H, A))`.
  Returns `(plan (H, A), info)` with `info['cost'] (num_steps,)` the cost before each step and
  `info['all_nonfinite']` bool () (some step had a non-finite cost or gradient and was skipped).
  """
  shape = (config.horizon, action_dim)
  mean = jnp.zeros(shape, jnp.float32) if init_mean is None else jnp.asarray(init_mean, jnp.float32)
  if mean.shape != shape:
    raise ValueError(f'init_mean has shape {mean.shape}, expected (horizon, action_dim)={shape}')
  actions = mean + config.var_scale * cem.iteration_noise(key, config.num_steps, shape)
  optimizer = _optimizer(config)

  def scalar_cost(a):
    return cost_fn(state, goal, a[None])[0]

  def step(carry, i):
    actions, opt_state = carry
    cost, grad = jax.value_and_grad(scalar_cost)(actions)
    updates, new_opt_state = optimizer.update(grad, opt_state, actions)
    new_actions = optax.apply_updates(actions, updates)
    new_actions = new_actions + config.noise_std * cem.iteration_noise(key, i, shape)
    new_actions = cem.clip_actions(new_actions, config.action_low, config.action_high)
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(grad))
    keep = lambda new, old: jnp.where(finite, new, old)
    actions = keep(new_actions, actions)
    opt_state = jax.tree_util.tree_map(keep, new_opt_state, opt_state)
    return (actions, opt_state), (cost, ~finite)

  (actions, _), (costs, nonfinite) = jax.lax.scan(step, (actions, optimizer.init(actions)),
                                                  jnp.arange(config.num_steps))
  return actions, dict(cost=costs, all_nonfinite=nonfinite.any())
