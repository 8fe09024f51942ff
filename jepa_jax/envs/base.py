"""The environment interface: a small frozen object of pure, jit/vmap-able functions.

Every stage talks to an environment only through `Environment`: data generation (start states,
the collection policy, `step`, `render`, `proprio`), the probes (`probe_targets`), the MPC loop
(`sample_start_goal`, `render`, `proprio`, `step`, `is_success`, `distance`) and the oracle
(`step`, `oracle_cost`). None of them imports a specific environment: `jepa_jax.envs.get(name)`
finds one by `config.env`.

Conventions. A state is a float32 array `(state_dim,)` (one environment, unbatched: `jax.vmap`
for batches); an env action is float32 `(action_dim,)` in the environment's raw units; frames are
uint8 `(size, size, 3)`. Every function is pure and traceable (no Python branching on traced
values), so all of them can be jitted and vmapped over episodes and trajectories.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

State = jax.Array


@dataclasses.dataclass(frozen=True)
class Environment:
  """One environment; see the module docstring for the conventions.

  Fields:
    name: registry name ('wall', 'point_maze', 'push_t').
    state_dim, action_dim, proprio_dim: sizes of a state, a raw env action and `proprio(state)`.
    frameskip: env steps per model step (the model action stacks `frameskip` env actions).
    episode_steps: env steps of one evaluation episode (success is read after the last one).
    step: `(state, action (A,)) -> state`, one env step.
    render: `(state, size: static int) -> uint8 (size, size, 3)`.
    proprio: `state -> f32 (P,)`, what the world model may read besides pixels.
    is_success: `(state, goal_state) -> bool ()`, the reference's success test.
    distance: `(state, goal_state) -> f32 ()`, the reported final distance (env units).
    sample_start_goal: `key -> (start, goal)`, the random evaluation episode draw.
    random_state: `key -> state`, a start state for data collection.
    collect_actions: `(key, start, length: static int) -> f32 (length, A)`, the data policy
      (it may read the states it visits: it simulates with `step` itself).
    probe_targets: `state -> f32 (K,)`, what the frozen-feature probes regress (positions).
    oracle_cost: `(state, goal) -> f32 ()`, the true-state planning cost of the oracle.
    reference_start_goal: `seed (Python int) -> (start, goal)` float64 numpy: the reference's
      seeded episode draw, or None where the reference has none.
    probe_target_names: names of the K probe targets (for logs).
    probe_groups: `((name, column indices), ...)`: groups of probe targets whose probe errors
      are also reported one by one (Push-T: block position, block angle, pusher position), so
      a latent that reads one thing but not another shows it; () = the pooled error only.
    distance_unit: unit of `distance`, for reports ('px', 'm', ...).
    plot_extent: `(left, right, bottom, top)` coordinates of the first two probe targets at the
      edges of a rendered frame (matplotlib's imshow extent), so plots can draw trajectories over
      a frame; None when the probe targets are not image coordinates.
  """
  name: str
  state_dim: int
  action_dim: int
  proprio_dim: int
  frameskip: int
  episode_steps: int
  step: Callable[[State, jax.Array], State]
  render: Callable[[State, int], jax.Array]
  proprio: Callable[[State], jax.Array]
  is_success: Callable[[State, State], jax.Array]
  distance: Callable[[State, State], jax.Array]
  sample_start_goal: Callable[[jax.Array], Tuple[State, State]]
  random_state: Callable[[jax.Array], State]
  collect_actions: Callable[[jax.Array, State, int], jax.Array]
  probe_targets: Callable[[State], jax.Array]
  oracle_cost: Callable[[State, State], jax.Array]
  reference_start_goal: Optional[Callable[[int], Tuple[np.ndarray, np.ndarray]]] = None
  probe_target_names: Tuple[str, ...] = ()
  probe_groups: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
  distance_unit: str = ''
  plot_extent: Optional[Tuple[float, float, float, float]] = None

  def rollout(self, start: State, actions: jax.Array) -> jax.Array:
    """States visited from `start` under env actions `(T, A)`: `(T + 1, state_dim)`."""
    actions = jnp.asarray(actions, jnp.float32)
    if actions.ndim != 2 or actions.shape[-1] != self.action_dim:
      raise ValueError(f'{self.name} rollout takes actions (T, {self.action_dim}); got '
                       f'{actions.shape} (vmap it for batches)')

    def one(state, action):
      nxt = self.step(state, action)
      return nxt, nxt

    _, path = jax.lax.scan(one, start, actions)
    return jnp.concatenate([start[None], path], 0)

  def collect_trajectory(self, key: jax.Array, length: int) -> Tuple[jax.Array, jax.Array]:
    """One data-collection trajectory: `(actions (L, A), states (L + 1, state_dim))`."""
    start_key, policy_key = jax.random.split(key)
    start = self.random_state(start_key)
    actions = self.collect_actions(policy_key, start, length)
    return actions, self.rollout(start, actions)
