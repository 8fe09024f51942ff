"""True-dynamics oracle agent: plans in the true state space of any environment, no learned model.

State = the true simulator state; a model action is `frameskip` raw env actions concatenated
(`(f d)`, A = env.action_dim * frameskip) and scaled by `action_scale` (normalised -> raw env
units, mean 0), exactly like the learned model's action space up to the de-normalisation. Cost =
`env.oracle_cost` of the final state of `env.rollout` over all `H * frameskip` env actions. It
checks the planners and the evaluation protocol without any learned model.

`cost='pixels'` scores the final state's rendered frame against the goal's instead (mean
squared difference of `[0, 1]` RGB at `image_size`): the true dynamics with the objective of a
latent that only re-encodes the pixels, i.e. the most a perfect world model could plan with
such a latent (Push-T, docs/push_t.md: 29 % against 71 % for the state cost at the same budget).

`cost='latent'` scores it with a trained world model's encoder and planning objective instead:
the final state's rendered frame and proprio are encoded as the learned agent encodes its
observations, and `objectives.latent_cost` compares them with the goal's. That is the learned
agent's cost with its predictor replaced by the true dynamics, so the gap between this row and
the learned agent's is the world model's, and the gap to `cost='state'` is the latent's.
"""

import jax
import jax.numpy as jnp

from jepa_jax.envs.base import Environment
from jepa_jax.planning import objectives
from jepa_jax.planning.agent import Agent, world_model_agent


COSTS = ('state', 'pixels', 'latent')


def oracle_agent(env: Environment, frameskip: int = 0, action_scale: float = 1.0,
                 cost: str = 'state', image_size: int = 64, world_model=None,
                 objective: objectives.ObjectiveConfig = objectives.ObjectiveConfig()) -> Agent:
  """`Agent` planning with `env.rollout` (frameskip 0: the environment's), scored by the true
  state (`cost='state'`), by its frame rendered at `image_size` ('pixels'), or by that frame
  and its proprio encoded by `world_model` = `(WorldModel, params)` and compared with
  `objective` ('latent'; `agent.params` are then the world model's)."""
  frameskip = frameskip or env.frameskip
  if frameskip < 1 or action_scale <= 0:
    raise ValueError(f'frameskip={frameskip} must be >= 1 and action_scale={action_scale} > 0')
  if cost not in COSTS:
    raise ValueError(f'oracle cost={cost!r} must be one of {COSTS}')
  if (cost == 'latent') != (world_model is not None):
    raise ValueError(f'oracle cost={cost!r} takes a world model exactly when the cost is '
                     "'latent' (pass world_model=(model, params) with it, and only with it)")
  learned = world_model_agent(*world_model, objective, env, image_size) if world_model else None

  def frame(state):
    return env.render(state, image_size).astype(jnp.float32) / 255.0

  def encode_state(params, state):
    if cost == 'state':
      return state
    if cost == 'pixels':
      return {'state': state, 'frame': frame(state)}
    return {'state': state, 'latent': learned.encode(params, env.render(state, image_size), state)}

  def encode(params, obs, true_state):
    del obs  # the oracle reads the true state (and renders it itself for the latent cost)
    return encode_state(params, jnp.asarray(true_state, jnp.float32))

  def to_env_actions(actions):
    """`(..., M, A * frameskip)` normalised -> `(..., M * frameskip, A)` raw env actions."""
    return action_scale * actions.reshape(actions.shape[:-2] + (-1, env.action_dim))

  def cost_fn(params, state, goal, actions):
    """params: the world model's (latent cost) or None; actions `(N, H, A)` -> `(N,)` cost of
    the final state."""
    start = state if cost == 'state' else state['state']
    finals = jax.vmap(lambda a: env.rollout(start, a)[-1])(to_env_actions(actions))
    if cost == 'state':
      return jax.vmap(env.oracle_cost, in_axes=(0, None))(finals, goal)
    if cost == 'pixels':
      return jnp.mean(jnp.square(jax.vmap(frame)(finals) - goal['frame']), axis=(1, 2, 3))
    latents = jax.vmap(lambda s: encode_state(params, s)['latent'])(finals)
    final_step = lambda x: None if x is None else x[:, None]  # (N, ...) -> (N, H=1, ...)
    return objectives.latent_cost(final_step(latents['z']), goal['latent']['z'],
                                  final_step(latents['pe']), goal['latent']['pe'], objective)

  return Agent(encode=encode, cost_fn=cost_fn, to_env_actions=to_env_actions,
               action_dim=env.action_dim * frameskip, frameskip=frameskip, image_size=None,
               params=learned.params if learned else None)
