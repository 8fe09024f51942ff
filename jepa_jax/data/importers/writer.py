"""Imported episodes -> the trajectory dataset every stage reads (`jepa_jax.data.trajectories`).

The dataset is written by the same TFDS builder as generated data (`ImportedTrajectories` only
replaces where the examples come from), into the folder the config names
(`trajectories.dataset_dir`), with `stats.json` (jepa_jax.data.stats), `imported.json` (where
the data came from) and `integrity.json` (jepa_jax.data.integrity, written last: a dataset is
complete only once it exists). So the stages find and read an imported dataset exactly as a
generated one.

Episodes are cut into consecutive trajectories of `data.trajectory_length` steps (episode steps
[kL, (k+1)L], the boundary frame shared); a shorter remainder is dropped. Each split takes the
first `data.num_<split>_trajectories` of them, in episode order.

Before anything is written, every episode used is checked (action and state sizes, finite
numbers, a stored proprio equal to `env.proprio(state)`), and the actions are checked against
the environment's own dynamics: `env.step(state_t, action_t)` must land near `state_{t+1}`
(actions in other units or shifted by a step fail here instead of training a useless model).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np

from jepa_jax import console, envs, outputs
from jepa_jax.data import integrity
from jepa_jax.data import stats as stats_lib
from jepa_jax.data import trajectories
from jepa_jax.data.importers import frames as frames_lib
from jepa_jax.data.importers.episodes import EpisodeSource, LowDim, env_states
from jepa_jax.envs.base import Environment

IMPORT_RECORD_FILENAME = 'imported.json'
# Dynamics check: the median one-step position error of `env.step` over the median step length.
# Data of our own simulators give ~0 (Wall, PointMaze) and < 0.01 (Push-T's agent, whose PD
# motion does not depend on contacts); actions in other units give >> 1.
DYNAMICS_TOLERANCE = 0.1
DYNAMICS_TRANSITIONS = 256
_PROPRIO_TOLERANCE = 1e-3   # relative to the proprio's magnitude


@dataclasses.dataclass(frozen=True)
class Window:
  """One stored trajectory: env steps [start, start + L] of `episode` of source `source`."""
  source: int
  episode: int
  start: int


def cut_windows(source: EpisodeSource, source_index: int, episodes: Sequence[int],
                length: int) -> list[Window]:
  """Every trajectory of `length` steps in `episodes`, in order (module docstring)."""
  return [Window(source_index, int(e), k * length)
          for e in episodes for k in range((source.num_frames(int(e)) - 1) // length)]


def _proprio(env: Environment, states: np.ndarray) -> np.ndarray:
  return np.asarray(jax.vmap(env.proprio)(jax.numpy.asarray(states)), np.float32)


class EpisodeReader:
  """An `EpisodeSource`'s episodes with our full states (`env_states`), the last one kept (the
  trajectories of an episode are consecutive)."""

  def __init__(self, env: Environment, sources: Sequence[EpisodeSource]):
    self._env, self._sources, self._last = env, sources, (None, None)

  def low_dim(self, source: int, episode: int) -> LowDim:
    if self._last[0] != (source, episode):
      data = self._sources[source].low_dim(episode)
      what = f'{self._sources[source].description} episode {episode}'
      self._last = ((source, episode), dataclasses.replace(
          data, states=env_states(self._env, data.states, what)))
    return self._last[1]


def check_low_dim(env: Environment, data: LowDim, frameskip: int, what: str) -> None:
  """One-line errors for anything in an episode that does not fit `env` (module docstring)."""
  actions, states = np.asarray(data.actions), np.asarray(data.states)
  if actions.ndim != 2 or actions.shape[-1] != env.action_dim:
    width = actions.shape[-1] if actions.ndim else None
    hint = (f' (they look like {frameskip} env actions concatenated per model step: store one '
            'action per env step)' if width == env.action_dim * frameskip else '')
    raise ValueError(f'{what}: actions have shape {actions.shape}; {env.name} takes '
                     f'(T - 1, {env.action_dim}){hint}')
  if states.ndim != 2 or states.shape[-1] != env.state_dim:
    raise ValueError(f'{what}: states have shape {states.shape}; {env.name} states are '
                     f'(T, {env.state_dim})')
  if len(states) != len(actions) + 1:
    raise ValueError(f'{what}: {len(states)} states for {len(actions)} actions; expected one '
                     'state more than actions')
  for name, values in (('actions', actions), ('states', states)):
    if not np.all(np.isfinite(values)):
      raise ValueError(f'{what}: {name} hold NaN or infinite values')
  if data.proprio is not None:
    ours = _proprio(env, states)
    theirs = np.asarray(data.proprio, np.float32)
    if theirs.shape != ours.shape:
      raise ValueError(f'{what}: proprio has shape {theirs.shape}; {env.name} proprio is '
                       f'{ours.shape}')
    error = float(np.max(np.abs(theirs - ours), initial=0.0))
    if error > _PROPRIO_TOLERANCE * max(1.0, float(np.max(np.abs(ours), initial=0.0))):
      raise ValueError(f'{what}: the stored proprio differs from {env.name}.proprio(state) by up '
                       f'to {error:.3g}; the state or proprio units differ from ours')


def dynamics_mismatch(env: Environment, states: np.ndarray, actions: np.ndarray,
                      next_states: np.ndarray) -> float:
  """Median |env.step(s, a)[:2] - s'[:2]| over the median |s'[:2] - s[:2]| (the first two state
  numbers are the agent's position in every environment here) of transitions `(K, ...)`."""
  predicted = np.asarray(jax.jit(jax.vmap(env.step))(states, actions))
  error = np.linalg.norm(predicted[:, :2] - next_states[:, :2], axis=-1)
  moved = np.linalg.norm(next_states[:, :2] - states[:, :2], axis=-1)
  return float(np.median(error) / max(float(np.median(moved)), 1e-6))


class ImportedTrajectories(trajectories.Trajectories, skip_registration=True):
  """The `trajectories` builder whose examples are imported windows instead of simulations."""

  name = trajectories.Trajectories.name

  def __init__(self, *, sources: Sequence[EpisodeSource], windows: dict, **kwargs):
    self._sources = sources
    self._windows = windows
    super().__init__(**kwargs)

  def _generate_examples(self, split: str):
    c = self.builder_config
    env = envs.get(c.env)
    reader = EpisodeReader(env, self._sources)
    loaded, key = None, None
    for index, window in enumerate(self._windows[split]):
      if (window.source, window.episode) != key:
        key = (window.source, window.episode)
        source = self._sources[window.source]
        data = reader.low_dim(window.source, window.episode)
        count = source.num_frames(window.episode)
        frames = source.frames(window.episode)
        if len(frames) < count:
          raise ValueError(f'{source.description}: episode {window.episode} has {len(frames)} '
                           f'frames but {count} states')
        what = f'{source.description} episode {window.episode} frames'
        loaded = (data, frames_lib.resize_frames(frames[:count], c.image_size, what))
        logging.info('%s %s: episode %d', source.description, split, window.episode)
      data, episode_frames = loaded
      steps = slice(window.start, window.start + c.trajectory_length + 1)
      states = np.asarray(data.states[steps], np.float32)
      yield index, {'observations': episode_frames[steps],
                    'actions': np.asarray(data.actions[window.start:steps.stop - 1], np.float32),
                    'proprio': _proprio(env, states), 'states': states}


def _select(windows: list[Window], count: int, split: str, descriptions: str,
            length: int) -> list[Window]:
  if len(windows) < count:
    raise ValueError(
        f'{descriptions} holds {len(windows)} {split} trajectories of {length} steps but the '
        f'config asks for {count}: pass --config.data.num_{split}_trajectories={len(windows)} '
        '(or a shorter --config.data.trajectory_length)')
  return windows[:count]


def _origin(path: str) -> str:
  return ('imported' if os.path.isfile(os.path.join(path, IMPORT_RECORD_FILENAME))
          else 'generated')


def write_dataset(data_dir: str, env_name: str, data_config: Any, seed: int,
                  sources: Sequence[EpisodeSource], split_episodes: dict, *,
                  record: dict, overwrite: bool = False, check_dynamics: bool = True) -> str:
  """Writes the imported dataset the config names; returns its folder.

  Args:
    data_dir: TFDS data_dir (the stages' `--data_dir`).
    env_name, data_config, seed: as for `trajectories.generate`; the folder is
      `trajectories.dataset_dir(data_dir, env_name, data_config, seed)`.
    sources: the peer datasets read.
    split_episodes: {'train' | 'validation': [(source index, episode indices), ...]}.
    record: JSON facts about the import (format, inputs, unit mapping) for imported.json.
    overwrite: replace a complete dataset already in that folder (else a one-line error).
    check_dynamics: compare the actions with the environment's dynamics (module docstring).
  """
  env = envs.get(env_name)
  data = trajectories.as_data_config(data_config)
  config = trajectories.builder_config(env_name, data, seed)
  path = trajectories.dataset_dir(data_dir, env_name, data, seed)
  if trajectories.is_complete(path) and not overwrite:
    raise ValueError(f'a complete {_origin(path)} dataset already exists at {path}; pass '
                     '--overwrite to replace it, or another --data_dir')
  names = ' + '.join(s.description for s in sources)
  length = data.trajectory_length
  windows = {split: _select(
      [w for index, episodes in split_episodes[split]
       for w in cut_windows(sources[index], index, episodes, length)],
      data.num_trajectories(split), split, names, length) for split in trajectories.SPLITS}

  action_moments = stats_lib.MomentAccumulator(env.action_dim)
  proprio_moments = stats_lib.MomentAccumulator(env.proprio_dim)
  transitions, checked = [], set()
  reader = EpisodeReader(env, sources)
  for split in trajectories.SPLITS:
    for window in windows[split]:
      source = sources[window.source]
      low_dim = reader.low_dim(window.source, window.episode)
      if (window.source, window.episode) not in checked:
        checked.add((window.source, window.episode))
        check_low_dim(env, low_dim, data.frameskip,
                      f'{source.description} episode {window.episode}')
      actions = low_dim.actions[window.start:window.start + length]
      states = low_dim.states[window.start:window.start + length + 1]
      if split == 'train':
        action_moments.add(actions)
        proprio_moments.add(_proprio(env, states))
        if len(transitions) < DYNAMICS_TRANSITIONS:
          transitions += list(zip(states[:-1], actions, states[1:]))
  mismatch = None
  if check_dynamics:
    s, a, s_next = (np.stack(x).astype(np.float32)
                    for x in zip(*transitions[:DYNAMICS_TRANSITIONS]))
    mismatch = dynamics_mismatch(env, s, a, s_next)
    if mismatch > DYNAMICS_TOLERANCE:
      raise ValueError(
          f"{names}: the actions do not move the states as {env.name}'s dynamics do (median "
          f'one-step position error {mismatch:.3g} x the median step, tolerance '
          f'{DYNAMICS_TOLERANCE}): the actions are in other units, or shifted by a step (action '
          't must move state t to t + 1); --skip_dynamics_check imports them anyway')

  if os.path.exists(path):
    shutil.rmtree(path)   # an unfinished earlier import, or the dataset `overwrite` replaces
  builder = ImportedTrajectories(sources=sources, windows=windows, config=config,
                                 data_dir=os.fspath(data_dir))
  with console.library_prints():
    builder.download_and_prepare()
  if os.path.realpath(os.fspath(builder.data_dir)) != os.path.realpath(path):
    raise RuntimeError(f'TFDS wrote {builder.data_dir}, expected {path}')
  action_mean, action_std = action_moments.mean_std()
  proprio_mean, proprio_std = proprio_moments.mean_std()
  stats_lib.write_stats(path, dict(
      action_mean=action_mean, action_std=action_std, proprio_mean=proprio_mean,
      proprio_std=proprio_std, num_trajectories=data.num_train_trajectories, split='train'))
  outputs.write_json(os.path.join(path, IMPORT_RECORD_FILENAME), dict(
      record, env=env_name, trajectory_length=length, dynamics_mismatch=mismatch,
      trajectories={split: [dataclasses.asdict(w) for w in windows[split]]
                    for split in trajectories.SPLITS}))
  integrity.record(path)
  return path
