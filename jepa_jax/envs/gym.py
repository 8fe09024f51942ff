"""Our environments as `gymnasium.Env`s, so agents written for gymnasium run in them.

  import gymnasium
  import jepa_jax.envs.gym                      # registers the ids below
  env = gymnasium.make('jepa_jax/Wall-v0')      # or jepa_jax.envs.gym.make('wall')

Ids: 'jepa_jax/Wall-v0', 'jepa_jax/PointMaze-v0', 'jepa_jax/PushT-v0' (`GYM_IDS`).

Observation: `{'pixels': uint8 (S, S, 3), 'proprio': f32 (P,)}`, the frame `env.render(state, S)`
(S = `render_size`) and `env.proprio(state)`, what a world model may read. Action: f32 (A,) in the
environment's raw units (docs/reference.md §6-7; e.g. Wall moves the dot by 2 * action).
`reset(seed=..., options={'start': state, 'goal': state})` starts from given full states;
without options the start and goal are the environment's random evaluation draw
(`sample_start_goal`), keyed by the reset's seed. Every step's `info` holds 'state' and
'goal_state' (full states), 'goal' (the goal frame, uint8 (S, S, 3)), 'goal_proprio',
'distance' (to the goal, in `env.distance_unit`) and 'is_success' (`env.is_success`, the
reference's test: read it after the last step). Reward is minus the distance; episodes never
terminate early; the registered ids truncate them after the environment's evaluation length
(gymnasium's TimeLimit: `max_episode_steps`, which `gymnasium.make` accepts to change it).
Each step calls the jitted JAX step and render.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import gymnasium
from gymnasium import spaces
import jax
import numpy as np

from jepa_jax import envs

GYM_IDS = {'wall': 'jepa_jax/Wall-v0', 'point_maze': 'jepa_jax/PointMaze-v0',
           'push_t': 'jepa_jax/PushT-v0'}


@functools.lru_cache(maxsize=None)
def _compiled(name: str, render_size: int):
  """Jitted (step, render, proprio, distance, is_success) of environment `name` (one compile per
  environment and frame size, shared by every wrapper instance)."""
  env = envs.get(name)
  return (jax.jit(env.step), jax.jit(lambda s: env.render(s, render_size)),
          jax.jit(env.proprio), jax.jit(env.distance), jax.jit(env.is_success))


class JaxEnv(gymnasium.Env):
  """A `jepa_jax.envs` environment behind gymnasium's interface (module docstring)."""

  metadata = {'render_modes': ['rgb_array'], 'render_fps': 10}

  def __init__(self, name: str, render_size: int = 224, render_mode: str = 'rgb_array'):
    if render_mode not in self.metadata['render_modes']:
      raise ValueError(f"render_mode={render_mode!r}: only 'rgb_array' is supported")
    if not isinstance(render_size, (int, np.integer)) or render_size < 8:
      raise ValueError(f'render_size={render_size!r} must be an int >= 8')
    self.env = envs.get(name)
    self.render_mode = render_mode
    self.render_size = int(render_size)
    self._step, self._render, self._proprio, self._distance, self._success = _compiled(
        name, self.render_size)
    self.observation_space = spaces.Dict({
        'pixels': spaces.Box(0, 255, (self.render_size, self.render_size, 3), np.uint8),
        'proprio': spaces.Box(-np.inf, np.inf, (self.env.proprio_dim,), np.float32)})
    self.action_space = spaces.Box(-np.inf, np.inf, (self.env.action_dim,), np.float32)
    self._state = self._goal = self._goal_frame = None

  def _full_state(self, value: Any, what: str) -> jax.Array:
    state = np.asarray(value, np.float32)
    if state.shape != (self.env.state_dim,):
      raise ValueError(f'reset option {what!r} must be a {self.env.name} state of shape '
                       f'({self.env.state_dim},); got {state.shape}')
    return jax.numpy.asarray(state)

  def _observation(self) -> dict:
    # Fresh copies: numpy views of a jax array are cached, and users keep what they get.
    return {'pixels': np.array(self._render(self._state)),
            'proprio': np.array(self._proprio(self._state), np.float32)}

  def _info(self) -> dict:
    return {'state': np.array(self._state), 'goal_state': np.array(self._goal),
            'goal': self._goal_frame.copy(),
            'goal_proprio': np.array(self._proprio(self._goal), np.float32),
            'distance': float(self._distance(self._state, self._goal)),
            'is_success': bool(self._success(self._state, self._goal))}

  def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
    super().reset(seed=seed)
    options = dict(options or {})
    unknown = sorted(set(options) - {'start', 'goal'})
    if unknown:
      raise ValueError(f"unknown reset options {unknown}; pass 'start' and 'goal' states")
    if ('start' in options) != ('goal' in options):
      raise ValueError("reset options 'start' and 'goal' go together")
    if 'start' in options:
      self._state = self._full_state(options['start'], 'start')
      self._goal = self._full_state(options['goal'], 'goal')
    else:
      key = jax.random.PRNGKey(int(self.np_random.integers(2**31)))
      self._state, self._goal = self.env.sample_start_goal(key)
    self._goal_frame = np.asarray(self._render(self._goal))
    return self._observation(), self._info()

  def step(self, action):
    if self._state is None:
      raise RuntimeError('call reset() before step()')
    action = np.asarray(action, np.float32)
    if action.shape != (self.env.action_dim,):
      raise ValueError(f'{self.env.name} actions have shape ({self.env.action_dim},); got '
                       f'{action.shape}')
    self._state = self._step(self._state, action)
    info = self._info()
    return self._observation(), -info['distance'], False, False, info

  def render(self):
    if self._state is None:
      raise RuntimeError('call reset() before render()')
    return np.array(self._render(self._state))


def evaluation_episodes(name: str, episode_set: str = 'reference', num_episodes: int = 96,
                        seed: int = 0) -> list:
  """The built-in evaluation's episodes of environment `name` (`planning.episodes`: the
  reference's seeded draw or the random set) as `planning.external.ExternalEpisode`s whose reset
  options start this wrapper from them; the goals come from the reset's info."""
  from jepa_jax.planning import episodes, external  # pylint: disable=g-import-not-at-top
  starts, goals, _ = episodes.episode_starts_goals(envs.get(name), episode_set, num_episodes,
                                                   seed)
  return [external.ExternalEpisode(options={'start': start, 'goal': goal})
          for start, goal in zip(np.asarray(starts), np.asarray(goals))]


def make(name: str, **kwargs) -> gymnasium.Env:
  """`gymnasium.make` of our environment `name` (one of `GYM_IDS`); kwargs go to `JaxEnv`."""
  if name not in GYM_IDS:
    raise ValueError(f'unknown environment {name!r}; choose one of {tuple(GYM_IDS)}')
  return gymnasium.make(GYM_IDS[name], **kwargs)


for _name, _id in GYM_IDS.items():
  if _id not in gymnasium.registry:
    gymnasium.register(id=_id, entry_point=JaxEnv, kwargs={'name': _name},
                       max_episode_steps=envs.get(_name).episode_steps)
