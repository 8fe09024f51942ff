r"""Import another program's trajectory dataset as the dataset the stages read.

  python -m experiments.import_dataset --format=dino_wm --input=/data/wall_single \
      --config=experiments/configs/wall.py:tiny --data_dir=/tmp/run/data
  python -m experiments.import_dataset --format=swm_hdf5 --input=pusht_expert_train.h5 \
      --config=experiments/configs/push_t.py:tiny --data_dir=/tmp/run/data

Formats: dino_wm (a DINO-WM dataset folder), swm_hdf5 (a stable-worldmodel .h5 file), swm_lance
(a stable-worldmodel Lance table). Frames are resized to --config's data.image_size, episodes
are cut into data.trajectory_length steps, and the first data.num_train_trajectories /
num_validation_trajectories of them are written where the config's dataset lives
(<data_dir>/trajectories/...), with stats.json and integrity.json; then train on it with the
same --config and --data_dir (docs/data_and_envs.md).
"""

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, outputs
from jepa_jax.data import importers, trajectories

config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                'Experiment config of the target environment (file:variant).')
flags.DEFINE_enum('format', None, importers.FORMATS, 'Layout of --input.', required=True)
flags.DEFINE_string('input', None, 'The dataset to import (folder or file).', required=True)
flags.DEFINE_string('validation_input', None, 'A separate validation set in the same format '
                    '(default: DINO-WM train/ + val/ subfolders, else the last '
                    '--validation_fraction of the episodes).')
flags.DEFINE_float('validation_fraction', 0.1, 'Episodes held out for validation without '
                   '--validation_input.')
flags.DEFINE_string('env', None, 'Target environment (default and must equal the config\'s env).')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir to write into (the stages\' --data_dir).',
                    required=True)
flags.DEFINE_bool('overwrite', False, 'Replace a complete dataset already in that folder.')
flags.DEFINE_bool('skip_dynamics_check', False, "Import even when the actions do not move the "
                  "states as the environment's dynamics do.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  env = FLAGS.env or config.env
  if env != config.env:
    raise ValueError(f'--env={env} but --config is for {config.env!r}: pass '
                     f'--config=experiments/configs/{env}.py:<variant>')
  for name in ('input', 'validation_input'):
    path = getattr(FLAGS, name)
    if path and not os.path.exists(path):
      raise ValueError(f'--{name}={path} does not exist')
  trajectories.as_data_config(config.data)   # a bad setting fails before any work
  data_dir = outputs.prepare_output_dir(
      FLAGS.data_dir, kind='data', inputs=[p for p in (FLAGS.input, FLAGS.validation_input) if p])
  path = importers.import_dataset(
      FLAGS.format, FLAGS.input, env, config.data, int(config.seed), data_dir,
      validation_path=FLAGS.validation_input, validation_fraction=FLAGS.validation_fraction,
      overwrite=FLAGS.overwrite, check_dynamics=not FLAGS.skip_dynamics_check)
  info = trajectories.describe(path)
  console.result('import', f"{info['path']}: {info['train']} train / {info['validation']} "
                 f"validation trajectories, {info['bytes'] / 2**20:.1f} MiB")


if __name__ == '__main__':
  cli.run(main)
