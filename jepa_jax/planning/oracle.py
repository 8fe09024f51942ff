"""True-dynamics oracle agent for Wall: plans in the true state space, no learned model.

State = dot position `(2,)`; a model action is `frameskip` raw env actions concatenated
(`(f d)`, A = 2 * frameskip) and scaled by `action_scale` (normalised -> raw env units, mean
0), exactly like the learned model's action space up to the de-normalisation. Cost = squared
distance of the final rolled-out position to the goal (`wall.rollout` over all
`H * frameskip` env actions). It checks the planners and the evaluation protocol without any
learned model.
"""

import jax
import jax.numpy as jnp

from jepa_jax.envs import wall
from jepa_jax.planning.evaluate import Agent


def oracle_agent(frameskip: int = 5, action_scale: float = 1.0) -> Agent:
  """`Agent` planning with `wall.rollout`; see the module docstring."""
  if frameskip < 1 or action_scale <= 0:
    raise ValueError(f'frameskip={frameskip} must be >= 1 and action_scale={action_scale} > 0')

  def encode(params, obs, proprio):
    del params, obs  # the oracle reads the true position
    return jnp.asarray(proprio, jnp.float32)

  def to_env_actions(actions):
    """`(..., M, 2 * frameskip)` normalised -> `(..., M * frameskip, 2)` raw env actions."""
    return action_scale * actions.reshape(actions.shape[:-2] + (-1, 2))

  def cost_fn(params, state, goal, actions):
    """params: unused (None); state, goal `(2,)`; actions `(N, H, A)` -> `(N,)` squared final distance."""
    del params
    finals = jax.vmap(lambda a: wall.rollout(state, a)[-1])(to_env_actions(actions))
    return jnp.sum(jnp.square(finals - goal), axis=-1)

  return Agent(encode=encode, cost_fn=cost_fn, to_env_actions=to_env_actions,
               action_dim=2 * frameskip, frameskip=frameskip, image_size=None)
