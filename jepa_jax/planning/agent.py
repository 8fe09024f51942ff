"""What the MPC loop plans with: an `Agent` (a learned world model or the true-dynamics oracle).

  agent.encode(params, obs uint8 (S, S, 3) | None, true_state (state_dim,)) -> state pytree
  agent.cost_fn(params, state, goal_state, actions (N, H, A)) -> (N,) costs
  agent.to_env_actions(actions (..., M, A)) -> raw env actions (..., M * frameskip, env A)

A learned agent reads only the observation and the proprio part of the true state
(`env.proprio`); only the oracle reads the whole true state. `agent.params` (a pytree, None for
the oracle) is passed to the compiled program as an argument, not baked into it as a constant.
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jepa_jax.envs.base import Environment
from jepa_jax.planning import chunking, objectives


@dataclasses.dataclass(frozen=True)
class Agent:
  """See the module docstring for the shapes.

  image_size: size S of the rendered observations `encode` reads (None: `encode` ignores
  images and gets None, e.g. the oracle). action_dim: model-action channels A
  (frameskip x env action dims). params: handed to `encode` and `cost_fn` (None when none).
  """
  encode: Callable[[Any, Optional[jax.Array], jax.Array], Any]
  cost_fn: Callable[[Any, Any, Any, jax.Array], jax.Array]
  to_env_actions: Callable[[jax.Array], jax.Array]
  action_dim: int
  frameskip: int
  image_size: Optional[int]
  params: Any = None


def latent_planning_cost(unroll: Callable, objective: objectives.ObjectiveConfig,
                         chunk_size: int = 0) -> Callable:
  """Agent cost `(params, state, goal, actions (N, H, A)) -> (N,)` for latent states
  {'z': (h, w, D), 'pe': proprio embedding or None}: broadcasts the state over the candidates,
  unrolls `unroll(params, z0 (n, h, w, D), pe0 (n, ...)|None, actions) -> (z (n, H, ...), pe)`
  and scores the predictions against the goal with `objectives.latent_cost`. The N
  candidates are scored `chunk_size` at a time (bounded memory); 0 picks the size from the
  latent's shape (`chunking.cpu_chunk_size`: cache-sized chunks on a CPU, all at once on an
  accelerator)."""

  def cost_fn(params, state, goal, actions):
    n = actions.shape[0]
    z0 = jnp.broadcast_to(state['z'], (n,) + state['z'].shape)
    pe0 = None if state['pe'] is None else jnp.broadcast_to(state['pe'], (n,) + state['pe'].shape)
    z, pe = unroll(params, z0, pe0, actions)
    return objectives.latent_cost(z, goal['z'], pe, goal['pe'], objective)

  if chunk_size:
    return chunking.chunked_cost(cost_fn, chunk_size)

  def cache_sized_chunks(params, state, goal, actions):
    size = chunking.cpu_chunk_size(actions.shape[0], state['z'].shape)
    return chunking.chunked_cost(cost_fn, size)(params, state, goal, actions)
  return cache_sized_chunks


def world_model_agent(model, params, objective: objectives.ObjectiveConfig, env: Environment,
                      image_size: Optional[int] = None, chunk_size: int = 0) -> Agent:
  """`Agent` planning with a learned `jepa_jax.world_model.model.WorldModel` on `env`.

  State = {'z': (h, w, D) latent, 'pe': proprio embedding or None}; the cost unrolls the
  predictor with the reference's window of 2 (`model.unroll`) and scores it with
  `objectives.latent_cost`. image_size: size S the observations are rendered at (the
  dataset's frame size; default the encoder's input size, `encode` resizes anyway).
  """

  def encode(params, obs, true_state):
    z = model.encode(params, obs[None, None])[0, 0]
    pe = None
    if model.use_proprio:
      pe = model.encode_proprio(params, env.proprio(true_state)[None, None])[0, 0]
    return dict(z=z, pe=pe)

  return Agent(encode=encode, cost_fn=latent_planning_cost(model.unroll, objective, chunk_size),
               to_env_actions=model.env_actions, action_dim=model.action_dim,
               frameskip=model.frameskip,
               image_size=model.image_size if image_size is None else int(image_size),
               params=params)
