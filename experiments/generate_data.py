r"""Generate an environment's trajectory dataset (TFDS ArrayRecord + stats.json).

  python -m experiments.generate_data --config=experiments/configs/wall.py:tiny --workdir=/tmp/wall

writes `<workdir>/data/trajectories/<env>_<config name>/<version>` (or under `--data_dir`).
"""

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, outputs
from jepa_jax.data import trajectories

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Job directory; the data goes to <workdir>/data.')
flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default <workdir>/data).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not (FLAGS.data_dir or FLAGS.workdir):
    raise ValueError('pass --workdir (data goes to <workdir>/data) or --data_dir')
  config = FLAGS.config
  data_dir = outputs.prepare_output_dir(
      FLAGS.data_dir or os.path.join(FLAGS.workdir, 'data'), kind='data')
  trajectories.as_data_config(config.data)
  path = trajectories.generate(data_dir, config.env, config.data, config.seed)
  info = trajectories.describe(path)
  console.result('data', f"{info['path']}: {info['train']} train / {info['validation']} "
                 f"validation trajectories, {info['bytes'] / 2**20:.1f} MiB")


if __name__ == '__main__':
  cli.run(main)
