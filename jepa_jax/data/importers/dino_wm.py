"""DINO-WM's dataset folders (gaoyuezhou/dino_wm, `datasets/*_dset.py`), read without running
any of their code.

Layout of one folder (DINO-WM's `wall_single`, `point_maze`, `pusht_noise/{train,val}`):

  wall        states.pth        f32 (N, T, 2)   dot position (x, y), grid pixels (= ours)
              actions.pth       f32 (N, T', 2)  env actions (the env moves 2 * action, = ours)
              obses/episode_{i:03d}.pth  uint8 (T, 3, H, W)  channels first (the loader does
                                not permute them); all N episodes have T valid steps
  point_maze  states.pth        f32 (N, T, 4)   [x, y, vx, vy] = MuJoCo (qpos, qvel) (= ours)
              actions.pth       f32 (N, T, 2)   controls in [-1, 1] (= ours)
              seq_lengths.pth   int (N,)        valid steps of each zero-padded episode
              obses/episode_{i:03d}.pth  uint8 (T_i, H, W, 3)
  push_t      states.pth        f32 (N, T, 5)   [agent x, y, block x, y, block angle]
              velocities.pth    f32 (N, T, 2)   agent velocity
              rel_actions.pth   f32 (N, T, 2)   relative targets in pixels: the loader divides
                                them by its action_scale 100 to get env actions (= ours)
              seq_lengths.pkl   pickled list (N,) of ints
              shapes.pkl        optional pickled list of block shapes ('T' only here)
              obses/episode_{i:03d}.mp4  (T_i, H, W, 3) video

Our Push-T state is `states ++ velocities` with the angle wrapped to [0, 2 pi) as the reference
observes it. Row t of every tensor is step t: action t moves state t to t + 1, so an episode of
T valid steps gives T frames and T - 1 actions (the last action leads out of the recording).

`.pth` files are read with `torch.load(weights_only=True)` and pickles with an unpickler that
rebuilds only plain containers and numpy arrays: loading never runs code from the files.
Frames of each episode are read when that episode is written.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from typing import Any

import numpy as np

from jepa_jax.data.importers.episodes import LowDim, require_key, require_shape

ENVS = ('wall', 'point_maze', 'push_t')
PUSH_T_ACTION_SCALE = 100.0   # DINO-WM's PushTDataset(action_scale=100)
# Per environment: the action file, the sequence-length file (None: every episode is full),
# the frame file suffix and whether frames are stored channels first.
_LAYOUT = {
    'wall': dict(actions='actions.pth', lengths=None, frames='.pth', channels_first=True),
    'point_maze': dict(actions='actions.pth', lengths='seq_lengths.pth', frames='.pth',
                       channels_first=False),
    'push_t': dict(actions='rel_actions.pth', lengths='seq_lengths.pkl', frames='.mp4',
                   channels_first=False),
}
UNITS = {
    'wall': 'states, actions and frames as stored (DINO-WM DotWall = ours)',
    'point_maze': 'states, actions and frames as stored (D4RL maze2d-umaze = ours)',
    'push_t': (f'actions = rel_actions / {PUSH_T_ACTION_SCALE:g}; state = states ++ velocities, '
               'angle mod 2 pi'),
}


class _PlainUnpickler(pickle.Unpickler):
  """Rebuilds lists, dicts, numbers, strings and numpy arrays/scalars; refuses every other
  global, so a pickle cannot run code."""

  _ALLOWED = {('numpy', 'dtype'), ('numpy', 'ndarray'),
              ('numpy.core.multiarray', '_reconstruct'), ('numpy.core.multiarray', 'scalar'),
              ('numpy._core.multiarray', '_reconstruct'), ('numpy._core.multiarray', 'scalar'),
              ('builtins', 'list'), ('builtins', 'tuple'), ('builtins', 'dict')}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
    return super().find_class(module, name)


def load_plain_pickle(path: str) -> Any:
  """A pickle of plain data (see `_PlainUnpickler`); one-line error for anything else."""
  try:
    with open(path, 'rb') as f:
      return _PlainUnpickler(io.BytesIO(f.read())).load()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f'{path} is not a pickle of plain data ({e})') from None


def load_tensor(path: str) -> np.ndarray:
  """A `.pth` tensor as numpy, loaded with torch.load(weights_only=True)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('reading DINO-WM .pth files needs PyTorch: pip install "jepa_jax[torch]"'
                      ) from None
  try:
    value = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many types
    raise ValueError(f'{path} is not a tensor file torch.load(weights_only=True) accepts '
                     f'({type(e).__name__})') from None
  if not isinstance(value, torch.Tensor):
    raise ValueError(f'{path} holds a {type(value).__name__}, not a tensor')
  return value.numpy()


def read_video(path: str) -> np.ndarray:
  """uint8 (T, H, W, 3) frames of a video file (PyAV)."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('reading DINO-WM Push-T videos needs PyAV: pip install av') from None
  try:
    with av.open(path) as container:
      return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])
  except (av.error.FFmpegError, ValueError) as e:
    raise ValueError(f'{path} is not a readable video ({e})') from None


class DinoWMSource:
  """One DINO-WM dataset folder (module docstring) as an `EpisodeSource` for `env_name`."""

  def __init__(self, folder: str, env_name: str):
    if env_name not in ENVS:
      raise ValueError(f'DINO-WM has no {env_name!r} dataset layout here; choose one of {ENVS}')
    if not os.path.isdir(folder):
      raise ValueError(f'DINO-WM dataset folder {folder} does not exist')
    self.folder, self.env_name = folder, env_name
    self.description = f'DINO-WM {env_name} folder {folder}'
    layout = _LAYOUT[env_name]
    files = set(os.listdir(folder))
    needed = ['states.pth', layout['actions'], 'obses'] + (
        [layout['lengths']] if layout['lengths'] else []) + (
            ['velocities.pth'] if env_name == 'push_t' else [])
    for name in needed:
      require_key(files, name, self.description)
    state_dim = {'wall': 2, 'point_maze': 4, 'push_t': 5}[env_name]
    states = require_shape(load_tensor(self._path('states.pth')), (None, None, state_dim),
                           f'{self.description}/states.pth')
    n, steps = states.shape[:2]
    actions = require_shape(load_tensor(self._path(layout['actions'])), (n, None, 2),
                            f'{self.description}/{layout["actions"]}')
    if env_name == 'push_t':
      velocities = require_shape(load_tensor(self._path('velocities.pth')), (n, steps, 2),
                                 f'{self.description}/velocities.pth')
      angle = np.mod(states[..., 4:5], 2 * math.pi)
      states = np.concatenate([states[..., :4], angle, velocities], -1)
      actions = actions / PUSH_T_ACTION_SCALE
      self._check_shapes(n)
    if layout['lengths'] is None:
      lengths = np.full(n, min(steps, actions.shape[1] + 1))
    else:
      path = self._path(layout['lengths'])
      raw = load_plain_pickle(path) if path.endswith('.pkl') else load_tensor(path)
      lengths = require_shape(np.asarray(raw), (n,), f'{self.description}/{layout["lengths"]}')
      if np.any(lengths > steps) or np.any(lengths > actions.shape[1]) or np.any(lengths < 1):
        raise ValueError(f'{path}: sequence lengths must lie in [1, {min(steps, actions.shape[1])}]'
                         f' (the tensors hold {steps} steps); got [{lengths.min()}, '
                         f'{lengths.max()}]')
    self._states = states.astype(np.float32)
    self._actions = actions.astype(np.float32)
    self._lengths = lengths.astype(np.int64)

  def _path(self, name: str) -> str:
    return os.path.join(self.folder, name)

  def _check_shapes(self, n: int) -> None:
    path = self._path('shapes.pkl')
    if not os.path.exists(path):
      return   # DINO-WM's loader assumes 'T' for every episode then
    shapes = list(load_plain_pickle(path))
    if len(shapes) != n or any(s != 'T' for s in shapes):
      others = sorted({str(s) for s in shapes} - {'T'})
      raise ValueError(f'{path}: our push_t has only the T block; this folder has '
                       f'{len(shapes)} shapes for {n} episodes, including {others}')

  @property
  def num_episodes(self) -> int:
    return len(self._lengths)

  def num_frames(self, episode: int) -> int:
    return int(self._lengths[episode])

  def low_dim(self, episode: int) -> LowDim:
    t = self.num_frames(episode)
    return LowDim(actions=self._actions[episode, :t - 1], states=self._states[episode, :t])

  def frames(self, episode: int) -> np.ndarray:
    suffix = _LAYOUT[self.env_name]['frames']
    path = os.path.join(self.folder, 'obses', f'episode_{episode:03d}{suffix}')
    if not os.path.isfile(path):
      raise ValueError(f'{self.description}: obses/{os.path.basename(path)} is missing')
    frames = read_video(path) if suffix == '.mp4' else load_tensor(path)
    if _LAYOUT[self.env_name]['channels_first']:
      frames = require_shape(frames, (None, 3, None, None), path).transpose(0, 2, 3, 1)
    return require_shape(frames, (None, None, None, 3), path)


def open_folder(folder: str, env_name: str) -> tuple[DinoWMSource, DinoWMSource | None]:
  """(train source, validation source or None): a folder with `train/` and `val/` subfolders
  (DINO-WM's Push-T layout) gives both, any other folder one."""
  train, val = os.path.join(folder, 'train'), os.path.join(folder, 'val')
  if os.path.isdir(train) and os.path.isdir(val):
    return DinoWMSource(train, env_name), DinoWMSource(val, env_name)
  return DinoWMSource(folder, env_name), None
