"""Other programs' trajectory datasets -> our trajectory dataset (`jepa_jax.data.trajectories`).

  import_dataset('dino_wm', '/data/wall_single', 'wall', config.data, config.seed, data_dir)

Formats (the exact layouts are in each reader's docstring):
  dino_wm     a DINO-WM dataset folder (wall_single, point_maze, pusht_noise with train/, val/)
  swm_hdf5    a stable-worldmodel `.h5` file
  swm_lance   a stable-worldmodel Lance table (`<name>.lance`, needs `pip install pylance`)

The result is the dataset the config names, in `data_dir`: the stages read it as if
`experiments.generate_data` had made it (see `writer.py`).
"""

from __future__ import annotations

from typing import Any, Optional

from jepa_jax import envs
from jepa_jax.data.importers import dino_wm, stable_worldmodel, writer

FORMATS = ('dino_wm', 'swm_hdf5', 'swm_lance')


def open_sources(fmt: str, path: str, env_name: str) -> tuple[Any, Optional[Any]]:
  """(train-or-all source, validation source or None) of a peer dataset at `path`."""
  if fmt == 'dino_wm':
    return dino_wm.open_folder(path, env_name)
  if fmt == 'swm_hdf5':
    return stable_worldmodel.HDF5Source(path), None
  if fmt == 'swm_lance':
    return stable_worldmodel.LanceSource(path), None
  raise ValueError(f'unknown dataset format {fmt!r}; choose one of {FORMATS}')


def units(fmt: str, env_name: str) -> str:
  """How the format's numbers map to ours, in words (recorded in imported.json)."""
  return dino_wm.UNITS[env_name] if fmt == 'dino_wm' else stable_worldmodel.UNITS


def import_dataset(fmt: str, path: str, env_name: str, data_config: Any, seed: int,
                   data_dir: str, *, validation_path: Optional[str] = None,
                   validation_fraction: float = 0.1, overwrite: bool = False,
                   check_dynamics: bool = True) -> str:
  """Imports the peer dataset at `path` as the `env_name` dataset of `data_config`; returns its
  folder (`trajectories.dataset_dir(data_dir, env_name, data_config, seed)`).

  Splits: `validation_path` (same format) is the validation split; without it a DINO-WM folder
  with train/ and val/ uses those, and any other input gives its last `validation_fraction` of
  episodes (at least one) to validation, the rest to train.
  """
  envs.get(env_name)   # a clear error for an unknown environment
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(f'validation_fraction={validation_fraction} must be in (0, 1)')
  train, validation = open_sources(fmt, path, env_name)
  if validation_path:
    validation, _ = open_sources(fmt, validation_path, env_name)
  if validation is not None:
    sources = [train, validation]
    split_episodes = {'train': [(0, range(train.num_episodes))],
                      'validation': [(1, range(validation.num_episodes))]}
  else:
    n = train.num_episodes
    if n < 2:
      raise ValueError(f'{train.description} holds {n} episode(s): too few to split; pass a '
                       'separate validation input')
    held_out = min(n - 1, max(1, round(validation_fraction * n)))
    sources = [train]
    split_episodes = {'train': [(0, range(n - held_out))],
                      'validation': [(0, range(n - held_out, n))]}
  record = dict(format=fmt, input=path, validation_input=validation_path,
                units=units(fmt, env_name))
  return writer.write_dataset(data_dir, env_name, data_config, seed, sources, split_episodes,
                              record=record, overwrite=overwrite, check_dynamics=check_dynamics)
