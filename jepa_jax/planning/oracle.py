"""True-dynamics oracle agent: plans in the true state space of any environment, no learned model.

State = the true simulator state; a model action is `frameskip` raw env actions concatenated
(`(f d)`, A = env.action_dim * frameskip) and scaled by `action_scale` (normalised -> raw env
units, mean 0), exactly like the learned model's action space up to the de-normalisation. Cost =
`env.oracle_cost` of the final state of `env.rollout` over all `H * frameskip` env actions. It
checks the planners and the evaluation protocol without any learned model.

`cost='pixels'` scores the final state's rendered frame against the goal's instead (mean
squared difference of `[0, 1]` RGB at `image_size`): the true dynamics with the objective of a
latent that only re-encodes the pixels, i.e. the most a perfect world model could plan with
such a latent (Push-T, README: 29 % against 71 % for the state cost at the same budget).
"""

import jax
import jax.numpy as jnp

from jepa_jax.envs.base import Environment
from jepa_jax.planning.agent import Agent


COSTS = ('state', 'pixels')


def oracle_agent(env: Environment, frameskip: int = 0, action_scale: float = 1.0,
                 cost: str = 'state', image_size: int = 64) -> Agent:
  """`Agent` planning with `env.rollout` (frameskip 0: the environment's), scored by the true
  state (`cost='state'`) or by its frame rendered at `image_size` ('pixels')."""
  frameskip = frameskip or env.frameskip
  if frameskip < 1 or action_scale <= 0:
    raise ValueError(f'frameskip={frameskip} must be >= 1 and action_scale={action_scale} > 0')
  if cost not in COSTS:
    raise ValueError(f'oracle cost={cost!r} must be one of {COSTS}')

  def frame(state):
    return env.render(state, image_size).astype(jnp.float32) / 255.0

  def encode(params, obs, true_state):
    del params, obs  # the oracle reads the true state
    state = jnp.asarray(true_state, jnp.float32)
    return state if cost == 'state' else {'state': state, 'frame': frame(state)}

  def to_env_actions(actions):
    """`(..., M, A * frameskip)` normalised -> `(..., M * frameskip, A)` raw env actions."""
    return action_scale * actions.reshape(actions.shape[:-2] + (-1, env.action_dim))

  def cost_fn(params, state, goal, actions):
    """params: unused (None); actions `(N, H, A)` -> `(N,)` oracle cost of the final state."""
    del params
    start = state if cost == 'state' else state['state']
    finals = jax.vmap(lambda a: env.rollout(start, a)[-1])(to_env_actions(actions))
    if cost == 'state':
      return jax.vmap(env.oracle_cost, in_axes=(0, None))(finals, goal)
    return jnp.mean(jnp.square(jax.vmap(frame)(finals) - goal['frame']), axis=(1, 2, 3))

  return Agent(encode=encode, cost_fn=cost_fn, to_env_actions=to_env_actions,
               action_dim=env.action_dim * frameskip, frameskip=frameskip, image_size=None)
