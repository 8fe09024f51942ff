r"""LeWorldModel: train the encoder and the action-conditioned predictor end to end from pixels.

  python -m experiments.train_lewm --config=experiments/configs/wall.py:tiny \
      --workdir=/tmp/run/lewm [--data_dir=/tmp/run/data]

The method of `--config.method=lewm` (the CPU variants' default). Resumes from the latest
checkpoint in --workdir; writes summary.json (rollout error against the constant latent, the
encoder's geometry next to its random init) and the exported model (<workdir>/model) that
`experiments.plan` loads.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments import configs
from jepa_jax import console, layout, outputs
from jepa_jax.lewm import train

config_flags.DEFINE_config_file('config', configs.WALL_TINY, 'Experiment config (file:variant).')
flags.DEFINE_string('workdir', None, 'LeWM working directory.', required=True)
flags.DEFINE_string('data_dir', None, 'TFDS data_dir of the dataset (default <workdir>/../data).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  cli.require_method(FLAGS.config, 'lewm', 'experiments.train_lewm')
  train.as_lewm_config(FLAGS.config.lewm)  # a bad setting fails before any work
  workdir = outputs.prepare_output_dir(FLAGS.workdir, kind='lewm')
  with outputs.WorkdirLock(workdir):
    summary = train.train(FLAGS.config, workdir, FLAGS.data_dir or layout.sibling(workdir, 'data'))
  console.result('lewm', f"rollout error {summary['rollout_error']['visual_mean']:.4g} "
                 f"(constant latent {summary['constant_baseline']['visual_mean']:.4g}); model "
                 f"{summary['model_path']}")


if __name__ == '__main__':
  cli.run(main)
