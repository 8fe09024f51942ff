"""What every importer hands over: episodes of another program's dataset, in our units.

An `EpisodeSource` reads one peer dataset (DINO-WM's folder, stable-worldmodel's HDF5 or Lance
table) and maps it to our conventions for one environment (`jepa_jax.envs`): raw env actions
`(T - 1, A)` where action t moves state t to state t + 1 (one row per env step: both peers
store env steps and apply their frameskip when they load clips, as our loaders do), full
simulator states `(T, state_dim)` in the environment's units, and the `T` frames. The writer
(`writer.py`) cuts the episodes into trajectories of the config's length and stores them.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import jax
import numpy as np

from jepa_jax.envs.base import Environment


@dataclasses.dataclass(frozen=True)
class LowDim:
  """One episode's numbers, in our units.

  actions: f32 (T - 1, A) raw env actions; states: f32 (T, D) the peer's state in our units
  (`env_states` completes it to our full state);
  proprio: f32 (T, P) as the peer stored it (checked against `env.proprio(states)`), or None.
  """
  actions: np.ndarray
  states: np.ndarray
  proprio: Optional[np.ndarray] = None


class EpisodeSource(Protocol):
  """A peer dataset, episode by episode (see the module docstring)."""

  description: str                      # e.g. "DINO-WM folder /data/wall_single"

  @property
  def num_episodes(self) -> int: ...

  def num_frames(self, episode: int) -> int:
    """T: the episode's valid frames (its actions number T - 1)."""

  def low_dim(self, episode: int) -> LowDim:
    """Actions and states of the episode, in our units."""

  def frames(self, episode: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of the episode (square, any size)."""


def require_key(available, key: str, where: str) -> None:
  """One-line error when a peer file lacks `key` (a file name or a column)."""
  if key not in available:
    raise ValueError(f'{where} has no {key!r} (found {sorted(available)}); it is not in the '
                     'layout this importer reads')


def require_shape(array: np.ndarray, shape: tuple, what: str) -> np.ndarray:
  """`array` when its shape matches `shape` (None = any size), else a one-line error."""
  array = np.asarray(array)
  if array.ndim != len(shape) or any(want is not None and got != want
                                     for got, want in zip(array.shape, shape)):
    expected = '(' + ', '.join('N' if s is None else str(s) for s in shape) + ')'
    raise ValueError(f'{what} has shape {array.shape}; expected {expected}')
  return array


# Environments whose full state carries more than the reference observes (Push-T: pymunk's
# contact history after the reference's 7 numbers): the reference-sized state the peers store
# and the function completing it, as the reference's reset leaves a state.
def _push_t_full_states(states: np.ndarray) -> np.ndarray:
  from jepa_jax.envs import push_t  # pylint: disable=g-import-not-at-top
  return np.asarray(jax.jit(jax.vmap(push_t.from_reference_obs))(states))


_REFERENCE_STATES = {'push_t': (7, _push_t_full_states)}


def env_states(env: Environment, states: np.ndarray, what: str) -> np.ndarray:
  """f32 (T, env.state_dim) full states of `env` from a peer's (T, D) states."""
  states = np.asarray(states, np.float32)
  if states.ndim == 2 and states.shape[-1] == env.state_dim:
    return states
  reference_dim, complete = _REFERENCE_STATES.get(env.name, (None, None))
  if states.ndim == 2 and states.shape[-1] == reference_dim:
    return complete(states)
  sizes = sorted({env.state_dim} | ({reference_dim} if reference_dim else set()))
  raise ValueError(f'{what}: states have shape {states.shape}; {env.name} states are (T, D) '
                   f'with D in {sizes}')
