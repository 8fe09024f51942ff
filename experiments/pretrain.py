r"""Stage 1: train the ViT encoder on an environment's clips (V-JEPA), then probe it.

  python -m experiments.pretrain --config=experiments/configs/wall.py:tiny \
      --workdir=/tmp/run/pretrain [--data_dir=/tmp/run/data]

Resumes from the latest checkpoint in --workdir. Writes the EMA target encoder to
<workdir>/encoder (stage 2 loads it) and <workdir>/summary.json with the probes, each next to
the same probe on the random-init encoder.

`--random_init` writes the untrained encoder instead (the seeded initialisation, standardised
over the training frames as a trained export is): stage 2 and planning on it give the floor a
stage-1 result is worth comparing with.
"""

import os

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, layout, outputs
from jepa_jax.pretrain import train

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-1 working directory.', required=True)
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the dataset (default <workdir>/../data).')
flags.DEFINE_bool('random_init', False,
                  'Write the random-init encoder to <workdir>/encoder instead of training.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.require_method(FLAGS.config, 'three_stage', 'experiments.pretrain')
  if FLAGS.config.encoder_source != 'pretrain':
    raise ValueError('this config plans on a converted encoder (encoder_source='
                     f'{FLAGS.config.encoder_source!r}): stage 1 has nothing to train; run '
                     'experiments.train_wm, or pass --config.encoder_source=pretrain')
  train.as_pretrain_config(FLAGS.config.pretrain)  # a bad setting fails before any work
  workdir = outputs.prepare_output_dir(FLAGS.workdir, kind='pretrain')
  data_dir = FLAGS.data_dir or layout.sibling(workdir, 'data')
  if FLAGS.random_init:
    path = os.path.join(workdir, 'encoder')
    if os.path.exists(path):
      raise ValueError(f'{path} exists (a trained or earlier encoder): give --random_init a new '
                       '--workdir')
    with outputs.WorkdirLock(workdir):
      train.export_random_encoder(FLAGS.config, path, data_dir)
    console.result('stage 1', f'random-init encoder (not trained) {path}')
    return
  with outputs.WorkdirLock(workdir):
    summary = train.train(FLAGS.config, workdir, data_dir)
  console.result('stage 1', f"probe error {summary['probe_error']:.3g} "
                 f"{summary['distance_unit']} (random init "
                 f"{summary['probe_error_random_encoder']:.3g}); encoder {summary['encoder_path']}")


if __name__ == '__main__':
  cli.run(main)
