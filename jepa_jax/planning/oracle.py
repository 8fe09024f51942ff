"""True-dynamics oracle agent: plans in the true state space of any environment, no learned model.

State = the true simulator state; a model action is `frameskip` raw env actions concatenated
(`(f d)`, A = env.action_dim * frameskip) and scaled by `action_scale` (normalised -> raw env
units, mean 0), exactly like the learned model's action space up to the de-normalisation. Cost =
`env.oracle_cost` of the final state of `env.rollout` over all `H * frameskip` env actions. It
checks the planners and the evaluation protocol without any learned model.
"""

import jax
import jax.numpy as jnp

from jepa_jax.envs.base import Environment
from jepa_jax.planning.agent import Agent


def oracle_agent(env: Environment, frameskip: int = 0, action_scale: float = 1.0) -> Agent:
  """`Agent` planning with `env.rollout` (frameskip 0: the environment's)."""
  frameskip = frameskip or env.frameskip
  if frameskip < 1 or action_scale <= 0:
    raise ValueError(f'frameskip={frameskip} must be >= 1 and action_scale={action_scale} > 0')

  def encode(params, obs, true_state):
    del params, obs  # the oracle reads the true state
    return jnp.asarray(true_state, jnp.float32)

  def to_env_actions(actions):
    """`(..., M, A * frameskip)` normalised -> `(..., M * frameskip, A)` raw env actions."""
    return action_scale * actions.reshape(actions.shape[:-2] + (-1, env.action_dim))

  def cost_fn(params, state, goal, actions):
    """params: unused (None); actions `(N, H, A)` -> `(N,)` oracle cost of the final state."""
    del params
    finals = jax.vmap(lambda a: env.rollout(state, a)[-1])(to_env_actions(actions))
    return jax.vmap(env.oracle_cost, in_axes=(0, None))(finals, goal)

  return Agent(encode=encode, cost_fn=cost_fn, to_env_actions=to_env_actions,
               action_dim=env.action_dim * frameskip, frameskip=frameskip, image_size=None)
