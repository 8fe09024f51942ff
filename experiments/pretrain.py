r"""Stage 1: V-JEPA pretraining of the ViT encoder on Wall clips, then a linear probe.

  python -m experiments.pretrain --config=experiments/configs/wall.py:tiny \
      --workdir=/tmp/run/pretrain [--data_dir=/tmp/run/data]

Resumes from the latest checkpoint in --workdir. Writes the EMA target encoder to
<workdir>/encoder (stage 2 loads it) and <workdir>/summary.json with the probe errors.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import configs

from jepa_jax import distributed
from jepa_jax.pretrain import train

config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-1 working directory.', required=True)
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the dataset (default <workdir>/../data).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  distributed.maybe_initialize()
  workdir = os.path.abspath(FLAGS.workdir)
  data_dir = FLAGS.data_dir or os.path.join(os.path.dirname(workdir), 'data')
  summary = train.train(FLAGS.config, workdir, data_dir)
  keys = ('probe_error_px', 'probe_error_px_random_encoder', 'probe_error_px_mean_pool',
          'probe_error_px_mean_pool_random_encoder', 'latent_distance_spearman',
          'latent_distance_spearman_random_encoder', 'steps_per_sec', 'total_seconds')
  print(json.dumps({k: summary[k] for k in keys}, indent=2))


if __name__ == '__main__':
  app.run(main)
