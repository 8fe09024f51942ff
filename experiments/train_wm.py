r"""Stage 2: train the action-conditioned world model on a frozen encoder.

  python -m experiments.train_wm --config=experiments/configs/wall.py:tiny \
      --workdir=/tmp/run/world_model [--data_dir=/tmp/run/data] [--encoder=/tmp/run/pretrain/encoder]

Resumes from the latest checkpoint in --workdir; writes summary.json and the exported model
(<workdir>/model) that stage 3 loads with jepa_jax.world_model.model.load_world_model.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, layout, outputs
from jepa_jax.world_model import train

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'Stage-2 working directory.', required=True)
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the dataset (default <workdir>/../data).')
flags.DEFINE_string('encoder', None,
                    'Frozen encoder export, kind "vit" (default <workdir>/../pretrain/encoder).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.require_method(FLAGS.config, 'three_stage', 'experiments.train_wm')
  train.as_world_model_config(FLAGS.config.world_model)  # a bad setting fails before any work
  workdir = outputs.prepare_output_dir(FLAGS.workdir, kind='world_model')
  with outputs.WorkdirLock(workdir):
    summary = train.train(
        FLAGS.config, workdir, data_dir=FLAGS.data_dir or layout.sibling(workdir, 'data'),
        encoder_path=FLAGS.encoder or layout.sibling(workdir, layout.ENCODER_EXPORT))
  console.result('stage 2', f"rollout error {summary['rollout_error']['visual_mean']:.4g} "
                 f"(constant latent {summary['constant_baseline']['visual_mean']:.4g}); model "
                 f"{summary['model_path']}")


if __name__ == '__main__':
  cli.run(main)
