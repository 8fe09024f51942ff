r"""Stage 2: train the action-conditioned world model on a frozen encoder.

  python -m experiments.train_wm --config=experiments/configs/wall.py:tiny \
      --workdir=/tmp/run/world_model [--data_dir=/tmp/run/data] [--encoder=/tmp/run/pretrain/encoder]

Resumes from the latest checkpoint in --workdir; writes summary.json and the exported model
(<workdir>/model) that stage 3 loads with jepa_jax.world_model.model.load_world_model.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import configs

from jepa_jax.world_model import train

config_flags.DEFINE_config_file('config', configs.WALL_TINY,
                                'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-2 working directory.', required=True)
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the dataset (default <workdir>/../data).')
flags.DEFINE_string('encoder', None,
                    'Frozen encoder export, kind "vit" (default <workdir>/../pretrain/encoder).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  workdir = os.path.abspath(FLAGS.workdir)
  parent = os.path.dirname(workdir)
  summary = train.train(
      FLAGS.config, workdir,
      data_dir=FLAGS.data_dir or os.path.join(parent, 'data'),
      encoder_path=FLAGS.encoder or os.path.join(parent, 'pretrain', 'encoder'))
  print(json.dumps({k: summary[k] for k in ('rollout_error', 'constant_baseline',
                                            'ratio_to_constant')}, indent=2))


if __name__ == '__main__':
  app.run(main)
