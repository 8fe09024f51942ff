"""stable-worldmodel's recorded datasets (galilai-group/stable-worldmodel, `data/formats/`):
HDF5 files and Lance tables, read with h5py / pylance (none of their code runs).

Both hold one row per env step, episodes contiguous, written by `World.collect`:
  pixels   uint8 (H, W, 3) rendered frame of the step (Lance: a JPEG blob, `pa.binary`)
  action   f32 (A,)  the action taken at this step (collect rotates the reset's NaN placeholder
           to the episode's last row, so row t's action moves step t to t + 1 and the last row
           has none)
  state    f32 (S,)  the environment's state; proprio f32 (P,) when the env provides it
HDF5 (`formats/hdf5.py`): one `.h5` file, one dataset per column of shape (rows, ...), plus
`ep_len` (int32, rows per episode) and `ep_offset` (int64, first row). Lance
(`formats/lance.py`): a LanceDB table `<name>.lance` with `episode_idx`, `step_idx` (int32)
and the columns above as `fixed_size_list<float32>`; episodes are runs of equal episode_idx.

Units: stable-worldmodel's `swm/PushT-v1` is DINO-WM's Push-T: relative actions in [-1, 1]
(target = agent + 100 a), state [agent x, y, block x, y, angle mod 2 pi, agent vx, vy], proprio
[agent x, y, vx, vy]: all equal to ours. It has no DotWall nor D4RL PointMaze; data of those in
this layout (e.g. exported from ours) are read in our units. An episode of T rows gives T frames
and T - 1 actions.
"""

from __future__ import annotations

import io
import os

import numpy as np

from jepa_jax.data.importers.episodes import LowDim, require_key, require_shape

UNITS = 'as stored (stable-worldmodel PushT = ours; other environments in our units)'
COLUMNS = ('pixels', 'action', 'state')


def _single_file(path: str, suffixes: tuple, kind: str) -> str:
  """`path` itself, or the one file with one of `suffixes` in the folder `path`."""
  if os.path.isdir(path):
    found = sorted(f for f in os.listdir(path) if f.endswith(suffixes))
    if len(found) != 1:
      raise ValueError(f'{path} holds {len(found)} {kind} files ({found}); pass the file itself')
    return os.path.join(path, found[0])
  if not os.path.exists(path):
    raise ValueError(f'{kind} input {path} does not exist')
  return path


class _RowSource:
  """Episodes stored as contiguous rows: `lengths`, `offsets` and whole low-dim columns."""

  def __init__(self, description, lengths, offsets, actions, states, proprio):
    self.description = description
    self._lengths, self._offsets = np.asarray(lengths, np.int64), np.asarray(offsets, np.int64)
    rows = int(np.sum(self._lengths))
    self._actions = require_shape(actions, (rows, None), f'{description} column action')
    self._states = require_shape(states, (rows, None), f'{description} column state')
    self._proprio = (None if proprio is None
                     else require_shape(proprio, (rows, None), f'{description} column proprio'))
    if np.any(self._lengths < 1) or np.any(self._offsets + self._lengths > rows):
      raise ValueError(f'{description}: episode lengths / offsets point outside the {rows} rows')

  @property
  def num_episodes(self) -> int:
    return len(self._lengths)

  def num_frames(self, episode: int) -> int:
    return int(self._lengths[episode])

  def _rows(self, episode: int) -> slice:
    first = int(self._offsets[episode])
    return slice(first, first + self.num_frames(episode))

  def low_dim(self, episode: int) -> LowDim:
    rows = self._rows(episode)
    return LowDim(actions=np.asarray(self._actions[rows][:-1], np.float32),
                  states=np.asarray(self._states[rows], np.float32),
                  proprio=None if self._proprio is None else self._proprio[rows])


class HDF5Source(_RowSource):
  """A stable-worldmodel `.h5` file (module docstring)."""

  def __init__(self, path: str):
    import h5py  # pylint: disable=g-import-not-at-top
    try:
      import hdf5plugin  # noqa: F401  (registers compression filters with h5py)
    except ImportError:
      pass
    self.path = _single_file(path, ('.h5', '.hdf5'), 'HDF5')
    description = f'stable-worldmodel HDF5 {self.path}'
    try:
      self._file = h5py.File(self.path, 'r')
    except OSError as e:
      raise ValueError(f'{self.path} is not a readable HDF5 file ({e})') from None
    for key in COLUMNS + ('ep_len', 'ep_offset'):
      require_key(set(self._file.keys()), key, description)
    read = lambda key: self._read(key, description)
    super().__init__(description, read('ep_len'), read('ep_offset'), read('action'),
                     read('state'), read('proprio') if 'proprio' in self._file else None)
    pixels = self._file['pixels']
    require_shape(np.empty((0,) + pixels.shape[1:]), (0, None, None, 3),
                  f'{description} column pixels')

  def _read(self, key: str, description: str) -> np.ndarray:
    try:
      return self._file[key][()]
    except OSError as e:   # e.g. a compression filter that is not installed
      raise ValueError(f'{description}: column {key!r} cannot be read ({e}); compressed files '
                       'need `pip install hdf5plugin`') from None

  def frames(self, episode: int) -> np.ndarray:
    return self._file['pixels'][self._rows(episode)]


def _lance_table_path(path: str) -> str:
  """The `<name>.lance` table of `path`: the table itself, or the one in a LanceDB folder
  (its `_episodes` / `_videos` companions are not frame tables)."""
  if path.rstrip('/').endswith('.lance'):
    if not os.path.isdir(path):
      raise ValueError(f'Lance input {path} does not exist')
    return path
  if not os.path.isdir(path):
    raise ValueError(f'Lance input {path} does not exist')
  tables = sorted(t for t in os.listdir(path) if t.endswith('.lance')
                  and not t[:-len('.lance')].endswith(('_episodes', '_videos')))
  if len(tables) != 1:
    raise ValueError(f'{path} holds {len(tables)} Lance tables ({tables}); pass the '
                     '<name>.lance folder itself')
  return os.path.join(path, tables[0])


class LanceSource(_RowSource):
  """A stable-worldmodel Lance table (module docstring); frames are decoded JPEGs."""

  def __init__(self, path: str):
    try:
      import lance  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError('reading Lance tables needs pylance: pip install pylance') from None
    self.path = _lance_table_path(path)
    description = f'stable-worldmodel Lance {self.path}'
    self._dataset = lance.dataset(self.path)
    names = set(self._dataset.schema.names)
    for key in COLUMNS + ('episode_idx', 'step_idx'):
      require_key(names, key, description)
    low = ['episode_idx', 'step_idx', 'action', 'state'] + (
        ['proprio'] if 'proprio' in names else [])
    table = self._dataset.to_table(columns=low)
    column = lambda key: self._column(table, key, description)
    episode_idx = column('episode_idx')
    if np.any(np.diff(episode_idx) < 0):
      raise ValueError(f'{description}: episode_idx decreases; the table is not '
                       'episode-contiguous')
    offsets = np.concatenate([[0], np.flatnonzero(np.diff(episode_idx)) + 1])
    lengths = np.diff(np.concatenate([offsets, [len(episode_idx)]]))
    step_idx = column('step_idx')
    if np.any(step_idx != np.arange(len(step_idx)) - np.repeat(offsets, lengths)):
      raise ValueError(f'{description}: step_idx does not count 0, 1, ... within each episode')
    super().__init__(description, lengths, offsets, column('action'), column('state'),
                     column('proprio') if 'proprio' in names else None)

  @staticmethod
  def _column(table, key: str, description: str) -> np.ndarray:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    values = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(values.type):
      return values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
      return values.to_numpy(zero_copy_only=False)
    raise ValueError(f'{description}: column {key!r} has type {values.type}; expected '
                     'numbers or fixed-size lists of float32')

  def frames(self, episode: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rows = self._rows(episode)
    blobs = self._dataset.take(list(range(rows.start, rows.stop)),
                               columns=['pixels']).column('pixels').to_pylist()
    decoded = []
    for blob in blobs:
      with Image.open(io.BytesIO(blob)) as image:
        decoded.append(np.asarray(image.convert('RGB')))
    return np.stack(decoded)
