"""Generates the Wall trajectory dataset (TFDS ArrayRecord + stats.json); no-op when complete.

  python -m experiments.generate_data --config=experiments/configs/wall.py:tiny --workdir=/tmp/wall
writes `<workdir>/data/wall_trajectories/<config name>/<version>` (or under `--data_dir`).
"""

import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import configs

from jepa_jax.data import wall_tfds

_CONFIG = config_flags.DEFINE_config_file('config', configs.WALL_TINY)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Job folder; the dataset goes to <workdir>/data.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: <workdir>/data).')


def main(argv):
  del argv
  if _DATA_DIR.value is None and _WORKDIR.value is None:
    raise app.UsageError('pass --workdir (dataset in <workdir>/data) or --data_dir')
  data_dir = _DATA_DIR.value or os.path.join(_WORKDIR.value, 'data')
  config = _CONFIG.value
  data = wall_tfds.as_data_config(config.data)
  print(f'generating Wall dataset: {data.num_train_trajectories} train + '
        f'{data.num_validation_trajectories} validation trajectories of '
        f'{data.trajectory_length} steps at {data.image_size} px (seed {config.seed}) '
        f'under {data_dir}', flush=True)
  start = time.time()
  path = wall_tfds.generate(data_dir, data, config.seed)
  info = wall_tfds.describe(path)
  print(f'dataset ready: {path} ({info["bytes"] / 2**20:.1f} MiB on disk, '
        f'{info["train"]} train / {info["validation"]} validation, '
        f'{time.time() - start:.1f} s)', flush=True)


if __name__ == '__main__':
  app.run(main)
